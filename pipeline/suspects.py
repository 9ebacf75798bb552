"""Messages the learner failed on: isolate them after one failure, dead-letter them after the limit.

When the learner core raises on a chunk of readings messages, the worker
cannot tell which message did it, and its in-memory state may be half
updated; so it records the chunk's offset range per partition as *suspect*
(on a compacted topic, before it exits: see :mod:`pipeline.app`) and exits
for a restart from the last checkpoint.  After the restart:

- a message in a range that failed once is learned **alone** (a chunk of one
  message), so a second failure names the very message (the bisection is
  done by the restarts, not in a process whose state a failure may have
  corrupted);
- a message whose failures reached the limit (default 2) is **refused**: it
  becomes a dead letter with reason ``learner_failed`` and the worker goes on.

So a message that makes the learner raise costs at most ``limit`` restarts,
and the good messages of its chunks are still learned (once: the restart
resumes from the checkpoint).

:class:`SuspectLedger` is the bookkeeping, with no Kafka in it; each
partition's whole list is one record keyed by the partition number, so
compaction keeps exactly the newest list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

SUSPECT_LIMIT = 2
"""Failures after which a message is dead-lettered instead of learned again."""
FORMAT_VERSION = 1

M = TypeVar("M", bound=tuple[Any, int, int])
"""A message as the core takes it: ``(value, partition, offset)``."""


class SuspectError(ValueError):
    """A suspects record that cannot be read."""


@dataclass(frozen=True)
class Suspect:
    """Offsets ``first`` … ``last`` of one partition, on which the learner failed ``attempts`` times."""

    first: int
    last: int
    attempts: int

    def __contains__(self, offset: int) -> bool:
        return self.first <= offset <= self.last


class SuspectLedger:
    """Per readings partition, the offset ranges the learner failed on, and how often.

    Parameters
    ----------
    limit
        Failures after which a message is refused (dead-lettered).

    Examples
    --------
    >>> ledger = SuspectLedger(limit=2)
    >>> chunk = [(b"a", 0, 10), (b"b", 0, 11), (b"c", 0, 12)]
    >>> ledger.failed(chunk)  # the learner raised on the chunk: remember it, once
    {0: [Suspect(first=10, last=12, attempts=1)]}
    >>> [[m[2] for m in piece] for piece in ledger.pieces(chunk)]  # after a restart: one at a time
    [[10], [11], [12]]
    >>> ledger.failed([(b"b", 0, 11)])  # it was message 11
    {0: [Suspect(first=10, last=12, attempts=1), Suspect(first=11, last=11, attempts=2)]}
    >>> ledger.refused(0, 11), ledger.refused(0, 10), ledger.attempts(0, 11)
    (True, False, 2)
    """

    def __init__(self, limit: int = SUSPECT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._suspects: dict[int, list[Suspect]] = {}

    def attempts(self, partition: int, offset: int) -> int:
        """How often the learner failed on a chunk holding this message (0: never)."""
        return max((s.attempts for s in self._suspects.get(partition, ()) if offset in s), default=0)

    def refused(self, partition: int, offset: int) -> bool:
        """True once the failures on this message reached the limit: dead-letter it."""
        return self.attempts(partition, offset) >= self.limit

    def pieces(self, messages: Sequence[M]) -> Iterator[list[M]]:
        """``messages`` in order, cut so that every suspect one (not yet refused) is a piece of its own."""
        run: list[M] = []
        for m in messages:
            n = self.attempts(m[1], m[2])
            if 0 < n < self.limit:
                if run:
                    yield run
                    run = []
                yield [m]
            else:
                run.append(m)
        if run:
            yield run

    def failed(self, messages: Sequence[M]) -> dict[int, list[Suspect]]:
        """The learner raised on ``messages``: record them; returns the changed partitions' whole lists.

        The new range of a partition spans its messages in the chunk; its
        count is one more than the most any of them had failed before.
        """
        spans: dict[int, list[int]] = {}
        for _, partition, offset in messages:
            spans.setdefault(partition, []).append(offset)
        for partition, offsets in spans.items():
            before = max(self.attempts(partition, o) for o in offsets)
            self._suspects.setdefault(partition, []).append(Suspect(min(offsets), max(offsets), before + 1))
        return {p: list(self._suspects[p]) for p in sorted(spans)}

    def load(self, partition: int, suspects: Sequence[Suspect], after: int = -1) -> None:
        """Take over ``partition``'s suspects as read back, ignoring ranges that end at or before ``after``.

        ``after`` is the partition's checkpointed offset: messages up to it
        are never processed again.
        """
        kept = [s for s in suspects if s.last > after]
        if kept:
            self._suspects[partition] = kept
        else:
            self._suspects.pop(partition, None)

    def forget(self, partitions: Sequence[int]) -> None:
        """Drop revoked partitions (their next owner reads their suspects back)."""
        for p in partitions:
            self._suspects.pop(p, None)

    def of(self, partition: int) -> list[Suspect]:
        """The suspects of one partition (a copy)."""
        return list(self._suspects.get(partition, ()))


def encode_suspects(partition: int, suspects: Sequence[Suspect], writer: str = "") -> bytes:
    """One partition's suspects as JSON (sign it before it goes to the topic).

    Examples
    --------
    >>> raw = encode_suspects(3, [Suspect(10, 12, 1)], writer="w1")
    >>> raw
    b'{"v":1,"partition":3,"suspects":[[10,12,1]],"writer":"w1"}'
    >>> decode_suspects(raw)
    (3, [Suspect(first=10, last=12, attempts=1)])
    """
    body = {
        "v": FORMAT_VERSION,
        "partition": partition,
        "suspects": [[s.first, s.last, s.attempts] for s in suspects],
        "writer": writer,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_suspects(raw: bytes) -> tuple[int, list[Suspect]]:
    """``(partition, suspects)`` of one record.

    Raises
    ------
    SuspectError
        If it is not a suspects record of this format.

    Examples
    --------
    >>> decode_suspects(b'{"v":1,"partition":0,"suspects":[[5,4,1]]}')
    Traceback (most recent call last):
    ...
    pipeline.suspects.SuspectError: not a suspects record: bad range [5, 4, 1]
    """
    try:
        body = json.loads(raw)
        if body.get("v") != FORMAT_VERSION:
            raise SuspectError(f"not a suspects record: version {body.get('v')!r}")
        partition = body["partition"]
        out = []
        for item in body["suspects"]:
            if not (
                isinstance(item, list)
                and len(item) == 3
                and all(type(v) is int for v in item)
                and 0 <= item[0] <= item[1]
                and item[2] >= 1
            ):
                raise SuspectError(f"not a suspects record: bad range {item!r}")
            out.append(Suspect(*item))
        if type(partition) is not int or partition < 0:
            raise SuspectError(f"not a suspects record: partition {partition!r}")
        return partition, out
    except SuspectError:
        raise
    except (ValueError, RecursionError, AttributeError, KeyError, TypeError) as exc:
        raise SuspectError(f"not a suspects record: {exc!r}"[:200]) from exc
