"""``/metrics`` of a real worker on a real Apache Kafka broker, scraped over HTTP and parsed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.tools.brokers import ApacheKafkaBroker
from tests.harness import BAD_MESSAGES
from tests.integration.web_worker import FedWorker, fed_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def worker(kafka_broker: ApacheKafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FedWorker]:
    with fed_worker(kafka_broker, Path(tmp_path_factory.mktemp("metrics"))) as w:
        yield w


def scrape(w: FedWorker) -> tuple[Samples, dict[str, str]]:
    """Every sample of ``/metrics`` by (name, labels), and each family's type."""
    families = list(text_string_to_metric_families(w.get("/metrics").decode()))
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}
    return samples, {f.name: f.type for f in families}


def labelled(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(k)[label]: v for (n, k), v in samples.items() if n == name}


def test_counters_match_what_the_worker_processed(worker: FedWorker) -> None:
    # Execute
    samples, types = scrape(worker)
    fleet = worker.fleet()

    # Assert: every reading learned, every message consumed, each bad message refused with its reason.
    assert samples[("metastream_readings_total", frozenset())] == len(worker.stream)
    assert samples[("metastream_messages_total", frozenset())] == worker.messages
    assert labelled(samples, "metastream_dead_letters_total", "reason") == {
        reason: 1 for reason in BAD_MESSAGES.values()
    }
    drifts = samples[("metastream_drifts_total", frozenset())]
    assert drifts == fleet["stats"]["drifts"] >= 1
    adaptations = labelled(samples, "metastream_adaptations_total", "cause")
    assert adaptations["new_device"] == 10
    assert sum(adaptations.values()) == fleet["stats"]["adaptations"]
    assert samples[("metastream_meta_version", frozenset())] >= 1
    assert types["metastream_readings"] == "counter" and types["metastream_meta_version"] == "gauge"
    info = next(k for (n, k) in samples if n == "metastream_worker")
    assert dict(info)["app_id"] == worker.settings.app_id


def test_publish_latency_histogram(worker: FedWorker) -> None:
    samples, types = scrape(worker)
    adaptations = labelled(samples, "metastream_adaptations_total", "cause")
    count = labelled(samples, "metastream_publish_latency_seconds_count", "cause")
    total = labelled(samples, "metastream_publish_latency_seconds_sum", "cause")
    acked_count = labelled(samples, "metastream_publish_acked_latency_seconds_count", "cause")
    acked_total = labelled(samples, "metastream_publish_acked_latency_seconds_sum", "cause")

    # One observation per published model, in each histogram.
    assert types["metastream_publish_latency_seconds"] == "histogram"
    assert types["metastream_publish_acked_latency_seconds"] == "histogram"
    assert count == adaptations == acked_count
    # The core mostly adapts in the micro-batch that detected the drift (or met the new device),
    # so published_at − detected_at is small; the broker's ack comes after that, one round trip later.
    assert all(0.0 <= total[cause] / count[cause] < 60.0 for cause in count)
    assert total["drift"] < acked_total["drift"] < 60.0 * acked_count["drift"]
    buckets = [
        (float(dict(k)["le"]), v)
        for (n, k), v in samples.items()
        if n == "metastream_publish_acked_latency_seconds_bucket" and dict(k)["cause"] == "drift"
    ]
    values = [v for _, v in sorted(buckets)]
    assert values == sorted(values) and values[-1] == acked_count["drift"]  # cumulative, ending at +Inf


def test_lag_and_rate(worker: FedWorker) -> None:
    samples, _ = scrape(worker)

    # Everything produced was processed: no lag on either owned readings partition.
    lag = {
        (dict(k)["topic"], dict(k)["partition"]): v
        for (n, k), v in samples.items()
        if n == "metastream_consumer_lag"
    }
    topic = worker.settings.topic_readings
    assert lag == {(topic, "0"): 0, (topic, "1"): 0}
    assert samples[("metastream_consumer_lag_unavailable", frozenset())] == 0
    # While the fleet streamed in, the worker reported a positive rate, bounded by what was produced.
    assert 0 < max(worker.rates_seen) <= len(worker.stream)
    assert samples[("metastream_readings_per_second", frozenset())] >= 0


def test_per_device_error_is_bounded_and_named(worker: FedWorker) -> None:
    samples, _ = scrape(worker)
    errors = labelled(samples, "metastream_device_error", "device")
    fleet = labelled(samples, "metastream_fleet_error", "stat")

    assert set(errors) == set(worker.stream.device_ids)  # 10 devices ≤ top-10
    assert samples[("metastream_devices", frozenset())] == 10
    assert fleet["max"] == max(errors.values())
    assert min(errors.values()) <= fleet["p50"] <= fleet["p90"] <= fleet["max"]
    assert fleet["mean"] == pytest.approx(sum(errors.values()) / len(errors))
