"""Prequential evaluation: per-device and overall error, drifts, and recovery."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from learners.base import reading_errors
from learners.config import Task
from learners.registry import DeviceIndex


def recovery_time(errors: np.ndarray, t: int, end: int, window: int, tolerance: float) -> int | None:
    """Readings after ``t`` until the rolling error is back within ``tolerance`` of before.

    The pre-drift level is the mean error over ``[t - 2·window, t - window)``
    (one window further back than the detection, which lags the drift).
    Returns ``None`` when there is not enough history to measure, and
    ``end - t`` when the error never comes back before ``end`` (censored).

    Examples
    --------
    >>> e = np.array([1.0] * 40 + [5.0] * 10 + [1.0] * 30)
    >>> recovery_time(e, 40, len(e), window=10, tolerance=0.1)
    10
    >>> recovery_time(e, 5, len(e), window=10, tolerance=0.1) is None
    True
    """
    if t < 2 * window or end - t < window:
        return None
    target = errors[t - 2 * window : t - window].mean() * (1 + tolerance) + 1e-12
    seg = errors[t:end]
    c = np.concatenate([[0.0], np.cumsum(seg)])
    rolling = (c[window:] - c[:-window]) / window  # rolling[j] = mean(seg[j : j + window])
    hits = np.flatnonzero(rolling <= target)
    return int(hits[0]) if hits.size else end - t


class PrequentialEvaluator:
    """Collects test-then-train errors and the drifts a strategy detected.

    Parameters
    ----------
    task
        Decides the metrics: MAE and RMSE, or accuracy.
    window, tolerance
        Rolling-error window and the relative tolerance of recovery.

    Examples
    --------
    >>> ev = PrequentialEvaluator("regression")
    >>> ev.update(["a", "b"], np.array([1.0, 2.0]), np.array([1.5, 2.0]), drifted=["b"])
    >>> s = ev.summary()
    >>> s["n"], s["devices"], s["mae"], s["drifts"]
    (2, 2, 0.25, 1)
    """

    def __init__(self, task: Task, window: int = 20, tolerance: float = 0.10) -> None:
        self.task = task
        self.window = window
        self.tolerance = tolerance
        self.devices = DeviceIndex()
        self._slots: list[np.ndarray] = []
        self._errors: list[np.ndarray] = []
        self._seen = np.zeros(0, dtype=np.int64)
        self._drifts: list[tuple[int, int]] = []  # (slot, device-local position)

    def update(
        self, device_ids: Sequence[str], y: np.ndarray, y_pred: np.ndarray, drifted: Sequence[str] = ()
    ) -> None:
        """Record one batch; drifts are placed after the device's last reading in it."""
        slots, _ = self.devices.slots_for(device_ids)
        if len(self.devices) > len(self._seen):
            self._seen = np.concatenate([self._seen, np.zeros(len(self.devices) - len(self._seen), np.int64)])
        np.add.at(self._seen, slots, 1)
        self._slots.append(slots)
        self._errors.append(reading_errors(self.task, y, y_pred))
        for d in drifted:
            s = self.devices.slot(d)
            self._drifts.append((s, int(self._seen[s])))

    def per_device_errors(self) -> list[np.ndarray]:
        """Each device's error sequence, in arrival order."""
        if not self._slots:
            return []
        slots, errors = np.concatenate(self._slots), np.concatenate(self._errors)
        order = np.argsort(slots, kind="stable")
        return np.split(errors[order], np.cumsum(np.bincount(slots, minlength=len(self.devices)))[:-1])

    def recoveries(self) -> tuple[list[int], int]:
        """Recovery per measurable drift, and how many of those never recovered."""
        per_device = self.per_device_errors()
        by_device: dict[int, list[int]] = {}
        for s, t in self._drifts:
            by_device.setdefault(s, []).append(t)
        out: list[int] = []
        censored = 0
        for s, times in by_device.items():
            errs = per_device[s]
            for i, t in enumerate(times):
                end = times[i + 1] if i + 1 < len(times) else len(errs)
                r = recovery_time(errs, t, end, self.window, self.tolerance)
                if r is not None:
                    out.append(r)
                    censored += r == end - t and _never_back(errs, t, end, self.window, self.tolerance)
        return out, censored

    def summary(self) -> dict[str, Any]:
        """Overall metrics as plain JSON-ready values."""
        errors = np.concatenate(self._errors) if self._errors else np.zeros(0)
        rec, censored = self.recoveries()
        out: dict[str, Any] = {"n": int(errors.size), "devices": len(self.devices)}
        if self.task == "regression":
            out["mae"] = _round(errors.mean()) if errors.size else None
            out["rmse"] = _round(np.sqrt((errors**2).mean())) if errors.size else None
        else:
            out["accuracy"] = _round(1 - errors.mean()) if errors.size else None
        out["drifts"] = len(self._drifts)
        out["recovery_median"] = float(np.median(rec)) if rec else None
        out["recovery_measured"] = len(rec)
        out["recovery_censored"] = int(censored)
        return out


def _never_back(errors: np.ndarray, t: int, end: int, window: int, tolerance: float) -> bool:
    target = errors[t - 2 * window : t - window].mean() * (1 + tolerance) + 1e-12
    seg = errors[t:end]
    c = np.concatenate([[0.0], np.cumsum(seg)])
    return not bool((((c[window:] - c[:-window]) / window) <= target).any())


def _round(v: float) -> float:
    return round(float(v), 6)
