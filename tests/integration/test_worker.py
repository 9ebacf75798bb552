"""The stream worker end to end on a real Apache Kafka broker.

A worker runs in a subprocess (``python -m pipeline.worker``) exactly as it
would be deployed; the test talks to it only through Kafka with kafka-python,
as producers and edge clients do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from connectors.admin import admin_client
from connectors.brokers import ApacheKafkaBroker
from connectors.settings import Settings
from connectors.signing import Signer, Verifier
from learners.edge_model import EdgeModel
from learners.synthetic import FleetStream, make_fleet_stream
from wire.models import decode_model
from wire.readings import DeadLetter, Reading, encode_readings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
N_FEATURES = 4
PER_MESSAGE = 50  # gateway batches


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


Launch = Callable[[Settings], subprocess.Popen[bytes]]


@pytest.fixture
def start_worker(tmp_path: Path, signer: Signer) -> Iterator[Launch]:
    """Start ``python -m pipeline.worker`` subprocesses; all are stopped (SIGTERM, then kill) at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def launch(settings: Settings) -> subprocess.Popen[bytes]:
        n = len(procs)
        path = tmp_path / f"settings-{n}.json"
        path.write_text(json.dumps({**asdict(settings), "signing_key": str(tmp_path / "worker.pem")}))
        env = dict(os.environ)
        with open(tmp_path / f"worker-{n}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.worker", "--settings", str(path), "--stats-interval", "1"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        procs.append(proc)
        return proc

    try:
        yield launch
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def worker_log(tmp_path: Path, n: int = 0) -> str:
    """The tail of a worker's output, for assertion messages."""
    path = tmp_path / f"worker-{n}.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def wait_for_topics(settings: Settings, timeout: float = 60.0) -> None:
    """Until the worker has created every topic (it does so before it subscribes)."""
    names = {
        settings.topic_readings,
        settings.topic_models,
        settings.topic_meta,
        settings.topic_deltas,
        settings.topic_events,
        settings.topic_deadletter,
    }
    admin = admin_client(settings)
    try:
        deadline = time.monotonic() + timeout
        while not names <= set(admin.list_topics()):
            assert time.monotonic() < deadline, f"topics not created: {names - set(admin.list_topics())}"
            time.sleep(0.2)
    finally:
        admin.close()


def cleanup_policies(settings: Settings, topics: list[str]) -> dict[str, str]:
    """``cleanup.policy`` of each topic as the broker reports it."""
    admin = admin_client(settings)
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, t, ["cleanup.policy"]) for t in topics]
        configs = admin.describe_configs(resources, config_filter="all")["topic"]
        return {t: configs[t]["cleanup.policy"]["value"] for t in topics}
    finally:
        admin.close()


def fleet() -> FleetStream:
    """10 devices, every one with an abrupt drift at a known point."""
    return make_fleet_stream(
        n_devices=10, n_readings=20_000, n_features=N_FEATURES, gradual_share=0.0, late_joiners=0.0, seed=3
    )


BAD_MESSAGES = {
    b"{not json": "malformed_json",
    b'{"v":1,"device_id":"dev-0000","x":[1,2],"y":1.0}': "wrong_feature_count",
    b'{"v":1,"device_id":"dev-0000","x":[1,2,3,NaN],"y":1.0}': "non_finite",
    b'{"v":99,"device_id":"dev-0000","x":[1,2,3,4],"y":1.0}': "unknown_schema_version",
}


def produce(settings: Settings, stream: FleetStream) -> None:
    """The fleet as gateway messages (keyed by gateway), with the bad messages in the middle."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=20)
    try:
        half = len(stream) // 2
        for start in range(0, len(stream), PER_MESSAGE):
            if start == half:
                for bad in BAD_MESSAGES:
                    producer.send(settings.topic_readings, key=b"bad-gateway", value=bad)
            readings = [
                Reading(stream.device_ids[i], tuple(stream.x[i].tolist()), float(stream.y[i]))
                for i in range(start, min(start + PER_MESSAGE, len(stream)))
            ]
            key = f"gw-{start // PER_MESSAGE % 4}".encode()
            producer.send(settings.topic_readings, key=key, value=encode_readings(readings))
        producer.flush()
    finally:
        producer.close()


class Collected:
    """Everything read from the output topics so far."""

    def __init__(self) -> None:
        self.records: dict[str, list[Any]] = {}

    def of(self, topic: str) -> list[Any]:
        return self.records.get(topic, [])


def collect_until(
    settings: Settings, done: Callable[[Collected], bool], timeout: float, describe: Callable[[], str]
) -> Collected:
    """Read the output topics from the start until ``done`` or the timeout (then fail with ``describe``)."""
    topics = [settings.topic_deadletter, settings.topic_events, settings.topic_models, settings.topic_meta]
    consumer = KafkaConsumer(
        *topics,
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    got = Collected()
    try:
        deadline = time.monotonic() + timeout
        while not done(got):
            assert time.monotonic() < deadline, f"timed out; have {got_summary(got)}\n{describe()}"
            for tp, records in consumer.poll(timeout_ms=500).items():
                got.records.setdefault(tp.topic, []).extend(records)
    finally:
        consumer.close()
    return got


def got_summary(got: Collected) -> dict[str, int]:
    return {topic: len(records) for topic, records in got.records.items()}


def headers(record: Any) -> dict[str, bytes]:
    return dict(record.headers or [])


def test_worker_end_to_end(settings: Settings, signer: Signer, start_worker: Launch, tmp_path: Path) -> None:
    proc = start_worker(settings)
    wait_for_topics(settings)
    # The worker creates the topics before it subscribes; compacted ones must really be compacted.
    policies = cleanup_policies(
        settings, [settings.topic_models, settings.topic_meta, settings.topic_readings]
    )
    assert policies == {
        settings.topic_models: "compact",
        settings.topic_meta: "compact",
        settings.topic_readings: "delete",
    }
    stream = fleet()
    produce(settings, stream)
    drifted_devices = {d.device_id for d in stream.drifts}

    def done(got: Collected) -> bool:
        reasons = {headers(r).get("reason", b"").decode() for r in got.of(settings.topic_deadletter)}
        events = [json.loads(r.value) for r in got.of(settings.topic_events)]
        versions = {int(headers(r)["meta_version"]) for r in got.of(settings.topic_meta)}
        drift_models = [r for r in got.of(settings.topic_models) if headers(r).get("cause") == b"drift"]
        return (
            set(BAD_MESSAGES.values()) <= reasons
            and any(e["type"] == "drift" for e in events)
            and bool(drift_models)
            and 0 in versions
            and max(versions) >= 1
        )

    got = collect_until(settings, done, timeout=90, describe=lambda: worker_log(tmp_path))
    assert proc.poll() is None, worker_log(tmp_path)

    # Dead letters: a reason header, and the refused bytes exactly as sent, with where they came from.
    letters = [DeadLetter.decode(r.value) for r in got.of(settings.topic_deadletter)]
    by_reason = {letter.reason: letter for letter in letters}
    for raw, reason in BAD_MESSAGES.items():
        assert by_reason[reason].original == raw
        assert by_reason[reason].source_topic == settings.topic_readings
        assert by_reason[reason].offset >= 0

    # Drift events name devices that really drifted.
    drift_events = [json.loads(r.value) for r in got.of(settings.topic_events)]
    detected = {e["device_id"] for e in drift_events if e["type"] == "drift"}
    assert detected and detected <= drifted_devices

    # Model updates: signed by the worker, decodable, for the device in the key, and runnable.
    verifier = Verifier.from_files(tmp_path / "worker.pub.pem")
    update = next(r for r in got.of(settings.topic_models) if headers(r).get("cause") == b"drift")
    device = update.key.decode()
    assert device in detected
    model = EdgeModel.from_payload(verifier.open(update.value))
    assert model.header.device_id == device
    assert model.header.model_version == int(headers(update)["model_version"])
    pred = model.predict(stream.x[:5])
    assert pred.shape == (5,) and np.isfinite(pred).all()
    with pytest.raises(ValueError):
        Verifier([Signer.generate().public_key]).open(update.value)  # a stranger's key is refused

    # θ versions on the meta topic: signed, from version 0 up.
    meta_versions = [
        decode_model(verifier.open(r.value))[1].model_version for r in got.of(settings.topic_meta)
    ]
    assert meta_versions[0] == 0 and max(meta_versions) >= 1

    # SIGTERM stops the worker cleanly.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, worker_log(tmp_path)
    assert '"final": true' in worker_log(tmp_path)


def last_stats(tmp_path: Path, n: int) -> dict[str, Any]:
    """The last counters a worker printed (``--stats-interval``)."""
    lines = [ln for ln in worker_log(tmp_path, n).splitlines() if ln.startswith('{"stats"')]
    return dict(json.loads(lines[-1])["stats"]) if lines else {}


def processed(stats: dict[str, Any]) -> int:
    """Readings learned plus readings refused."""
    return int(stats.get("readings", 0)) + int(stats.get("dead_letters", 0))


def test_two_workers_share_the_partitions(settings: Settings, start_worker: Launch, tmp_path: Path) -> None:
    procs = [start_worker(settings), start_worker(settings)]
    readings_tps = {f"{settings.topic_readings}:{p}" for p in range(settings.partitions)}
    deltas_tp = f"{settings.topic_deltas}:0"

    def settled() -> bool:
        owned = [set(last_stats(tmp_path, n).get("assigned", [])) for n in range(2)]
        # One group: the readings partitions are split, the single deltas partition has one owner.
        return (
            all(o & readings_tps for o in owned)
            and owned[0] & owned[1] == set()
            and sum(deltas_tp in o for o in owned) == 1
        )

    deadline = time.monotonic() + 60
    while not settled():
        assert time.monotonic() < deadline, worker_log(tmp_path, 0) + worker_log(tmp_path, 1)
        assert all(p.poll() is None for p in procs), worker_log(tmp_path, 0) + worker_log(tmp_path, 1)
        time.sleep(0.5)

    stream = fleet()
    produce(settings, stream)
    total = len(stream) + len(BAD_MESSAGES)
    deadline = time.monotonic() + 90
    while sum(processed(last_stats(tmp_path, n)) for n in range(2)) < total:
        assert time.monotonic() < deadline, [last_stats(tmp_path, n) for n in range(2)]
        time.sleep(0.5)
    stats = [last_stats(tmp_path, n) for n in range(2)]
    assert all(s["readings"] > 0 for s in stats), stats  # both did a share of the work

    # One aggregator: θ versions after 0 are published once each, in order; both workers follow them.
    got = collect_until(
        settings,
        lambda g: len({int(headers(r)["meta_version"]) for r in g.of(settings.topic_meta)}) >= 3,
        timeout=30,
        describe=lambda: str(stats),
    )
    versions = [int(headers(r)["meta_version"]) for r in got.of(settings.topic_meta)]
    after_zero = [v for v in versions if v > 0]
    assert after_zero == sorted(set(after_zero)), versions
    deadline = time.monotonic() + 15
    while min(last_stats(tmp_path, n)["meta_version"] for n in range(2)) < 1:
        assert time.monotonic() < deadline, [last_stats(tmp_path, n) for n in range(2)]
        time.sleep(0.5)
