"""The stream worker end to end on a real Apache Kafka broker.

A worker runs in a subprocess (``python -m pipeline.worker``) exactly as it
would be deployed; the test talks to it only through Kafka with kafka-python,
as producers and edge clients do.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from connectors.settings import Settings
from connectors.signing import Signer, Verifier
from learners.edge_model import EdgeModel
from tests.harness import (
    BAD_MESSAGES,
    Collected,
    Launch,
    cleanup_policies,
    collect_until,
    fleet,
    headers,
    last_stats,
    processed,
    produce,
    wait_for_topics,
    worker_log,
)
from wire.models import decode_model
from wire.readings import DeadLetter

pytestmark = pytest.mark.integration


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
