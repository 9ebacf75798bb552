"""A secure-aggregation round over a real Apache Kafka broker, with a device that vanishes mid-round."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from connectors.secagg_kafka import AggregatorRunner, SecAggTopics, ensure_secagg_topics, run_device
from metastream_edge.secagg import AggregatorRound, DeviceRound, Phase, RoundConfig
from pipeline.tools.brokers import ApacheKafkaBroker
from tests.harness import scratch_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_round_over_kafka_survives_a_device_that_vanishes_after_sharing(
    kafka_broker: ApacheKafkaBroker, tmp_path: Path
) -> None:
    # Prepare: fresh topics; four devices with seeded Δ and weights, threshold 3; dev-2 stops
    # after sending its shares.
    settings = scratch_settings(kafka_broker.bootstrap, tmp_path, "secagg", partitions=1)
    topics = SecAggTopics(f"test-secagg-{uuid.uuid4().hex}")
    ensure_secagg_topics(settings, topics)
    config = RoundConfig("round-1", n_params=50, threshold=3, phase_timeout_s=15.0)
    ids = ["dev-0", "dev-1", "dev-2", "dev-3"]
    rng = np.random.default_rng(11)
    deltas = {d: rng.normal(0.0, 0.05, 50) for d in ids}
    weights = {d: float(rng.integers(1, 100)) for d in ids}
    runner = AggregatorRunner(settings, AggregatorRound(config, ids, time.monotonic), topics)

    # Execute: the devices in threads, the aggregator here.
    try:
        with ThreadPoolExecutor(len(ids)) as pool:
            futures = {
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
