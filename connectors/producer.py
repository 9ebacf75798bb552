"""Sensor producer SDK: send readings to the readings topic, one by one or gateway-packed.

Two ways to send:

* :meth:`SensorProducer.send` — one reading per message, keyed by device id,
  so one device always lands on one partition (what a device does itself).
* :meth:`SensorProducer.send_batch` — "gateway" mode: readings of many devices
  grouped by the partition their device id hashes to, each group packed into
  messages of up to ``gateway_size`` readings (:func:`wire.readings.encode_readings`)
  and sent to that partition explicitly.  Per-device order and partition
  placement are the same as in keyed mode, with far fewer messages, which is
  what lets a worker approach the broker's raw consume rate.

Sources are plain iterables of :class:`~wire.readings.Reading` (any list or
generator); the demo streams and paced sending are tooling (:mod:`pipeline.tools.produce`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.future import Future

from connectors import kafka_python_fix
from connectors.admin import partition_for
from connectors.closing import ClosesOnExit
from connectors.connection_check import check_connection
from connectors.settings import Settings
from wire.readings import MAX_MESSAGE_BYTES, Reading, encode_readings

log = logging.getLogger(__name__)


class ProducerClient(Protocol):
    """The part of :class:`kafka.KafkaProducer` the SDK uses."""

    def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, partition: int | None = None
    ) -> Any: ...

    def partitions_for(self, topic: str) -> set[int]: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


@dataclass(frozen=True)
class SentMessage:
    """One message as :class:`MemoryProducer` recorded it."""

    topic: str
    partition: int
    key: bytes | None
    value: bytes


class MemoryProducer:
    """An in-memory stand-in for :class:`kafka.KafkaProducer` (tests, doctests, dry runs).

    Keyed messages are placed like the real default partitioner places them.

    Examples
    --------
    >>> client = MemoryProducer(partitions=4)
    >>> _ = client.send("t", b"v", key=b"sensor-42")
    >>> client.sent
    [SentMessage(topic='t', partition=1, key=b'sensor-42', value=b'v')]
    """

    def __init__(self, partitions: int = 4) -> None:
        self.partitions = partitions
        self.sent: list[SentMessage] = []

    def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, partition: int | None = None
    ) -> Future:
        if partition is None:
            partition = partition_for(key.decode(), self.partitions) if key is not None else 0
        self.sent.append(SentMessage(topic, partition, key, value or b""))
        return Future().success(None)

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None


class ProducerBufferFull(RuntimeError):
    """More readings are waiting for the broker's acknowledgement than the producer may hold."""


@dataclass(frozen=True)
class _Message:
    """One produced message, kept until the broker acknowledges it."""

    value: bytes
    key: bytes | None
    partition: int | None
    readings: int


class SensorProducer(ClosesOnExit):
    """Sends readings to ``settings.topic_readings`` and keeps each until the broker acknowledges it.

    Nothing is dropped when the broker goes away: kafka-python retries
    unacknowledged messages until its ``delivery_timeout_ms`` (120 s); a
    message that still fails with a retriable error (the broker is down
    for longer) goes back to a queue here and is sent again with the next
    send or flush.  The readings waiting in either place are bounded by
    ``max_pending``: when it is reached, sending blocks for up to
    ``max_block_s`` seconds for acknowledgements and then raises
    :class:`ProducerBufferFull`.  Messages refused for good (e.g. not
    authorised) are counted in :attr:`failed` and make :meth:`flush` raise.

    Delivery is at least once: a message whose acknowledgement was lost
    may be stored twice, and a message sent again after a delivery timeout
    lands after later ones of the same device.

    Parameters
    ----------
    settings : Settings
        Broker, topic names and TLS/SASL options.
    gateway_size : int
        Most readings packed into one message by :meth:`send_batch`.
    client : ProducerClient, optional
        A ready producer client; by default a :class:`kafka.KafkaProducer`
        with ``acks="all"`` and a 5 ms linger.
    max_pending : int
        Most readings sent but not yet acknowledged (including ones queued to be sent again).
    max_block_s : float
        How long a send waits for room under ``max_pending`` before raising.
    client_options : dict, optional
        Extra :class:`kafka.KafkaProducer` options (e.g. ``delivery_timeout_ms``).

    Examples
    --------
    >>> client = MemoryProducer(partitions=2)
    >>> readings = [Reading(f"dev-{i % 5}", (1.0, 2.0), 0.5) for i in range(10)]
    >>> with SensorProducer(Settings(partitions=2), gateway_size=3, client=client) as producer:
    ...     producer.send_batch(readings)
    >>> producer.readings_sent, producer.messages_sent, producer.readings_acked, producer.pending
    (10, 4, 10, 0)
    >>> sorted({m.partition for m in client.sent}), {m.key for m in client.sent}
    ([0, 1], {None})
    """

    def __init__(
        self,
        settings: Settings,
        gateway_size: int = 1,
        client: ProducerClient | None = None,
        *,
        max_pending: int = 500_000,
        max_block_s: float = 60.0,
        client_options: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if gateway_size < 1:
            raise ValueError(f"gateway_size must be >= 1, got {gateway_size}")
        if max_pending < gateway_size:
            raise ValueError(f"max_pending ({max_pending}) must be >= gateway_size ({gateway_size})")
        self.settings = settings
        self.gateway_size = gateway_size
        self.topic = settings.topic_readings
        self.max_pending = max_pending
        self.max_block_s = max_block_s
        self.readings_sent = 0
        """Readings handed to the client (each counted once, however often it is sent again)."""
        self.messages_sent = 0
        self.readings_acked = 0
        """Readings the broker acknowledged (``acks="all"``)."""
        self.resent = 0
        """Messages sent again after a retriable failure."""
        self.failed = 0
        """Messages refused for good."""
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._pending = 0
        self._retry: deque[_Message] = deque()
        self._last_error: BaseException | None = None
        self._n_partitions: int | None = None
        if client is None:
            check_connection(settings)  # a refused password or CA: a clear error now
            kafka_python_fix.apply()
            client = KafkaProducer(
                bootstrap_servers=settings.bootstrap,
                client_id=f"{settings.app_id}-producer",
                **{"acks": "all", "linger_ms": 5, **(client_options or {})},
                **settings.kafka_python_security(),
            )
        self._client: ProducerClient = client

    @property
    def pending(self) -> int:
        """Readings sent but not yet acknowledged, including those waiting to be sent again."""
        return self._pending

    @property
    def n_partitions(self) -> int:
        """Partition count of the readings topic (fetched once: it only grows by operator action)."""
        if self._n_partitions is None:
            partitions = self._client.partitions_for(self.topic)
            if not partitions:
                raise RuntimeError(f"topic {self.topic!r} has no partitions (does it exist?)")
            if len(partitions) != self.settings.partitions:
                # kafka-python 3.0.12 ignores allow_auto_create_topics=False: a missing topic
                # gets auto-created with the broker's default partition count.
                log.warning(
                    "topic %r has %d partitions, settings say %d (auto-created? run ensure_topics first)",
                    self.topic,
                    len(partitions),
                    self.settings.partitions,
                )
            self._n_partitions = len(partitions)
        return self._n_partitions

    def send(self, reading: Reading) -> None:
        """Send one reading keyed by its device id."""
        self._send(encode_readings([reading]), reading.device_id.encode(), None, 1)

    def send_batch(self, readings: Iterable[Reading]) -> None:
        """Send readings gateway-style: per destination partition, up to ``gateway_size`` per message."""
        groups: dict[int, list[Reading]] = defaultdict(list)
        for r in readings:
            groups[partition_for(r.device_id, self.n_partitions)].append(r)
        for partition, group in groups.items():
            for i in range(0, len(group), self.gateway_size):
                chunk = group[i : i + self.gateway_size]
                self._send(encode_readings(chunk), None, partition, len(chunk))

    def _send(self, value: bytes, key: bytes | None, partition: int | None, n: int) -> None:
        if len(value) > MAX_MESSAGE_BYTES:
            # Workers would dead-letter it as oversized; fail here where it can be fixed.
            raise ValueError(f"message of {len(value)} bytes exceeds {MAX_MESSAGE_BYTES}: lower gateway_size")
        self._make_room(n)
        with self._lock:
            self._pending += n
        try:
            self._dispatch(_Message(value, key, partition, n))
        except BaseException:
            with self._lock:  # not handed over (e.g. a bad argument): the caller gets the error
                self._pending -= n
            raise
        self.readings_sent += n
        self.messages_sent += 1

    def _dispatch(self, message: _Message) -> None:
        """Hand ``message`` (already counted in :attr:`pending`) to the client."""
        try:
            future = self._client.send(
                self.topic, value=message.value, key=message.key, partition=message.partition
            )
        except KafkaError as exc:
            # kafka-python's own buffer stayed full (or metadata unknown) for max_block_ms.
            self._on_error(message, exc)
            return
        future.add_callback(lambda _: self._on_ack(message))
        future.add_errback(lambda exc: self._on_error(message, exc))

    def _on_ack(self, message: _Message) -> None:
        with self._lock:
            self._pending -= message.readings
            self.readings_acked += message.readings

    def _on_error(self, message: _Message, exc: BaseException) -> None:
        # Called on kafka-python's I/O thread.
        with self._lock:
            self._last_error = exc
            if getattr(exc, "retriable", False):
                self._retry.append(message)  # still pending: sent again by _resend
            else:
                self._pending -= message.readings
                self.failed += 1

    def _resend(self) -> None:
        """Send again what failed with a retriable error, oldest first."""
        while True:
            with self._lock:
                if not self._retry:
                    return
                message = self._retry.popleft()
            self.resent += 1
            self._dispatch(message)

    def _make_room(self, n: int) -> None:
        self._resend()
        if self._pending + n <= self.max_pending:
            return
        deadline = self._clock() + self.max_block_s
        while self._pending + n > self.max_pending:
            if self._clock() >= deadline:
                raise ProducerBufferFull(
                    f"{self._pending:,} readings are waiting for the broker's acknowledgement "
                    f"(max_pending={self.max_pending:,}) and none came within {self.max_block_s:g} s; "
                    f"nothing was dropped, the caller must retry or stop (last error: {self._last_error!r})"
                )
            self._sleep(0.05)
            self._resend()

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until everything sent so far is acknowledged, sending failed messages again.

        Parameters
        ----------
        timeout_s : float, optional
            Give up after this many seconds (``None``: wait as long as it takes).

        Raises
        ------
        RuntimeError
            If any message was refused for good (``acks="all"``), or the timeout
            passed with readings still unacknowledged: losses are never silent.
        """
        deadline = None if timeout_s is None else self._clock() + timeout_s
        while True:
            self._resend()
            left = None if deadline is None else max(0.0, deadline - self._clock())
            with contextlib.suppress(KafkaError):  # a flush timeout: the checks below say what is left
                self._client.flush(left)
            if self._pending == 0 or (deadline is not None and self._clock() >= deadline):
                break
            if not self._retry:
                self._sleep(0.05)  # acks still arriving on the I/O thread
        if self.failed:
            raise RuntimeError(
                f"{self.failed} messages were not acknowledged; last error: {self._last_error!r}"
            )
        if self._pending:
            raise RuntimeError(
                f"{self._pending:,} readings still unacknowledged after {timeout_s:g} s "
                f"(last error: {self._last_error!r})"
            )

    def close(self, timeout_s: float | None = None) -> None:
        """Flush (see :meth:`flush`), then close the client."""
        try:
            self.flush(timeout_s)
        finally:
            self._client.close()
