"""The boundary where the core's typed messages become records for Kafka topics.

:class:`~pipeline.worker_core.WorkerCore` and
:class:`~pipeline.worker_core.MetaAggregator` return typed messages
(:data:`wire.messages.Message`); the app turns them into :class:`Outgoing`
records with :func:`to_records` when it sends them, and nowhere before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from connectors.settings import Settings
from wire.messages import Contribution, Message, ModelUpdate, ThetaVersion, record
from wire.readings import DeadLetter


@dataclass(frozen=True)
class Outgoing:
    """One message to send: topic name, key, value and headers."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def topic_of(settings: Settings, message: Message) -> str:
    """The topic ``message`` goes to: models, deltas, meta, dead letters, or events for every event."""
    if isinstance(message, ModelUpdate):
        return settings.topic_models
    if isinstance(message, Contribution):
        return settings.topic_deltas
    if isinstance(message, ThetaVersion):
        return settings.topic_meta
    if isinstance(message, DeadLetter):
        return settings.topic_deadletter
    return settings.topic_events


def to_records(settings: Settings, messages: Iterable[Message]) -> list[Outgoing]:
    """Each message encoded once, with its topic, key and headers.

    Examples
    --------
    >>> from wire.events import Drift
    >>> to_records(Settings(), [Drift("d1", 2.0, 0)])
    [Outgoing(topic='metastream.events', key=b'd1', \
value=b'{"v":1,"type":"drift","device_id":"d1","ts":2.0,"meta_version":0}', headers=[])]
    """
    out = []
    for m in messages:
        key, value, headers = record(m)
        out.append(Outgoing(topic_of(settings, m), key, value, headers))
    return out
