"""End-to-end checks of the local brokers with kafka-python clients."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from pipeline.tools.brokers import ApacheKafkaBroker, EmbeddedBroker

pytestmark = pytest.mark.integration

N_MESSAGES = 100


def produce(bootstrap: str, topic: str, n: int) -> None:
    """Send ``n`` messages ``b"0"``..``b"n-1"`` with acks=all and wait for all acks."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        futures = [producer.send(topic, str(i).encode()) for i in range(n)]
        producer.flush()
        for future in futures:
            future.get(timeout=10)  # raises if any message was not acknowledged
    finally:
        producer.close()


def consume(consumer: KafkaConsumer, n: int, timeout: float) -> list[bytes]:
    """Poll until ``n`` messages arrived or ``timeout`` seconds passed."""
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(values) < n and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            values.extend(r.value for r in records)
    return values


def group_consumer(bootstrap: str, topic: str) -> KafkaConsumer:
    """A consumer in a fresh consumer group, reading the topic from the start."""
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"group-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )


def expected(n: int) -> list[bytes]:
    return [str(i).encode() for i in range(n)]


def test_kafka_produce_consume_in_group(kafka_broker: ApacheKafkaBroker, topic_name: str) -> None:
    # Prepare: a fresh topic (auto-created, one partition) holding N messages
    produce(kafka_broker.bootstrap, topic_name, N_MESSAGES)
    consumer = group_consumer(kafka_broker.bootstrap, topic_name)

    # Execute: read them back through a consumer group
    try:
        values = consume(consumer, N_MESSAGES, timeout=30)
    finally:
        consumer.close()

    # Assert: all N arrived, in order (single partition)
    assert values == expected(N_MESSAGES)


def test_kafka_restart_keeps_acknowledged_messages(kafka_broker: ApacheKafkaBroker, topic_name: str) -> None:
    # Prepare: N messages acknowledged by the broker with acks=all
    produce(kafka_broker.bootstrap, topic_name, N_MESSAGES)
    bootstrap = kafka_broker.bootstrap

    # Execute: restart the broker, then consume in a group
    kafka_broker.restart()
    consumer = group_consumer(kafka_broker.bootstrap, topic_name)
    try:
        values = consume(consumer, N_MESSAGES, timeout=30)
    finally:
        consumer.close()

    # Assert: same address, nothing lost
    assert kafka_broker.bootstrap == bootstrap
    assert values == expected(N_MESSAGES)


@pytest.fixture(scope="module")
def embedded_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        yield broker


def test_embedded_produce_consume(embedded_broker: EmbeddedBroker, topic_name: str) -> None:
    # Prepare: a one-partition topic (Tansu auto-creates 4) holding N messages
    admin = KafkaAdminClient(bootstrap_servers=embedded_broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic_name, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()
    produce(embedded_broker.bootstrap, topic_name, N_MESSAGES)

    # Execute: read with manual assignment (no group: Tansu's first join takes ~23 s)
    consumer = KafkaConsumer(bootstrap_servers=embedded_broker.bootstrap, enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic_name, 0)])
        consumer.seek_to_beginning()
        values = consume(consumer, N_MESSAGES, timeout=30)
    finally:
        consumer.close()

    # Assert: all N arrived, in order
    assert values == expected(N_MESSAGES)
