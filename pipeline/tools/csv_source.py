"""Read a CSV of sensor readings into arrays, reporting (never crashing on) bad rows."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from learners.config import Task

MAX_CLASSES_INFERRED = 20
TIME_NAMES = frozenset({"time", "timestamp", "ts", "date", "datetime"})
"""Column names (any case) taken for time stamps: never a feature unless named in ``feature_cols``."""


@dataclass
class SkippedRow:
    """A row that could not be used, with the CSV line number and why."""

    line: int
    reason: str


@dataclass
class ReadingsTable:
    """Readings in time order, ready for :func:`learners.evaluation.replay.replay`."""

    device_ids: list[str]
    x: np.ndarray
    y: np.ndarray
    task: Task
    feature_names: list[str]
    classes: list[str] = field(default_factory=list)
    skipped: list[SkippedRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Columns left out of the features, and why (time-like or text columns)."""

    def __len__(self) -> int:
        return len(self.device_ids)


def load_readings_csv(
    path: str | Path,
    device_col: str,
    target_col: str,
    time_col: str | None = None,
    task: Task | None = None,
    feature_cols: Sequence[str] | None = None,
    ignore_cols: Sequence[str] = (),
) -> ReadingsTable:
    """Load readings; the features are ``feature_cols``, else the numeric columns left.

    Without ``feature_cols``, every column other than device, target, time
    and ``ignore_cols`` is a feature, except a column named like a time
    stamp (:data:`TIME_NAMES`) and a text column (most of its values are
    not numbers); those are left out with a note in ``notes``.

    Rows with a missing or non-numeric feature (or target, for regression),
    or a non-finite value, are skipped and listed in ``skipped``.  Without
    ``task`` it is inferred: a target of at most 20 distinct integers, or any
    non-numeric target, is classification.  Class labels are mapped to
    indices in sorted order (``classes``).

    Examples
    --------
    >>> import tempfile, os
    >>> text = "t,dev,a,b,y\\n2,d1,1,2,0.5\\n1,d2,3,x,1.5\\n0,d1,5,6,2.5\\n"
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = os.path.join(tmp, "r.csv")
    ...     _ = open(p, "w").write(text)
    ...     table = load_readings_csv(p, "dev", "y", time_col="t")
    >>> table.device_ids, table.y.tolist(), table.task
    (['d1', 'd1'], [2.5, 0.5], 'regression')
    >>> table.skipped
    [SkippedRow(line=3, reason="column 'b': not a number: 'x'")]
    """
    if device_col == target_col:
        raise ValueError(f"--device-col and --target-col are both {device_col!r}: they must differ")
    named = (
        ("--device-col", device_col),
        ("--target-col", target_col),
        ("--time-col", time_col),
        *(("--feature-cols", c) for c in feature_cols or ()),
        *(("--ignore-cols", c) for c in ignore_cols),
    )
    header, raw_rows = _read_checked(path, named)
    features, notes = choose_features(
        header, raw_rows, device_col, target_col, time_col, feature_cols, ignore_cols
    )
    rows, skipped = _parse_rows(raw_rows, device_col, target_col, time_col, features)
    targets = [r[4] for r in rows]
    task = task or _infer_task(targets)
    classes, y, keep = _encode_targets(task, targets, rows, skipped)
    x = np.array([rows[i][3] for i in keep], dtype=np.float64).reshape(len(keep), len(features))
    return ReadingsTable(
        [rows[i][2] for i in keep],
        x,
        y,
        task,
        features,
        classes,
        sorted(skipped, key=lambda s: s.line),
        notes,
    )


_Row = tuple[object, int, str, list[float], str]
"""A parsed row: time stamp, CSV line, device, feature values, raw target."""


def _read_checked(
    path: str | Path, named: Iterable[tuple[str, str | None]]
) -> tuple[list[str], list[dict[str, str | None]]]:
    """The header and rows of ``path``, after checking every named column is in the header."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        for name, col in named:
            if col is not None and col not in header:
                raise ValueError(f"{name} {col!r} is not a column of {path}; columns are {header}")
        return header, list(reader)


def _parse_rows(
    raw_rows: Sequence[dict[str, str | None]],
    device_col: str,
    target_col: str,
    time_col: str | None,
    features: list[str],
) -> tuple[list[_Row], list[SkippedRow]]:
    """The usable rows (sorted by ``time_col`` when given, ties in file order) and the skipped ones."""
    rows: list[_Row] = []
    skipped: list[SkippedRow] = []
    for line, row in enumerate(raw_rows, start=2):
        problem, parsed = _parse_row(row, device_col, target_col, time_col, features)
        if problem:
            skipped.append(SkippedRow(line, problem))
        else:
            assert parsed is not None
            stamp, device, values, target = parsed
            rows.append((stamp, line, device, values, target))
    if time_col is not None:
        rows.sort(key=lambda r: r[0])  # type: ignore[arg-type,return-value]  # stable: ties keep file order
    return rows, skipped


def _encode_targets(
    task: Task, targets: Sequence[str], rows: Sequence[_Row], skipped: list[SkippedRow]
) -> tuple[list[str], np.ndarray, list[int]]:
    """Classes, encoded targets and the kept rows' indices; bad regression targets go to ``skipped``."""
    if task == "classification":
        classes = sorted(set(targets), key=_label_order)
        index = {c: i for i, c in enumerate(classes)}
        return classes, np.array([index[t] for t in targets], dtype=np.float64), list(range(len(rows)))
    y_list: list[float] = []
    keep: list[int] = []
    for i, t in enumerate(targets):
        v = _number(t)
        if v is None:
            skipped.append(SkippedRow(rows[i][1], f"target {t!r} is not a finite number"))
        else:
            y_list.append(v)
            keep.append(i)
    return [], np.array(y_list, dtype=np.float64), keep


def choose_features(
    header: Sequence[str],
    rows: Sequence[dict[str, str | None]],
    device_col: str,
    target_col: str,
    time_col: str | None = None,
    feature_cols: Sequence[str] | None = None,
    ignore_cols: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """The feature columns, and a note for each column left out on its own judgement.

    Examples
    --------
    >>> rows = [{"ts": "1", "dev": "d", "a": "1.5", "site": "north", "y": "2"}]
    >>> choose_features(["ts", "dev", "a", "site", "y"], rows, "dev", "y")  # doctest: +NORMALIZE_WHITESPACE
    (['a'], ["column 'ts' looks like a time stamp: not a feature (sort by it with --time-col ts;
    make it a feature with --feature-cols)", "column 'site' holds text: not a feature (drop it with
    --ignore-cols site)"])
    >>> choose_features(["ts", "dev", "a", "site", "y"], rows, "dev", "y", feature_cols=["ts", "a"])
    (['ts', 'a'], [])
    """
    given = [device_col, target_col, *([time_col] if time_col else [])]
    if feature_cols:
        clash = [c for c in feature_cols if c in given]
        if clash:
            raise ValueError(f"--feature-cols {clash} are also the device, target or time column")
        return list(feature_cols), []
    features: list[str] = []
    notes: list[str] = []
    for c in header:
        if c in given or c in ignore_cols:
            continue
        if c.strip().lower() in TIME_NAMES:
            notes.append(
                f"column {c!r} looks like a time stamp: not a feature "
                f"(sort by it with --time-col {c}; make it a feature with --feature-cols)"
            )
        elif _is_text(r.get(c) for r in rows):
            notes.append(f"column {c!r} holds text: not a feature (drop it with --ignore-cols {c})")
        else:
            features.append(c)
    if not features:
        raise ValueError("no feature columns besides device, target and time (name them with --feature-cols)")
    return features, notes


def _is_text(values: Iterable[str | None]) -> bool:
    """Most non-empty values are not numbers (a few bad ones are bad rows instead)."""
    filled = [v.strip() for v in values if v is not None and v.strip()]
    words = sum(1 for v in filled if _number(v) is None)
    return bool(filled) and words * 2 > len(filled)


def _parse_row(
    row: dict[str, str | None],
    device_col: str,
    target_col: str,
    time_col: str | None,
    features: list[str],
) -> tuple[str, tuple[object, str, list[float], str] | None]:
    if None in row:
        return "more fields than the header", None
    device = (row.get(device_col) or "").strip()
    if not device:
        return "empty device id", None
    target = (row.get(target_col) or "").strip()
    if not target:
        return "missing target", None
    values: list[float] = []
    for name in features:
        raw = row.get(name)
        if raw is None or not raw.strip():
            return f"column {name!r}: missing value", None
        v = _number(raw)
        if v is None:
            return f"column {name!r}: not a number: {raw.strip()!r}", None
        values.append(v)
    stamp: object = 0
    if time_col is not None:
        raw_t = (row.get(time_col) or "").strip()
        t = _number(raw_t)
        if t is None:
            try:
                t = datetime.fromisoformat(raw_t).timestamp()
            except ValueError:
                return f"column {time_col!r}: not a number or ISO time: {raw_t!r}", None
        stamp = t
    return "", (stamp, device, values, target)


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _infer_task(targets: list[str]) -> Task:
    numbers = [_number(t) for t in targets]
    if any(v is None for v in numbers):
        return "classification"
    distinct = set(numbers)
    if len(distinct) <= MAX_CLASSES_INFERRED and all(float(v).is_integer() for v in distinct):  # type: ignore[arg-type]
        return "classification"
    return "regression"


def _label_order(label: str) -> tuple[int, float, str]:
    v = _number(label)
    return (0, v, "") if v is not None else (1, 0.0, label)


def write_readings_csv(
    path: str | Path,
    device_ids: list[str],
    x: np.ndarray,
    y: np.ndarray,
    time: np.ndarray | None = None,
    feature_names: list[str] | None = None,
) -> None:
    """Write readings as ``time,device,<features>,target`` (the replay format)."""
    names = feature_names or [f"x{j}" for j in range(x.shape[1])]
    stamps = time if time is not None else np.arange(len(y), dtype=np.float64)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time", "device", *names, "target"])
        for t, d, row, target in zip(stamps.tolist(), device_ids, x.tolist(), y.tolist(), strict=True):
            w.writerow([repr(t), d, *(f"{v:.6g}" for v in row), f"{target:.6g}"])
