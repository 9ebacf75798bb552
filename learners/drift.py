"""Per-device drift detection with River detectors on the error stream."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from river import base, drift

from learners.config import DetectorName
from learners.grouping import DeviceGroups
from learners.river_adapter import detector_state, fast_window, load_detector_state

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
        self._quiet_until: list[int] = []
        # Per device, as arrays so that a batch updates them at once:
        self._seen = np.zeros(0, dtype=np.int64)  # finite errors observed
        self._cut_n = np.zeros(0, dtype=np.int64)  # errors since the detector's last reset
        self._cut_sum = np.zeros(0)  # and their sum
        self._scale = np.zeros(0)  # per device: running mean error
        self._fleet_scale = 0.0  # running mean error of the fleet
        self._scaled_n = np.zeros(0, dtype=np.int64)  # per device: finite errors in that mean
        self.fresh: dict[int, int] = {}
        """Per device, readings after the change point of its latest drift (0: unknown)."""

    def _grow(self, slot: int) -> None:
        while len(self._detectors) <= slot:
            det, window = self._new_detector(len(self._detectors))
            self._detectors.append(det)
            self._windows.append(window)
            self._slow.append(0.0)
            self._quiet_until.append(0)
        grow = len(self._detectors) - len(self._scale)
        self._scale = np.concatenate([self._scale, np.zeros(grow)])
        self._scaled_n = np.concatenate([self._scaled_n, np.zeros(grow, dtype=np.int64)])
        self._seen = np.concatenate([self._seen, np.zeros(grow, dtype=np.int64)])
        self._cut_n = np.concatenate([self._cut_n, np.zeros(grow, dtype=np.int64)])
        self._cut_sum = np.concatenate([self._cut_sum, np.zeros(grow)])

    def _update_scale(self, groups: DeviceGroups, errors: np.ndarray) -> None:
        """Running mean errors: the fleet's (last ~1,000 readings) and each device's (its own ~1,000).

        A device's errors are divided by its own mean error since its last
        adaptation (:meth:`restart_scale`), or by the fleet's until it has
        one.  The fleet's alone would hide a drift that hits every device at
        once (a season, a firmware roll-out): it rises as fast as the errors.
        """
        if len(errors) == 0:
            return
        w = 1.0 - 0.999 ** len(errors)
        batch_mean = float(errors.mean())
        self._fleet_scale = (
            batch_mean
            if self._fleet_scale == 0.0
            else self._fleet_scale + w * (batch_mean - self._fleet_scale)
        )
        uniq, counts = groups.slots, groups.counts
        mean = np.bincount(groups.group, weights=errors, minlength=len(uniq)) / counts
        n = self._scaled_n[uniq] = self._scaled_n[uniq] + counts
        # The plain mean of a device's first readings, then a moving average.  A
        # plain mean much past the warm-up would follow a drift fast enough to hide it.
        w_device = np.where(n <= SCALE_WARMUP, counts / n, 1.0 - 0.999**counts)
        self._scale[uniq] += w_device * (mean - self._scale[uniq])

    def scale(self, slot: int) -> float:
        """What device ``slot``'s errors are divided by (0: not yet known)."""
        own = float(self._scale[slot]) if slot < len(self._scale) else 0.0
        return own if own > 0 else self._fleet_scale

    @property
    def fleet_scale(self) -> float:
        """The fleet's running mean error (worker-wide; checkpointed with the devices)."""
        return self._fleet_scale

    @fleet_scale.setter
    def fleet_scale(self, value: float) -> None:
        self._fleet_scale = float(value)

    def _scales(self, slots: np.ndarray) -> np.ndarray:
        """:meth:`scale` of every one of ``slots`` (all known: called after ``_grow``)."""
        own = self._scale[slots]
        return np.where(own > 0, own, self._fleet_scale)

    def restart_scale(self, slots: np.ndarray) -> None:
        """Measure these devices' error scale afresh: their model was just replaced.

        The errors of the model before an adaptation (θ's for a new device,
        the old concept's after a drift) say nothing about the new model's,
        and would numb the detector for hundreds of readings.
        """
        self._scale[slots] = 0.0
        self._scaled_n[slots] = 0

    def seen(self, slot: int) -> int:
        """Readings of device ``slot`` observed so far."""
        return int(self._seen[slot]) if slot < len(self._seen) else 0

    def update(
        self,
        slots: Sequence[int] | np.ndarray,
        errors: Sequence[float] | np.ndarray,
        groups: DeviceGroups | None = None,
    ) -> list[int]:
        """Feed one error per reading; return the positions that are accepted drifts.

        ``groups`` is ``DeviceGroups.of(slots)`` when the caller already has it.
        """
        if len(slots) == 0:
            return []
        slot_arr, errs, at = self._finite(slots, errors)
        if len(errs) == 0:
            return []
        groups = (groups if at is None else None) or DeviceGroups.of(slot_arr)
        self._update_scale(groups, errs)
        scale = self._scales(slot_arr)
        scaled = np.divide(errs, scale, out=errs.copy(), where=scale > 0)
        # Each reading's count among its device's readings, once it is seen.
        n = (self._seen[slot_arr] + groups.rank + 1).tolist()
        self._seen[groups.slots] += groups.counts
        if self.detector == "adwin":
            accepted = self._update_adwin(slot_arr.tolist(), scaled, n, groups)
        else:
            accepted = self._update_detectors(slot_arr.tolist(), scaled.tolist(), n)
        return accepted if at is None else at[accepted].tolist()

    def _finite(
        self, slots: Sequence[int] | np.ndarray, errors: Sequence[float] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Slots and errors as arrays without the non-finite errors, detectors grown to fit.

        The third value holds the positions kept (``None`` when all were).
        """
        slot_arr = np.asarray(slots, dtype=np.int64)
        if int(slot_arr.max()) >= len(self._detectors):
            self._grow(int(slot_arr.max()))
        errs = np.asarray(errors, dtype=np.float64)
        finite = np.isfinite(errs)  # a broken reading must never poison a detector
        at = None if finite.all() else np.flatnonzero(finite)
        if at is not None:
            slot_arr, errs = slot_arr[at], errs[at]
        return slot_arr, errs, at

    def update_each(self, slots: np.ndarray, errors: np.ndarray) -> list[int]:
        """Feed one error to each of ``slots`` (distinct devices); return the positions of accepted drifts.

        The per-reading form of :meth:`update` that a prequential learner
        calls once per reading position: a device's error scale, detector and
        cooldown advance by exactly this reading, so what a device sees
        depends only on its own error stream, never on how the stream was cut
        into batches or on other devices.  Its error scale is updated with
        the reading before dividing by it, so it is zero only while all its
        errors since its last adaptation are zero, and then the scaled error
        is zero with any divisor: the fleet's scale is neither used nor
        updated here.
        """
        if len(slots) == 0:
            return []
        slot_arr, errs, at = self._finite(slots, errors)
        if len(errs) == 0:
            return []
        n = self._scaled_n[slot_arr] = self._scaled_n[slot_arr] + 1
        # As in _update_scale for one reading: the plain mean, then a moving average.
        w = np.where(n <= SCALE_WARMUP, 1.0 / n, 1.0 - 0.999)
        scale = self._scale[slot_arr] = self._scale[slot_arr] + w * (errs - self._scale[slot_arr])
        scaled = np.divide(errs, scale, out=errs.copy(), where=scale > 0)
        seen = self._seen[slot_arr] = self._seen[slot_arr] + 1
        if self.detector == "adwin":
            self._cut_n[slot_arr] += 1
            self._cut_sum[slot_arr] += scaled
            accepted = []
            windows = self._windows
            for i, (slot, err, count) in enumerate(
                zip(slot_arr.tolist(), scaled.tolist(), seen.tolist(), strict=True)
            ):
                if windows[slot].update(err) and self._on_alarm(slot, count):
                    accepted.append(i)
        else:
            accepted = self._update_detectors(slot_arr.tolist(), scaled.tolist(), seen.tolist())
        return accepted if at is None else at[accepted].tolist()

    def _update_adwin(
        self, slots: list[int], scaled: np.ndarray, n: list[int], groups: DeviceGroups
    ) -> list[int]:
        """Feed ADWIN windows one error each; the per-device sums since a reset are kept per batch.

        Only the window updates run per reading.  The sum of a device's
        errors since its detector's last reset is needed at an alarm only; it
        is added up then, and for every device at the end of the batch, in
        reading order either way (so it is the same float as a running sum).
        """
        windows = self._windows
        padded = groups.pad(scaled)  # [U, width]: each device's errors in reading order
        restarted: dict[int, int] = {}  # slot → rank of its first error after a reset in this batch
        accepted: list[int] = []
        for i, (slot, err) in enumerate(zip(slots, scaled.tolist(), strict=True)):
            if windows[slot].update(err):
                g, rank = int(groups.group[i]), int(groups.rank[i])
                start = restarted.get(slot, 0)
                self._cut_n[slot] = (0 if slot in restarted else self._cut_n[slot]) + rank + 1 - start
                self._cut_sum[slot] = _running_sum(
                    0.0 if slot in restarted else float(self._cut_sum[slot]), padded[g, start : rank + 1]
                )
                restarted[slot] = rank + 1
                if self._on_alarm(slot, n[i]):
                    accepted.append(i)
        uniq = groups.slots
        self._cut_n[uniq] += groups.counts
        for column in padded.T:  # column j: each device's j-th error (0 past its last)
            self._cut_sum[uniq] += column
        for slot, start in restarted.items():
            g = int(np.searchsorted(uniq, slot))
            self._cut_n[slot] = groups.counts[g] - start
            self._cut_sum[slot] = _running_sum(0.0, padded[g, start : groups.counts[g]])
        return accepted

    def _update_detectors(self, slots: list[int], scaled: list[float], n: list[int]) -> list[int]:
        """Feed River detectors (PageHinkley, KSWIN) one error at a time."""
        detectors, slow = self._detectors, self._slow
        kswin = self.detector == "kswin"
        accepted: list[int] = []
        for i, (slot, err) in enumerate(zip(slots, scaled, strict=True)):
            det = detectors[slot]
            det.update(err)
            if kswin:
                slow[slot] = err if n[i] == 1 else slow[slot] + 0.01 * (err - slow[slot])
            if det.drift_detected and self._on_alarm(slot, n[i]):
                accepted.append(i)
        return accepted

    def _on_alarm(self, slot: int, n: int) -> bool:
        """Decide whether an alarm is an accepted (upward, out of cooldown) drift."""
        det = self._detectors[slot]
        fresh = 0
        if self.detector == "adwin":
            # ADWIN's window is everything since its last cut, which we track.
            kept_w, kept_mean = det.width, det.estimation  # type: ignore[attr-defined]
            cut_sum, cut_n = float(self._cut_sum[slot]), int(self._cut_n[slot])
            dropped = (cut_sum - kept_w * kept_mean) / max(cut_n - kept_w, 1)
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
        return det, fast_window(det)

    # -- checkpoints (plain state, no pickle) ------------------------------------------

    def export_slots(self, slots: Sequence[int]) -> tuple[list[dict[str, Any]], list[bytes]]:
        """Plain state of the detectors of ``slots``: JSON-able dicts plus one binary blob each.

        The detector part comes from :func:`learners.river_adapter.detector_state`
        (ADWIN's window is the blob).  :meth:`import_slots` gives back
        detectors that behave identically on the following errors.
        """
        states: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for slot in slots:
            if slot < len(self._detectors):
                det = self._detectors[slot]
                state: dict[str, Any] = {
                    "seen": int(self._seen[slot]),
                    "quiet_until": self._quiet_until[slot],
                    "cut_n": int(self._cut_n[slot]),
                    "cut_sum": float(self._cut_sum[slot]),
                    "slow": self._slow[slot],
                    "fresh": self.fresh.get(slot),
                    "scale": float(self._scale[slot]),
                    "scaled_n": int(self._scaled_n[slot]),
                }
                state["detector"], blob = detector_state(det)
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
            self._reset(slot)
            self.fresh.pop(slot, None)
            self._seen[slot] = self._quiet_until[slot] = 0
            self._slow[slot] = self._scale[slot] = self._scaled_n[slot] = 0
            if not state:
                continue
            load_detector_state(self._detectors[slot], state["detector"], blob)
            self._seen[slot] = int(state["seen"])
            self._quiet_until[slot] = int(state["quiet_until"])
            self._cut_n[slot] = int(state["cut_n"])
            self._cut_sum[slot] = float(state["cut_sum"])
            self._slow[slot] = float(state["slow"])
            self._scale[slot] = float(state["scale"])
            self._scaled_n[slot] = int(state["scaled_n"])
            if state["fresh"] is not None:
                self.fresh[slot] = int(state["fresh"])

    def retain(self, keep: np.ndarray) -> None:
        """Keep only the detectors of slots ``keep`` (ascending), renumbered 0, 1, … in that order.

        A kept device's detector object moves with it, so it behaves exactly
        as before (dropped devices were saved with :meth:`export_slots`).
        """
        kept = [int(s) for s in keep if s < len(self._detectors)]  # ascending: the ones with a detector
        new_of = {old: new for new, old in enumerate(int(s) for s in keep)}
        self._detectors = [self._detectors[s] for s in kept]
        self._windows = [self._windows[s] for s in kept]
        self._slow = [self._slow[s] for s in kept]
        self._quiet_until = [self._quiet_until[s] for s in kept]
        idx = np.array(kept, dtype=np.int64)
        self._seen, self._cut_n, self._cut_sum = self._seen[idx], self._cut_n[idx], self._cut_sum[idx]
        self._scale, self._scaled_n = self._scale[idx], self._scaled_n[idx]
        self.fresh = {new_of[s]: f for s, f in self.fresh.items() if s in new_of}


def _running_sum(start: float, values: np.ndarray) -> float:
    """``start + values[0] + values[1] + …`` added left to right, as a running total is."""
    total = start
    for v in values.tolist():
        total += v
    return total
