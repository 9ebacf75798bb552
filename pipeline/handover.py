"""The partition handover protocol: hold → checkpoint → ack, revoke → final checkpoint, assign → restore.

A plain state machine over injected async callables, with no Faust or Kafka
in it (:mod:`pipeline.app` wires it to both; the unit tests to in-memory
fakes).  Its rules, which give the guarantee described in
:mod:`pipeline.checkpoints`:

1. **Hold.**  Every readings message taken is held: it is acked (its offset
   made committable) only once a checkpoint covering its offset has been
   written *and acked by the broker*.
2. **Revoke.**  A revoked partition's held messages are dropped (the
   consumer group already forgot them: acking them would commit a partition
   this worker no longer owns), its state is released as a final checkpoint,
   and the partition is forgotten, so a later assignment restores it again.
3. **Assign.**  Newly assigned partitions are restored from their newest
   valid checkpoint before any reading is learned: :meth:`Handover.learn`
   waits while a restore runs.  The restore runs as a task of its own (a big
   partition takes longer than a rebalance callback may), and only the
   newest assignment's restore lets learning go on.
4. **After a failure** (:class:`pipeline.fatal.FatalStop`) no checkpoint is
   written: the state may be half updated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from pipeline.fatal import FatalStop

log = logging.getLogger(__name__)

C = TypeVar("C")
T = TypeVar("T")


class Holdable(Protocol):
    """A consumed message whose final ack can be delayed (Faust's ``Message``)."""

    offset: int

    def incref(self, n: int = 1) -> None: ...


class Taken(Protocol):
    """A checkpoint taken of one partition (:class:`pipeline.worker_core.PartitionCheckpoint`)."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int:
        """Offset of the last readings message of ``partition`` in the state."""
        ...


K = TypeVar("K", bound=Taken)


class HeldMessages:
    """Per partition, messages taken but not yet covered by a written checkpoint.

    Examples
    --------
    >>> class Msg:
    ...     def __init__(self, offset): self.offset, self.refs = offset, 1
    ...     def incref(self, n=1): self.refs += n
    >>> held = HeldMessages()
    >>> msgs = [Msg(o) for o in range(5)]
    >>> for m in msgs: held.hold(0, m)
    >>> [m.offset for m in held.release(0, 2)], held.pending()
    ([0, 1, 2], {0: 2})
    >>> held.drop([0]), held.pending()
    (2, {})
    """

    def __init__(self) -> None:
        self._held: dict[int, list[Any]] = {}

    def hold(self, partition: int, message: Holdable) -> None:
        """Delay the final ack of ``message`` until :meth:`release` covers its offset."""
        message.incref()
        self._held.setdefault(partition, []).append(message)

    def release(self, partition: int, upto: int) -> list[Any]:
        """The held messages of ``partition`` with offset ≤ ``upto`` (now checkpointed), oldest first."""
        msgs = self._held.get(partition, [])
        done = [m for m in msgs if m.offset <= upto]
        if done:
            self._held[partition] = [m for m in msgs if m.offset > upto]
        return done

    def drop(self, partitions: Any) -> int:
        """Forget the held messages of revoked ``partitions`` (their next owner reads them again)."""
        return sum(len(self._held.pop(p, [])) for p in partitions)

    def pending(self) -> dict[int, int]:
        """Held messages per partition."""
        return {p: len(m) for p, m in self._held.items() if m}


class Handover(Generic[K, C, T]):
    """Who may learn, checkpoint and ack which partition, across rebalances.

    Parameters
    ----------
    take
        Checkpoints of the partitions whose state changed (the core's ``checkpoint``).
    release
        Final checkpoints of the given partitions, which the core then stops holding.
    write
        Write checkpoints and return once the broker has acked them all.
    restore
        Restore the given partitions from their newest valid checkpoints; returns
        each one's checkpoint offset (-1: it had none).
    commit
        Make a held message's offset committable (Faust: ``message.ack(consumer)``).
    learn
        Learn a chunk of readings (called only while every owned partition is restored).
    fatal
        The process's failure switch: nothing is checkpointed once it has tripped.
    forget
        Drop what else is kept per partition for revoked partitions (suspect offsets).

    Examples
    --------
    >>> import asyncio
    >>> from types import SimpleNamespace as Ck
    >>> async def none(*args): return []
    >>> async def restore(parts): return dict.fromkeys(parts, -1)
    >>> async def learn(chunk): return len(chunk)
    >>> async def main():
    ...     h = Handover(take=none, release=none, write=none, restore=restore,
    ...                  commit=print, learn=learn, fatal=FatalStop())
    ...     await h.assign({0, 1})
    ...     return await h.learn(["r1", "r2"]), h.checkpointed
    >>> asyncio.run(main())
    (2, {0: -1, 1: -1})
    """

    def __init__(
        self,
        *,
        take: Callable[[], Awaitable[Sequence[K]]],
        release: Callable[[Sequence[int]], Awaitable[Sequence[K]]],
        write: Callable[[Sequence[K]], Awaitable[None]],
        restore: Callable[[Sequence[int]], Awaitable[Mapping[int, int]]],
        commit: Callable[[Any], None],
        learn: Callable[[C], Awaitable[T]],
        fatal: FatalStop,
        forget: Callable[[Sequence[int]], None] = lambda partitions: None,
    ) -> None:
        self._take = take
        self._release = release
        self._write = write
        self._restore = restore
        self._commit = commit
        self._learn = learn
        self._forget = forget
        self.fatal = fatal
        self.held = HeldMessages()
        self.checkpointed: dict[int, int] = {}
        """Per owned readings partition, the offset of its newest checkpoint on the topic."""
        self.restored = asyncio.Event()
        """Set while every owned readings partition has its state restored (cleared during a rebalance)."""
        self.rebalances = 0
        """Assignments so far; a restore only completes the assignment it was started for."""
        self.restoring: asyncio.Future[None] | None = None
        self._lock = asyncio.Lock()

    def hold(self, partition: int, message: Holdable) -> None:
        """Committable only once a checkpoint covers it (rule 1)."""
        self.held.hold(partition, message)

    async def learn(self, chunk: C) -> T:
        """Learn ``chunk`` once every owned partition is restored (rule 3)."""
        await self.restored.wait()
        return await self._learn(chunk)

    async def checkpoint_changed(self) -> None:
        """Checkpoint the partitions whose state changed; then ack what the checkpoints cover."""
        async with self._lock:
            # After a fatal failure the state may be half updated: never checkpoint it.
            if self.restored.is_set() and self.fatal.failed is None:
                await self._write_then_ack(await self._take())

    async def revoke(self, partitions: set[int]) -> None:
        """Hand over revoked partitions: a final checkpoint, then stop learning them (rule 2)."""
        self.restored.clear()
        async with self._lock:
            # The consumer group already forgot these partitions' acks; acking now would commit
            # partitions this worker no longer owns.  The next owner reads them again, skipping
            # what it has.
            self.held.drop(partitions)
            self._forget(sorted(partitions))
            if self.fatal.failed is not None:
                return  # stopping after a failure: no checkpoint of a state that may be half updated
            await self._write_then_ack(await self._release(sorted(partitions)))
            for p in partitions:
                self.checkpointed.pop(p, None)

    def assign(self, owned: set[int]) -> asyncio.Future[None]:
        """Restore the newly ``owned`` partitions before any of their readings is learned (rule 3).

        Returns the restore task (also kept as :attr:`restoring`); learning waits for it.
        """
        self.restored.clear()
        self.rebalances += 1
        self.restoring = asyncio.ensure_future(self._restore_owned(owned, self.rebalances))
        return self.restoring

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        """A last checkpoint on a clean stop, so the next owner need not learn anything again."""
        if self.fatal.failed is not None:
            log.warning("no final checkpoint: stopping after a failure of the %s", self.fatal.failed)
            return
        try:
            async with self._lock:
                taken = await self._release(sorted(self.checkpointed))
                await asyncio.wait_for(self._write_then_ack(taken), timeout=timeout_s)
        except Exception as exc:  # the next owner replays from the previous checkpoint: nothing is lost
            log.warning("no final checkpoint at shutdown: %r", exc)

    async def _restore_owned(self, owned: set[int], generation: int) -> None:
        """Restore the owned partitions not restored yet; then let learning go on (if still current)."""
        try:
            async with self._lock:
                new = sorted(owned - set(self.checkpointed))
                if new and generation == self.rebalances:
                    self.checkpointed.update(await self._restore(new))
        except Exception as exc:  # unrestored partitions would never be learned: a zombie
            self.fatal.fail("partition restore", exc)
            return
        if generation == self.rebalances:  # a newer assignment restores (and sets it) itself
            self.restored.set()

    async def _write_then_ack(self, taken: Sequence[K]) -> None:
        await self._write(taken)  # returns once the broker acked every chunk and manifest
        for ck in taken:
            self.checkpointed[ck.partition] = ck.offset
        for p, offset in self.checkpointed.items():
            for message in self.held.release(p, offset):
                self._commit(message)
