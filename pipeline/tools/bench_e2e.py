"""``metastream bench --e2e``: the pipeline on a real Apache Kafka broker, side by side.

1. A backlog of readings (gateway messages of 100) from a 1,000-device fleet.
2. The ceiling: aiokafka ``getmany`` consuming the raw topic.
3. One worker draining the same backlog (readings/s from its own counters).
4. Drift-to-edge latency: a paced stream with drift while an edge
   subscriber follows every device; latency is edge receive time minus the
   worker's drift detection time (same host clock).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.admin import ensure_topics
from connectors.edge import EdgeSubscriber
from connectors.settings import Settings
from learners.evaluation.synthetic import make_fleet_stream
from pipeline.tools.brokers import ApacheKafkaBroker
from pipeline.tools.demo import running_worker, say, scratch_settings
from pipeline.tools.produce import run_producer
from wire.readings import Reading


def fleet_readings(n_devices: int, n_readings: int, seed: int) -> list[Reading]:
    s = make_fleet_stream(n_devices=n_devices, n_readings=n_readings, late_joiners=0.0, seed=seed)
    return [Reading(d, tuple(x), float(y)) for d, x, y in zip(s.device_ids, s.x.tolist(), s.y, strict=True)]


async def raw_consume(settings: Settings, n_messages: int) -> float:
    """Messages/s of aiokafka ``getmany`` over the whole readings topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    try:
        parts = [TopicPartition(settings.topic_readings, p) for p in range(settings.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        seen, start = 0, time.perf_counter()
        while seen < n_messages:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            seen += sum(len(b) for b in batches.values())
        return seen / (time.perf_counter() - start)
    finally:
        await consumer.stop()


def worker_throughput(log: Path, total: int, timeout_s: float) -> float:
    """Readings/s from the worker's own counters (``--stats-interval``), first to last reading."""
    deadline = time.monotonic() + timeout_s
    first: tuple[float, int] | None = None
    last = (0.0, 0)
    while time.monotonic() < deadline:
        # Only whole lines: the worker may be in the middle of writing the last one.
        complete = log.read_text(errors="replace").rpartition("\n")[0]
        lines = [json.loads(x) for x in complete.splitlines() if x.startswith('{"stats"')]
        if lines:
            n = lines[-1]["stats"]["readings"]
            if n > last[1]:
                last = (time.monotonic(), n)
                if first is None:
                    first = last
            if n >= total:
                break
        time.sleep(0.1)
    if first is None or last[1] <= first[1]:
        raise RuntimeError(f"the worker processed no readings; see {log}")
    if last[1] < total:
        raise RuntimeError(f"the worker processed only {last[1]} of {total} readings in {timeout_s:.0f} s")
    return (last[1] - first[1]) / (last[0] - first[0])


def run_e2e_bench(
    n_devices: int = 1000,
    n_readings: int = 400_000,
    gateway: int = 100,
    latency_rate: float = 5000.0,
    latency_s: float = 30.0,
) -> list[dict[str, Any]]:
    """Run all end-to-end measurements on a fresh Apache Kafka broker."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="metastream-bench-") as tmp, ApacheKafkaBroker() as broker:
        work = Path(tmp)
        settings = scratch_settings(broker.bootstrap, work, "bench")
        ensure_topics(settings)
        say(f"producing a backlog of {n_readings:,} readings ({n_devices} devices, {gateway} per message)")
        sent = run_producer(
            settings, fleet_readings(n_devices, n_readings, seed=0), rate=None, gateway_size=gateway
        )
        n_messages = int(sent["messages"])
        per_msg = n_readings / n_messages
        rows.append({"bench": "producer (kafka-python, gateway)", "readings_per_s": round(sent["rate"], 1)})
        msgs = asyncio.run(raw_consume(settings, n_messages))
        rows.append(
            {
                "bench": "raw consume, aiokafka getmany (ceiling)",
                "messages_per_s": round(msgs, 1),
                "readings_per_s": round(msgs * per_msg, 1),
            }
        )
        say("one worker drains the backlog")
        with running_worker(settings, work, "--stats-interval", "0.5"):
            rate = worker_throughput(work / "worker.log", n_readings, timeout_s=600)
            rows.append(
                {
                    "bench": "one worker (Faust), backlog",
                    "readings_per_s": round(rate, 1),
                    "messages_per_s": round(rate / per_msg, 1),
                }
            )
            # Fewer devices than the backlog, so each has enough readings to drift and be caught.
            rows.append(drift_latency(settings, 200, latency_rate, latency_s))
    for r in rows:
        r.setdefault("devices", n_devices)
        r["broker"] = "apache-kafka"
    return rows


def drift_latency(settings: Settings, n_devices: int, rate: float, seconds: float) -> dict[str, Any]:
    """p50/p99 seconds from drift detection (worker) to the adapted model at an edge subscriber."""
    n = int(rate * seconds)
    # A fresh fleet (new device ids) whose drifts fall inside this paced run.
    s = make_fleet_stream(n_devices=n_devices, n_readings=n, late_joiners=0.0, seed=1)
    readings = [
        Reading("lat-" + d, tuple(x), float(y))
        for d, x, y in zip(s.device_ids, s.x.tolist(), s.y, strict=True)
    ]
    edge = EdgeSubscriber(settings, sorted({r.device_id for r in readings}))
    stop = threading.Event()
    thread = threading.Thread(target=edge.run, kwargs={"until": stop.is_set}, daemon=True)
    thread.start()
    say(
        f"latency: {n:,} readings of {n_devices} new devices at {rate:,.0f}/s with drift; an edge follows all"
    )
    run_producer(settings, readings, rate=rate, gateway_size=100)
    time.sleep(5)
    stop.set()
    thread.join(timeout=10)
    edge.close()
    lat = [
        r.received_at - float(r.headers["detected_at"])
        for r in edge.received
        if r.decision.accepted and r.headers.get("cause") == b"drift" and "detected_at" in r.headers
    ]
    return {
        "bench": f"drift → model at edge, {rate:,.0f} readings/s",
        "devices": n_devices,
        "n": len(lat),
        "p50_s": round(float(np.percentile(lat, 50)), 3) if lat else None,
        "p99_s": round(float(np.percentile(lat, 99)), 3) if lat else None,
    }
