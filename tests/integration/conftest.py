"""Fixtures for integration tests that need a running Kafka broker."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from connectors.settings import Settings
from connectors.signing import Signer
from pipeline.tools.brokers import ApacheKafkaBroker
from tests.harness import N_FEATURES, Launch, Processes
from tests.integration.mosquitto import MosquittoBroker


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[ApacheKafkaBroker]:
    """One real Apache Kafka broker for the whole test session (~5 s warm start)."""
    with ApacheKafkaBroker() as broker:
        yield broker


@pytest.fixture
def topic_name() -> str:
    """A topic name no other test uses, so tests sharing a broker stay independent."""
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoBroker]:
    """One real Mosquitto MQTT broker for the whole test session, on a free loopback port."""
    with MosquittoBroker() as broker:
        yield broker


@pytest.fixture
def settings(kafka_broker: ApacheKafkaBroker) -> Settings:
    """Settings with an app id and topic names no other test uses."""
    run = uuid.uuid4().hex[:10]
    topics = {f"topic_{t}": f"w-{run}.{t}" for t in ("readings", "models", "meta", "deltas", "events")}
    return Settings(
        broker=f"kafka://{kafka_broker.bootstrap}",
        app_id=f"worker-test-{run}",
        partitions=2,
        n_features=N_FEATURES,
        micro_batch=200,
        batch_window_s=0.05,
        topic_deadletter=f"w-{run}.deadletter",
        **topics,
    )


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    """The worker's key pair, as PEM files in ``tmp_path``."""
    signer = Signer.generate()
    signer.save(tmp_path / "worker.pem", tmp_path / "worker.pub.pem")
    return signer


@pytest.fixture
def start_worker(tmp_path: Path, signer: Signer) -> Iterator[Launch]:
    """Start ``python -m pipeline.worker`` subprocesses; all are stopped (SIGTERM, then kill) at the end."""
    with Processes() as processes:

        def launch(settings: Settings) -> subprocess.Popen[bytes]:
            n = len(processes.procs)
            path = tmp_path / f"settings-{n}.json"
            path.write_text(json.dumps({**asdict(settings), "signing_key": str(tmp_path / "worker.pem")}))
            argv = ["pipeline.worker", "--settings", str(path), "--stats-interval", "1"]
            return processes.start(argv, tmp_path / f"worker-{n}.log")

        yield launch
