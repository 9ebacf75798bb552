"""A worker's recent history of its fleet, bounded, for ``/metrics`` and the dashboard.

:class:`FleetView` watches what the learner core returns (its typed drift,
adaptation and adaptation-result events, model updates and dead letters, as
they are: nothing is parsed back from bytes), the θ versions the worker
adopts, and a once-a-second sample of counters and per-device errors.
Everything it keeps is bounded (deques, a fixed number of followed devices,
fixed histogram buckets), so a worker can run for months with it.  Plain
Python: no Faust, no Kafka, no wall clock (every method takes ``now``).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connectors.settings import Settings
from wire.events import AdaptationResult, Adapted, Drift
from wire.messages import Message, ModelUpdate
from wire.readings import DeadLetter

LATENCY_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds of the publish-latency histogram (seconds; +Inf is implied)."""

MAX_LABELS = 32
"""Distinct dead-letter reasons or adaptation causes kept as labels; more go to ``other``."""


@dataclass
class Histogram:
    """Cumulative-bucket histogram with fixed bounds, as Prometheus exposes one.

    Examples
    --------
    >>> h = Histogram((0.1, 1.0))
    >>> for v in (0.05, 0.5, 0.7, 3.0):
    ...     h.observe(v)
    >>> h.cumulative(), h.count, round(h.sum, 2)
    ([1, 3, 4], 4, 4.25)
    >>> h.quantile(0.5)
    1.0
    """

    bounds: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    count: int = 0
    sum: float = 0.0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(self.bounds) or not self.bounds:
            raise ValueError(f"bucket bounds must be non-empty and increasing, got {self.bounds}")
        self.counts = [0] * (len(self.bounds) + 1)  # the last bucket is +Inf

    def observe(self, value: float) -> None:
        """Count one observation (negative values, from clock skew, count as 0)."""
        value = max(0.0, value)
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[int]:
        """Observations ≤ each bound, then the total (the ``+Inf`` bucket)."""
        out, running = [], 0
        for c in self.counts:
            running += c
            out.append(running)
        return out

    def quantile(self, q: float) -> float | None:
        """Upper bound of the bucket holding the ``q`` quantile (``inf`` past the last bound)."""
        if not self.count:
            return None
        rank = q * self.count
        for bound, c in zip((*self.bounds, math.inf), self.cumulative(), strict=True):
            if c >= rank:
                return bound
        return math.inf


@dataclass(frozen=True)
class DeviceRow:
    """One device as the dashboard lists it."""

    device_id: str
    error: float
    model_version: int


class FleetView:
    """Bounded recent history of one worker's fleet.

    Parameters
    ----------
    settings
        The worker's settings.
    max_events
        Drift / adaptation events kept for the timeline.
    max_meta
        θ version changes kept.
    max_results
        Adaptation results (error before → after) kept.
    followed
        Devices whose error curve is kept: the most recently drifted or adapted ones.
    curve_points
        Samples kept per error curve (one per :meth:`sample` call).
    rate_window_s
        Window over which readings/s is computed.

    Examples
    --------
    >>> view = FleetView(Settings())
    >>> view.observe([Drift("d1", ts=10.0, meta_version=0)], now=10.0)
    >>> view.observe([ModelUpdate("d1", 1, "drift", detected_at=10.0, published_at=10.25, payload=b"...")],
    ...              now=10.3)
    >>> [(e["t"], e["type"], e["device_id"]) for e in view.timeline]
    [(10.0, 'drift', 'd1')]
    >>> view.latency["drift"].count, view.latency["drift"].sum
    (1, 0.25)
    >>> view.acked(now=10.5)  # the broker acked the model update
    >>> view.ack_latency["drift"].sum
    0.5
    >>> view.sample(11.0, readings=0, errors={"d1": 0.5})
    >>> view.sample(12.0, readings=400, errors={"d1": 0.25})
    >>> view.readings_per_s(), list(view.curves["d1"])
    (400.0, [(11.0, 0.5), (12.0, 0.25)])
    """

    def __init__(
        self,
        settings: Settings,
        max_events: int = 500,
        max_meta: int = 500,
        max_results: int = 300,
        followed: int = 8,
        curve_points: int = 600,
        rate_window_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.max_events = max_events
        self.max_meta = max_meta
        self.max_results = max_results
        self.followed = followed
        self.curve_points = curve_points
        self.rate_window_s = rate_window_s
        self.timeline: deque[dict[str, Any]] = deque(maxlen=max_events)
        self.meta: deque[tuple[float, int]] = deque(maxlen=max_meta)
        self.results: deque[dict[str, Any]] = deque(maxlen=max_results)
        self.latency: dict[str, Histogram] = {}
        self.ack_latency: dict[str, Histogram] = {}
        self._unacked: list[tuple[str, float]] = []
        self.dead_letters: Counter[str] = Counter()
        self.adaptations: Counter[str] = Counter()
        self.curves: dict[str, deque[tuple[float, float]]] = {}
        self.fleet_curve: deque[tuple[float, float]] = deque(maxlen=curve_points)
        self.throughput: deque[tuple[float, float]] = deque(maxlen=curve_points)
        self._readings: deque[tuple[float, int]] = deque()

    # -- what the core sends -------------------------------------------------------------------

    def observe(self, messages: Iterable[Message], now: float) -> None:
        """Take note of one batch of the core's messages (the others pass unseen)."""
        for m in messages:
            if isinstance(m, Drift | Adapted):
                self._timeline(m)
            elif isinstance(m, AdaptationResult):
                self.results.append(
                    {
                        "t": now,
                        "device_id": m.device_id,
                        "model_version": m.model_version,
                        "error_before": m.error_before,
                        "error_after": m.error_after,
                    }
                )
            elif isinstance(m, ModelUpdate):
                self._model(m)
            elif isinstance(m, DeadLetter):
                self.dead_letters[_bounded(self.dead_letters, m.reason)] += 1

    def _timeline(self, event: Drift | Adapted) -> None:
        entry: dict[str, Any] = {"t": event.ts, "type": event.kind, "device_id": event.device_id}
        if isinstance(event, Adapted):
            entry["model_version"] = event.model_version
            entry["cause"] = event.cause
            self.adaptations[_bounded(self.adaptations, event.cause)] += 1
        self.timeline.append(entry)
        self._follow(event.device_id)

    def _model(self, update: ModelUpdate) -> None:
        key = _bounded(self.latency, update.cause)
        self.latency.setdefault(key, Histogram()).observe(update.published_at - update.detected_at)
        self._unacked.append((key, update.detected_at))

    def acked(self, now: float) -> None:
        """The broker acked every model update observed so far: detection → durable on the broker."""
        for cause, detected in self._unacked:
            self.ack_latency.setdefault(cause, Histogram()).observe(now - detected)
        self._unacked.clear()

    def _follow(self, device: str) -> None:
        """Keep ``device``'s error curve; forget the least recently eventful device past ``followed``."""
        curve = self.curves.pop(device, None)
        self.curves[device] = curve if curve is not None else deque(maxlen=self.curve_points)
        while len(self.curves) > self.followed:
            del self.curves[next(iter(self.curves))]

    def on_meta(self, version: int, now: float) -> None:
        """The worker's θ version, recorded when it changes."""
        if not self.meta or self.meta[-1][1] != version:
            self.meta.append((now, version))

    # -- periodic sample -----------------------------------------------------------------------

    def sample(self, now: float, readings: int, errors: Mapping[str, float]) -> None:
        """Once a second or so: the readings counter and each device's current error."""
        self._readings.append((now, readings))
        while len(self._readings) > 2 and now - self._readings[1][0] >= self.rate_window_s:
            self._readings.popleft()
        self.throughput.append((now, self.readings_per_s()))
        for device, curve in self.curves.items():
            e = errors.get(device)
            if e is not None and math.isfinite(e):
                curve.append((now, e))
        mean = fleet_error_summary(errors)["mean"]
        if mean is not None:
            self.fleet_curve.append((now, float(mean)))

    def readings_per_s(self) -> float:
        """Readings per second over the last ``rate_window_s`` of samples (0 before two samples)."""
        if len(self._readings) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._readings[0], self._readings[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    # -- what the dashboard reads --------------------------------------------------------------

    def snapshot(
        self,
        errors: Mapping[str, float],
        versions: Mapping[str, int],
        stats: Mapping[str, Any],
        now: float,
        top_n: int = 25,
    ) -> dict[str, Any]:
        """Everything ``/fleet.json`` serves, as JSON-ready values (non-finite numbers as ``None``)."""
        return _finite(
            {
                "now": now,
                "stats": {**stats, "readings_per_s": round(self.readings_per_s(), 1)},
                "fleet": fleet_error_summary(errors),
                "devices": [r.__dict__ for r in worst_devices(errors, versions, top_n)],
                "timeline": list(self.timeline),
                "meta": [{"t": t, "version": v} for t, v in self.meta],
                "results": list(self.results),
                "curves": {d: [list(p) for p in c] for d, c in self.curves.items()},
                "fleet_curve": [list(p) for p in self.fleet_curve],
                "throughput": [list(p) for p in self.throughput],
                "dead_letters": dict(self.dead_letters),
                "adaptations": dict(self.adaptations),
                "publish_latency_s": _quantiles(self.latency),
                "acked_latency_s": _quantiles(self.ack_latency),
            }
        )


def worst_devices(errors: Mapping[str, float], versions: Mapping[str, int], n: int) -> list[DeviceRow]:
    """The ``n`` devices with the highest current error (ties by id), with their model version.

    Examples
    --------
    >>> [r.device_id for r in worst_devices({"a": 0.1, "b": 0.9, "c": float("nan"), "d": 0.9}, {"b": 2}, 2)]
    ['b', 'd']
    """
    finite = ((d, e) for d, e in errors.items() if math.isfinite(e))
    # A heap, not a sort: a scrape of a 100k-device worker stays cheap.
    worst = heapq.nsmallest(n, finite, key=lambda de: (-de[1], de[0]))
    return [DeviceRow(d, e, versions.get(d, 0)) for d, e in worst]


def fleet_error_summary(errors: Mapping[str, float]) -> dict[str, float | int | None]:
    """Count, mean, median, 90th percentile and max of the devices' current errors.

    Examples
    --------
    >>> fleet_error_summary({"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": float("nan")})
    {'devices': 5, 'with_error': 4, 'mean': 2.5, 'p50': 2.0, 'p90': 4.0, 'max': 4.0}
    >>> fleet_error_summary({})["mean"] is None
    True
    """
    values = np.fromiter(errors.values(), dtype=np.float64, count=len(errors))
    finite = np.sort(values[np.isfinite(values)])
    if not finite.size:
        return {"devices": len(errors), "with_error": 0, "mean": None, "p50": None, "p90": None, "max": None}
    return {
        "devices": len(errors),
        "with_error": int(finite.size),
        "mean": float(finite.mean()),
        "p50": _nearest_rank(finite, 0.5),
        "p90": _nearest_rank(finite, 0.9),
        "max": float(finite[-1]),
    }


def _quantiles(histograms: Mapping[str, Histogram]) -> dict[str, dict[str, float | int | None]]:
    return {
        cause: {"count": h.count, "p50": h.quantile(0.5), "p99": h.quantile(0.99)}
        for cause, h in histograms.items()
    }


def _nearest_rank(ordered: np.ndarray, q: float) -> float:
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


def _bounded(seen: Mapping[str, Any], label: str) -> str:
    """``label``, or ``other`` once ``MAX_LABELS`` distinct ones are in use (bounded cardinality)."""
    return label if label in seen or len(seen) < MAX_LABELS else "other"


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: ``None`` instead, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
