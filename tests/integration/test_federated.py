"""Federated mode on a real broker: devices send only φ − θ, signed; the meta agent moves θ.

The meta agent applies a contribution only if it is signed by the workers'
key or by the allowed key of the device it names (``device_keys``); the
forged contribution of issue #12 (unsigned, deltas 1e4, weight 1e30, source
``edge:attacker``) and contributions signed by unknown or other devices'
keys are refused and counted, and θ does not move.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from connectors.edge import EdgeSubscriber
from connectors.federated import FederatedEdgeClient
from connectors.settings import Settings
from connectors.signing import Signer
from learners.evaluation.synthetic import make_fleet_stream
from learners.nets import flatten, init_params
from pipeline.tools.brokers import ApacheKafkaBroker
from pipeline.tools.demo import running_worker, scratch_settings
from wire.models import DeltaHeader, encode_deltas
from wire.readings import Reading

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEVICES = ("dev-0000", "dev-0001", "dev-0002")


def federated_settings(bootstrap: str, work: Path, prefix: str) -> tuple[Settings, dict[str, Signer]]:
    """Scratch settings whose ``device_keys`` directory allows :data:`DEVICES`, and their keys."""
    keys = work / "device-keys"
    keys.mkdir()
    signers = {d: Signer.generate() for d in DEVICES}
    for d, s in signers.items():
        s.save(work / f"{d}.key.pem", keys / f"{d}.pem")
    settings = scratch_settings(bootstrap, work, prefix, partitions=1)
    return dataclasses.replace(settings, device_keys=str(keys)), signers


def last_stats(log: Path) -> dict[str, Any]:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith('{"stats"')]
    return dict(json.loads(lines[-1])["stats"]) if lines else {}


def test_federated_devices_move_theta(kafka_broker: ApacheKafkaBroker, tmp_path: Path) -> None:
    # Prepare: a worker (it runs the meta agent) and three federated devices with local data only
    settings, signers = federated_settings(kafka_broker.bootstrap, tmp_path, "fed")
    stream = make_fleet_stream(n_devices=3, n_readings=600, late_joiners=0.0, drifts_per_device=0, seed=4)
    ids = np.array(stream.device_ids)
    with running_worker(settings, tmp_path):
        clients = [FederatedEdgeClient(settings, d, signer=signers[d]) for d in DEVICES]
        try:
            deadline = time.monotonic() + 90
            while any(c.theta_version is None for c in clients) and time.monotonic() < deadline:
                for c in clients:
                    c.step([])
            assert all(c.theta_version == 0 for c in clients), "θ v0 must reach every device"
            # Execute: each device learns from its own readings and sends deltas
            for c in clients:
                mine = np.flatnonzero(ids == c.device_id)[:100]
                c.step(Reading(c.device_id, tuple(stream.x[i]), float(stream.y[i])) for i in mine)
            deadline = time.monotonic() + 60
            while min(c.theta_version or 0 for c in clients) < 3 and time.monotonic() < deadline:
                for c in clients:
                    c.step([])
            # Assert: three contributions → three θ versions, seen by every device; only deltas were sent
            assert [c.sent for c in clients] == [1, 1, 1]
            assert all(c.theta_version == 3 for c in clients)
            assert np.isfinite(clients[0].device.predict(stream.x[:2])).all()
            probe = KafkaConsumer(bootstrap_servers=settings.bootstrap)
            readings = TopicPartition(settings.topic_readings, 0)
            assert probe.end_offsets([readings])[readings] == 0  # no raw reading crossed the network
            probe.close()
        finally:
            for c in clients:
                c.close()


def test_forged_and_foreign_contributions_are_refused_and_theta_stays(
    kafka_broker: ApacheKafkaBroker, tmp_path: Path
) -> None:
    # Prepare: a worker allowing three device keys; a θ follower; the contributions to send
    settings, signers = federated_settings(kafka_broker.bootstrap, tmp_path, "forged")
    n = settings.learner_config()
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")

    def contribution(deltas: torch.Tensor, weight: float, source: str) -> bytes:
        return encode_deltas(deltas, torch.tensor([weight]), DeltaHeader(source, 0, deltas.shape[1]))

    log = tmp_path / "worker.log"
    with running_worker(settings, tmp_path, "--stats-interval", "1") as worker:
        follower = EdgeSubscriber(settings, [], follow_meta=True)  # the topics exist now
        try:
            deadline = time.monotonic() + 90
            while follower.state.theta is None:
                assert worker.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "θ v0 never published"
                follower.poll_once(500)
            arrays0, header0 = follower.state.theta  # numpy arrays (the edge package is torch-free)
            theta0 = {k: torch.from_numpy(v) for k, v in arrays0.items()}
            p = int(sum(v.numel() for v in theta0.values()))
            small = torch.full((1, p), 0.01)
            # Execute: issue #12's forged contribution, an unknown device key, a key naming another
            # device; then one valid contribution (the deltas partition keeps this order).
            forged = contribution(torch.full((1, p), 1e4), 1e30, "edge:attacker")
            unknown = Signer.generate().seal(contribution(small, 1.0, "edge:dev-0000"))
            borrowed = signers["dev-0001"].seal(contribution(small, 1.0, "edge:dev-0000"))
            valid = signers["dev-0002"].seal(contribution(small, 1.0, "edge:dev-0002"))
            for value in (forged, unknown, borrowed, valid):
                producer.send(settings.topic_deltas, key=b"x", value=value).get(timeout=30)
            deadline = time.monotonic() + 60
            while follower.state.theta is None or follower.state.theta[1].model_version < 1:
                assert time.monotonic() < deadline, last_stats(log)
                follower.poll_once(500)
            deadline = time.monotonic() + 30
            while last_stats(log).get("aggregator_version", 0) < 1:
                assert time.monotonic() < deadline, last_stats(log)
                time.sleep(0.5)
            # Assert: only the valid one moved θ, by exactly ε · its delta; three refusals counted
            arrays1, header1 = follower.state.theta
            theta1 = {k: torch.from_numpy(v) for k, v in arrays1.items()}
            assert header0.model_version == 0 and header1.model_version == 1
            order = list(init_params(n))  # the wire order of contribution rows
            expected = flatten({k: theta0[k] for k in order}) + n.meta_lr * small[0]
            torch.testing.assert_close(flatten({k: theta1[k] for k in order}), expected, rtol=0, atol=1e-6)
            stats = last_stats(log)
            assert stats["contributions_rejected"] == 3
            assert stats["aggregator_version"] == 1 and stats["theta_refused"] == 0
            text = log.read_text()
            assert "refused: unsigned" in text and "refused: unknown_key" in text
            assert "refused: wrong_source" in text
        finally:
            follower.close()
            producer.close()
