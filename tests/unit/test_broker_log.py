"""The outage log: client errors hidden, an outage reported in a few lines, short hiccups not at all."""

from __future__ import annotations

import logging

from pipeline.broker_log import DropMessages, OutageLog


def record(name: str, msg: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"name": name, "levelno": level, "levelname": logging.getLevelName(level), "msg": msg}
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_hiccup_shorter_than_the_grace_is_not_reported() -> None:
    # Prepare
    clock, lines = Clock(), list[str]()
    log = OutageLog(clock=clock, say=lines.append, grace_s=5, quiet_s=3)

    # Execute: one coordinator error at start-up, then calm
    hidden = log.filter(
        record("aiokafka.consumer.group_coordinator", "Group Coordinator Request failed: [Error 15]")
    )
    clock.now = 4.0
    log.tick(reachable=True)

    # Assert
    assert hidden is False
    assert lines == [] and not log.in_trouble


def test_an_outage_is_three_lines_and_other_records_pass() -> None:
    # Prepare
    clock, lines = Clock(), list[str]()
    log = OutageLog(clock=clock, say=lines.append, grace_s=5, repeat_s=60, quiet_s=3)
    passed = []

    # Execute: 100 s without a broker, ten client errors a second; other records in between
    for i in range(1000):
        clock.now = i / 10
        log.tick(reachable=False)
        passed.append(log.filter(record("aiokafka.conn", "Unable connect to node with id 1: [Errno 111]")))
    passed.append(log.filter(record("aiokafka.consumer", "Unexpected error in fetcher: KeyError")))
    passed.append(log.filter(record("pipeline.app", "Unable connect to node (not a client library)")))
    passed.append(log.filter(record("aiokafka.conn", "Unable connect to node", logging.INFO)))
    clock.now = 101.0
    log.tick(reachable=True)  # quiet for 1 s only: not yet
    clock.now = 103.0
    log.tick(reachable=False)  # quiet, but the broker does not answer: not yet
    clock.now = 104.0
    log.tick(reachable=True)

    # Assert
    assert passed == [False] * 1000 + [True, True, True]
    assert lines == [
        "broker unreachable, retrying: Unable connect to node with id 1: [Errno 111]",
        "broker still unreachable, retrying: 65 s so far (650 client errors hidden)",
        "reconnected to the broker: the outage lasted 100 s (1000 client errors hidden)",
    ]
    assert not log.in_trouble and log.outages == 1


def test_drop_messages_matches_the_unformatted_text_only() -> None:
    # Prepare
    drop = DropMessages("Missing sensor state for rebalance")

    # Execute / Assert
    assert drop.filter(record("faust.app.base", "[^-App]: Missing sensor state for rebalance #%s")) is False
    assert drop.filter(record("faust.app.base", "Missing sensor state?")) is True
