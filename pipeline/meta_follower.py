"""The meta follower: every θ version on the meta topic → this worker's core and aggregator.

Every worker runs it, outside the consumer group: a Faust agent would be
load-balanced and a ``GlobalTable`` is known to fall out of sync, so it is a
plain aiokafka consumer with ``assign()`` started as an app task
(:func:`install`).  The aggregator follows too, so whichever worker gets the
single deltas partition continues from the newest θ.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.kafka_security import aiokafka_options
from connectors.settings import Settings
from pipeline.state import PipelineState
from wire.messages import Message


def install(
    app: faust.App,
    settings: Settings,
    state: PipelineState,
    send_all: Callable[[Sequence[Message]], Awaitable[None]],
) -> None:
    """Start the meta follower as a task of ``app``; ``send_all`` publishes θ version 0 if there is none."""

    @app.task
    async def follow_meta() -> None:
        """Every θ version → this worker's core (and the aggregator, so a new owner resumes)."""
        await state.fatal.guard("meta follower task", _follow_meta(settings, state, send_all))

    _ = follow_meta  # registered by the decorator


async def _follow_meta(
    settings: Settings, state: PipelineState, send_all: Callable[[Sequence[Message]], Awaitable[None]]
) -> None:
    """Read the meta topic from the start, outside the consumer group, for as long as the app runs."""
    tp = TopicPartition(settings.topic_meta, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=None,  # not load-balanced: every worker sees every θ version
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=f"{settings.app_id}-meta-{state.worker_id}",
        **aiokafka_options(settings),
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        if end == 0:
            # Nothing published yet: θ version 0, so workers and edges have something to start
            # from. Two workers racing here publish the same signed version 0: harmless.
            await send_all(state.aggregator.current_theta())
            state.meta_ready.set()
        async for records in _batches(consumer):
            for record in records:
                if record.value is not None:
                    await state.run(_adopt, state, record.value)
            if records:
                state.view.on_meta(state.core.fleet.meta_version, time.time())
            if not state.meta_ready.is_set() and await consumer.position(tp) >= end:
                state.meta_ready.set()
    finally:
        await consumer.stop()


async def _batches(consumer: AIOKafkaConsumer) -> AsyncIterable[list[Any]]:
    while True:
        got = await consumer.getmany(timeout_ms=1000)
        yield [record for records in got.values() for record in records]


def _adopt(state: PipelineState, value: bytes) -> None:
    """A θ message from the meta topic: into the core, and into the aggregator when it is newer.

    The aggregator must continue from the newest θ when it starts, or when the
    deltas partition moves to this worker; otherwise it would publish versions
    1, 2, … again that every worker refuses as older than what it has.
    """
    state.theta_seen += 1
    state.core.theta.receive(value, also=[state.aggregator])
