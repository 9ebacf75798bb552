"""A broker outage in a few lines instead of thousands: rate-limited client logs.

While the broker is away, aiokafka logs every failed attempt (connect,
metadata, fetch, coordinator) at ERROR, many times a second.  The
:class:`OutageLog` filter, attached to the client libraries' loggers,
hides those records and says instead, once the trouble has lasted
``grace_s``: "broker unreachable, retrying"; then every ``repeat_s`` that it
still is; and "reconnected" once :meth:`OutageLog.tick` is told the broker
answers again and no client has complained for ``quiet_s``.  Trouble that
ends within ``grace_s`` (e.g. the group coordinator not being ready during a
first start) is not reported at all.
"""

from __future__ import annotations

import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable

# Messages of aiokafka / kafka-python / Faust that only mean "the broker is not there (yet)".
TROUBLE = re.compile(
    "|".join(
        (
            r"Unable connect to node",
            r"Unable to update metadata",
            r"Failed fetch messages",
            r"Group Coordinator Request failed",
            r"Marking the coordinator dead",
            r"Heartbeat",
            r"NodeNotReadyError",
            r"KafkaConnectionError",
            r"Connect call failed",
            r"GroupCoordinatorNotAvailable",
            r"NotCoordinatorForGroup",
            r"RequestTimedOutError",
            r"Unable to request metadata",
            r"OffsetCommit failed",
            r"Connection refused",
            # kafka-python (edge, producer, tail)
            r"No node available",
            r"Connection lost",
            r"Connection failed",
            r"ECONNREFUSED",
            r"Metadata refresh: failed",
            r"socket disconnected",
            r"Fetch to node \d+ failed",
            r"Got error produce response",
        )
    )
)
LIBRARIES = ("aiokafka", "kafka", "faust")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class OutageLog(logging.Filter):
    """Hides broker-connection trouble records and reports the outage in a few lines.

    Parameters
    ----------
    clock : callable
        Monotonic seconds (injected in tests).
    say : callable
        Where the summary lines go (default: stderr).
    grace_s : float
        Trouble shorter than this is not reported.
    repeat_s : float
        While it lasts, "still unreachable" at most this often.
    quiet_s : float
        No trouble for this long (and a broker answering) means reconnected.

    Examples
    --------
    >>> now, lines = [0.0], []
    >>> f = OutageLog(clock=lambda: now[0], say=lines.append, grace_s=5, repeat_s=30, quiet_s=3)
    >>> def failed() -> bool:
    ...     return f.filter(logging.makeLogRecord({"name": "aiokafka.conn", "levelno": logging.ERROR,
    ...                                            "msg": "Unable connect to node with id 1"}))
    >>> for t in range(0, 40):  # 40 s of outage, one client error every 0.25 s
    ...     for q in range(4):
    ...         now[0] = t + q / 4
    ...         assert failed() is False  # every one hidden
    >>> now[0] = 45.0
    >>> f.tick(reachable=True)
    >>> [line.split(":")[0] for line in lines]
    ['broker unreachable, retrying', 'broker still unreachable, retrying', 'reconnected to the broker']
    >>> lines[-1]
    'reconnected to the broker: the outage lasted 40 s (160 client errors hidden)'
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        say: Callable[[str], None] = _say,
        grace_s: float = 5.0,
        repeat_s: float = 60.0,
        quiet_s: float = 3.0,
    ) -> None:
        super().__init__()
        self.clock = clock
        self.say = say
        self.grace_s = grace_s
        self.repeat_s = repeat_s
        self.quiet_s = quiet_s
        self.since: float | None = None
        """When the current trouble began (``None``: no trouble)."""
        self.last: float = 0.0
        self.announced: float | None = None
        self.hidden = 0
        self.first_message = ""
        self.outages = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass every record except broker-connection trouble (which is counted)."""
        if record.levelno < logging.WARNING or not record.name.startswith(LIBRARIES):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        if not TROUBLE.search(message):
            return True
        now = self.clock()
        if self.since is None:
            self.since, self.hidden, self.first_message = now, 0, message
        self.last = now
        self.hidden += 1
        self._report(now)
        return False

    def _report(self, now: float) -> None:
        assert self.since is not None
        lasted = now - self.since
        if self.announced is None and lasted >= self.grace_s:
            self.announced = now
            self.outages += 1
            self.say(f"broker unreachable, retrying: {self.first_message.strip()}")
        elif self.announced is not None and now - self.announced >= self.repeat_s:
            self.announced = now
            self.say(
                f"broker still unreachable, retrying: {lasted:.0f} s so far "
                f"({self.hidden} client errors hidden)"
            )

    def tick(self, reachable: bool) -> None:
        """Call every second or so: reports an outage that goes on, or its end."""
        if self.since is None:
            return
        now = self.clock()
        if now - self.last < self.quiet_s or not reachable:
            self._report(now)
            return
        if self.announced is not None:
            lasted = self.last - self.since
            self.say(
                f"reconnected to the broker: the outage lasted {lasted:.0f} s "
                f"({self.hidden} client errors hidden)"
            )
        self.since, self.announced = None, None

    @property
    def in_trouble(self) -> bool:
        """Whether client errors were seen and no recovery was reported yet."""
        return self.since is not None


def install(log_filter: logging.Filter, prefixes: Iterable[str] = LIBRARIES) -> list[logging.Logger]:
    """Add ``log_filter`` to every existing logger under ``prefixes``; returns them.

    A logger's filter does not see its children's records, so each module's
    logger gets it (the client libraries create theirs when imported).
    """
    names = [name for name in logging.Logger.manager.loggerDict if name.split(".")[0] in set(prefixes)]
    loggers = [logging.getLogger(name) for name in sorted({*names, *prefixes})]
    for logger in loggers:
        logger.addFilter(log_filter)
    return loggers


class DropMessages(logging.Filter):
    """Drops records whose unformatted message contains one of ``texts`` (known-benign lines).

    Examples
    --------
    >>> f = DropMessages("Missing sensor state for rebalance")
    >>> f.filter(logging.makeLogRecord({"msg": "[^-App]: Missing sensor state for rebalance #%s"}))
    False
    >>> f.filter(logging.makeLogRecord({"msg": "something else"}))
    True
    """

    def __init__(self, *texts: str) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and any(t in record.msg for t in self.texts))


def _answers(bootstrap: str, timeout_s: float = 1.0) -> bool:
    for part in bootstrap.split(","):
        host, _, port = part.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


def report_kafka_python_outages(bootstrap: str, outage: OutageLog | None = None) -> OutageLog:
    """For a kafka-python client (edge, producer, tail): show its warnings, an outage in a few lines.

    kafka-python's own records go nowhere by default, so an outage passed in
    silence; this prints its warnings and errors on stderr, except the
    connection trouble, which ``outage`` sums up.  A daemon thread tells
    ``outage`` when the broker answers again.
    """
    outage = outage or OutageLog()
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(outage)  # a handler's filter sees the records of every child logger
    # kafka-python's event-loop timing warning: it says the machine is busy, not that anything failed.
    handler.addFilter(DropMessages("It is blocking the event loop"))
    kafka = logging.getLogger("kafka")
    kafka.addHandler(handler)
    if kafka.getEffectiveLevel() > logging.WARNING:
        kafka.setLevel(logging.WARNING)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if outage.in_trouble:
                outage.tick(_answers(bootstrap))

    threading.Thread(target=watch, name="metastream-outage-watch", daemon=True).start()
    return outage
