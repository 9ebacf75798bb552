"""Checkpoints on Kafka: hold offsets until they are checkpointed, read the newest one back.

How a worker keeps per-device state across crashes and rebalances (the
design; :mod:`pipeline.handover` runs it, :mod:`wire.checkpoint` is the format):

1. Every readings message the agent takes is *held*: its Faust refcount is
   raised, so Faust's own ack after the batch does not make it committable
   (:class:`pipeline.handover.HeldMessages`).
2. Every ``checkpoint_interval_s``, and when partitions are revoked, the
   worker snapshots each changed partition (on the learner thread, so the
   snapshot matches a known last offset): the chunks of the groups of
   devices that changed (:mod:`wire.checkpoint`, :mod:`pipeline.chunk_layout`).
   It produces them to the compacted checkpoint topic (partition p for
   readings partition p), waits for the broker's acks, then produces the
   manifest that names every chunk of the partition by offset and sha256,
   waits for its ack, and only then releases the held messages up to that
   offset to Faust.  So **the committed offset of a partition never passes
   its newest complete checkpoint**.
3. On assignment, before any reading of a partition is processed, the worker
   reads the partition's newest complete checkpoint that verifies (manifest
   and every chunk: signature, sha256, schema) and the newest model version
   per device on the models topic, and restores them.  Faust then seeks to the committed offset (≤ checkpoint
   + 1); redelivered messages at or below the checkpoint offset are skipped.

Guarantee: every reading of an acknowledged (committed) readings message is
in its device's model state exactly once, across crashes, restarts and
rebalances.  Readings after the newest checkpoint that a crashed worker had
learned are learned again by the next owner (from the checkpoint state),
so their outputs - drift events, adaptation results, contributions to θ - are
at least once.  Model versions per device are never lost, never reused and
never go down: the next owner continues after the larger of the checkpointed
and the newest published version, so a model version published by a crashed
worker after its last checkpoint keeps its number and the replacement
publishes the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.chunk_layout import manifest_key
from wire.checkpoint import Checkpoint, CheckpointError, Chunk, Manifest, assemble

log = logging.getLogger(__name__)


async def read_range(consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int) -> list[Any]:
    """Every record of ``tp`` with ``start`` ≤ offset < ``end`` (compaction may leave holes)."""
    records: list[Any] = []
    if start >= end:
        return records
    consumer.seek(tp, start)
    while await consumer.position(tp) < end:
        got = await consumer.getmany(tp, timeout_ms=1000)
        records.extend(r for r in got.get(tp, []) if r.offset < end)
    return records


class PartitionLog(Protocol):
    """One partition of a topic, read by offset range (:class:`KafkaPartition`, or a list in tests)."""

    async def read(self, start: int, end: int) -> list[Any]:
        """Records (``offset``, ``key``, ``value``) with ``start`` ≤ offset < ``end``; holes allowed."""
        ...


class KafkaPartition:
    """A :class:`PartitionLog` over a partition assigned to an aiokafka consumer."""

    def __init__(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        self.consumer = consumer
        self.tp = tp

    async def read(self, start: int, end: int) -> list[Any]:
        """See :func:`read_range`."""
        return await read_range(self.consumer, self.tp, start, end)


class RecordList:
    """A :class:`PartitionLog` over records already read (tests, tools); offsets as they are.

    Examples
    --------
    >>> import asyncio
    >>> from types import SimpleNamespace as R
    >>> log = RecordList([R(offset=o, key=None, value=b"v") for o in (3, 5, 9)])
    >>> [r.offset for r in asyncio.run(log.read(4, 10))], log.end
    ([5, 9], 10)
    """

    def __init__(self, records: Sequence[Any]) -> None:
        self.records = sorted(records, key=lambda r: r.offset)
        self.end = self.records[-1].offset + 1 if self.records else 0

    async def read(self, start: int, end: int) -> list[Any]:
        """The records with ``start`` ≤ offset < ``end``."""
        return [r for r in self.records if start <= r.offset < end]


async def newest_checkpoint(
    source: PartitionLog,
    partition: int,
    open_manifest: Callable[[bytes], Manifest],
    open_chunk: Callable[[bytes], Chunk],
    begin: int,
    end: int,
    window: int = 8,
    open_legacy: Callable[[bytes], Checkpoint] | None = None,
) -> Checkpoint | None:
    """The newest complete checkpoint of ``partition`` in ``source`` (offsets ``begin`` … ``end`` - 1).

    Reads backwards from the end ``window`` records at a time for manifests,
    so start-up does not read the whole (not yet compacted) history; for
    each manifest, reads the chunks it names (at their offsets).  A manifest
    that is refused (forged, altered, malformed, foreign) or whose chunk set
    is incomplete or altered is logged and skipped: an older one is tried.
    ``None`` when there is no complete one.  With ``open_legacy``, a
    one-message checkpoint of an earlier version (keyed by the partition
    number) counts too, so an upgraded worker takes over its state.
    """
    key = manifest_key(partition).encode()
    legacy = str(partition).encode()
    while end > begin:
        start = max(begin, end - window)
        for record in reversed(await source.read(start, end)):
            if record.value is None or record.key not in (key, legacy):
                continue
            try:
                if record.key == legacy:
                    if open_legacy is None:
                        raise CheckpointError("a checkpoint of an earlier format, and no reader for it")
                    ck = await asyncio.to_thread(open_legacy, record.value)
                    if ck.partition != partition:
                        raise CheckpointError(
                            f"checkpoint of partition {ck.partition} in partition {partition}"
                        )
                    return ck
                manifest = open_manifest(record.value)
                if manifest.partition != partition:
                    raise CheckpointError(
                        f"manifest of partition {manifest.partition} in partition {partition}"
                    )
                offsets = [c.offset for c in manifest.chunks if begin <= c.offset < record.offset]
                found = await read_at(source, offsets)
                # Verifying megabytes of chunks is CPU work: off the event loop (heartbeats go on).
                return await asyncio.to_thread(assemble, manifest, found, open_chunk)
            except CheckpointError as exc:
                log.warning(
                    "skipping checkpoint of partition %d at offset %d: %s", partition, record.offset, exc
                )
        end, window = start, window * 4
    return None


async def read_at(
    source: PartitionLog, offsets: Sequence[int], gap: int = 16
) -> dict[int, tuple[str, bytes]]:
    """``offset → (key, value)`` of the records at ``offsets``; runs of nearby offsets are read at once."""
    wanted = sorted(set(offsets))
    found: dict[int, tuple[str, bytes]] = {}
    i = 0
    while i < len(wanted):
        j = i
        while j + 1 < len(wanted) and wanted[j + 1] - wanted[j] <= gap:
            j += 1
        for r in await source.read(wanted[i], wanted[j] + 1):
            if r.value is not None and r.offset in offsets:
                key = r.key.decode(errors="replace") if r.key is not None else ""
                found[r.offset] = (key, r.value)
        i = j + 1
    return found


async def published_versions(
    consumer: AIOKafkaConsumer, tp: TopicPartition, begin: int, end: int
) -> dict[str, int]:
    """Newest ``model_version`` header per device key on one (assigned) models-topic partition."""
    versions: dict[str, int] = {}
    for record in await read_range(consumer, tp, begin, end):
        raw = dict(record.headers or ()).get("model_version")
        if record.key is None or raw is None:
            continue
        try:
            device, version = record.key.decode(), int(raw)
        except (UnicodeDecodeError, ValueError):
            continue
        versions[device] = max(versions.get(device, 0), version)
    return versions
