"""A secure-aggregation round over a real Apache Kafka broker, with a device that vanishes mid-round."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kafka import KafkaConsumer, TopicPartition

from connectors.secagg_kafka import AggregatorRunner, SecAggTopics, ensure_secagg_topics, run_device
from connectors.settings import Settings
from connectors.signing import Signer
from learners.nets import flatten
from metastream_edge.secagg import AggregatorRound, DeviceRound, MaskedInput, Phase, RoundConfig, dequantise
from metastream_edge.secagg_wire import decode
from pipeline.privacy import PrivacyGate, PrivacyLedger, PrivacyPolicy
from pipeline.secure_rounds import SecureRounds, shamir_threshold
from pipeline.tools.brokers import ApacheKafkaBroker
from pipeline.tools.demo import scratch_settings
from pipeline.worker_core import MetaAggregator
from wire.events import PrivacyBudgetExhausted
from wire.messages import ThetaVersion
from wire.models import DeltaHeader, encode_deltas

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def fresh_round_topics(
    kafka_broker: ApacheKafkaBroker, tmp_path: Path, name: str
) -> tuple[Settings, SecAggTopics]:
    """Scratch settings on one partition and secure-aggregation topics no other test uses."""
    settings = scratch_settings(kafka_broker.bootstrap, tmp_path, name, partitions=1)
    topics = SecAggTopics(f"test-secagg-{uuid.uuid4().hex}")
    ensure_secagg_topics(settings, topics)
    return settings, topics


def submit_devices(
    pool: ThreadPoolExecutor,
    settings: Settings,
    topics: SecAggTopics,
    config: RoundConfig,
    ids: list[str],
    deltas: dict[str, np.ndarray],
    weights: dict[str, float],
) -> dict[str, Future[Any]]:
    """Each device's round on ``pool``; dev-2 stops after sending its shares."""
    return {
        d: pool.submit(
            run_device,
            settings,
            DeviceRound(d, config),
            deltas[d],
            weights[d],
            topics,
            120.0,
            "shares" if d == "dev-2" else None,
        )
        for d in ids
    }


def test_a_round_over_kafka_survives_a_device_that_vanishes_after_sharing(
    kafka_broker: ApacheKafkaBroker, tmp_path: Path
) -> None:
    # Prepare: fresh topics; four devices with seeded Δ and weights, threshold 3; dev-2 stops
    # after sending its shares.
    settings, topics = fresh_round_topics(kafka_broker, tmp_path, "secagg")
    config = RoundConfig("round-1", n_params=50, threshold=3, phase_timeout_s=15.0)
    ids = ["dev-0", "dev-1", "dev-2", "dev-3"]
    rng = np.random.default_rng(11)
    deltas = {d: rng.normal(0.0, 0.05, 50) for d in ids}
    weights = {d: float(rng.integers(1, 100)) for d in ids}
    runner = AggregatorRunner(settings, AggregatorRound(config, ids, time.monotonic), topics)

    # Execute: the devices in threads, the aggregator here.
    try:
        with ThreadPoolExecutor(len(ids)) as pool:
            futures = submit_devices(pool, settings, topics, config, ids, deltas, weights)
            result = runner.run()
            seen = {d: f.result(timeout=120) for d, f in futures.items()}
    finally:
        runner.close()

    # Assert: the survivors' weighted mean within 1e-6, published to every survivor alike.
    survivors = ["dev-0", "dev-1", "dev-3"]
    expected = sum(weights[d] * deltas[d] for d in survivors) / sum(weights[d] for d in survivors)
    assert result is not None and runner.round.phase is Phase.DONE, runner.round.failure
    assert result.dropped == ("dev-2",) and list(result.survivors) == survivors
    assert result.total_weight == sum(weights[d] for d in survivors)
    np.testing.assert_allclose(result.mean, expected, rtol=0, atol=1e-6)
    assert seen["dev-2"] is None
    for d in survivors:
        got = seen[d]
        assert got is not None and got.dropped == ("dev-2",)
        np.testing.assert_allclose(got.mean, result.mean, rtol=0, atol=0)
    assert runner.refused == []


def test_theta_moves_as_the_unmasked_weighted_mean_and_the_topic_shows_only_masked_vectors(
    kafka_broker: ApacheKafkaBroker, tmp_path: Path
) -> None:
    # Prepare: five federated devices; dev-4 has spent its privacy budget before the round,
    # dev-2 loses power after sending its shares. A twin aggregator gets the plain mean.
    settings, topics = fresh_round_topics(kafka_broker, tmp_path, "secagg-theta")
    signer = Signer.from_file(settings.signing_key)
    ledger = PrivacyLedger(PrivacyPolicy(noise_multiplier=3.0, epsilon_budget=1.5))  # one contribution each
    assert ledger.admit("dev-4")
    aggregator = MetaAggregator(settings, signer, privacy=PrivacyGate(ledger))
    twin = MetaAggregator(settings, signer)
    n = aggregator.n_params
    ids = [f"dev-{i}" for i in range(5)]
    rng = np.random.default_rng(5)
    deltas = {d: rng.normal(0.0, 0.01, n) for d in ids}
    weights = {d: float(rng.integers(1, 50)) for d in ids}
    rounds = SecureRounds(aggregator, topics, phase_timeout_s=15.0)
    theta_before = flatten(aggregator.meta.theta).clone()

    # Execute: the devices in threads (each told the round it joins), the meta agent here.
    config = RoundConfig("round-7", n_params=n, threshold=shamir_threshold(4), phase_timeout_s=15.0)
    with ThreadPoolExecutor(4) as pool:
        futures = submit_devices(pool, settings, topics, config, ids[:4], deltas, weights)
        outcome = rounds.run("round-7", ids)
        for f in futures.values():
            f.result(timeout=120)
    survivors = ["dev-0", "dev-1", "dev-3"]
    mean = sum(weights[d] * deltas[d] for d in survivors) / sum(weights[d] for d in survivors)
    plain = encode_deltas(
        torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1),
        torch.tensor([sum(weights[d] for d in survivors)]),
        DeltaHeader("worker:twin", 0, n),
    )
    twin.on_delta(signer.seal(plain))
    masked = masked_vectors(settings, topics)

    # Assert: θ moved exactly as the unmasked weighted mean moves it (same bounds, same step)
    assert outcome.admitted == ("dev-0", "dev-1", "dev-2", "dev-3") and outcome.over_budget == ("dev-4",)
    assert outcome.result is not None and outcome.result.dropped == ("dev-2",)
    assert aggregator.version == twin.version == 1
    theta_after = flatten(aggregator.meta.theta)
    assert not torch.equal(theta_after, theta_before)
    torch.testing.assert_close(theta_after, flatten(twin.meta.theta), rtol=0, atol=1e-6)
    budget, theta = outcome.outgoing
    assert isinstance(budget, PrivacyBudgetExhausted) and budget.device_id == "dev-4"
    assert isinstance(theta, ThetaVersion) and theta.version == 1
    # Assert: what a reader of the round's topic saw cannot be read as anyone's update.
    assert sorted(masked) == ["dev-0", "dev-1", "dev-3"]  # dev-2 vanished before masking
    for device, vector in masked.items():
        seen = dequantise(vector)[:n]
        for d in ids:
            close = np.isclose(seen, weights[d] * deltas[d], rtol=0, atol=1e-3)
            assert close.mean() < 0.01, (device, d)


def masked_vectors(settings: Settings, topics: SecAggTopics) -> dict[str, np.ndarray]:
    """Every masked input on the round's topic, as an eavesdropper reading from the start gets it."""
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topics.up("masked"), 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    out: dict[str, np.ndarray] = {}
    try:
        for records in consumer.poll(timeout_ms=5000).values():
            for r in records:
                _, message = decode(r.value)
                assert isinstance(message, MaskedInput)
                out[message.device_id] = message.vector
    finally:
        consumer.close()
    return out
