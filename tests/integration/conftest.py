"""Fixtures for integration tests that need a running Kafka broker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from pipeline.tools.brokers import ApacheKafkaBroker
from tests.integration.mosquitto import MosquittoBroker


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[ApacheKafkaBroker]:
    """One real Apache Kafka broker for the whole test session (~5 s warm start)."""
    with ApacheKafkaBroker() as broker:
        yield broker


@pytest.fixture
def topic_name() -> str:
    """A topic name no other test uses, so tests sharing a broker stay independent."""
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoBroker]:
    """One real Mosquitto MQTT broker for the whole test session, on a free loopback port."""
    with MosquittoBroker() as broker:
        yield broker
