"""Topic admin, sensor producer and edge subscriber against a real Apache Kafka broker."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from connectors import edge
from connectors.admin import TopicMismatchError, admin_client, ensure_topics, partition_for
from connectors.edge import META_KEY, EdgeSubscriber
from connectors.producer import MemoryProducer, SensorProducer
from connectors.settings import Settings
from connectors.signing import Signer, Verifier
from learners import LearnerConfig
from learners.fleet import FleetLearner
from learners.nets import init_params
from pipeline.tools import produce
from pipeline.tools.brokers import ApacheKafkaBroker
from pipeline.tools.produce import run_producer, synthetic_source
from wire.models import ModelHeader, encode_model
from wire.readings import Reading, decode_readings

pytestmark = pytest.mark.integration

X = np.array([[0.5, 1.0], [1.0, 2.0]])
Y = np.array([1.0, 3.0])


def unique_settings(broker: ApacheKafkaBroker, **overrides: Any) -> Settings:
    """Settings whose topics no other test uses."""
    u = uuid.uuid4().hex[:12]
    names: dict[str, Any] = {
        f"topic_{t}": f"{t}-{u}"
        for t in ("readings", "models", "meta", "deltas", "events", "deadletter", "checkpoints")
    }
    return replace(Settings(broker=broker.bootstrap, partitions=3, n_features=2), **names, **overrides)


def consume(
    settings: Settings, topic: str, n_readings: int, timeout: float = 20.0
) -> list[tuple[int, bytes | None, list[Reading]]]:
    """Every message of ``topic`` as (partition, key, readings), until ``n_readings`` readings arrived."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[tuple[int, bytes | None, list[Reading]]] = []
        deadline = time.monotonic() + timeout
        while sum(len(r) for _, _, r in out) < n_readings and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    good, bad = decode_readings(rec.value, n_features=settings.n_features)
                    assert not bad
                    out.append((rec.partition, rec.key, good))
        return out
    finally:
        consumer.close()


def trained_fleet(*devices: str, hidden: tuple[int, ...] = (32,)) -> FleetLearner:
    learner = FleetLearner(LearnerConfig(n_features=2, hidden=hidden))
    for d in devices:
        learner.learn_predict([d, d], X, Y)
    return learner


# -- admin ---------------------------------------------------------------------------------


def test_ensure_topics_creates_every_topic_with_partitions_and_compaction(
    kafka_broker: ApacheKafkaBroker,
) -> None:
    # Prepare
    s = unique_settings(kafka_broker)
    # Execute: twice, to show it is idempotent
    ensure_topics(s)
    ensure_topics(s)
    # Assert
    with admin_client(s) as admin:
        topics = {t["name"]: len(t["partitions"]) for t in admin.describe_topics()}
        names = [
            s.topic_readings,
            s.topic_models,
            s.topic_meta,
            s.topic_deltas,
            s.topic_events,
            s.topic_deadletter,
        ]
        resources = [ConfigResource(ConfigResourceType.TOPIC, n, ["cleanup.policy"]) for n in names]
        configs = admin.describe_configs(resources, config_filter="all")["topic"]
    assert [topics[n] for n in names] == [3, 3, 1, 1, 3, 3]
    policies = [configs[n]["cleanup.policy"]["value"] for n in names]
    assert policies == ["delete", "compact", "compact", "delete", "delete", "delete"]


def test_ensure_topics_refuses_a_readings_topic_with_fewer_partitions(
    kafka_broker: ApacheKafkaBroker,
) -> None:
    # Prepare: the readings topic exists already, with one partition
    s = unique_settings(kafka_broker, partitions=4)
    with admin_client(s) as admin:
        admin.create_topics({s.topic_readings: {"num_partitions": 1, "replication_factor": 1}})
    # Execute / Assert
    with pytest.raises(TopicMismatchError, match=r"1 partitions but settings\.partitions is 4"):
        ensure_topics(s)


# -- producer ------------------------------------------------------------------------------


def assert_on_key_partitions(
    messages: list[tuple[int, bytes | None, list[Reading]]], n_partitions: int
) -> None:
    for partition, _, readings in messages:
        for r in readings:
            assert partition == partition_for(r.device_id, n_partitions), r.device_id


def test_keyed_mode_delivers_every_reading_on_its_device_partition(kafka_broker: ApacheKafkaBroker) -> None:
    # Prepare
    s = unique_settings(kafka_broker)
    ensure_topics(s)
    readings = list(synthetic_source(6, 120, seed=3, n_features=2))
    # Execute
    with SensorProducer(s) as sensor:
        for r in readings:
            sensor.send(r)
    messages = consume(s, s.topic_readings, len(readings))
    # Assert
    assert (sensor.readings_sent, sensor.messages_sent) == (120, 120)
    assert Counter(r for _, _, rs in messages for r in rs) == Counter(readings)
    assert all(key == rs[0].device_id.encode() and len(rs) == 1 for _, key, rs in messages)
    assert_on_key_partitions(messages, s.partitions)


def test_gateway_mode_packs_readings_per_partition(kafka_broker: ApacheKafkaBroker) -> None:
    # Prepare
    s = unique_settings(kafka_broker)
    ensure_topics(s)
    readings = list(synthetic_source(10, 300, seed=4, n_features=2))
    # Execute
    out = run_producer(s, readings, rate=None, gateway_size=25)
    messages = consume(s, s.topic_readings, len(readings))
    # Assert: all arrived, packed, unkeyed, each on its device's partition, in per-device order
    assert out["readings"] == 300 and out["messages"] == len(messages) < 300 // 10
    assert Counter(r for _, _, rs in messages for r in rs) == Counter(readings)
    assert all(key is None and 1 <= len(rs) <= 25 for _, key, rs in messages)
    assert_on_key_partitions(messages, s.partitions)
    by_partition = sorted(messages, key=lambda m: m[0])  # stable: keeps offset order within a partition
    arrived = [r for _, _, rs in by_partition for r in rs]
    for device in {r.device_id for r in readings}:
        assert [r for r in arrived if r.device_id == device] == [r for r in readings if r.device_id == device]


def test_pacing_holds_the_rate_without_drift() -> None:
    # Prepare: a fake clock whose sleep always oversleeps by 2 ms
    now = [0.0]

    def late_sleep(seconds: float) -> None:
        now[0] += seconds + 0.002

    readings = [Reading(f"dev-{i % 7}", (1.0, 2.0), 0.0) for i in range(1000)]
    client = MemoryProducer(partitions=3)
    # Execute
    out = run_producer(
        Settings(), readings, rate=200.0, limit=900, clock=lambda: now[0], sleep=late_sleep, client=client
    )
    # Assert: 900 readings at 200/s take 4.5 s plus one oversleep, not 900 of them
    assert out["readings"] == 900 == len(client.sent)
    assert out["seconds"] == pytest.approx(4.502)
    assert out["rate"] == pytest.approx(200.0, rel=1e-3)


# -- edge ----------------------------------------------------------------------------------


def publish(s: Settings, topic: str, key: str, value: bytes, version: int) -> None:
    sender = KafkaProducer(bootstrap_servers=s.bootstrap, acks="all")
    try:
        sender.send(topic, value, key=key.encode(), headers=[("model_version", str(version).encode())]).get(
            10
        )
    finally:
        sender.close()


def wait_for(subscriber: EdgeSubscriber, n_decisions: int, timeout_s: float = 20.0) -> None:
    subscriber.run(until=lambda: len(subscriber.state.log) >= n_decisions, timeout_s=timeout_s)
    assert len(subscriber.state.log) >= n_decisions, list(subscriber.state.log)


def test_edge_subscriber_hot_swaps_and_refuses_replays_and_forgeries(kafka_broker: ApacheKafkaBroker) -> None:
    # Prepare: one device to follow, a neighbour on the same topic, a trusted signer
    s = unique_settings(kafka_broker)
    ensure_topics(s)
    signer = Signer.generate()
    learner = trained_fleet("dev-1", "dev-2")
    v1 = signer.seal(learner.export("dev-1", 1))
    publish(s, s.topic_models, "dev-2", signer.seal(learner.export("dev-2", 1)), 1)
    # Execute
    with EdgeSubscriber(s, ["dev-1"], Verifier([signer.public_key])) as sub:
        publish(s, s.topic_models, "dev-1", v1, 1)
        wait_for(sub, 1)
        version_after_first = sub.current_version("dev-1")
        publish(s, s.topic_models, "dev-1", signer.seal(learner.export("dev-1", 2)), 2)
        wait_for(sub, 2)
        publish(s, s.topic_models, "dev-1", v1, 1)  # replayed
        publish(s, s.topic_models, "dev-1", Signer.generate().seal(learner.export("dev-1", 3)), 3)  # forged
        wait_for(sub, 4)
        pred = sub.predict("dev-1", X)
        received = list(sub.received)
    # Assert
    assert version_after_first == 1
    assert [str(d) for d in (r.decision for r in received)] == [
        "dev-1 v1 accepted",
        "dev-1 v2 accepted",
        "dev-1 v1 refused stale_version",
        "dev-1 v? refused unknown_key",
    ]
    # The worker's own model of v2 under the moments it exported (learn_predict uses each reading's own).
    xs = torch.tensor(learner.scaler.x.transform(X), dtype=torch.float32)
    out = learner.net.forward(learner.device_params("dev-1"), xs)
    np.testing.assert_allclose(pred, learner.scaler.inverse_y(learner.net.predict(out).numpy()), atol=1e-5)
    assert all(r.latency_s is not None and -1.0 < r.latency_s < 20.0 for r in received)
    assert received[1].headers["model_version"] == b"2"


def test_a_new_edge_subscriber_starts_from_the_latest_model(kafka_broker: ApacheKafkaBroker) -> None:
    # Prepare: three versions already on the topic before the edge device starts
    s = unique_settings(kafka_broker)
    ensure_topics(s)
    signer = Signer.generate()
    learner = trained_fleet("dev-5")
    for v in (1, 2, 3):
        publish(s, s.topic_models, "dev-5", signer.seal(learner.export("dev-5", v)), v)
    # Execute
    with EdgeSubscriber(s, ["dev-5"], Verifier([signer.public_key])) as sub:
        wait_for(sub, 3)
        running = sub.current_version("dev-5")
    # Assert
    assert running == 3


def test_edge_subscriber_follows_theta(kafka_broker: ApacheKafkaBroker) -> None:
    # Prepare
    s = unique_settings(kafka_broker)
    ensure_topics(s)
    signer = Signer.generate()
    cfg = LearnerConfig(n_features=2)
    header = ModelHeader(META_KEY, 4, 3, "regression", 2, 1, cfg.hidden)
    publish(s, s.topic_meta, META_KEY, signer.seal(encode_model(init_params(cfg), header)), 4)
    # Execute
    with EdgeSubscriber(s, [], Verifier([signer.public_key]), follow_meta=True) as sub:
        wait_for(sub, 1)
        theta = sub.state.theta
    # Assert
    assert theta is not None and theta[1].model_version == 4


# -- command line --------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    produce.add_cli(sub)
    edge.add_cli(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_produce_and_edge_commands(
    kafka_broker: ApacheKafkaBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a settings file, a key pair and one published model
    s = unique_settings(kafka_broker)
    settings_file = tmp_path / "settings.json"
    topics = {k: v for k, v in vars(s).items() if k.startswith("topic_")}
    settings_file.write_text(json.dumps({**topics, "partitions": 3, "n_features": 2}))
    signer = Signer.generate()
    signer.save(tmp_path / "key.pem", tmp_path / "key.pub")
    broker = f"kafka://{kafka_broker.bootstrap}"
    # Execute
    produced = run_cli(
        "produce", "--settings", str(settings_file), "--broker", broker,
        "--devices", "4", "--readings", "80", "--gateway-size", "10",
    )  # fmt: skip
    publish(s, s.topic_models, "dev-0001", signer.seal(trained_fleet("dev-0001").export("dev-0001", 1)), 1)
    followed = run_cli(
        "edge", "--settings", str(settings_file), "--broker", broker, "--device", "dev-0001",
        "--device", "dev-0002", "--trusted-key", str(tmp_path / "key.pub"), "--duration", "3",
    )  # fmt: skip
    # Assert
    lines = capsys.readouterr().out.splitlines()
    assert (produced, followed) == (0, 0)
    assert lines[0].startswith("produced 80 readings in ")
    assert lines[1:] == ["dev-0001 v1 accepted", "running versions: dev-0001 v1, dev-0002 -"]
    assert sum(len(rs) for _, _, rs in consume(s, s.topic_readings, 80)) == 80
