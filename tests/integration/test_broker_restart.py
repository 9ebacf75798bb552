"""The broker goes away mid-run and comes back: worker, producer and edge carry on, nothing acked is lost.

A dedicated Apache Kafka broker (restarting the session one would disturb
other tests), a worker subprocess, an edge subscriber following every device
on its own thread, and the sensor producer in this thread.  The producer's
delivery timeout is short (2 s) so that the outage outlasts it and the
producer's own resend path is exercised, not only kafka-python's retries.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.edge import EdgeSubscriber
from connectors.producer import SensorProducer
from learners.evaluation.synthetic import make_fleet_stream
from pipeline.tools.brokers import ApacheKafkaBroker
from pipeline.tools.demo import running_worker, scratch_settings
from wire.readings import Reading

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PER_DEVICE = 40
OUTAGE_S = 4.0


@pytest.fixture
def broker() -> Iterator[ApacheKafkaBroker]:
    with ApacheKafkaBroker() as broker:
        yield broker


def fleet(prefix: str, n_devices: int, seed: int) -> list[Reading]:
    s = make_fleet_stream(
        n_devices=n_devices, n_readings=n_devices * PER_DEVICE, n_features=2, late_joiners=0.0, seed=seed
    )
    return [
        Reading(prefix + d, tuple(x), float(y))
        for d, x, y in zip(s.device_ids, s.x.tolist(), s.y, strict=True)
    ]


def last_stats(log: Path) -> dict[str, Any]:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith('{"stats"')]
    return dict(json.loads(lines[-1])["stats"]) if lines else {}


def send_paced(producer: SensorProducer, readings: list[Reading], per_s: float) -> None:
    for i in range(0, len(readings), 10):
        producer.send_batch(readings[i : i + 10])
        time.sleep(10 / per_s)


def test_worker_producer_and_edge_survive_a_broker_restart(broker: ApacheKafkaBroker, tmp_path: Path) -> None:
    # Prepare: a worker, an edge following every device, a producer with a short delivery timeout
    settings = dataclasses.replace(
        scratch_settings(broker.bootstrap, tmp_path, "restart", partitions=2),
        n_features=2,
        micro_batch=100,
        learner={"adapt_after": 8},
    )
    before, during = fleet("a-", 5, seed=1), fleet("b-", 5, seed=2)  # b- devices first appear in the outage
    devices = sorted({r.device_id for r in before + during})
    log = tmp_path / "worker.log"
    with running_worker(settings, tmp_path, "--stats-interval", "1") as worker:
        edge = EdgeSubscriber(settings, devices)
        stop_edge = threading.Event()
        edge_thread = threading.Thread(target=edge.run, kwargs={"until": stop_edge.is_set}, daemon=True)
        edge_thread.start()
        producer = SensorProducer(
            settings,
            gateway_size=10,
            client_options={"delivery_timeout_ms": 2000, "request_timeout_ms": 1000, "linger_ms": 5},
        )
        times: dict[str, float] = {}

        def outage() -> None:
            broker.stop()
            times["down"] = time.time()
            time.sleep(OUTAGE_S)
            broker.start()
            times["up"] = time.time()

        try:
            send_paced(producer, before, per_s=200)
            producer.flush(timeout_s=30)
            deadline = time.monotonic() + 120
            while any(edge.current_version(d) is None for d in devices if d.startswith("a-")):
                assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)

            # Execute: the broker goes down; readings of new devices are sent while it is away
            restarter = threading.Thread(target=outage)
            restarter.start()
            while broker.is_running:
                time.sleep(0.05)
            send_paced(producer, during, per_s=50)  # ~4 s, mostly while the broker is down
            restarter.join(timeout=120)
            producer.flush(timeout_s=120)
            deadline = time.monotonic() + 120
            while (
                any(edge.current_version(d) is None for d in devices)
                or last_stats(log).get("readings", 0) < producer.readings_acked
            ):
                assert worker.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, (edge.state.versions(), last_stats(log), producer.pending)
                time.sleep(0.5)
        finally:
            stop_edge.set()
            edge_thread.join(timeout=10)
            edge.close()
            producer.close(timeout_s=5)

        # Assert: every reading acked and learned (at least once), the new devices' models arrived after
        # the restart, the worker is still the same process, and the producer resent what timed out
        total = len(before) + len(during)
        stats = last_stats(log)
        assert (producer.readings_sent, producer.readings_acked, producer.failed) == (total, total, 0)
        assert producer.resent >= 1
        print(f"restart: sent {total}, resent {producer.resent} messages, worker learned {stats['readings']}")
        assert total <= stats["readings"] <= total + producer.resent * 10 + settings.core_batch_readings * 10
        assert stats["dead_letters"] == 0
        new_models = {r.decision.device_id: r.received_at for r in edge.received if r.decision.accepted}
        assert all(new_models[d] > times["up"] for d in devices if d.startswith("b-")), (new_models, times)
        assert worker.poll() is None
