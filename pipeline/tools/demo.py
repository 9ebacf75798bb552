"""``metastream demo``: the whole loop on one laptop, in about a minute.

Starts an embedded broker (or Apache Kafka), one stream worker, a simulated
fleet with drift, and a few edge subscribers; then prints what happened:
drifts, adaptations, θ versions, the model versions each edge runs, the
error before and after adaptation, and drift-to-edge latency.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from connectors import kafka_python_fix
from connectors.edge import EdgeSubscriber
from connectors.settings import Settings
from learners.evaluation.synthetic import make_fleet_stream
from pipeline.tools.brokers import start_broker
from pipeline.tools.produce import run_producer
from pipeline.tools.scratch import running_worker, say, scratch_settings
from wire.readings import Reading


class EventTally(threading.Thread):
    """Follows the events and meta topics from the start and counts what happens."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.stop = threading.Event()
        self.events: list[dict[str, Any]] = []
        self.meta_versions = 0
        self.first_meta = threading.Event()

    def run(self) -> None:
        s = self.settings
        kafka_python_fix.apply()
        consumer = KafkaConsumer(
            bootstrap_servers=s.bootstrap, enable_auto_commit=False, **s.kafka_python_security()
        )
        parts = [TopicPartition(s.topic_events, p) for p in range(s.partitions)] + [
            TopicPartition(s.topic_meta, 0)
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        try:
            while not self.stop.is_set():
                for tp, records in consumer.poll(timeout_ms=200).items():
                    if tp.topic == s.topic_meta:
                        self.meta_versions += len(records)
                        self.first_meta.set()
                    else:
                        self.events += [json.loads(r.value) for r in records]
        finally:
            consumer.close()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]


def run_demo(
    duration_s: float = 60.0,
    n_devices: int = 200,
    rate: float = 2000.0,
    n_edges: int = 3,
    broker_kind: str = "embedded",
    seed: int = 0,
) -> dict[str, Any]:
    """Start a broker, run the loop on it (:func:`run_loop`), stop the broker."""
    say(f"starting {broker_kind} broker")
    broker = start_broker(broker_kind)  # type: ignore[arg-type]
    try:
        with tempfile.TemporaryDirectory(prefix="metastream-demo-") as tmp:
            settings = scratch_settings(broker.bootstrap, Path(tmp), "demo")
            return run_loop(settings, Path(tmp), duration_s, n_devices, rate, n_edges, seed)
    finally:
        broker.close()


def run_loop(
    settings: Settings,
    work: Path,
    duration_s: float,
    n_devices: int,
    rate: float,
    n_edges: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Worker + synthetic fleet with drift + edge subscribers on a running broker; returns the summary.

    ``settings`` must name the broker, signing key and trusted keys; the
    worker runs as a subprocess (``python -m pipeline.worker``) logging to
    ``work/worker.log``.
    """
    n_readings = int(duration_s * rate)
    stream = make_fleet_stream(
        n_devices=n_devices,
        n_readings=n_readings,
        n_features=settings.n_features,
        late_joiners=0.3,
        seed=seed,
    )
    # Watch devices with an abrupt drift: their second model version is the adapted one.
    watched = sorted({d.device_id for d in stream.drifts if d.kind == "abrupt"})[:n_edges]
    tally = EventTally(settings)
    edges: list[EdgeSubscriber] = []
    edge_stop = threading.Event()
    try:
        with running_worker(settings, work):
            tally.start()
            edges = [EdgeSubscriber(settings, [d]) for d in watched]
            threads = [
                threading.Thread(target=e.run, kwargs={"until": edge_stop.is_set}, daemon=True) for e in edges
            ]
            for t in threads:
                t.start()
            if not tally.first_meta.wait(120):
                raise RuntimeError(f"the worker did not start; see its log:\n{_tail(work / 'worker.log')}")
            say(f"worker ready; edge subscribers follow {', '.join(watched)}")
            say(
                f"producing {n_readings:,} readings of {n_devices} devices at {rate:,.0f}/s (gateway batches)"
            )
            readings = (
                Reading(d, tuple(x), float(y))
                for d, x, y in zip(stream.device_ids, stream.x.tolist(), stream.y, strict=True)
            )
            produced = run_producer(settings, readings, rate=rate, gateway_size=100)
            _settle(tally, quiet_s=3.0, limit_s=30.0)
            edge_stop.set()
            for t in threads:
                t.join(timeout=5)
            return summarise(produced, tally, edges, watched)
    finally:
        edge_stop.set()
        tally.stop.set()
        for e in edges:
            e.close()


def summarise(
    produced: dict[str, Any], tally: EventTally, edges: list[EdgeSubscriber], watched: list[str]
) -> dict[str, Any]:
    """The demo's numbers, from what the topics and the edges saw."""
    drifts, adapted, results = tally.of("drift"), tally.of("adapted"), tally.of("adaptation_result")
    by_cause = {c: sum(1 for a in adapted if a.get("cause") == c) for c in ("drift", "new_device")}
    latencies = []
    for e in edges:
        for r in e.received:
            detected = r.headers.get("detected_at")
            if r.decision.accepted and r.headers.get("cause") == b"drift" and detected:
                latencies.append(r.received_at - float(detected))
    after_drift = [r for r in results if _cause(adapted, r) == "drift"]
    return {
        "readings_produced": produced["readings"],
        "produce_rate": round(produced["rate"], 1),
        "drifts_detected": len(drifts),
        "adaptations": by_cause,
        "meta_versions": tally.meta_versions,
        "edge_versions": {d: e.current_version(d) for d, e in zip(watched, edges, strict=True)},
        "edge_refused": sum(1 for e in edges for r in e.received if not r.decision.accepted),
        "error_before_adaptation_median": _median([r["error_before"] for r in after_drift]),
        "error_after_adaptation_median": _median([r["error_after"] for r in after_drift]),
        "drift_to_edge_latency_s": {
            "p50": _pct(latencies, 50),
            "p99": _pct(latencies, 99),
            "n": len(latencies),
        },
    }


def format_summary(s: dict[str, Any]) -> str:
    """A readable block for the terminal."""
    lat = s["drift_to_edge_latency_s"]
    lines = [
        "",
        "metastream demo — summary",
        f"  readings produced        {s['readings_produced']:,} at {s['produce_rate']:,.0f}/s",
        f"  drifts detected          {s['drifts_detected']}",
        f"  adaptations              {s['adaptations']['drift']} after drift, "
        f"{s['adaptations']['new_device']} for new devices",
        f"  θ (meta) versions        {s['meta_versions']}",
        f"  error before → after adaptation (median, after drifts)  "
        f"{_f(s['error_before_adaptation_median'])} → {_f(s['error_after_adaptation_median'])}",
        f"  drift → model at edge    p50 {_f(lat['p50'])} s, p99 {_f(lat['p99'])} s (n={lat['n']})",
        "  model versions running at the edge:",
        *(f"    {d}: v{v}" for d, v in s["edge_versions"].items()),
        f"  models refused at the edge: {s['edge_refused']}",
    ]
    return "\n".join(lines)


def _cause(adapted: list[dict[str, Any]], result: dict[str, Any]) -> str | None:
    for a in adapted:
        if a["device_id"] == result["device_id"] and a["model_version"] == result["model_version"]:
            return str(a.get("cause"))
    return None


def _settle(tally: EventTally, quiet_s: float, limit_s: float) -> None:
    """Wait until no new events arrived for ``quiet_s`` (at most ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    seen, since = len(tally.events), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.2)
        if len(tally.events) != seen:
            seen, since = len(tally.events), time.monotonic()


def _median(v: list[float]) -> float | None:
    return float(np.median(v)) if v else None


def _pct(v: list[float], q: float) -> float | None:
    return float(np.percentile(v, q)) if v else None


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""
