"""Real data-set loaders.  The data must have been fetched (``scripts/fetch_datasets.sh``):
a missing file fails these tests with the fetch hint; they never skip."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.tools.datasets import Dataset, DatasetMissing, lag_readings, load_dataset, read_awd

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> Dataset:
    try:
        return load_dataset(name)
    except DatasetMissing as exc:
        pytest.fail(str(exc))


@pytest.mark.parametrize(
    ("name", "task", "devices", "features"),
    [
        ("air", "regression", 70, 9),
        ("wind", "regression", 12, 9),
        ("watch", "classification", 10, 12),
        ("actigraphy", "regression", 11, 8),
        ("colorado", "regression", 159, 4),
    ],
)
def test_loader_gives_many_devices_in_time_order(name: str, task: str, devices: int, features: int) -> None:
    # Execute
    d = _load(name)
    # Assert
    assert d.name == name and d.task == task
    assert len(set(d.device_ids)) == devices >= 10
    assert d.x.shape == (len(d), features) == (len(d.y), len(d.feature_names))
    assert len(d.time) == len(d) and bool(np.all(np.diff(d.time) >= 0))
    assert np.isfinite(d.x).all() and np.isfinite(d.y).all()


def test_air_and_wind_have_no_look_ahead() -> None:
    # Prepare
    for name in ("air", "wind"):
        d = _load(name)
        keys = list(zip(d.device_ids, d.time.tolist(), strict=True))
        index = {key: i for i, key in enumerate(keys)}
        # Execute: a reading's lag1 against the same station's target of the day before
        pairs = [(i, index.get((dev, t - 1))) for i, (dev, t) in enumerate(keys)]
        pairs = [(i, j) for i, j in pairs if j is not None]
        # Assert
        assert len(pairs) > 0.9 * len(d)
        rows, prev = np.array(pairs).T
        assert np.array_equal(d.x[rows, 0], d.y[prev])


def test_watch_windows_and_labels() -> None:
    # Execute
    d = _load("watch")
    # Assert: 7 exercises, every subject does several, std features are non-negative
    assert d.classes == ["PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW"]
    assert set(np.unique(d.y)) == set(range(7))
    for subject in set(d.device_ids):
        assert len(set(d.y[np.array(d.device_ids) == subject])) >= 5
    assert (d.x[:, 6:] >= 0).all()


def test_lag_readings_skip_gaps() -> None:
    # Prepare: station b misses day 1, so its days 1 and 2 have no complete lags
    series = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, np.nan, 7.0, 8.0]])
    # Execute
    ids, x, y, t = lag_readings(series, np.arange(10_000.0, 10_004.0), ["a", "b"], lags=1)
    # Assert
    assert ids == ["a", "a", "a", "b"] and y.tolist() == [2.0, 3.0, 4.0, 8.0] and t.tolist()[-1] == 10_003.0
    assert np.allclose(x[:, 1] ** 2 + x[:, 2] ** 2, 1.0)  # day-of-year on the circle


def test_missing_data_fails_with_the_fetch_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare
    monkeypatch.setenv("METASTREAM_CACHE", str(tmp_path))
    # Execute / Assert
    for name in ("air", "wind", "watch", "actigraphy", "colorado"):
        with pytest.raises(DatasetMissing, match=r"scripts/fetch_datasets\.sh"):
            load_dataset(name)


def test_fetch_script_is_valid_bash() -> None:
    # Execute
    result = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "fetch_datasets.sh")], capture_output=True)
    # Assert
    assert result.returncode == 0, result.stderr


def test_actigraphy_readings_are_the_recordings_summed_per_epoch() -> None:
    # Execute
    d = _load("actigraphy")
    # Assert: 5-minute sums on the log1p scale, lag1 is the epoch before, clock on the circle
    ids = np.array(d.device_ids)
    first = d.y[ids == "example_01"]
    lag1 = d.x[ids == "example_01", 0]
    assert np.array_equal(lag1[1:], first[:-1])
    assert (d.y >= 0).all() and np.allclose(d.x[:, 6] ** 2 + d.x[:, 7] ** 2, 1.0)


def test_colorado_minimum_is_below_maximum() -> None:
    # Execute
    d = _load("colorado")
    # Assert: a month's mean daily minimum never exceeds its mean daily maximum
    assert (d.y <= d.x[:, 0]).all()
    assert min(list(d.device_ids).count(s) for s in set(d.device_ids)) >= 480


def test_read_awd_parses_counts_and_rejects_other_epochs(tmp_path: Path) -> None:
    # Prepare: a one-minute file with a light column, and a 30-second one
    header = ["subject", "23-Jan-1918", "13:58", " 4 ", "00", "V1", "X"]
    (tmp_path / "a.AWD").write_text("\r\n".join([*header, "3 , 0.5", "0 , 1.0", "12"]) + "\r\n")
    (tmp_path / "b.AWD").write_text("\n".join([*header[:3], "2", *header[4:], "1"]))
    # Execute
    start, counts = read_awd(tmp_path / "a.AWD")
    # Assert
    assert str(start) == "1918-01-23T13:58" and counts.tolist() == [3.0, 0.0, 12.0]
    with pytest.raises(ValueError, match="one-minute epochs"):
        read_awd(tmp_path / "b.AWD")
