"""How well do the drift detectors find drifts we planted?  Delay, false alarms, misses.

Streams are synthetic *error* streams (what :class:`~learners.drift.DriftMonitor`
watches) with upward mean shifts at known points, abrupt or gradual:

- ``"regression"``: absolute residuals ``|N(0, σ_t)|``, σ rising ×1.5–3 at a drift;
- ``"classification"``: 0/1 mistakes with rate ``p_t`` rising by 0.15–0.35.

Scoring follows CapyMOA's ``EvaluateDriftDetector`` (Bifet et al., CD-MOA):
a drift ``[start, end]`` (``start == end`` when abrupt) is *detected* by the
first alarm in ``[start, end + max_delay]``, its *delay* counted from
``start``; it is *missed* when no alarm falls in that window.  Unlike
CapyMOA, which ignores alarms after the last drift's window, every alarm
outside all windows is a *false alarm*; further alarms inside a window are
neither (reported as ``alarms``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from learners.config import DetectorName
from learners.drift import DETECTORS, DriftMonitor, make_detector

StreamKind = Literal["regression", "classification"]
MAX_DELAY = 250


@dataclass(frozen=True)
class ErrorStream:
    """One error stream and its true drifts as ``(start, end)`` reading positions."""

    values: np.ndarray
    drifts: tuple[tuple[int, int], ...]
    kind: StreamKind


def make_error_streams(
    n_streams: int = 300,
    length: int = 1000,
    kinds: Sequence[StreamKind] = ("regression", "classification"),
    gradual_share: float = 0.5,
    seed: int = 0,
) -> list[ErrorStream]:
    """Seeded error streams, one upward drift each, kinds taking turns.

    The drift starts uniformly in ``[length/4, length/2)``; a gradual one
    ramps linearly over 100–200 readings.  Identical for identical arguments.

    Examples
    --------
    >>> s = make_error_streams(n_streams=2, length=1000, seed=0)
    >>> [x.kind for x in s], s[0].values.shape, s[0].drifts
    (['regression', 'classification'], (1000,), ((462, 625),))
    >>> bool(s[1].values[:361].mean() < s[1].values[500:].mean())
    True
    """
    rng = np.random.default_rng(seed)
    out: list[ErrorStream] = []
    t = np.arange(length)
    for i in range(n_streams):
        kind = kinds[i % len(kinds)]
        start = int(rng.integers(length // 4, length // 2))
        width = int(rng.integers(100, 201)) if rng.random() < gradual_share else 0
        ramp = np.clip((t - start + 1) / max(width, 1), 0.0, 1.0)
        if kind == "regression":
            sigma0 = rng.uniform(0.5, 2.0)
            sigma = sigma0 * (1 + ramp * (rng.uniform(1.5, 3.0) - 1))
            values = np.abs(rng.normal(0.0, 1.0, length)) * sigma
        else:
            p0 = rng.uniform(0.05, 0.3)
            p = p0 + ramp * rng.uniform(0.15, 0.35)
            values = (rng.random(length) < p).astype(np.float64)
        out.append(ErrorStream(values, ((start, start + max(width - 1, 0)),), kind))
    return out


@dataclass
class DetectionScore:
    """Counts and delays over one or many streams."""

    readings: int = 0
    drifts: int = 0
    detected: int = 0
    false_alarms: int = 0
    alarms: int = 0
    delays: list[int] | None = None

    def add(self, other: DetectionScore) -> None:
        """Accumulate another stream's score."""
        self.readings += other.readings
        self.drifts += other.drifts
        self.detected += other.detected
        self.false_alarms += other.false_alarms
        self.alarms += other.alarms
        self.delays = (self.delays or []) + (other.delays or [])

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready metrics: mean delay, false alarms per 1,000 readings, missed drifts."""
        delays = np.asarray(self.delays or [], dtype=np.float64)
        return {
            "streams_readings": self.readings,
            "drifts": self.drifts,
            "detected": self.detected,
            "missed": self.drifts - self.detected,
            "missed_ratio": round((self.drifts - self.detected) / self.drifts, 4) if self.drifts else None,
            "mean_delay": round(float(delays.mean()), 2) if delays.size else None,
            "median_delay": float(np.median(delays)) if delays.size else None,
            "false_alarms": self.false_alarms,
            "false_alarms_per_1000": round(1000 * self.false_alarms / self.readings, 4)
            if self.readings
            else None,
            "alarms": self.alarms,
        }


def score_alarms(
    alarms: Sequence[int], drifts: Sequence[tuple[int, int]], n_readings: int, max_delay: int = MAX_DELAY
) -> DetectionScore:
    """Score one stream's alarm positions against its true drifts.

    Examples
    --------
    >>> s = score_alarms([50, 120, 130, 900], [(100, 100), (500, 600)], n_readings=1000, max_delay=250)
    >>> s.detected, s.delays, s.false_alarms, s.alarms
    (1, [20], 2, 4)
    """
    windows = [(start, end + max_delay) for start, end in drifts]
    delays: list[int] = []
    inside: set[int] = set()
    for start, stop in windows:
        hits = [a for a in alarms if start <= a <= stop]
        inside.update(hits)
        if hits:
            delays.append(min(hits) - start)
    return DetectionScore(
        readings=n_readings,
        drifts=len(drifts),
        detected=len(delays),
        false_alarms=sum(a not in inside for a in alarms),
        alarms=len(alarms),
        delays=delays,
    )


def raw_alarms(detector: DetectorName, values: np.ndarray, seed: int = 0) -> list[int]:
    """Positions where a fresh River detector raises ``drift_detected``.

    Examples
    --------
    >>> raw_alarms("page_hinkley", np.r_[np.zeros(500), np.ones(500)])
    [553]
    """
    det = make_detector(detector, seed)
    out = []
    for t, v in enumerate(values.tolist()):
        det.update(v)
        if det.drift_detected:
            out.append(t)
    return out


def monitor_alarms(
    detector: DetectorName,
    streams: Sequence[np.ndarray],
    cooldown: int = 100,
    seed: int = 0,
    lockstep: bool = False,
) -> list[list[int]]:
    """Accepted drifts when one :class:`DriftMonitor` watches the streams as a steady fleet.

    The fleet looks like a real one in steady state, where devices come and
    go and at any time about the same share is past its drift: ``lanes`` (a
    quarter of the streams) devices are always active; each lane plays its
    streams back to back, the lanes' phases are evenly spread, and both ends
    are padded with unscored replays of other streams.  All streams must
    have one length.  Each micro-batch holds one reading of every lane;
    alarm positions are per stream (its reading index).

    With ``lockstep`` every stream is a device from the first step on, so
    all drifts fall in the same stretch of time: the case of a drift that
    hits the whole fleet (a season, a firmware roll-out).  The monitor
    scales each device's errors by that device's own running mean, so both
    modes should find the same drifts; a fleet-wide scale would absorb a
    lockstep drift.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> flat = [np.abs(rng.normal(0, 1, 800)) for _ in range(7)]
    >>> step = np.abs(rng.normal(0, 1, 800)) * np.r_[np.ones(400), np.full(400, 3.0)]
    >>> alarms = monitor_alarms("adwin", [step, *flat])
    >>> alarms[0], sum(map(len, alarms[1:]))  # the drift at 400, no false alarm elsewhere
    ([423], 0)
    """
    n = len(streams)
    if n == 0:
        return []
    length = len(streams[0])
    if any(len(s) != length for s in streams):
        raise ValueError("monitor_alarms needs streams of equal length")
    lanes = max(1, -(-n // 4))
    per_lane = -(-n // lanes)
    phase = np.round(np.arange(lanes) * length / lanes).astype(np.int64)
    # Lane c plays segment j over steps [phase_c + (j-1)·length, phase_c + j·length): segment 0
    # is padding, segments 1… are its streams c, c + lanes, …, then padding again.
    padding = np.random.default_rng(seed).integers(0, n, size=(lanes, per_lane + 2))
    monitor = DriftMonitor(detector, cooldown, seed)
    matrix = np.stack(streams)
    out: list[list[int]] = [[] for _ in streams]
    if lockstep:
        for t in range(length):
            for j in monitor.update(list(range(n)), matrix[:, t]):
                out[j].append(t)
        return out
    lane_idx = np.arange(lanes)
    for step in range((per_lane + 1) * length):
        seg, local = np.divmod(step - phase + length, length)
        scored = lane_idx + (seg - 1) * lanes
        is_scored = (seg >= 1) & (scored < n)
        source = np.where(is_scored, scored, padding[lane_idx, seg])
        slots = (lane_idx * (per_lane + 2) + seg).tolist()
        for j in monitor.update(slots, matrix[source, local]):
            if is_scored[j]:
                out[int(scored[j])].append(int(local[j]))
    return out


def evaluate_detectors(
    streams: Sequence[ErrorStream],
    detectors: Sequence[DetectorName] = DETECTORS,
    max_delay: int = MAX_DELAY,
    cooldown: int = 100,
    seed: int = 0,
    modes: Sequence[str] = ("raw", "monitor"),
    clock: Any = time.perf_counter,
) -> list[dict[str, Any]]:
    """One row per detector × mode × stream kind.

    Modes: ``raw`` (the River detector alone), ``monitor`` (a
    :class:`DriftMonitor` over a steady fleet) and ``monitor-lockstep`` (the
    same with every device drifting in the same stretch of time), see
    :func:`monitor_alarms`.

    Examples
    --------
    >>> rows = evaluate_detectors(make_error_streams(n_streams=4, seed=1), detectors=["adwin"])
    >>> [(r["detector"], r["mode"], r["kind"], r["drifts"]) for r in rows]  # doctest: +NORMALIZE_WHITESPACE
    [('adwin', 'raw', 'regression', 2), ('adwin', 'raw', 'classification', 2),
     ('adwin', 'monitor', 'regression', 2), ('adwin', 'monitor', 'classification', 2)]
    """
    kinds = list(dict.fromkeys(s.kind for s in streams))
    total = sum(len(s.values) for s in streams)
    rows: list[dict[str, Any]] = []
    for det in detectors:
        for mode in modes:
            started = clock()
            if mode == "raw":
                alarms = [raw_alarms(det, s.values, seed=seed + i) for i, s in enumerate(streams)]
            elif mode in ("monitor", "monitor-lockstep"):
                alarms = [[] for _ in streams]
                for kind in kinds:  # a fleet is all regression or all classification
                    idx = [i for i, s in enumerate(streams) if s.kind == kind]
                    values = [streams[i].values for i in idx]
                    fleet = monitor_alarms(det, values, cooldown, seed, lockstep=mode == "monitor-lockstep")
                    for i, found in zip(idx, fleet, strict=True):
                        alarms[i] = found
            else:
                raise ValueError(f"unknown mode {mode!r}; choose raw, monitor or monitor-lockstep")
            seconds = clock() - started
            us = round(1e6 * seconds / total, 2) if total else None
            for kind in kinds:
                score = DetectionScore(delays=[])
                for s, a in zip(streams, alarms, strict=True):
                    if s.kind == kind:
                        score.add(score_alarms(a, s.drifts, len(s.values), max_delay))
                rows.append(
                    {"detector": det, "mode": mode, "kind": kind, **score.as_dict(), "us_per_reading": us}
                )
    return rows
