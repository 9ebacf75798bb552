"""On a real broker: a worker's meta agent does not publish a θ that is worse on its held-back readings."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from connectors.edge import EdgeSubscriber
from connectors.producer import SensorProducer
from connectors.signing import Signer
from learners.evaluation.synthetic import make_fleet_stream
from learners.nets import flatten, init_params
from pipeline.tools.brokers import ApacheKafkaBroker
from pipeline.tools.demo import running_worker, scratch_settings
from wire.models import DeltaHeader, encode_deltas
from wire.readings import Reading

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def last_stats(log: Path) -> dict[str, Any]:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith('{"stats"')]
    return dict(json.loads(lines[-1])["stats"]) if lines else {}


def test_worse_theta_is_refused_with_an_event_and_never_published(
    kafka_broker: ApacheKafkaBroker, tmp_path: Path
) -> None:
    # Prepare: a worker whose devices have readings; it sends no contributions of its own (meta_every
    # beyond the stream) and clips nothing, so only the θ check stands between a wild θ and the edges.
    settings = dataclasses.replace(
        scratch_settings(kafka_broker.bootstrap, tmp_path, "thetacheck", partitions=1),
        n_features=2,
        micro_batch=50,
        learner={"adapt_after": 8, "meta_every": 1_000_000, "clip_multiple": 0.0},
    )
    stream = make_fleet_stream(n_devices=5, n_readings=200, n_features=2, late_joiners=0.0, seed=3)
    readings = [
        Reading(d, tuple(x), float(y))
        for d, x, y in zip(stream.device_ids, stream.x.tolist(), stream.y, strict=True)
    ]
    worker_key = Signer.from_file(settings.signing_key)  # a compromised worker key, say
    cfg = settings.learner_config()
    p = sum(v.numel() for v in init_params(cfg).values())

    def contribution(value: float, source: str) -> bytes:
        rows = torch.full((1, p), value)
        return worker_key.seal(encode_deltas(rows, torch.ones(1), DeltaHeader(source, 0, p)))

    log = tmp_path / "worker.log"
    with running_worker(settings, tmp_path, "--stats-interval", "1") as worker:
        follower = EdgeSubscriber(settings, [], follow_meta=True)
        producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
        try:
            with SensorProducer(settings, gateway_size=20) as sensors:
                sensors.send_batch(readings)
            deadline = time.monotonic() + 90
            while last_stats(log).get("readings", 0) < len(readings):
                assert worker.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, last_stats(log)
                time.sleep(0.5)
            # Execute: a wild signed contribution, then a small one (the deltas partition keeps the order)
            producer.send(settings.topic_deltas, value=contribution(1e4, "worker:evil")).get(timeout=30)
            producer.send(settings.topic_deltas, value=contribution(1e-3, "worker:ok")).get(timeout=30)
            deadline = time.monotonic() + 60
            while follower.state.theta is None or follower.state.theta[1].model_version < 1:
                assert time.monotonic() < deadline, last_stats(log)
                follower.poll_once(500)
            deadline = time.monotonic() + 30
            while last_stats(log).get("aggregator_version", 0) < 1:
                assert time.monotonic() < deadline, last_stats(log)
                time.sleep(0.5)
            # Assert: version 1 is the small step; every θ on the topic is sane; the event says why
            theta1, header1 = follower.state.theta
            assert header1.model_version == 1
            order = list(init_params(cfg))
            moved = flatten({k: torch.from_numpy(theta1[k]) for k in order}) - flatten(init_params(cfg))
            assert moved.abs().max().item() == pytest.approx(cfg.meta_lr * 1e-3, rel=1e-3)
            probe = KafkaConsumer(bootstrap_servers=settings.bootstrap, consumer_timeout_ms=3000)
            meta, events = TopicPartition(settings.topic_meta, 0), TopicPartition(settings.topic_events, 0)
            probe.assign([meta, events])
            probe.seek_to_beginning(meta, events)
            records = list(probe)
            probe.close()
            versions = [r.headers for r in records if r.topic == settings.topic_meta]
            assert [dict(h)["meta_version"] for h in versions] == [b"0", b"1"]
            refused = [json.loads(r.value) for r in records if r.topic == settings.topic_events]
            refused = [e for e in refused if e["type"] == "theta_refused"]
            assert len(refused) == 1 and refused[0]["source"] == "worker:evil"
            assert refused[0]["reason"] == "worse" and refused[0]["meta_version"] == 0
            assert refused[0]["candidate_loss"] > 100 * refused[0]["current_loss"]
            stats = last_stats(log)
            assert stats["theta_refused"] == 1 and stats["contributions_rejected"] == 0
        finally:
            follower.close()
            producer.close()
