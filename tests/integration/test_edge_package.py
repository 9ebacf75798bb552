"""The edge package on its own: built as a wheel, installed into a fresh venv without torch, run
against a real Apache Kafka broker and a real worker."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from connectors.producer import SensorProducer
from connectors.signing import Signer
from learners.evaluation.synthetic import make_fleet_stream
from pipeline.tools.bench_edge import build_edge_venv
from pipeline.tools.brokers import ApacheKafkaBroker
from pipeline.tools.demo import running_worker, scratch_settings
from wire.readings import Reading

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(__file__).with_name("edge_device_script.py")


@pytest.fixture(scope="module")
def edge_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding only the edge wheel and its dependencies (from PyPI)."""
    return build_edge_venv(tmp_path_factory.mktemp("edge-venv"))


def test_the_edge_wheel_installs_without_torch(edge_python: Path) -> None:
    # Execute
    listed = subprocess.run(
        [str(edge_python), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    # Assert
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {
        "metastream-edge",
        "numpy",
        "kafka-python",
        "crc32c",
        "safetensors",
        "cryptography",
        "pycryptodome",
    } <= names
    assert not names & {"torch", "faust-streaming", "river", "metastream"}


def test_a_device_without_torch_verifies_predicts_adapts_and_moves_theta(
    kafka_broker: ApacheKafkaBroker, tmp_path: Path, edge_python: Path
) -> None:
    # Prepare: a worker, and readings of one device so that the worker publishes its model
    settings = scratch_settings(kafka_broker.bootstrap, tmp_path, "edgepkg", partitions=1)
    # The federated device signs its deltas with its own key, which the meta agent allows.
    allowed = tmp_path / "device-keys"
    allowed.mkdir()
    Signer.generate().save(tmp_path / "fed-0000.key.pem", allowed / "fed-0000.pem")
    settings = dataclasses.replace(settings, device_keys=str(allowed))
    stream = make_fleet_stream(
        n_devices=1, n_readings=60, n_features=settings.n_features, late_joiners=0.0, seed=3
    )
    device = stream.device_ids[0]
    config = {
        "bootstrap": settings.bootstrap,
        "topic_models": settings.topic_models,
        "topic_meta": settings.topic_meta,
        "topic_deltas": settings.topic_deltas,
        "trusted_key": str(tmp_path / "worker.pub.pem"),
        "n_features": settings.n_features,
        "device": device,
        "fed_device": "fed-0000",
        "fed_key": str(tmp_path / "fed-0000.key.pem"),
        "work": str(tmp_path),
    }
    (tmp_path / "device.json").write_text(json.dumps(config))
    with running_worker(settings, tmp_path) as worker:
        with SensorProducer(settings) as producer:
            producer.send_batch(
                [
                    Reading(d, tuple(x), float(y))
                    for d, x, y in zip(stream.device_ids, stream.x.tolist(), stream.y, strict=True)
                ]
            )
        # Execute: the device's life in the torch-free venv (its own process)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        proc = subprocess.run(
            [str(edge_python), str(SCRIPT), str(tmp_path / "device.json")],
            capture_output=True, text=True, timeout=400, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
    # Assert
    assert proc.returncode == 0, proc.stderr[-4000:] + (tmp_path / "worker.log").read_text()[-2000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["model_version"] >= 1 and seen["theta_version"] == 0
    assert seen["predictions_finite"] and seen["restored_predicts_alike"] and seen["fed_state_saved"]
    assert seen["drifts"] >= 1 and seen["adaptations"] >= 1
    assert seen["error_at_end"] < seen["error_just_after_drift"]
    assert seen["fed_sent"] == 1 and seen["theta_after"] > seen["theta_before"]
    assert seen["heavy_modules"] == []
    print(json.dumps(seen))  # the figures, for `pytest -s`


def test_the_edge_command_prints_a_summary_on_sigterm(
    kafka_broker: ApacheKafkaBroker, tmp_path: Path, edge_python: Path
) -> None:
    # Prepare: one signed model on the models topic, and one of another device under this key
    from kafka import KafkaProducer

    from connectors.admin import ensure_topics
    from learners import LearnerConfig
    from learners.fleet import FleetLearner

    settings = scratch_settings(kafka_broker.bootstrap, tmp_path, "edgecli", partitions=1)
    ensure_topics(settings)
    signer = Signer.from_file(tmp_path / "worker.key.pem")
    fleet = FleetLearner(LearnerConfig(n_features=2))
    for d in ("dev-1", "dev-2"):
        fleet.learn_predict([d, d], np.ones((2, 2)), np.array([1.0, 2.0]))
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap)
    for payload in (fleet.export("dev-1", 2), fleet.export("dev-2", 3)):
        producer.send(settings.topic_models, key=b"dev-1", value=signer.seal(payload)).get(timeout=30)
    producer.close()
    prefix = settings.topic_models.removesuffix(".models")
    cli = edge_python.with_name("metastream-edge")
    # Execute: follow until both decisions are printed, then SIGTERM (as systemd stops it)
    proc = subprocess.Popen(
        [str(cli), "--broker", f"kafka://{settings.bootstrap}", "--device", "dev-1",
         "--trusted-key", str(tmp_path / "worker.pub.pem"), "--topic-prefix", prefix],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(2)]
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    # Assert
    assert proc.returncode == 0
    assert [*lines, *rest.splitlines()] == [
        "dev-1 v2 accepted",
        "dev-1 v3 refused wrong_device (a model of dev-2)",
        "stopped by SIGTERM: accepted 1, refused 1 (wrong_device 1); running dev-1 v2, θ -",
        "running versions: dev-1 v2",
    ]
