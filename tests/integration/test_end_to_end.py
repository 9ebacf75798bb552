"""The whole loop on a real Apache Kafka broker.

sensor producer → worker (Faust) → drift → adapted model → kafka-python edge
subscriber that verifies and hot-swaps it; bad readings → dead letters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from connectors.admin import ensure_topics
from connectors.settings import Settings
from pipeline.tools.brokers import ApacheKafkaBroker
from pipeline.tools.demo import run_loop, scratch_settings
from wire.readings import DeadLetter

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def loop(
    kafka_broker: ApacheKafkaBroker, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, dict[str, Any]]:
    # Prepare: fresh topics and app id on the shared broker; bad readings go in first
    work = tmp_path_factory.mktemp("e2e")
    settings = scratch_settings(kafka_broker.bootstrap, work, "e2e", partitions=2)
    ensure_topics(settings)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    for bad in BAD:
        producer.send(settings.topic_readings, bad).get(timeout=30)
    producer.close()
    # Execute: 20 s of a 40-device fleet with drift at 1,000 readings/s, three edges
    summary = run_loop(settings, Path(work), duration_s=20, n_devices=40, rate=1000, n_edges=3, seed=1)
    return settings, summary


BAD = [
    b'{"v":1,"device_id":"d","x":[1,2',
    b'{"v":1,"device_id":"d","x":[NaN,1,1,1,1,1,1,1],"y":1}',
    b'{"v":7,"device_id":"d","x":[1,1,1,1,1,1,1,1],"y":1}',
]


def test_drift_leads_to_a_verified_model_at_the_edge(loop: tuple[Settings, dict[str, Any]]) -> None:
    _, s = loop
    assert s["readings_produced"] == 20_000
    assert s["drifts_detected"] >= 3
    assert s["adaptations"]["drift"] >= 3 and s["adaptations"]["new_device"] == 40
    assert s["meta_versions"] >= 2
    # every watched device runs its first (new-device) model and then its post-drift model (v2):
    # learning is batch-invariant, so a worker catching up a backlog in large batches detects
    # the same drifts as an offline replay in any batches (tests/unit/test_batch_invariance.py)
    assert all(v is not None and v >= 2 for v in s["edge_versions"].values()), s["edge_versions"]
    assert s["edge_refused"] == 0
    assert s["drift_to_edge_latency_s"]["n"] >= 1
    assert s["drift_to_edge_latency_s"]["p99"] < 5.0


def test_bad_readings_are_dead_lettered_with_reasons(loop: tuple[Settings, dict[str, Any]]) -> None:
    settings, _ = loop
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, consumer_timeout_ms=5000)
    parts = [TopicPartition(settings.topic_deadletter, p) for p in range(settings.partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    letters = [DeadLetter.decode(r.value) for r in consumer]
    consumer.close()
    assert sorted(d.reason for d in letters) == ["malformed_json", "non_finite", "unknown_schema_version"]
    assert sorted(d.original for d in letters) == sorted(BAD)
