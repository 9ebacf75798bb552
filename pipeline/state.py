"""What a worker's agents, tasks and web pages share: :class:`PipelineState`.

Its own module, below :mod:`pipeline.app`, :mod:`pipeline.metrics` and
:mod:`pipeline.dashboard`, so that they all import it without a circle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from connectors.settings import Settings
from connectors.signing import Verifier
from pipeline.fatal import FatalStop
from pipeline.fleet_view import FleetView
from pipeline.handover import Handover
from pipeline.worker_core import AGGREGATOR_COUNTS, MetaAggregator, WorkerCore

T = TypeVar("T")


@dataclass
class PipelineState:
    """What the agents share; exposed as ``app.pipeline`` for tests and tools."""

    settings: Settings
    core: WorkerCore
    aggregator: MetaAggregator
    verifier: Verifier
    worker_id: str
    executor: ThreadPoolExecutor | None
    messages: int = 0
    batches: int = 0
    sent: int = 0
    theta_seen: int = 0
    assigned: list[str] = field(default_factory=list)
    meta_ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the meta follower has read everything that was on the meta topic at start."""
    handover: Handover[Any, Any, Any] | None = None
    """The partition handover protocol (:mod:`pipeline.handover`), wired by ``create_app``."""
    started_at: float = field(default_factory=time.monotonic)
    processed: dict[int, int] = field(default_factory=dict)
    """Next readings offset to process, per owned partition (for consumer lag)."""
    view: FleetView = field(init=False)
    """Bounded recent history for ``/metrics`` and the dashboard."""
    fatal: FatalStop = field(default_factory=FatalStop)
    """Stops the process on the first unexpected failure of an agent or task (:mod:`pipeline.fatal`)."""

    def __post_init__(self) -> None:
        self.view = FleetView(self.settings)

    @property
    def restored(self) -> asyncio.Event:
        """Set while every owned readings partition has its state restored (see :class:`Handover`)."""
        if self.handover is None:
            raise RuntimeError("no handover wired: PipelineState.restored is set up by create_app")
        return self.handover.restored

    @property
    def checkpointed(self) -> dict[int, int]:
        """Per owned readings partition, the offset of its newest checkpoint on the topic."""
        return {} if self.handover is None else self.handover.checkpointed

    async def run(self, fun: Callable[..., T], *args: Any) -> T:
        """Call the (single-threaded, CPU-bound) core off the event loop, one call at a time."""
        if self.executor is None:
            return fun(*args)
        return await asyncio.get_running_loop().run_in_executor(self.executor, fun, *args)

    def stats(self) -> dict[str, Any]:
        """Core counters plus what went through the agents: totals only.

        The size of this line does not grow with the fleet (it is printed
        periodically); per-device counts are in :meth:`device_readings`.
        """
        elapsed = time.monotonic() - self.started_at
        return {
            **self.core.stats(),
            "messages": self.messages,
            "batches": self.batches,
            "sent": self.sent,
            "theta_seen": self.theta_seen,
            "aggregator_version": self.aggregator.version,
            "contributions_rejected": self.aggregator.rejected,
            **{k: self.aggregator.counts[k] for k in AGGREGATOR_COUNTS},
            **self.aggregator.privacy_stats(),
            "assigned": self.assigned,
            "checkpointed": {str(p): o for p, o in sorted(self.checkpointed.items())},
            "devices_known": len(self.core.device_readings),  # resident and evicted
            "uptime_s": round(elapsed, 1),
        }

    def device_readings(self) -> dict[str, int]:
        """Readings learned per device, by device id (a fleet-sized map: not in :meth:`stats`)."""
        return dict(sorted(self.core.device_readings.items()))
