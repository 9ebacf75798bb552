"""Secure-aggregation rounds over Kafka (kafka-python): a topic per phase, the aggregator's deadline.

Topics (single partition, prefix ``metastream.secagg`` by default):

=========================  ====================  ==========================================
topic                      direction             carries
=========================  ====================  ==========================================
``<prefix>.adverts``       device → aggregator   :class:`KeyAdvert`
``<prefix>.shares``        device → aggregator   one device's sealed shares
``<prefix>.masked``        device → aggregator   :class:`MaskedInput`
``<prefix>.unmask``        device → aggregator   :class:`UnmaskResponse`
``<prefix>.rounds``        aggregator → devices  roster, each inbox (key = device id),
                                                 unmask request, result
=========================  ====================  ==========================================

The protocol is :mod:`metastream_edge.secagg`; these runners only carry its
messages (:mod:`metastream_edge.secagg_wire`) and keep time.  Each side
positions its consumer at the end of the topics it reads before it sends
anything, so it sees every answer to what it sends, and ignores messages of
other rounds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from connectors import kafka_python_fix
from connectors.admin import admin_client
from connectors.settings import Settings
from metastream_edge.secagg import (
    AggregateResult,
    AggregatorRound,
    DeviceRound,
    EncryptedShare,
    KeyAdvert,
    LateMessage,
    MaskedInput,
    Phase,
    ProtocolError,
    Roster,
    UnmaskRequest,
    UnmaskResponse,
)
from metastream_edge.secagg_wire import Message, decode, encode

log = logging.getLogger(__name__)

PREFIX = "metastream.secagg"
UP = ("adverts", "shares", "masked", "unmask")
DOWN = "rounds"


@dataclass(frozen=True)
class SecAggTopics:
    """The five topic names of one prefix."""

    prefix: str = PREFIX

    def up(self, phase: str) -> str:
        return f"{self.prefix}.{phase}"

    @property
    def down(self) -> str:
        return f"{self.prefix}.{DOWN}"

    def all(self) -> list[str]:
        return [*(self.up(p) for p in UP), self.down]


def ensure_secagg_topics(settings: Settings, topics: SecAggTopics) -> None:
    """Create the round topics (one partition each) if they do not exist."""
    admin = admin_client(settings)
    try:
        new = [NewTopic(t, 1, settings.replication) for t in topics.all()]
        with contextlib.suppress(TopicAlreadyExistsError):  # another runner made them first
            admin.create_topics(new)
    finally:
        admin.close()


def _producer(settings: Settings) -> KafkaProducer:
    kafka_python_fix.apply()
    return KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", **settings.kafka_python_security())


def _consumer_at_end(settings: Settings, topics: Iterable[str]) -> KafkaConsumer:
    kafka_python_fix.apply()
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap, enable_auto_commit=False, **settings.kafka_python_security()
    )
    tps = [TopicPartition(t, 0) for t in topics]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    for tp in tps:
        consumer.position(tp)  # resolve the end now, before anything is sent
    return consumer


def _messages(consumer: KafkaConsumer, timeout_s: float) -> list[tuple[bytes | None, bytes]]:
    batches = consumer.poll(timeout_ms=int(timeout_s * 1000))
    return [(r.key, r.value) for records in batches.values() for r in records]


class AggregatorRunner:
    """Runs one round's aggregator side over Kafka until it is done, failed, or out of time.

    Parameters
    ----------
    settings
        Broker and security settings.
    round_
        The :class:`AggregatorRound` (its clock sets the phase deadlines).
    topics
        Topic names.
    """

    def __init__(
        self, settings: Settings, round_: AggregatorRound, topics: SecAggTopics = SecAggTopics()
    ) -> None:
        self.settings = settings
        self.round = round_
        self.topics = topics
        self.consumer = _consumer_at_end(settings, [topics.up(p) for p in UP])
        self.producer = _producer(settings)
        self.refused: list[str] = []
        """Messages refused (late or malformed), with the reason."""

    def close(self) -> None:
        self.consumer.close()
        self.producer.close()

    def _send(self, key: str | None, message: Message) -> None:
        value = encode(message, self.round.config.round_id)
        self.producer.send(self.topics.down, key=key.encode() if key else None, value=value).get(timeout=30)

    def _receive(self, key: bytes | None, value: bytes) -> None:
        round_id, message = decode(value)
        if round_id != self.round.config.round_id:
            return  # another round's message
        if isinstance(message, KeyAdvert):
            self.round.receive_advert(message)
        elif isinstance(message, list):
            self.round.receive_shares((key or b"").decode(), message)
        elif isinstance(message, MaskedInput):
            self.round.receive_masked(message)
        elif isinstance(message, UnmaskResponse):
            self.round.receive_unmask(message)
        else:
            raise ProtocolError(f"{type(message).__name__} is not a device's message")

    def run(self, poll_s: float = 0.2) -> AggregateResult | None:
        """Carry the round to its end; the result (also published), or ``None`` if it failed."""
        while self.round.phase not in (Phase.DONE, Phase.FAILED):
            for key, value in _messages(self.consumer, poll_s):
                try:
                    self._receive(key, value)
                except (LateMessage, ProtocolError) as exc:  # nothing silent: kept and logged
                    self.refused.append(str(exc))
                    log.warning("secure aggregation: refused a message: %s", exc)
            out = self.round.step()
            if isinstance(out, Roster | UnmaskRequest | AggregateResult):
                self._send(None, out)
            elif isinstance(out, dict):
                for device_id, inbox in out.items():
                    self._send(device_id, inbox)
        if self.round.phase is Phase.FAILED:
            log.warning(
                "secure aggregation round %s failed: %s", self.round.config.round_id, self.round.failure
            )
            return None
        return self.round.result


def run_device(
    settings: Settings,
    device: DeviceRound,
    delta: np.ndarray,
    weight: float,
    topics: SecAggTopics = SecAggTopics(),
    timeout_s: float = 120.0,
    stop_after: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AggregateResult | None:
    """One device's side of a round over Kafka; the published result, or ``None`` if it stopped early.

    ``stop_after`` (``"advert"``, ``"shares"``, ``"masked"``) makes the device
    vanish after that phase: what a device that loses power looks like.

    Raises
    ------
    TimeoutError
        If the aggregator's next message does not come within ``timeout_s``.
    """
    rid = device.config.round_id
    consumer = _consumer_at_end(settings, [topics.down])
    producer = _producer(settings)
    deadline = clock() + timeout_s

    def send(phase: str, message: Message) -> None:
        producer.send(topics.up(phase), key=device.device_id.encode(), value=encode(message, rid)).get(
            timeout=30
        )

    def wait_for(kind: type[Any], for_me: bool = False) -> Any:
        while clock() < deadline:
            for key, value in _messages(consumer, 0.2):
                round_id, message = decode(value)
                if round_id != rid or (for_me and key != device.device_id.encode()):
                    continue
                if isinstance(message, kind):
                    return message
        raise TimeoutError(f"{device.device_id}: no {kind.__name__} for round {rid} within {timeout_s} s")

    try:
        send("adverts", device.advertise())
        if stop_after == "advert":
            return None
        roster = wait_for(Roster)
        send("shares", device.share_keys(roster))
        if stop_after == "shares":
            return None
        inbox: list[EncryptedShare] = wait_for(list, for_me=True)
        send("masked", device.masked_input(inbox, delta, weight))
        if stop_after == "masked":
            return None
        request = wait_for(UnmaskRequest)
        send("unmask", device.unmask(request))
        result: AggregateResult = wait_for(AggregateResult)
        return result
    finally:
        consumer.close()
        producer.close()
