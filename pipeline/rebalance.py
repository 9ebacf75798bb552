"""Faust's side of the partition handover: rebalance signals, the checkpoint timer, the checkpoint topic.

:class:`pipeline.handover.Handover` decides; this module connects it to the
Faust app (:func:`install`): revoked and assigned partitions, a clean stop,
every ``checkpoint_interval_s``, and what commits an offset (Faust's
``message.ack``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import faust
from faust.types import TP

from connectors.settings import Settings
from pipeline.handover import Handover
from pipeline.outputs import Outputs, write_checkpoints
from pipeline.restore import restore_state
from pipeline.state import PipelineState
from pipeline.worker_core import PartitionCheckpoint

Raw = tuple[bytes | None, int, int]
"""A readings message as the core takes it: value, partition, offset."""

Learned = list[Awaitable[Any]]
"""What learning a chunk leaves to wait for: the delivery futures of what it produced."""


def install(
    app: faust.App,
    settings: Settings,
    state: PipelineState,
    out: Outputs,
    learn_chunk: Callable[[Sequence[Raw]], Awaitable[Learned]],
) -> Handover[PartitionCheckpoint, Sequence[Raw], Learned]:
    """The handover protocol wired to Faust's rebalance signals, a timer, the checkpoint topic, the core."""
    checkpoints = out[settings.checkpoints_topic]

    async def seal(ck: PartitionCheckpoint, offsets: list[int]) -> bytes:
        return await state.run(state.core.seal_manifest, ck, offsets)

    handover: Handover[PartitionCheckpoint, Sequence[Raw], Learned] = Handover(
        take=lambda: state.run(state.core.checkpoint),
        release=lambda partitions: state.run(state.core.release, partitions),
        write=lambda taken: write_checkpoints(checkpoints, taken, seal),
        restore=lambda partitions: restore_state(settings, state, partitions),
        commit=lambda message: message.ack(app.consumer),
        learn=learn_chunk,
        fatal=state.fatal,
        forget=state.core.suspects.forget,
    )

    @app.timer(settings.checkpoint_interval_s)
    async def checkpoint_changed() -> None:
        """Checkpoint the partitions whose state changed since their last checkpoint."""
        await state.fatal.guard("checkpoint timer", handover.checkpoint_changed())

    async def on_revoked(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        """Hand over revoked partitions: a final checkpoint, then stop learning them."""
        await handover.revoke(_readings_partitions(args[0] if args else set(), settings.topic_readings))

    async def on_assigned(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        """Restore the newly assigned readings partitions before any of their readings is learned."""
        assigned: set[TP] = args[0] if args else set()
        state.assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)
        owned = _readings_partitions(assigned, settings.topic_readings)
        for partition in set(state.processed) - owned:
            del state.processed[partition]  # another worker moves it on from here
        # Restoring a big partition takes longer than a session timeout may allow inside the
        # rebalance callback: it runs as its own task while the consumer goes on heartbeating.
        handover.assign(owned)

    async def on_shutdown(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        """A last checkpoint on a clean stop, so the next owner need not learn anything again."""
        await handover.shutdown()

    # mode's signal typing does not accept a coroutine receiver, though it awaits one.
    app.on_before_shutdown.connect(cast(Any, on_shutdown))
    app.on_partitions_revoked.connect(cast(Any, on_revoked))
    app.on_partitions_assigned.connect(cast(Any, on_assigned))
    _ = checkpoint_changed  # registered by the decorator
    return handover


def _readings_partitions(tps: Any, topic: str) -> set[int]:
    return {tp.partition for tp in tps if tp.topic == topic}
