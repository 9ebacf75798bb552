"""SensorProducer keeps every reading until the broker acknowledges it (no broker: a scripted client)."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError
from kafka.future import Future

from connectors.producer import ProducerBufferFull, SensorProducer
from connectors.settings import Settings
from wire.readings import Reading, decode_readings


class ScriptedClient:
    """A producer client whose sends succeed, fail, or stay unanswered, as the test says.

    ``outcomes`` is consumed one per send: ``"ok"``, ``"retriable"`` (a delivery
    timeout), ``"fatal"`` (not authorised), ``"raise"`` (``send`` itself raises)
    or ``"hang"`` (never answered);
    after it runs out every send succeeds.
    """

    def __init__(self, outcomes: list[str] | None = None) -> None:
        self.outcomes = list(outcomes or [])
        self.delivered: list[bytes] = []
        self.attempts = 0
        self.flushes = 0

    def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, partition: int | None = None
    ) -> Any:
        self.attempts += 1
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        future = Future()
        if outcome == "ok":
            self.delivered.append(value or b"")
            return future.success(None)
        if outcome == "retriable":
            return future.failure(KafkaTimeoutError("Batch expired"))
        if outcome == "fatal":
            return future.failure(TopicAuthorizationFailedError())
        if outcome == "raise":
            raise ValueError("bad partition")
        return future  # "hang": no answer ever

    def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1

    def close(self, timeout: float | None = None) -> None:
        return None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def readings(n: int) -> list[Reading]:
    return [Reading(f"dev-{i}", (float(i), 1.0), float(i)) for i in range(n)]


def delivered_readings(client: ScriptedClient) -> list[Reading]:
    return [r for value in client.delivered for r in decode_readings(value)[0]]


def test_readings_that_time_out_are_sent_again_and_none_is_lost() -> None:
    # Prepare: the first three sends time out (the broker was away longer than delivery_timeout)
    client = ScriptedClient(["retriable", "retriable", "retriable"])
    producer = SensorProducer(Settings(partitions=2), client=client)

    # Execute
    for r in readings(10):
        producer.send(r)
    producer.flush(timeout_s=5)

    # Assert: every reading delivered exactly once, the three failed ones after a resend
    assert sorted(delivered_readings(client), key=lambda r: r.y) == readings(10)
    assert (producer.readings_sent, producer.readings_acked, producer.pending) == (10, 10, 0)
    assert (producer.resent, producer.failed, client.attempts) == (3, 0, 13)


def test_a_refused_message_is_counted_and_flush_raises() -> None:
    client = ScriptedClient(["ok", "fatal"])
    producer = SensorProducer(Settings(partitions=2), client=client)

    for r in readings(3):
        producer.send(r)

    with pytest.raises(RuntimeError, match=r"1 messages were not acknowledged.*TopicAuthorizationFailed"):
        producer.flush(timeout_s=5)
    assert (producer.failed, producer.readings_acked, producer.pending, producer.resent) == (1, 2, 0, 0)


def test_a_full_buffer_raises_after_blocking_and_keeps_what_it_holds() -> None:
    # Prepare: a broker that never answers; room for 5 readings, 2 s of patience
    clock = FakeClock()
    client = ScriptedClient(["hang"] * 10)
    producer = SensorProducer(
        Settings(partitions=2), client=client, max_pending=5, max_block_s=2.0, clock=clock, sleep=clock.sleep
    )
    for r in readings(5):
        producer.send(r)

    # Execute / Assert: the sixth waits 2 s (fake clock), then a clear error; nothing was dropped
    with pytest.raises(
        ProducerBufferFull, match=r"5 readings are waiting.*max_pending=5.*nothing was dropped"
    ):
        producer.send(readings(6)[5])
    assert clock.now == pytest.approx(2.0, abs=0.06)
    assert (producer.pending, producer.readings_sent, client.attempts) == (5, 5, 5)


def test_flush_gives_up_after_its_timeout_and_says_how_many_are_unacknowledged() -> None:
    clock = FakeClock()
    client = ScriptedClient(["hang"] * 4)
    producer = SensorProducer(Settings(partitions=2), client=client, clock=clock, sleep=clock.sleep)
    producer.send_batch(readings(4))

    with pytest.raises(RuntimeError, match="4 readings still unacknowledged after 1 s"):
        producer.flush(timeout_s=1.0)
    assert producer.pending == 4


def test_max_pending_must_hold_one_message() -> None:
    with pytest.raises(ValueError, match=r"max_pending \(5\) must be >= gateway_size \(10\)"):
        SensorProducer(Settings(), gateway_size=10, client=ScriptedClient(), max_pending=5)


def test_a_send_that_raises_is_not_counted_as_pending() -> None:
    client = ScriptedClient(["raise"])
    producer = SensorProducer(Settings(partitions=2), client=client)

    with pytest.raises(ValueError, match="bad partition"):
        producer.send(readings(1)[0])
    producer.send(readings(2)[1])
    producer.flush(timeout_s=1)

    assert (producer.readings_sent, producer.readings_acked, producer.pending) == (1, 1, 0)
