"""What a worker produces: its topics by name, sending with delivery futures, and checkpoint writing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust

from connectors.admin import topic_specs
from connectors.settings import Settings
from pipeline.chunk_layout import manifest_key
from pipeline.outgoing import to_records
from pipeline.state import PipelineState
from pipeline.worker_core import PartitionCheckpoint
from wire.messages import Message


class Outputs:
    """The app's topics by name (declared on first use), and sending to them."""

    def __init__(self, app: faust.App, settings: Settings, state: PipelineState) -> None:
        self._app = app
        self._settings = settings
        self._state = state
        self._specs = {s.name: s for s in topic_specs(settings)}
        self._topics: dict[str, faust.TopicT] = {name: self._declare(name) for name in self._specs}

    def _declare(self, name: str) -> faust.TopicT:
        spec = self._specs.get(name)
        return self._app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            partitions=spec.partitions if spec else None,
            compacting="compact" in spec.configs.get("cleanup.policy", "") if spec else None,
        )

    def __getitem__(self, name: str) -> faust.TopicT:
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = self._declare(name)
        return topic

    async def send_soon(self, messages: Sequence[Message], pending: list[Awaitable[Any]]) -> None:
        """Encode every message and hand it to the producer now; their delivery futures go to ``pending``."""
        for o in to_records(self._settings, messages):
            # force=True: send now instead of attaching to the current event (Faust would hold
            # attached messages until the next commit, adding up to commit_interval of latency).
            pending.append(await self[o.topic].send(key=o.key, value=o.value, headers=o.headers, force=True))

    async def send_all(self, messages: Sequence[Message]) -> None:
        """Produce every message, then wait until the broker has acked all of them."""
        pending: list[Awaitable[Any]] = []
        await self.send_soon(messages, pending)
        await asyncio.gather(*pending)
        self._state.sent += len(pending)


async def write_checkpoints(
    checkpoints: faust.TopicT,
    taken: Sequence[PartitionCheckpoint],
    seal: Callable[[PartitionCheckpoint, list[int]], Awaitable[bytes]],
) -> None:
    """Chunks, then (once acked) each partition's manifest; returns once every manifest is acked.

    ``seal`` makes a partition's signed manifest once its chunks' offsets are known.
    """
    chunk_acks = [
        [
            await checkpoints.send(key=key.encode(), value=payload, partition=ck.partition, force=True)
            for _, key, payload, _ in ck.chunks
        ]
        for ck in taken
    ]
    written = [await asyncio.gather(*acks) for acks in chunk_acks]
    manifest_acks = []
    for ck, metas in zip(taken, written, strict=True):
        manifest = await seal(ck, [m.offset for m in metas])
        key = manifest_key(ck.partition).encode()
        manifest_acks.append(
            await checkpoints.send(key=key, value=manifest, partition=ck.partition, force=True)
        )
    await asyncio.gather(*manifest_acks)
