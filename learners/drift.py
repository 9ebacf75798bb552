"""Per-device drift detection with River detectors on the error stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from river import base, drift

from learners.config import DetectorName

DETECTORS: tuple[DetectorName, ...] = ("adwin", "page_hinkley", "kswin")

SCALE_WARMUP = 200
"""Readings of a device whose plain mean error is its first error scale.

Chosen on ``metastream evaluate detectors`` (200 streams, seed 0): with 50 or
1,000, ADWIN missed 26 or 39 of 100 classification drifts, with 200 it missed 20.
"""


def make_detector(name: DetectorName, seed: int = 0) -> base.DriftDetector:
    """A fresh River detector by name.

    Examples
    --------
    >>> make_detector("adwin")
    ADWIN (...)
    >>> make_detector("cusum")
    Traceback (most recent call last):
    ...
    ValueError: unknown detector 'cusum'; choose one of adwin, page_hinkley, kswin
    """
    if name == "adwin":
        # Checking every 8 readings instead of 32 cuts the detection delay.
        return drift.ADWIN(clock=8)
    if name == "page_hinkley":
        # Only rises in error are drifts we react to.
        return drift.PageHinkley(mode="up")
    if name == "kswin":
        return drift.KSWIN(seed=seed)
    raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")


class DriftMonitor:
    """One detector per device, an upward-only filter and a cooldown.

    A detector alarm counts as drift only when the error went *up*: a falling
    error is a model learning, not a drift.  For ADWIN the direction comes
    from the window it cut (mean of the dropped part versus the kept part);
    PageHinkley runs in ``mode="up"``; for KSWIN the kept window's mean is
    compared with the device's long-run mean error.  After a drift the
    device's alarms are ignored for ``cooldown`` of its readings, so one drift
    triggers one adaptation.

    Parameters
    ----------
    detector
        ``"adwin"`` (default), ``"page_hinkley"`` or ``"kswin"``.
    cooldown
        Readings of a device during which new alarms are ignored.
    seed
        Seed for randomised detectors (KSWIN).

    Examples
    --------
    >>> import random
    >>> rng = random.Random(0)
    >>> monitor = DriftMonitor(cooldown=50)
    >>> errors = [rng.gauss(0.2, 0.05) for _ in range(500)] + [rng.gauss(1.0, 0.05) for _ in range(500)]
    >>> drifts = [t for t, e in enumerate(errors) if monitor.update([0], [e])]
    >>> drifts
    [503]
    """

    def __init__(self, detector: DetectorName = "adwin", cooldown: int = 100, seed: int = 0) -> None:
        make_detector(detector)  # fail early on a bad name
        self.detector = detector
        self.cooldown = cooldown
        self.seed = seed
        self._detectors: list[base.DriftDetector] = []
        self._windows: list[Any] = []
        self._slow: list[float] = []
        self._cut_n: list[int] = []
        self._cut_sum: list[float] = []
        self._seen: list[int] = []
        self._quiet_until: list[int] = []
        self._scale = np.zeros(0)  # per device: running mean error
        self._scaled_n = np.zeros(0, dtype=np.int64)  # per device: finite errors in that mean
        self.fresh: dict[int, int] = {}
        """Per device, readings after the change point of its latest drift (0: unknown)."""

    def _grow(self, slot: int) -> None:
        while len(self._detectors) <= slot:
            det, window = self._new_detector(len(self._detectors))
            self._detectors.append(det)
            self._windows.append(window)
            self._slow.append(0.0)
            self._cut_n.append(0)
            self._cut_sum.append(0.0)
            self._seen.append(0)
            self._quiet_until.append(0)
        grow = len(self._detectors) - len(self._scale)
        self._scale = np.concatenate([self._scale, np.zeros(grow)])
        self._scaled_n = np.concatenate([self._scaled_n, np.zeros(grow, dtype=np.int64)])

    def _update_scale(self, slots: np.ndarray, errors: np.ndarray) -> None:
        """Each device's mean error over about its last 1,000 readings, whatever the batch size.

        Per device, not fleet-wide: a drift that hits every device at once
        (a season, a firmware roll-out) would otherwise raise the scale as
        fast as the errors and hide itself.
        """
        if len(slots) == 0:
            return
        uniq, inverse, counts = np.unique(slots, return_inverse=True, return_counts=True)
        mean = np.bincount(inverse.reshape(-1), weights=errors) / counts
        n = self._scaled_n[uniq] = self._scaled_n[uniq] + counts
        # The plain mean of a device's first readings, then a moving average.  A
        # plain mean much past the warm-up would follow a drift fast enough to hide it.
        w = np.where(n <= SCALE_WARMUP, counts / n, 1.0 - 0.999**counts)
        self._scale[uniq] += w * (mean - self._scale[uniq])

    def scale(self, slot: int) -> float:
        """What device ``slot``'s errors are divided by (0: not yet known)."""
        return float(self._scale[slot]) if slot < len(self._scale) else 0.0

    def seen(self, slot: int) -> int:
        """Readings of device ``slot`` observed so far."""
        return self._seen[slot] if slot < len(self._seen) else 0

    def update(self, slots: Sequence[int], errors: Sequence[float] | np.ndarray) -> list[int]:
        """Feed one error per reading; return the positions that are accepted drifts."""
        if len(slots) == 0:
            return []
        if max(slots) >= len(self._detectors):
            self._grow(max(slots))
        errs = np.asarray(errors, dtype=np.float64)
        finite = np.isfinite(errs)  # a broken reading must never poison a detector
        slot_arr = np.asarray(slots, dtype=np.int64)
        self._update_scale(slot_arr[finite], errs[finite])
        scale = self._scale[slot_arr]
        scaled = np.divide(errs, scale, out=errs.copy(), where=scale > 0).tolist()
        ok = finite.tolist()
        detectors, windows, seen = self._detectors, self._windows, self._seen
        cut_n, cut_sum, slow = self._cut_n, self._cut_sum, self._slow
        adwin, kswin = self.detector == "adwin", self.detector == "kswin"
        accepted: list[int] = []
        for i, slot in enumerate(slots):
            if not ok[i]:
                continue
            err = scaled[i]
            n = seen[slot] = seen[slot] + 1
            if adwin:
                cut_n[slot] += 1
                cut_sum[slot] += err
                alarm = windows[slot].update(err)
            else:
                det = detectors[slot]
                det.update(err)
                alarm = det.drift_detected
                if kswin:
                    slow[slot] = err if n == 1 else slow[slot] + 0.01 * (err - slow[slot])
            if alarm and self._on_alarm(slot, n):
                accepted.append(i)
        return accepted

    def _on_alarm(self, slot: int, n: int) -> bool:
        """Decide whether an alarm is an accepted (upward, out of cooldown) drift."""
        det = self._detectors[slot]
        fresh = 0
        if self.detector == "adwin":
            # ADWIN's window is everything since its last cut, which we track.
            kept_w, kept_mean = det.width, det.estimation  # type: ignore[attr-defined]
            dropped = (self._cut_sum[slot] - kept_w * kept_mean) / max(self._cut_n[slot] - kept_w, 1)
            upward = kept_mean > dropped
            fresh = int(kept_w)  # readings since the estimated change point
        elif self.detector == "kswin":
            window = det.window  # type: ignore[attr-defined]
            upward = sum(window) / len(window) > self._slow[slot]
        else:
            upward = True  # PageHinkley runs in "up" mode
        # Any alarm empties the detector (River resets it on its next update);
        # after an accepted one this also keeps old-concept readings left in
        # the window from raising a second alarm for the same drift.
        self._reset(slot)
        if not upward or n < self._quiet_until[slot]:
            return False
        self._quiet_until[slot] = n + self.cooldown
        self.fresh[slot] = fresh
        return True

    def _reset(self, slot: int) -> None:
        self._detectors[slot], self._windows[slot] = self._new_detector(slot)
        self._cut_n[slot], self._cut_sum[slot] = 0, 0.0

    def _new_detector(self, slot: int) -> tuple[base.DriftDetector, Any]:
        det = make_detector(self.detector, self.seed + slot)
        # For ADWIN, its compiled window is updated directly: River's Python
        # wrapper around it costs as much per reading as the window itself.
        return det, det._helper if self.detector == "adwin" else None  # type: ignore[attr-defined]
