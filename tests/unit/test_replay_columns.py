"""Which CSV columns ``replay`` learns from: time stamps and text are never features by accident."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.tools.cli import main
from pipeline.tools.csv_source import load_readings_csv

CSV = (
    "Timestamp,device,site,a,b,target\n"
    "2026-01-01T00:00:00,d1,north,1.0,2.0,0.5\n"
    "2026-01-01T00:00:01,d2,south,3.0,4.0,1.5\n"
    "2026-01-01T00:00:02,d1,north,5.0,6.0,2.5\n"
)
NUMERIC_TIME = "ts,device,a,target\n100,d1,1.0,0.5\n101,d2,2.0,1.5\n102,d1,3.0,2.5\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.csv"
    path.write_text(text)
    return path


def test_time_and_text_columns_are_left_out_with_a_note(tmp_path: Path) -> None:
    # Prepare
    path = write(tmp_path, CSV)

    # Execute
    table = load_readings_csv(path, "device", "target")

    # Assert: only the numeric, non-time columns; nothing skipped; each left-out column explained
    assert table.feature_names == ["a", "b"]
    assert table.x.tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert table.skipped == []
    assert [n.split(":")[0] for n in table.notes] == [
        "column 'Timestamp' looks like a time stamp",
        "column 'site' holds text",
    ]


def test_a_numeric_time_column_is_not_a_feature_unless_named(tmp_path: Path) -> None:
    # Prepare
    path = write(tmp_path, NUMERIC_TIME)

    # Execute
    default = load_readings_csv(path, "device", "target")
    named = load_readings_csv(path, "device", "target", feature_cols=["ts", "a"])

    # Assert
    assert default.feature_names == ["a"]
    assert named.feature_names == ["ts", "a"] and named.x[:, 0].tolist() == [100.0, 101.0, 102.0]


def test_ignore_cols_drops_a_column_silently(tmp_path: Path) -> None:
    # Prepare
    path = write(tmp_path, CSV)

    # Execute
    table = load_readings_csv(path, "device", "target", ignore_cols=["site", "b"])

    # Assert
    assert table.feature_names == ["a"]
    assert [n.split(":")[0] for n in table.notes] == ["column 'Timestamp' looks like a time stamp"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target_col": "device"}, "--device-col and --target-col are both 'device'"),
        ({"feature_cols": ["a", "nope"]}, "--feature-cols 'nope' is not a column"),
        ({"feature_cols": ["device", "a"]}, "also the device, target or time column"),
        ({"ignore_cols": ["a", "b"]}, "no feature columns"),
    ],
)
def test_impossible_column_choices_are_refused(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    # Prepare
    path = write(tmp_path, CSV)
    args: dict[str, object] = {"device_col": "device", "target_col": "target", **options}

    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        load_readings_csv(path, **args)  # type: ignore[arg-type]


def test_the_replay_command_prints_the_notes_and_refuses_one_column_for_two_roles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    path = write(tmp_path, CSV * 1)
    base = ["replay", str(path), "--device-col", "device", "--strategy", "global", "--json"]

    # Execute
    same = main([*base, "--target-col", "device"])
    same_err = capsys.readouterr().err
    ok = main([*base, "--target-col", "target", "--ignore-cols", "site", "--feature-cols", "a,b"])
    ok_err = capsys.readouterr().err

    # Assert
    assert same == 2 and "--device-col and --target-col are both 'device'" in same_err
    assert ok == 0 and "note:" not in ok_err
