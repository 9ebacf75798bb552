"""Follow some devices' models (and θ) on a Kafka broker with kafka-python, no consumer group.

The consumer is assigned exactly the partitions of the models topic that hold
its devices' keys and reads them from the beginning, so it starts with the
latest compacted model of each device; θ versions and root-signed key sets
come from the meta topic.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from metastream_edge.keyset import KEYSET_KEY
from metastream_edge.signing import Verifier
from metastream_edge.state import META_KEY, Decision, EdgeState


def partition_for(device_id: str, n_partitions: int) -> int:
    """The partition kafka-python's (and the Java client's) default partitioner picks for ``device_id``.

    Examples
    --------
    >>> partition_for("dev-0001", 4), partition_for("sensor-42", 4)
    (0, 1)
    """
    if n_partitions < 1:
        raise ValueError(f"n_partitions must be >= 1, got {n_partitions}")
    return (murmur2(device_id.encode()) & 0x7FFFFFFF) % n_partitions


@dataclass(frozen=True)
class Topics:
    """Where a fleet's messages travel (the worker's ``topic_*`` settings).

    Examples
    --------
    >>> Topics().models, Topics.with_prefix("plant-7").deltas
    ('metastream.models', 'plant-7.deltas')
    """

    models: str = "metastream.models"
    meta: str = "metastream.meta"
    deltas: str = "metastream.deltas"

    @classmethod
    def with_prefix(cls, prefix: str) -> Topics:
        """``<prefix>.models`` etc."""
        return cls(f"{prefix}.models", f"{prefix}.meta", f"{prefix}.deltas")


@dataclass(frozen=True)
class Received:
    """One model message as the subscriber received it (for latency measurements)."""

    decision: Decision
    received_at: float
    """``time.time()`` when the poll returned it."""
    sent_at: float | None
    """The record's timestamp (producer create time) in seconds, if the broker kept one."""
    partition: int
    offset: int
    headers: dict[str, bytes] = field(default_factory=dict)

    @property
    def latency_s(self) -> float | None:
        """Seconds from producing to receiving (clocks of both hosts must agree)."""
        return None if self.sent_at is None else self.received_at - self.sent_at


class EdgeSubscriber:
    """Follows the models of some devices (and optionally θ) on a Kafka broker.

    Parameters
    ----------
    bootstrap : str
        ``host:port[,host:port]``.
    devices : iterable of str
        Device ids to follow.
    verifier : Verifier
        Trusted keys.
    topics : Topics
        The fleet's topic names.
    follow_meta : bool
        Also follow θ on the meta topic.
    log_size : int
        How many recent messages :attr:`received` keeps.
    client_id : str
        Shown in the broker's logs.
    security : mapping
        TLS/SASL options in kafka-python's spelling (``security_protocol``, ``ssl_cafile``, …).
    root : Verifier, optional
        The root key that signs key sets; with it, the subscriber also reads
        the meta topic's key sets and rotates or revokes ``verifier``'s keys.
    """

    def __init__(
        self,
        bootstrap: str,
        devices: Iterable[str],
        verifier: Verifier,
        topics: Topics | None = None,
        follow_meta: bool = False,
        log_size: int = 10_000,
        client_id: str = "metastream-edge",
        security: Mapping[str, Any] | None = None,
        root: Verifier | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics or Topics()
        self.follow_meta = follow_meta
        self.state = EdgeState(verifier, devices, log_size, root=root)
        self._meta_keys = {META_KEY} if follow_meta else set()
        if root is not None:
            self._meta_keys.add(KEYSET_KEY)
        if not self.state.devices and not follow_meta:
            raise ValueError("an edge subscriber needs at least one device (or follow_meta=True)")
        self.received: deque[Received] = deque(maxlen=log_size)
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **dict(security or {}),
        )
        try:
            self._assign()
        except BaseException:
            self._consumer.close()
            raise

    def _partitions(self, topic: str) -> set[int]:
        partitions: set[int] = self._consumer.partitions_for_topic(topic)
        if not partitions:
            raise RuntimeError(f"topic {topic!r} not found on {self.bootstrap}; create it first")
        return partitions

    def _assign(self) -> None:
        models = self.topics.models
        n = len(self._partitions(models)) if self.state.devices else 0
        wanted = {TopicPartition(models, partition_for(d, n)) for d in self.state.devices}
        meta = set()
        if self._meta_keys:
            meta = {TopicPartition(self.topics.meta, p) for p in self._partitions(self.topics.meta)}
        if KEYSET_KEY in self._meta_keys:
            # Trust first: the key sets (and θ) already on the meta topic, then the models.
            read_to = self._read_up_to_end(meta)
            self._consumer.assign(sorted(wanted | meta))
            for tp, offset in read_to.items():
                self._consumer.seek(tp, offset)
        else:
            self._consumer.assign(sorted(wanted | meta))
            self._consumer.seek_to_beginning(*meta)
        if wanted:
            self._consumer.seek_to_beginning(*wanted)

    def _read_up_to_end(
        self, partitions: set[TopicPartition], timeout_s: float = 30.0
    ) -> dict[TopicPartition, int]:
        """Offer what the meta topic holds now, before any model; returns the offsets reached.

        Otherwise a model signed by a key revoked since could be read (and
        accepted) before the key set that revokes it.
        """
        self._consumer.assign(sorted(partitions))
        self._consumer.seek_to_beginning(*partitions)
        end: dict[TopicPartition, int] = self._consumer.end_offsets(list(partitions))
        deadline = time.monotonic() + timeout_s
        while any(self._consumer.position(tp) < end[tp] for tp in partitions):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"could not read the key sets on {self.topics.meta!r} within {timeout_s:.0f} s"
                )
            for records in self._consumer.poll(timeout_ms=200).values():
                for r in records:
                    key = r.key.decode("utf-8", "replace") if r.key is not None else ""
                    if key in self._meta_keys and r.value is not None:
                        self.state.offer_all(key, r.value)
        return {tp: self._consumer.position(tp) for tp in partitions}

    def poll_once(self, timeout_ms: int = 500) -> list[Decision]:
        """Fetch what arrived (waiting up to ``timeout_ms``), offer it to the state, return the decisions."""
        batches = self._consumer.poll(timeout_ms=timeout_ms)
        now = time.time()
        decisions: list[Decision] = []
        for tp, records in batches.items():
            is_meta = tp.topic == self.topics.meta
            for r in records:
                key = r.key.decode("utf-8", "replace") if r.key is not None else ""
                # Partitions are shared with other devices: skip theirs without verifying.
                if (key not in self._meta_keys) if is_meta else (key not in self.state.devices):
                    continue
                if r.value is None:
                    continue  # a tombstone: keep running the last good model
                sent_at = r.timestamp / 1000 if r.timestamp is not None and r.timestamp >= 0 else None
                headers = {k: v for k, v in (r.headers or [])}
                for decision in self.state.offer_all(key, r.value):
                    self.received.append(Received(decision, now, sent_at, r.partition, r.offset, headers))
                    decisions.append(decision)
        return decisions

    def run(
        self,
        until: Callable[[], bool] | None = None,
        timeout_s: float | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        poll_ms: int = 200,
    ) -> list[Decision]:
        """Poll until ``until()`` is true or ``timeout_s`` passed (both ``None``: forever).

        Returns the decisions made during the run; ``on_decision`` sees each as it happens.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        decisions: list[Decision] = []
        while not (until is not None and until()):
            left_ms = poll_ms if deadline is None else int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            for decision in self.poll_once(min(poll_ms, left_ms)):
                decisions.append(decision)
                if on_decision is not None:
                    on_decision(decision)
        return decisions

    def current_version(self, device_id: str) -> int | None:
        """The running model version of ``device_id`` (``None`` before the first one)."""
        return self.state.version(device_id)

    def predict(self, device_id: str, x: np.ndarray) -> np.ndarray:
        """Local inference with the running model of ``device_id``."""
        return self.state.predict(device_id, x)

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
