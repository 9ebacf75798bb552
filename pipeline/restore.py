"""Restoring partitions on assignment: their newest checkpoints, published model versions and suspects.

The Kafka side of rule 3 of :mod:`pipeline.handover` (which decides *when*
a restore runs; this reads *what* to restore, with plain aiokafka consumers
outside the consumer group).  :mod:`pipeline.checkpoints` describes the
checkpoint protocol and what it guarantees.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.admin import CHECKPOINT_MAX_BYTES, partition_for
from connectors.kafka_security import aiokafka_options
from connectors.settings import Settings
from connectors.signing import SignatureError
from pipeline.checkpoints import KafkaPartition, newest_checkpoint, published_versions, read_range
from pipeline.state import PipelineState
from pipeline.suspects import SuspectError, decode_suspects

log = logging.getLogger(__name__)


async def restore_state(
    settings: Settings, state: PipelineState, partitions: Sequence[int]
) -> dict[int, int]:
    """Restore ``partitions`` (checkpoints and model versions, then suspects); their checkpoint offsets."""
    offsets = await restore_partitions(settings, state, partitions)
    await restore_suspects(settings, state, partitions, offsets)
    return offsets


async def restore_partitions(
    settings: Settings, state: PipelineState, partitions: Sequence[int]
) -> dict[int, int]:
    """Each partition's newest valid checkpoint and published model versions → the core.

    Everything is assigned and its offsets are listed at once: each
    ``assign`` of an aiokafka consumer costs a metadata round of ~0.5 s.  It
    runs as a task of its own after the rebalance callback (a partition of
    many devices takes longer than a session timeout), before the readings
    agent learns anything of the new assignment.  Failing to read is fatal
    (the worker crashes and its partitions move on): learning a partition
    without its state would restart its devices' model versions.

    Returns each partition's checkpoint offset (-1: it had none).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        client_id=f"{settings.app_id}-restore-{state.worker_id}",
        fetch_max_bytes=CHECKPOINT_MAX_BYTES,
        max_partition_fetch_bytes=CHECKPOINT_MAX_BYTES,
        **aiokafka_options(settings),
    )
    await consumer.start()
    try:
        ck_tps = {p: TopicPartition(settings.checkpoints_topic, p) for p in partitions}
        model_tps = [TopicPartition(settings.topic_models, m) for m in range(settings.partitions)]
        every = [*ck_tps.values(), *model_tps]
        consumer.assign(every)
        begins = await consumer.beginning_offsets(every)
        ends = await consumer.end_offsets(every)
        core = state.core
        cks = {
            p: await newest_checkpoint(
                KafkaPartition(consumer, tp),
                p,
                core.open_manifest,
                core.open_chunk,
                begins[tp],
                ends[tp],
                open_legacy=core.open_legacy,
            )
            for p, tp in ck_tps.items()
        }
        # Devices' models are keyed by device id: usually the same partition number, but not
        # if a producer put a device on another readings partition than its key's.
        devices = [d for ck in cks.values() if ck is not None for d in ck.device_ids]
        homes = await asyncio.to_thread(lambda: {partition_for(d, len(model_tps)) for d in devices})
        wanted = [model_tps[m] for m in sorted(set(partitions) | homes)]
        starts = {tp: begins[tp] for tp in wanted}
        if all(ck is not None for ck in cks.values()):
            # Models published before a checkpoint are in its versions; a minute of slack for clocks.
            since = min(int(ck.created_at * 1000) for ck in cks.values() if ck is not None) - 60_000
            for tp, found in (await consumer.offsets_for_times(dict.fromkeys(wanted, since))).items():
                starts[tp] = ends[tp] if found is None else max(begins[tp], found.offset)
        published: dict[str, int] = {}
        offsets: dict[int, int] = {}
        for tp in wanted:
            for d, v in (await published_versions(consumer, tp, starts[tp], ends[tp])).items():
                published[d] = max(published.get(d, 0), v)
        for p, ck in cks.items():
            await state.run(state.core.restore, p, ck, published)
            offsets[p] = ck.offset if ck is not None else -1
            log.info("partition %d restored: %s", p, f"offset {ck.offset}" if ck else "no checkpoint")
        return offsets
    finally:
        await consumer.stop()


async def restore_suspects(
    settings: Settings, state: PipelineState, partitions: Sequence[int], checkpointed: Mapping[int, int]
) -> None:
    """Each partition's newest signed list of suspect offsets (:mod:`pipeline.suspects`) → the core."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        client_id=f"{settings.app_id}-suspects-{state.worker_id}",
        **aiokafka_options(settings),
    )
    await consumer.start()
    try:
        tps = [TopicPartition(settings.suspects_topic, p) for p in partitions]
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            newest = None
            for record in await read_range(consumer, tp, begins[tp], ends[tp]):
                if record.value is None:
                    continue
                try:
                    p, suspects = decode_suspects(state.core.verifier.open(record.value))
                except (SignatureError, SuspectError) as exc:
                    log.warning("skipping suspects record at %s offset %d: %s", tp, record.offset, exc)
                    continue
                if p == tp.partition:
                    newest = suspects
            if newest:
                state.core.suspects.load(tp.partition, newest, after=checkpointed.get(tp.partition, -1))
                log.warning(
                    "partition %d: suspect offsets %s", tp.partition, state.core.suspects.of(tp.partition)
                )
    finally:
        await consumer.stop()
