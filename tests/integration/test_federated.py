"""Federated mode on a real broker: devices send only φ − θ; the meta agent moves θ."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from connectors.brokers import ApacheKafkaBroker
from connectors.federated import FederatedEdgeClient
from connectors.wire import Reading
from learners.synthetic import make_fleet_stream
from pipeline.demo import running_worker, scratch_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_federated_devices_move_theta(kafka_broker: ApacheKafkaBroker, tmp_path: Path) -> None:
    # Prepare: a worker (it runs the meta agent) and three federated devices with local data only
    settings = scratch_settings(kafka_broker.bootstrap, tmp_path, "fed", partitions=1)
    stream = make_fleet_stream(n_devices=3, n_readings=600, late_joiners=0.0, drifts_per_device=0, seed=4)
    ids = np.array(stream.device_ids)
    with running_worker(settings, tmp_path):
        clients = [FederatedEdgeClient(settings, d) for d in ("dev-0000", "dev-0001", "dev-0002")]
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
