"""Per-device drift detection with River detectors on the error stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from river import base, drift

from learners.config import DetectorName

DETECTORS: tuple[DetectorName, ...] = ("adwin", "page_hinkley", "kswin")


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
    [511]
    """

    def __init__(self, detector: DetectorName = "adwin", cooldown: int = 100, seed: int = 0) -> None:
        make_detector(detector)  # fail early on a bad name
        self.detector = detector
        self.cooldown = cooldown
        self.seed = seed
        self._detectors: list[base.DriftDetector] = []
        self._slow: list[float] = []
        self._cut_n: list[int] = []
        self._cut_sum: list[float] = []
        self._seen: list[int] = []
        self._quiet_until: list[int] = []
        self._scale = 0.0  # running mean error of the fleet
        self.fresh: dict[int, int] = {}
        """Per device, readings after the change point of its latest drift (0: unknown)."""

    def _grow(self, slot: int) -> None:
        while len(self._detectors) <= slot:
            self._detectors.append(make_detector(self.detector, self.seed + len(self._detectors)))
            self._slow.append(0.0)
            self._cut_n.append(0)
            self._cut_sum.append(0.0)
            self._seen.append(0)
            self._quiet_until.append(0)

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
        if finite.any():
            batch_mean = float(errs[finite].mean())
            # A moving average over about the last 1,000 readings, whatever the batch size.
            w = 1.0 - 0.999 ** int(finite.sum())
            self._scale = batch_mean if self._scale == 0.0 else (1 - w) * self._scale + w * batch_mean
        scaled = (errs / self._scale if self._scale > 0 else errs).tolist()
        ok = finite.tolist()
        detectors, seen = self._detectors, self._seen
        cut_n, cut_sum, slow = self._cut_n, self._cut_sum, self._slow
        adwin, kswin = self.detector == "adwin", self.detector == "kswin"
        accepted: list[int] = []
        for i, slot in enumerate(slots):
            if not ok[i]:
                continue
            err = scaled[i]
            n = seen[slot] = seen[slot] + 1
            det = detectors[slot]
            det.update(err)
            if adwin:
                cut_n[slot] += 1
                cut_sum[slot] += err
            elif kswin:
                slow[slot] = err if n == 1 else slow[slot] + 0.01 * (err - slow[slot])
            if det.drift_detected and self._on_alarm(slot, det, n):
                accepted.append(i)
        return accepted

    def _on_alarm(self, slot: int, det: base.DriftDetector, n: int) -> bool:
        """Decide whether an alarm is an accepted (upward, out of cooldown) drift."""
        fresh = 0
        if self.detector == "adwin":
            # ADWIN's window is everything since its last cut, which we track.
            kept_w, kept_mean = det.width, det.estimation  # type: ignore[attr-defined]
            dropped = (self._cut_sum[slot] - kept_w * kept_mean) / max(self._cut_n[slot] - kept_w, 1)
            upward = kept_mean > dropped
            self._cut_n[slot], self._cut_sum[slot] = int(kept_w), kept_w * kept_mean
            fresh = int(kept_w)  # readings since the estimated change point
        elif self.detector == "kswin":
            window = det.window  # type: ignore[attr-defined]
            upward = sum(window) / len(window) > self._slow[slot]
        else:
            upward = True  # PageHinkley runs in "up" mode
        if not upward or n < self._quiet_until[slot]:
            return False
        self._quiet_until[slot] = n + self.cooldown
        self.fresh[slot] = fresh
        # Start afresh: old-concept readings left in the window would raise a
        # second alarm for the same drift when they are finally cut.
        self._detectors[slot] = make_detector(self.detector, self.seed + slot)
        self._cut_n[slot], self._cut_sum[slot] = 0, 0.0
        return True

    # -- checkpoints (plain state, no pickle) ------------------------------------------

    def export_slots(self, slots: Sequence[int]) -> tuple[list[dict[str, Any]], list[bytes]]:
        """Plain state of the detectors of ``slots``: JSON-able dicts plus one binary blob each.

        ADWIN's window lives in River's Rust extension, whose own state
        encoding (plain bytes, not pickle) is the blob; PageHinkley and KSWIN
        are plain attributes (KSWIN with its random generator's state), and
        their blob is empty.  :meth:`import_slots` gives back detectors that
        behave identically on the following errors.
        """
        states: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for slot in slots:
            if slot < len(self._detectors):
                det = self._detectors[slot]
                state = {
                    "seen": self._seen[slot],
                    "quiet_until": self._quiet_until[slot],
                    "cut_n": self._cut_n[slot],
                    "cut_sum": self._cut_sum[slot],
                    "slow": self._slow[slot],
                    "fresh": self.fresh.get(slot),
                    "detector": _detector_state(det),
                }
                blob = det._helper.__getstate__() if self.detector == "adwin" else b""  # type: ignore[attr-defined]
            else:  # a device that never had a finite error: nothing to keep
                state, blob = {}, b""
            states.append(state)
            blobs.append(bytes(blob))
        return states, blobs

    def import_slots(
        self, slots: Sequence[int], states: Sequence[dict[str, Any]], blobs: Sequence[bytes]
    ) -> None:
        """Replace the detectors of ``slots`` with :meth:`export_slots` output (same detector kind)."""
        if not slots:
            return
        self._grow(max(slots))
        for slot, state, blob in zip(slots, states, blobs, strict=True):
            det = make_detector(self.detector, self.seed + slot)
            self.fresh.pop(slot, None)
            if not state:
                self._detectors[slot] = det
                self._seen[slot] = self._quiet_until[slot] = self._cut_n[slot] = 0
                self._cut_sum[slot] = self._slow[slot] = 0.0
                continue
            _load_detector(det, state["detector"], blob)
            self._detectors[slot] = det
            self._seen[slot] = int(state["seen"])
            self._quiet_until[slot] = int(state["quiet_until"])
            self._cut_n[slot] = int(state["cut_n"])
            self._cut_sum[slot] = float(state["cut_sum"])
            self._slow[slot] = float(state["slow"])
            if state["fresh"] is not None:
                self.fresh[slot] = int(state["fresh"])

    @property
    def scale(self) -> float:
        """Running mean error of the fleet that errors are divided by (worker-wide)."""
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        self._scale = float(value)


def _detector_state(det: base.DriftDetector) -> dict[str, Any]:
    """A detector's learned state as plain JSON values (its settings come from :func:`make_detector`)."""
    state: dict[str, Any] = {"drift_detected": bool(det.drift_detected)}
    if isinstance(det, drift.PageHinkley):
        state |= {
            "mean_n": det._x_mean.n,
            "mean": det._x_mean._mean,
            "sums": [det._sum_increase, det._sum_decrease, det._min_increase, det._max_decrease],
        }
    elif isinstance(det, drift.KSWIN):
        version, internal, gauss = det._rng.getstate()
        state |= {
            "n": det.n,
            "p_value": det.p_value,
            "window": list(det.window),
            "rng": [version, list(internal), gauss],
        }
    return state


def _load_detector(det: base.DriftDetector, state: dict[str, Any], blob: bytes) -> None:
    det._drift_detected = bool(state["drift_detected"])
    if isinstance(det, drift.ADWIN):
        det._helper.__setstate__(bytes(blob))
    elif isinstance(det, drift.PageHinkley):
        det._x_mean.n, det._x_mean._mean = float(state["mean_n"]), float(state["mean"])
        s = [float(v) for v in state["sums"]]
        det._sum_increase, det._sum_decrease, det._min_increase, det._max_decrease = s
    elif isinstance(det, drift.KSWIN):
        det.n, det.p_value = int(state["n"]), state["p_value"]
        det.window.clear()
        det.window.extend(float(v) for v in state["window"])
        version, internal, gauss = state["rng"]
        det._rng.setstate((int(version), tuple(int(v) for v in internal), gauss))
