"""The tests' shared harness: a scratch deployment, a fleet with bad messages, reading the output topics.

Fixtures built on it (``settings``, ``signer``, ``start_worker``) are in
``tests/integration/conftest.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from connectors.admin import admin_client
from connectors.settings import Settings
from learners.evaluation.synthetic import FleetStream, make_fleet_stream

# A scratch deployment is tooling too (the demo, bench and soak use it); the tests take it from here.
from pipeline.tools.scratch import running_worker as running_worker
from pipeline.tools.scratch import scratch_settings as scratch_settings
from wire.readings import Reading, encode_readings

Launch = Callable[[Settings], subprocess.Popen[bytes]]
ROOT = Path(__file__).resolve().parents[1]
N_FEATURES = 4
PER_MESSAGE = 50  # gateway batches


class Processes:
    """``python -m …`` subprocesses with logged output; on leaving, each is stopped (SIGTERM, then kill)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        """Start ``python -m <argv>`` from the repository root, its stdout and stderr in ``log_path``."""
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", *argv],
                cwd=ROOT,
                env=dict(os.environ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
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


def last_stats(tmp_path: Path, n: int) -> dict[str, Any]:
    """The last counters a worker printed (``--stats-interval``)."""
    lines = [ln for ln in worker_log(tmp_path, n).splitlines() if ln.startswith('{"stats"')]
    return dict(json.loads(lines[-1])["stats"]) if lines else {}


def processed(stats: dict[str, Any]) -> int:
    """Readings learned plus readings refused."""
    return int(stats.get("readings", 0)) + int(stats.get("dead_letters", 0))
