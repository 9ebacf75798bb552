"""Prometheus metrics of one stream worker, served at ``/metrics`` by its Faust web server.

Start a worker with ``--web-port PORT`` and scrape ``http://HOST:PORT/metrics``.
Counters come from :meth:`pipeline.state.PipelineState.stats` (the learner
core's and the agents'), rates and histograms from the worker's
:class:`~pipeline.fleet_view.FleetView`, and consumer lag from the broker's
end offsets of the readings partitions this worker owns.

Cardinality stays bounded however large the fleet: per-device error is
exported for the ``top_n`` worst devices only, plus fleet aggregates; the
other labels are partitions, dead-letter reasons and adaptation causes.

:func:`render` is plain (a :class:`MetricsReading` in, exposition text out);
:func:`install` is the Faust glue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from pipeline import web_auth
from pipeline.fleet_view import FleetView, Histogram, fleet_error_summary, worst_devices

if TYPE_CHECKING:
    import faust
    from faust.web import Request, Response, View

    from pipeline.state import PipelineState

log = logging.getLogger(__name__)

TOP_N = 10
"""Devices whose error is exported one by one (the worst ones)."""

LAG_TIMEOUT_S = 5.0
"""A scrape does not wait longer than this for the broker's end offsets."""


@dataclass
class MetricsReading:
    """Everything one scrape shows, read from a worker at one moment.

    Examples
    --------
    >>> r = MetricsReading("w1", "app", stats={"readings": 7, "meta_version": 2}, errors={"d1": 0.5})
    >>> text = render(r).decode()
    >>> "metastream_readings_total 7.0" in text, 'metastream_device_error{device="d1"} 0.5' in text
    (True, True)
    """

    worker_id: str
    app_id: str
    stats: Mapping[str, Any]
    errors: Mapping[str, float] = field(default_factory=dict)
    readings_per_s: float = 0.0
    lag: Mapping[tuple[str, int], int] = field(default_factory=dict)
    lag_error: bool = False
    dead_letters: Mapping[str, int] = field(default_factory=dict)
    adaptations: Mapping[str, int] = field(default_factory=dict)
    latency: Mapping[str, Histogram] = field(default_factory=dict)
    ack_latency: Mapping[str, Histogram] = field(default_factory=dict)
    contributions_rejected: Mapping[str, int] = field(default_factory=dict)
    """Meta contributions the aggregator refused, by reason (:data:`connectors.contributions.REASONS`)."""
    device_epsilon: Mapping[str, float] = field(default_factory=dict)
    """ε each federated device has spent (when the meta agent keeps a privacy budget)."""


# Core and agent counters: stats() key → (metric name without _total, help).
COUNTERS: dict[str, tuple[str, str]] = {
    "readings": ("metastream_readings", "Readings learned (predict-then-learn)."),
    "drifts": ("metastream_drifts", "Drifts detected."),
    "published": ("metastream_models_published", "Signed model updates published."),
    "meta_refused": ("metastream_meta_refused", "θ messages refused (bad signature or payload)."),
    "messages": ("metastream_messages", "Reading messages consumed (a gateway message holds many readings)."),
    "batches": ("metastream_batches", "Micro-batches processed by the readings agent."),
    "sent": ("metastream_sent", "Messages produced and acked by the broker."),
    "theta_seen": ("metastream_theta_messages", "θ messages read from the meta topic."),
    "theta_refused": (
        "metastream_theta_refused",
        "New θ the meta aggregator did not publish: non-finite or worse on held-back readings.",
    ),
    "theta_unchecked": (
        "metastream_theta_unchecked",
        "θ versions published after a finiteness check only (no held-back readings in this worker).",
    ),
    "rows_clipped": ("metastream_contribution_rows_clipped", "Contribution rows whose norm was clipped."),
    "weights_capped": (
        "metastream_contribution_weights_capped",
        "Contribution rows whose claimed weight was capped.",
    ),
    "privacy_refused": (
        "metastream_privacy_refused",
        "Federated devices' contributions refused because they spent their privacy budget.",
    ),
    "secure_rounds_refused": (
        "metastream_secure_rounds_refused",
        "Secure-aggregation rounds whose sum showed a skipped clip or an inflated weight.",
    ),
    "rejected": (
        "metastream_guard_rejections",
        "Adaptations the regression guard refused (the device kept its model; nothing published).",
    ),
    "checkpoints_written": ("metastream_checkpoints_written", "Partition checkpoints written."),
    "checkpoints_restored": (
        "metastream_checkpoints_restored",
        "Partition checkpoints restored on assignment.",
    ),
    "duplicates_skipped": (
        "metastream_duplicates_skipped",
        "Reading messages skipped as already covered by a restored checkpoint.",
    ),
    "evicted": ("metastream_devices_evicted", "Idle devices moved out of memory (beyond max_devices)."),
    "devices_restored": (
        "metastream_devices_restored",
        "Evicted devices brought back on their next reading.",
    ),
}
GAUGES: dict[str, tuple[str, str]] = {
    "privacy_theta_epsilon": (
        "metastream_privacy_theta_epsilon",
        "θ's ε (at dp_delta) with respect to any one federated device: the most any device has spent.",
    ),
    "privacy_devices_exhausted": (
        "metastream_privacy_devices_exhausted",
        "Federated devices that spent their privacy budget and contribute no more.",
    ),
    "meta_version": ("metastream_meta_version", "θ version this worker's learners start from."),
    "aggregator_version": ("metastream_aggregator_version", "θ version of this worker's meta aggregator."),
    "uptime_s": ("metastream_uptime_seconds", "Seconds since the worker started."),
    "devices": ("metastream_devices_resident", "Devices in this worker's memory."),
    "devices_stored": ("metastream_devices_stored", "Evicted devices in the worker's local store."),
    "max_devices": ("metastream_devices_max", "Bound on devices in memory (setting max_devices)."),
}


class _ReadingCollector(Collector):
    def __init__(self, reading: MetricsReading, top_n: int) -> None:
        self.reading = reading
        self.top_n = top_n

    def collect(self) -> Iterator[Any]:
        r = self.reading
        info = GaugeMetricFamily(
            "metastream_worker", "This worker (value 1).", labels=["worker_id", "app_id"]
        )
        info.add_metric([r.worker_id, r.app_id], 1)
        yield info
        for key, (name, doc) in COUNTERS.items():
            if key in r.stats:
                yield CounterMetricFamily(name, doc, value=float(r.stats[key]))
        for key, (name, doc) in GAUGES.items():
            if key in r.stats:
                yield GaugeMetricFamily(name, doc, value=float(r.stats[key]))
        yield GaugeMetricFamily(
            "metastream_readings_per_second",
            "Readings learned per second, last ~10 s.",
            value=r.readings_per_s,
        )
        yield from self._refusals_and_adaptations()
        yield from self._latencies_and_lag()
        yield from self._device_errors()

    def _refusals_and_adaptations(self) -> Iterator[Any]:
        r = self.reading
        dead = CounterMetricFamily(
            "metastream_dead_letters", "Refused readings, by reason.", labels=["reason"]
        )
        for reason, n in sorted(r.dead_letters.items()):
            dead.add_metric([reason], n)
        yield dead
        adapted = CounterMetricFamily(
            "metastream_adaptations", "Per-device adaptations published, by cause.", labels=["cause"]
        )
        for cause, n in sorted(r.adaptations.items()):
            adapted.add_metric([cause], n)
        yield adapted
        rejected = CounterMetricFamily(
            "metastream_meta_contributions_rejected",
            "Meta contributions the aggregator refused (unsigned, unknown key, …), by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(r.contributions_rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected

    def _latencies_and_lag(self) -> Iterator[Any]:
        r = self.reading
        yield _histogram(
            "metastream_publish_latency_seconds",
            "Model update published_at − detected_at headers (detection → signed model ready), by cause.",
            r.latency,
        )
        yield _histogram(
            "metastream_publish_acked_latency_seconds",
            "Detection → the broker acked the model update, by cause.",
            r.ack_latency,
        )

        lag = GaugeMetricFamily(
            "metastream_consumer_lag",
            "Readings messages not yet processed: end offset − next offset to process, per owned partition.",
            labels=["topic", "partition"],
        )
        for (topic, partition), n in sorted(r.lag.items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag
        yield GaugeMetricFamily(
            "metastream_consumer_lag_unavailable",
            "1 when the last scrape could not read end offsets from the broker.",
            value=int(r.lag_error),
        )

    def _device_errors(self) -> Iterator[Any]:
        r = self.reading
        summary = fleet_error_summary(r.errors)
        yield GaugeMetricFamily("metastream_devices", "Devices this worker has seen.", value=len(r.errors))
        fleet = GaugeMetricFamily(
            "metastream_fleet_error", "Devices' current smoothed error: aggregates.", labels=["stat"]
        )
        for stat in ("mean", "p50", "p90", "max"):
            value = summary[stat]
            if value is not None:
                fleet.add_metric([stat], float(value))
        yield fleet
        device = GaugeMetricFamily(
            "metastream_device_error",
            f"Current smoothed error of the {self.top_n} worst devices.",
            labels=["device"],
        )
        for row in worst_devices(r.errors, {}, self.top_n):
            device.add_metric([row.device_id], row.error)
        yield device
        spent = GaugeMetricFamily(
            "metastream_privacy_device_epsilon",
            f"ε spent by the {self.top_n} federated devices that spent the most.",
            labels=["device"],
        )
        top = sorted(r.device_epsilon.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top_n]
        for device_id, eps in top:
            spent.add_metric([device_id], eps)
        yield spent


def _histogram(name: str, doc: str, histograms: Mapping[str, Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=["cause"])
    for cause, h in sorted(histograms.items()):
        bounds = [*(repr(float(b)) for b in h.bounds), "+Inf"]
        family.add_metric([cause], list(zip(bounds, h.cumulative(), strict=True)), h.sum)
    return family


def render(reading: MetricsReading, top_n: int = TOP_N) -> bytes:
    """``reading`` in the Prometheus text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ReadingCollector(reading, top_n))
    return generate_latest(registry)


def track_processed(processed: dict[int, int], batch: list[tuple[bytes | None, int, int]]) -> None:
    """Remember the next offset to process per partition after ``batch`` ``(value, partition, offset)``.

    Examples
    --------
    >>> done: dict[int, int] = {}
    >>> track_processed(done, [(b"", 0, 5), (b"", 1, 2), (b"", 0, 6)])
    >>> done
    {0: 7, 1: 3}
    """
    for _, partition, offset in batch:
        if offset + 1 > processed.get(partition, -1):
            processed[partition] = offset + 1


async def consumer_lag(app: faust.App, state: PipelineState) -> dict[tuple[str, int], int]:
    """End offset − next offset to process, for each readings partition this worker owns.

    The next offset is the one after the last message the readings agent
    finished; before it finishes one on a partition, the consumer's position.
    """
    topic = state.settings.topic_readings
    tps = sorted(tp for tp in app.consumer.assignment() if tp.topic == topic)
    if not tps:
        return {}
    ends = await asyncio.wait_for(app.consumer.highwaters(*tps), LAG_TIMEOUT_S)
    out: dict[tuple[str, int], int] = {}
    for tp in tps:
        done = state.processed.get(tp.partition)
        if done is None:
            done = await asyncio.wait_for(app.consumer.position(tp), LAG_TIMEOUT_S)
        end = ends.get(tp)
        if end is not None and done is not None:
            out[(tp.topic, tp.partition)] = max(0, int(end) - int(done))
    return out


async def read(app: faust.App, state: PipelineState) -> MetricsReading:
    """One :class:`MetricsReading` of a running worker."""
    view: FleetView = state.view
    lag: dict[tuple[str, int], int] = {}
    lag_error = False
    try:
        lag = await consumer_lag(app, state)
    except Exception as exc:  # the broker may be away; the rest of the scrape is still worth having
        log.warning("metrics: consumer lag unavailable: %r", exc)
        lag_error = True
    return MetricsReading(
        worker_id=state.worker_id,
        app_id=state.settings.app_id,
        stats=state.stats(),
        errors=state.core.device_errors(),
        readings_per_s=view.readings_per_s(),
        lag=lag,
        lag_error=lag_error,
        dead_letters=dict(view.dead_letters),
        adaptations=dict(view.adaptations),
        latency=dict(view.latency),
        ack_latency=dict(view.ack_latency),
        contributions_rejected=dict(state.aggregator.gate.refused),
        device_epsilon=state.aggregator.device_epsilons(),
    )


def install(
    app: faust.App, state: PipelineState, top_n: int = TOP_N, sample_every_s: float = 1.0, *, token: str = ""
) -> None:
    """Serve ``/metrics`` on ``app``'s web server and sample the fleet view every ``sample_every_s``.

    With a ``token``, a scrape needs ``Authorization: Bearer TOKEN``
    (Prometheus: ``authorization: {credentials: TOKEN}``); without, it is open.
    """

    async def metrics(self: View, request: Request) -> Response:
        body = render(await read(app, state), top_n)
        return self.bytes(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.page("/metrics")(web_auth.guard(token, metrics))

    @app.timer(sample_every_s)
    async def sample_fleet() -> None:
        """Readings counter and per-device errors into the view (readings/s, error curves)."""
        state.view.sample(time.time(), state.core.stats()["readings"], state.core.device_errors())

    _ = sample_fleet  # registered on the app by the decorator
