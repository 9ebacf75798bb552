"""Devices that speak MQTT: a real Mosquitto, a real Apache Kafka, a worker and the bridge.

MQTT devices publish readings → ``metastream mqtt-bridge`` → readings topic →
worker learns them and publishes signed models → bridge → retained MQTT
messages → a device that subscribes late gets its newest model and verifies it.
Bad MQTT payloads become dead letters on Kafka.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from connectors.admin import admin_client, ensure_topics
from connectors.mqtt_edge import MqttEdge
from connectors.settings import Settings
from connectors.signing import Signer, Verifier
from learners import LearnerConfig
from learners.edge_model import EdgeModel
from learners.evaluation.synthetic import FleetStream, make_fleet_stream
from learners.fleet import FleetLearner
from pipeline.tools.brokers import ApacheKafkaBroker
from pipeline.tools.cli import main
from tests.harness import Processes, last_stats, wait_for_topics
from tests.integration.mosquitto import MosquittoBroker
from tests.readme import blocks
from wire.readings import DeadLetter, Reading, encode_readings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
N_FEATURES = 4
PER_MESSAGE = 25
BAD = {
    b'{"v":1,"device_id":"dev-0000","x":[1,2': "malformed_json",
    b'{"v":1,"device_id":"dev-0000","x":[1,2],"y":1.0}': "wrong_feature_count",
}


@pytest.fixture
def settings(kafka_broker: ApacheKafkaBroker, mosquitto: MosquittoBroker) -> Settings:
    """Topics, app id and MQTT prefix no other test uses."""
    run = uuid.uuid4().hex[:10]
    topics: dict[str, Any] = {
        f"topic_{t}": f"m-{run}.{t}" for t in ("readings", "models", "meta", "deltas", "events")
    }
    return Settings(
        broker=f"kafka://{kafka_broker.bootstrap}",
        app_id=f"mqtt-test-{run}",
        partitions=2,
        n_features=N_FEATURES,
        micro_batch=200,
        topic_deadletter=f"m-{run}.deadletter",
        mqtt_broker=mosquitto.url,
        mqtt_topic_prefix=f"ms-{run}",
        **topics,
    )


Start = Callable[[str, list[str]], subprocess.Popen[bytes]]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start ``python -m <module> <args>`` with its output in ``tmp_path/<name>.log``; SIGTERM at the end."""
    with Processes() as processes:
        yield lambda name, argv: processes.start(argv, tmp_path / f"{name}.log")


def log_of(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def wait(condition: Callable[[], bool], timeout_s: float, describe: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, describe()
        time.sleep(0.2)


def read_topic(settings: Settings, topic: str) -> list[object]:
    """Every record of ``topic`` from the beginning to its current end."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        records: list[object] = []
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def newest_models(settings: Settings) -> dict[str, tuple[int, bytes]]:
    """Per device: the newest model version on the models topic and its envelope."""
    newest: dict[str, tuple[int, bytes]] = {}
    for r in read_topic(settings, settings.topic_models):
        version = int(dict(r.headers)["model_version"])  # type: ignore[attr-defined]
        newest[r.key.decode()] = (version, r.value)  # type: ignore[attr-defined]
    return newest


def start_worker_and_bridge(
    settings: Settings, mosquitto: MosquittoBroker, start: Start, tmp_path: Path
) -> tuple[Path, Verifier, subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """The worker's keys and one settings file; a worker and a connected bridge on them."""
    signer = Signer.generate()
    signer.save(tmp_path / "worker.pem", tmp_path / "worker.pub.pem")
    verifier = Verifier.from_files(tmp_path / "worker.pub.pem")
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({**asdict(settings), "signing_key": str(tmp_path / "worker.pem")}))
    worker = start("worker-0", ["pipeline.worker", "--settings", str(path), "--stats-interval", "1"])
    wait_for_topics(settings)
    bridge = start(
        "bridge", ["pipeline.tools.cli", "mqtt-bridge", "--settings", str(path), "--stats-interval", "1"]
    )
    wait(
        lambda: "bridging" in log_of(tmp_path, "bridge"),
        60,
        lambda: f"bridge did not connect:\n{log_of(tmp_path, 'bridge')}\n{mosquitto.log()}",
    )
    return path, verifier, worker, bridge


def publish_fleet_over_mqtt(settings: Settings, verifier: Verifier, stream: FleetStream) -> int:
    """A gateway publishes ``stream`` (PER_MESSAGE readings a message), BAD in the middle; messages sent."""
    n_messages = 0
    with MqttEdge(settings.mqtt_broker, ["gateway"], verifier, settings.mqtt_topic_prefix) as gateway:
        for start_at in range(0, len(stream), PER_MESSAGE):
            if start_at == len(stream) // 2:
                for raw in BAD:
                    gateway.publish_payload("dev-0000", raw)
                    n_messages += 1
            rows = range(start_at, min(start_at + PER_MESSAGE, len(stream)))
            gateway.publish_readings(
                [Reading(stream.device_ids[i], tuple(stream.x[i].tolist()), float(stream.y[i])) for i in rows]
            )
            n_messages += 1
    return n_messages


def export_onnx(settings: Settings, path: Path, tmp_path: Path, device: str) -> Any:
    """``metastream export`` of ``device``'s newest model from the models topic, loaded with onnx."""
    out = tmp_path / f"{device}.onnx"
    argv = ["export", "--device", device, "--broker", settings.broker, "--out", str(out)]
    assert main([*argv, "--settings", str(path), "--trusted-key", str(tmp_path / "worker.pub.pem")]) == 0
    return onnx.load(str(out))


def run_readme_device_example(
    settings: Settings, tmp_path: Path, device: str
) -> subprocess.CompletedProcess[str]:
    """The README's MQTT device example, as written, run as ``device``."""
    example = next(b for b in blocks() if b.lang == "python" and b.section == "Run it on a device")
    env = {
        **os.environ,
        "METASTREAM_MQTT_BROKER": settings.mqtt_broker,
        "METASTREAM_MQTT_TOPIC_PREFIX": settings.mqtt_topic_prefix,
        "METASTREAM_N_FEATURES": str(N_FEATURES),
    }
    code = example.text.replace('"greenhouse-7"', f'"{device}"')
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def test_mqtt_devices_learn_get_retained_models_and_bad_payloads_are_dead_lettered(
    settings: Settings, mosquitto: MosquittoBroker, start: Start, tmp_path: Path
) -> None:
    # Prepare: the worker's keys, one settings file, a worker and the bridge
    path, verifier, worker, bridge = start_worker_and_bridge(settings, mosquitto, start, tmp_path)
    stream = make_fleet_stream(
        n_devices=6, n_readings=3_000, n_features=N_FEATURES, late_joiners=0.0, gradual_share=0.0, seed=5
    )

    # Execute: gateways publish the fleet over MQTT (QoS 1), bad payloads in the middle
    n_messages = publish_fleet_over_mqtt(settings, verifier, stream)

    # Assert: the worker learned every reading that came in over MQTT
    wait(
        lambda: last_stats(tmp_path, 0).get("readings") == len(stream),
        120,
        lambda: f"worker stats {last_stats(tmp_path, 0)}\n{log_of(tmp_path, 'worker-0')}",
    )
    assert worker.poll() is None and bridge.poll() is None, log_of(tmp_path, "bridge")

    # Bad payloads: dead letters with their reason, the bytes exactly as published and the MQTT topic
    letters = [DeadLetter.decode(r.value) for r in read_topic(settings, settings.topic_deadletter)]  # type: ignore[attr-defined]
    assert sorted((d.reason, d.original) for d in letters) == sorted((r, raw) for raw, r in BAD.items())
    assert {d.source_topic for d in letters} == {f"{settings.mqtt_topic_prefix}/dev-0000/readings"}

    # A device that subscribes late gets its newest model from the retained message, verified.
    device = "dev-0003"
    wait(lambda: device in newest_models(settings), 60, lambda: log_of(tmp_path, "worker-0"))
    time.sleep(2)  # let the worker finish publishing what the last batch triggered
    with MqttEdge(settings.mqtt_broker, [device], verifier, settings.mqtt_topic_prefix) as late:
        newest = newest_models(settings)[device]
        got = late.wait_for(lambda: late.state.version(device) == newest[0], timeout_s=30)
        assert got, (late.decisions, newest[0], log_of(tmp_path, "bridge"))
        assert all(d.accepted for d in late.decisions), late.decisions
        model = EdgeModel.from_payload(verifier.open(newest[1]))
        np.testing.assert_array_equal(late.predict(device, stream.x[:10]), model.predict(stream.x[:10]))

    # Its newest model, exported from the models topic to ONNX, predicts what the edge predicts.
    exported = export_onnx(settings, path, tmp_path, device)
    assert {p.key: p.value for p in exported.metadata_props}["model_version"] == str(newest[0])
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    [onnx_pred] = session.run(["prediction"], {"x": stream.x[:200]})
    np.testing.assert_allclose(onnx_pred, model.predict(stream.x[:200]), rtol=0, atol=1e-5)

    # The README's MQTT device example, as written, for a device that has a model by now.
    done = run_readme_device_example(settings, tmp_path, device)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"running model version {newest[0]}\n" in done.stdout
    assert re.search(r"^prediction \[\s*-?[0-9.e+-]+\]$", done.stdout, re.M), done.stdout
    n_messages += 1  # the example published one reading
    wait(
        lambda: last_stats(tmp_path, 0).get("readings") == len(stream) + 1,
        60,
        lambda: f"worker stats {last_stats(tmp_path, 0)}",
    )

    # Every MQTT message was acknowledged only after Kafka had it: the bridge's counters add up.
    bridge.send_signal(signal.SIGTERM)
    assert bridge.wait(30) == 0, log_of(tmp_path, "bridge")
    final = json.loads(log_of(tmp_path, "bridge").strip().splitlines()[-1])
    assert final["final"] and final["stats"]["mqtt_messages"] == final["stats"]["acked"] == n_messages
    assert final["stats"]["dead_letters"] == len(BAD)
    assert final["stats"]["models_published"] >= len(set(stream.device_ids))


def test_a_reading_kafka_refused_is_not_acknowledged_and_arrives_after_a_restart(
    settings: Settings, start: Start, tmp_path: Path
) -> None:
    # Prepare: a readings topic that refuses records above 200 bytes, and a bridge on it
    ensure_topics(settings)
    set_max_message_bytes(settings, settings.topic_readings, 200)
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(asdict(settings)))
    argv = ["pipeline.tools.cli", "mqtt-bridge", "--settings", str(path)]
    first = start("bridge-1", argv)
    wait(lambda: "bridging" in log_of(tmp_path, "bridge-1"), 60, lambda: log_of(tmp_path, "bridge-1"))
    readings = [Reading("dev-a", (float(i), 1.0, 2.0, 3.0), float(i)) for i in range(10)]
    verifier = Verifier([Signer.generate().public_key])

    # Execute: the device publishes (QoS 1; the MQTT broker has it once publish returns)
    with MqttEdge(settings.mqtt_broker, ["dev-a"], verifier, settings.mqtt_topic_prefix) as device:
        device.publish_readings(readings)

    # Assert: the bridge stops on Kafka's refusal without acknowledging, and nothing reached Kafka
    assert first.wait(60) == 2, log_of(tmp_path, "bridge-1")
    assert "Kafka refused a record from MQTT" in log_of(tmp_path, "bridge-1")
    assert read_topic(settings, settings.topic_readings) == []

    # Execute: Kafka accepts again; the bridge restarts with the same MQTT client id
    set_max_message_bytes(settings, settings.topic_readings, 1_000_000)
    second = start("bridge-2", [*argv, "--stats-interval", "0.5"])

    # Assert: the MQTT broker delivered the unacknowledged message again, and it reached Kafka once
    wait(
        lambda: len(read_topic(settings, settings.topic_readings)) >= 1,
        60,
        lambda: log_of(tmp_path, "bridge-2"),
    )
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0, log_of(tmp_path, "bridge-2")
    [record] = read_topic(settings, settings.topic_readings)
    assert record.key == b"dev-a"  # type: ignore[attr-defined]
    assert record.value == encode_readings(readings)  # type: ignore[attr-defined]
    final = json.loads(log_of(tmp_path, "bridge-2").strip().splitlines()[-1])
    assert final["stats"]["acked"] == final["stats"]["mqtt_messages"] == 1


def set_max_message_bytes(settings: Settings, topic: str, n: int) -> None:
    admin = admin_client(settings)
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(n)})])
    finally:
        admin.close()


def test_retained_models_come_back_when_the_mqtt_broker_restarts_without_persistence(
    settings: Settings, start: Start, tmp_path: Path
) -> None:
    # Prepare: a broker of this test's own, a signed model of dev-a on the models topic, a bridge
    with MosquittoBroker() as broker:
        settings = replace(settings, mqtt_broker=broker.url)
        ensure_topics(settings)
        signer = Signer.generate()
        fleet = FleetLearner(LearnerConfig(n_features=N_FEATURES))
        fleet.learn_predict(["dev-a", "dev-a"], np.ones((2, N_FEATURES)), np.ones(2))
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap)
        producer.send(settings.topic_models, key=b"dev-a", value=signer.seal(fleet.export("dev-a", 1)))
        producer.flush()
        producer.close()
        path = tmp_path / "settings.json"
        path.write_text(json.dumps(asdict(settings)))
        start("bridge", ["pipeline.tools.cli", "mqtt-bridge", "--settings", str(path)])
        wait(lambda: "bridging" in log_of(tmp_path, "bridge"), 60, lambda: log_of(tmp_path, "bridge"))
        verifier = Verifier([signer.public_key])
        with MqttEdge(settings.mqtt_broker, ["dev-a"], verifier, settings.mqtt_topic_prefix) as before:
            assert before.wait_for(lambda: before.state.version("dev-a") == 1, timeout_s=30)

        # Execute: the MQTT broker restarts and forgets its retained messages
        broker.restart()

        # Assert: the bridge reconnects and publishes the model again; a new device gets it
        with MqttEdge(settings.mqtt_broker, ["dev-a"], verifier, settings.mqtt_topic_prefix) as after:
            got = after.wait_for(lambda: after.state.version("dev-a") == 1, timeout_s=30)
            assert got, log_of(tmp_path, "bridge")
            assert [d.reason for d in after.decisions] == ["accepted"]


def test_export_takes_the_newest_model_a_trusted_key_signed(settings: Settings, tmp_path: Path) -> None:
    # Prepare: v1 and v2 signed by the worker, then v3 signed by a stranger, on the models topic
    ensure_topics(settings)
    worker, stranger = Signer.generate(), Signer.generate()
    worker.save(tmp_path / "w.pem", tmp_path / "w.pub.pem")
    fleet = FleetLearner(LearnerConfig(n_features=N_FEATURES))
    fleet.learn_predict(["dev-b", "dev-b"], np.ones((2, N_FEATURES)), np.ones(2))
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap)
    for version, signer in ((1, worker), (2, worker), (3, stranger)):
        producer.send(settings.topic_models, key=b"dev-b", value=signer.seal(fleet.export("dev-b", version)))
    producer.flush()
    producer.close()
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(asdict(settings)))
    out = tmp_path / "dev-b.onnx"

    # Execute
    argv = ["export", "--device", "dev-b", "--settings", str(path), "--out", str(out)]
    code = main([*argv, "--trusted-key", str(tmp_path / "w.pub.pem")])

    # Assert: v2, the newest that passes the checks; the stranger's v3 is refused
    assert code == 0
    assert {p.key: p.value for p in onnx.load(str(out)).metadata_props}["model_version"] == "2"
