"""One way to open a kafka-python consumer that reads topics outside any consumer group."""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer

from connectors import kafka_python_fix
from connectors.settings import Settings


def topic_reader(settings: Settings, purpose: str, **options: Any) -> KafkaConsumer:
    """A consumer in no group (partitions assigned by hand, nothing committed) with ``settings``' TLS/SASL.

    Its ``client_id`` is ``<app_id>-<purpose>``; ``options`` go to
    :class:`kafka.KafkaConsumer` as they are.
    """
    kafka_python_fix.apply()
    return KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        client_id=f"{settings.app_id}-{purpose}",
        group_id=None,
        enable_auto_commit=False,
        **options,
        **settings.kafka_python_security(),
    )
