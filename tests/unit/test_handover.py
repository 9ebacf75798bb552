"""The partition handover protocol (:mod:`pipeline.handover`) against in-memory fakes, without a broker.

Hold → checkpoint → ack, revoke → final checkpoint, assign → restore-before-learn,
and a forged checkpoint refused on restore (with the real signing).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from connectors.settings import Settings
from connectors.signing import Signer
from pipeline.checkpoints import newest_checkpoint
from pipeline.chunk_layout import manifest_key
from pipeline.fatal import FatalStop
from pipeline.handover import Handover
from pipeline.worker_core import PartitionCheckpoint, WorkerCore
from wire.readings import Reading, encode_readings


@dataclass(frozen=True)
class Ck:
    """A checkpoint taken of one partition: up to ``offset``."""

    partition: int
    offset: int


class Message:
    """A consumed readings message whose final ack can be held (like Faust's ``Message``)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.refs = 1

    def incref(self, n: int = 1) -> None:
        self.refs += n


class Fakes:
    """Core, checkpoint topic and consumer of one worker, in memory; every call is logged in order.

    The core's state of a partition is the offset of the last message it learned; a
    checkpoint holds that offset.  Writing and restoring can be held open with gates
    (a broker that has not acked yet, a restore still reading).
    """

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.learned: dict[int, int] = {}
        self.dirty: set[int] = set()
        self.topic: dict[int, list[int]] = defaultdict(list)
        self.committed: list[tuple[int, int]] = []
        self.forgotten: list[list[int]] = []
        self.write_gate = asyncio.Event()
        self.write_gate.set()
        self.restore_gates: dict[int, asyncio.Event] = {}
        """Partitions whose restore is still reading until their gate is set."""

    async def take(self) -> list[Ck]:
        taken = [Ck(p, self.learned[p]) for p in sorted(self.dirty)]
        self.dirty.clear()
        return taken

    async def release(self, partitions: Sequence[int]) -> list[Ck]:
        self.log.append(("release", list(partitions)))
        taken = [Ck(p, self.learned[p]) for p in partitions if p in self.dirty]
        self.dirty -= set(partitions)
        for p in partitions:
            self.learned.pop(p, None)
        return taken

    async def write(self, taken: Sequence[Ck]) -> None:
        self.log.append(("write", list(taken)))
        await self.write_gate.wait()  # the broker's acks
        for ck in taken:
            self.topic[ck.partition].append(ck.offset)

    async def restore(self, partitions: Sequence[int]) -> dict[int, int]:
        self.log.append(("restore", list(partitions)))
        for p in partitions:
            if p in self.restore_gates:
                await self.restore_gates[p].wait()
        offsets = {p: self.topic[p][-1] if self.topic[p] else -1 for p in partitions}
        self.learned |= {p: o for p, o in offsets.items() if o >= 0}
        self.log.append(("restored", list(partitions)))
        return offsets

    def commit(self, message: Any) -> None:
        self.committed.append((message.partition, message.offset))

    async def learn(self, chunk: Sequence[tuple[int, int]]) -> int:
        self.log.append(("learn", list(chunk)))
        for p, offset in chunk:
            self.learned[p] = offset
            self.dirty.add(p)
        return len(chunk)

    def forget(self, partitions: Sequence[int]) -> None:
        self.forgotten.append(list(partitions))

    def handover(self) -> Handover[Ck, Sequence[tuple[int, int]], int]:
        return Handover(
            take=self.take,
            release=self.release,
            write=self.write,
            restore=self.restore,
            commit=self.commit,
            learn=self.learn,
            fatal=FatalStop(stop=lambda: None, hard_exit=lambda code: None),
            forget=self.forget,
        )


def hold(handover: Handover[Any, Any, Any], partition: int, offsets: range) -> None:
    for offset in offsets:
        message = Message(offset)
        message.partition = partition  # type: ignore[attr-defined]  # for the fake commit's record
        handover.hold(partition, message)


async def settle() -> None:
    """Let every task that can run, run (the fakes never sleep)."""
    for _ in range(20):
        await asyncio.sleep(0)


def test_acks_are_held_until_a_checkpoint_covering_them_is_acked() -> None:
    async def scenario() -> tuple[list[tuple[int, int]], list[tuple[int, int]], dict[int, int], Any]:
        # Prepare: partition 0 restored; five messages taken, the first three learned.
        fakes = Fakes()
        handover = fakes.handover()
        await handover.assign({0})
        hold(handover, 0, range(5))
        await handover.learn([(0, 0), (0, 1), (0, 2)])
        fakes.write_gate.clear()  # the broker has not acked the checkpoint yet

        # Execute: checkpoint; look before and after the broker's ack.
        writing = asyncio.ensure_future(handover.checkpoint_changed())
        await settle()
        before_ack = list(fakes.committed)
        fakes.write_gate.set()
        await writing
        return before_ack, fakes.committed, handover.held.pending(), fakes.log[-1]

    before_ack, after_ack, still_held, last_call = asyncio.run(scenario())

    # Assert: nothing committable while the checkpoint is unacked; then exactly what it covers.
    assert last_call == ("write", [Ck(0, 2)])
    assert before_ack == []
    assert after_ack == [(0, 0), (0, 1), (0, 2)]
    assert still_held == {0: 2}


def test_revoke_writes_a_final_checkpoint_and_drops_the_partition() -> None:
    async def scenario() -> dict[str, Any]:
        # Prepare: partitions 0 and 1 owned, both learned, nothing checkpointed yet.
        fakes = Fakes()
        handover = fakes.handover()
        await handover.assign({0, 1})
        hold(handover, 0, range(4))
        hold(handover, 1, range(3))
        await handover.learn([(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)])

        # Execute: partition 0 is revoked; later it comes back.
        await handover.revoke({0})
        after_revoke = {
            "log": list(fakes.log[-2:]),
            "checkpointed": dict(handover.checkpointed),
            "held": handover.held.pending(),
            "learned": dict(fakes.learned),
            "committed": list(fakes.committed),
        }
        await handover.assign({0, 1})
        return {"revoke": after_revoke, "forgotten": fakes.forgotten, "back": fakes.log[-2:], **fakes.learned}

    got = asyncio.run(scenario())

    # Assert: a final checkpoint of partition 0 was written; its state, holds and suspects are gone.
    revoke = got["revoke"]
    assert revoke["log"] == [("release", [0]), ("write", [Ck(0, 3)])]
    assert revoke["checkpointed"] == {1: -1}
    assert revoke["held"] == {1: 3}
    assert revoke["learned"] == {1: 2}
    assert revoke["committed"] == []  # the group already forgot partition 0's acks
    assert got["forgotten"] == [[0]]
    # Back again, partition 0 (only) is restored, from the final checkpoint.
    assert got["back"] == [("restore", [0]), ("restored", [0])]
    assert got[0] == 3


def test_assign_restores_before_the_first_reading_is_learned() -> None:
    async def scenario() -> tuple[list[tuple[str, Any]], list[tuple[str, Any]], int]:
        # Prepare: a checkpoint of partition 0 up to offset 6 is on the topic; restoring is slow.
        fakes = Fakes()
        fakes.topic[0].append(6)
        handover = fakes.handover()
        fakes.restore_gates[0] = asyncio.Event()

        # Execute: partition 0 is assigned and a reading of it arrives during the restore.
        handover.assign({0})
        learning = asyncio.ensure_future(handover.learn([(0, 7)]))
        await settle()
        during = list(fakes.log)
        fakes.restore_gates[0].set()
        learned = await learning
        return during, fakes.log, learned

    during, log, learned = asyncio.run(scenario())

    # Assert: the reading waited for the restore, then was learned on top of it.
    assert during == [("restore", [0])]
    assert log == [("restore", [0]), ("restored", [0]), ("learn", [(0, 7)])]
    assert learned == 1


def test_only_the_newest_assignment_lets_learning_go_on() -> None:
    async def scenario() -> tuple[bool, list[tuple[str, Any]], bool]:
        # Prepare: restoring is slow; a first assignment starts restoring partition 0.
        fakes = Fakes()
        handover = fakes.handover()
        fakes.restore_gates = {0: asyncio.Event(), 1: asyncio.Event()}
        first = handover.assign({0})
        await settle()

        # Execute: a second assignment comes before that restore is done; it finishes, the
        # second one's restore of partition 1 starts and is still reading.
        second = handover.assign({0, 1})
        fakes.restore_gates[0].set()
        await first
        await settle()
        after_first, log = handover.restored.is_set(), list(fakes.log)
        fakes.restore_gates[1].set()
        await second
        return after_first, log, handover.restored.is_set()

    after_first, log, after_second = asyncio.run(scenario())

    # Assert: the stale restore did not let learning go on; the newest restored only what was new.
    assert log == [("restore", [0]), ("restored", [0]), ("restore", [1])]
    assert not after_first
    assert after_second


SETTINGS = Settings(n_features=2, partitions=1, learner={"hidden": [8]})


class MemoryCheckpointTopic:
    """Partition 0 of the checkpoint topic as a list of ``(offset, key, value)`` records."""

    @dataclass
    class Record:
        offset: int
        key: bytes | None
        value: bytes | None

    def __init__(self) -> None:
        self.records: list[MemoryCheckpointTopic.Record] = []

    def append(self, key: str, value: bytes) -> int:
        self.records.append(self.Record(len(self.records), key.encode(), value))
        return len(self.records) - 1

    async def read(self, start: int, end: int) -> list[MemoryCheckpointTopic.Record]:
        return [r for r in self.records if start <= r.offset < end]

    def write(
        self, core: WorkerCore, taken: Sequence[PartitionCheckpoint], alter: Callable[[bytes], bytes] = bytes
    ) -> None:
        """As the worker writes them: every chunk, then the manifest naming the chunks' offsets.

        ``alter`` may rewrite each signed manifest before it lands (a forger's doing).
        """
        for ck in taken:
            offsets = [self.append(key, payload) for _, key, payload, _ in ck.chunks]
            self.append(manifest_key(ck.partition), alter(core.seal_manifest(ck, offsets)))


def wired(core: WorkerCore, topic: MemoryCheckpointTopic) -> Handover[PartitionCheckpoint, Any, Any]:
    """A handover over a real core and the in-memory checkpoint topic (what the app wires to Kafka)."""

    async def write(taken: Sequence[PartitionCheckpoint]) -> None:
        topic.write(core, taken)

    async def restore(partitions: Sequence[int]) -> dict[int, int]:
        offsets = {}
        for p in partitions:
            ck = await newest_checkpoint(topic, p, core.open_manifest, core.open_chunk, 0, len(topic.records))
            core.restore(p, ck)
            offsets[p] = ck.offset if ck is not None else -1
        return offsets

    async def take() -> list[PartitionCheckpoint]:
        return core.checkpoint()

    async def release(partitions: Sequence[int]) -> list[PartitionCheckpoint]:
        return core.release(partitions)

    async def learn(chunk: list[tuple[bytes | None, int, int]]) -> Any:
        return core.on_readings(chunk)

    return Handover(
        take=take,
        release=release,
        write=write,
        restore=restore,
        commit=lambda message: None,
        learn=learn,
        fatal=FatalStop(stop=lambda: None, hard_exit=lambda code: None),
    )


def readings(device: str, n: int) -> bytes:
    return encode_readings([Reading(device, (float(i), 1.0), float(i % 3)) for i in range(n)])


def flip_signature(envelope: bytes) -> bytes:
    """The envelope with one bit of its Ed25519 signature changed (bytes 12-75; the payload intact)."""
    return envelope[:40] + bytes([envelope[40] ^ 1]) + envelope[41:]


@pytest.mark.parametrize("forgery", ["unknown key", "bad signature"])
def test_a_forged_checkpoint_is_refused_on_restore(forgery: str) -> None:
    async def scenario() -> tuple[dict[int, int], dict[str, int]]:
        # Prepare: the worker checkpoints partition 0 (messages up to offset 4) with its key; then
        # a newer checkpoint (up to offset 9) lands on the topic that is forged: written by a key
        # nobody trusts, or the worker's own with its signature altered.
        signer = Signer.generate()
        topic = MemoryCheckpointTopic()
        genuine = WorkerCore(SETTINGS, signer, clock=lambda: 100.0)
        first = wired(genuine, topic)
        await first.assign({0})
        await first.learn([(readings("d1", 5), 0, 4)])
        await first.checkpoint_changed()
        if forgery == "unknown key":
            forger = WorkerCore(SETTINGS, Signer.generate(), clock=lambda: 100.0)
            forger.on_readings([(readings("d1", 20), 0, 9)])
            topic.write(forger, forger.checkpoint())
        else:
            await first.learn([(readings("d1", 20), 0, 9)])
            topic.write(genuine, genuine.checkpoint(), alter=flip_signature)

        # Execute: the next owner, trusting the worker's key, takes over partition 0.
        successor = WorkerCore(SETTINGS, signer, clock=lambda: 100.0)
        second = wired(successor, topic)
        await second.assign({0})
        return second.checkpointed, successor.device_readings

    checkpointed, restored = asyncio.run(scenario())

    # Assert: the forged (newer) checkpoint was skipped; the genuine one was restored.
    assert checkpointed == {0: 4}
    assert restored == {"d1": 5}
