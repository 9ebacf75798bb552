"""The Faust app: topics and agents, a thin shell over :mod:`pipeline.worker_core`.

Everything that decides *what* to send lives in :class:`WorkerCore` and
:class:`MetaAggregator`; this module only moves bytes between Kafka and them
(what they return is typed, and encoded by :func:`pipeline.outgoing.to_records`
as it is sent):

- ``readings`` agent: micro-batches of raw messages (value, partition,
  offset) → :meth:`WorkerCore.on_readings` → dead letters, drift events,
  signed model updates and meta contributions.
- ``deltas`` agent (one partition, so exactly one worker of the group runs
  it): :meth:`MetaAggregator.on_delta` → a new signed θ on the meta topic
  (or, for a refused θ, a ``theta_refused`` event); unsigned or unknown-key
  contributions are refused and counted.
- meta follower (every worker, outside the consumer group,
  :mod:`pipeline.meta_follower`): every θ version on the meta topic →
  :meth:`WorkerCore.on_meta`.

Delivery is at least once: an agent awaits the broker's ack of everything a
batch produced before Faust acks (and later commits) the batch's offsets.
The learner core runs on one dedicated thread, so the event loop keeps
fetching, heartbeating and producing while torch computes.

Per-device state survives crashes and rebalances through checkpoints
(:mod:`pipeline.checkpoints` describes the protocol and the guarantee,
:mod:`pipeline.handover` runs it, :mod:`pipeline.restore` reads it back): a
readings message becomes committable only once a checkpoint covering it is
on the checkpoint topic; on assignment a partition's state is restored from
its newest checkpoint before any of its readings is processed.  TLS/SASL are
spelled by :mod:`connectors.kafka_security`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import faust
import torch
from faust.streams import Stream
from faust.types import EventT, StreamT

from connectors.settings import Settings
from connectors.signing import Signer, Verifier
from pipeline import dashboard, meta_follower, metrics, rebalance, web_auth
from pipeline.fatal import FatalStop
from pipeline.faust_app import Tuning as Tuning
from pipeline.faust_app import faust_app
from pipeline.handover import Handover
from pipeline.outputs import Outputs
from pipeline.privacy import gate_from_settings
from pipeline.rebalance import Learned, Raw
from pipeline.state import PipelineState
from pipeline.suspects import encode_suspects
from pipeline.worker_core import MetaAggregator, PartitionCheckpoint, WorkerCore

log = logging.getLogger(__name__)


class ReadingsPerMessage:
    """Running estimate of readings per message, to cut batches into learner-sized chunks.

    Examples
    --------
    >>> est = ReadingsPerMessage()
    >>> est.chunk(1000)  # nothing seen yet: one message, to learn how many readings they carry
    1
    >>> est.update(10, {"readings": 990, "dead_letters": 10})
    >>> est.chunk(1000)
    10
    """

    def __init__(self) -> None:
        self.messages = 0
        self.readings = 0
        self._last = 0

    def update(self, n_messages: int, core_stats: dict[str, int]) -> None:
        """Count ``n_messages`` that brought the core's readings+dead letters to ``core_stats``."""
        total = core_stats.get("readings", 0) + core_stats.get("dead_letters", 0)
        self.messages += n_messages
        self.readings += max(0, total - self._last)
        self._last = total

    def chunk(self, readings_per_step: int) -> int:
        """Messages per core call so that one call is about ``readings_per_step`` readings."""
        if not self.messages:
            return 1
        return max(1, round(readings_per_step / max(self.readings / self.messages, 1.0)))


def default_worker_id() -> str:
    """``host-pid``: names this worker in its meta contributions."""
    return f"{socket.gethostname()}-{os.getpid()}"


def create_app(
    settings: Settings,
    signer: Signer,
    *,
    worker_id: str | None = None,
    web_port: int | None = None,
    tuning: Tuning | None = None,
    core: WorkerCore | None = None,
    aggregator: MetaAggregator | None = None,
    fatal: FatalStop | None = None,
) -> faust.App:
    """The Faust app of one worker; several with the same ``app_id`` share the partitions.

    Parameters
    ----------
    settings
        Broker, topics, partitions, security and learner settings.
    signer
        Signs every model update and θ version this worker publishes.
    worker_id
        Names this worker in its meta contributions (default ``host-pid``).
    web_port
        Enable Faust's web server on this port, with ``/metrics`` (Prometheus),
        ``/dashboard`` and ``/fleet.json``; off when ``None``.
    tuning
        Throughput knobs (:class:`Tuning`).
    core, aggregator
        Injected state machines (tests, benchmarks); built from ``settings`` when absent.
    fatal
        What an unexpected failure of an agent or task does (default: stop the process,
        exit status :data:`pipeline.fatal.EXIT_FATAL`).
    """
    tune = tuning or Tuning()
    wid = worker_id or default_worker_id()
    if tune.torch_threads is not None:
        torch.set_num_threads(tune.torch_threads)  # process-wide: see Tuning.torch_threads
    app = faust_app(settings, tune, web_port)
    core = core or WorkerCore(settings, signer, worker_id=wid)
    state = PipelineState(
        settings=settings,
        core=core,
        # θ is checked on a few of this worker's devices' recent readings before it is published.
        aggregator=aggregator
        or MetaAggregator(settings, signer, fleet=core.fleet, privacy=gate_from_settings(settings)),
        verifier=Verifier([signer.public_key]),
        worker_id=wid,
        executor=ThreadPoolExecutor(1, thread_name_prefix="learner") if tune.offload else None,
        fatal=fatal or FatalStop(),
    )
    app.pipeline = state  # type: ignore[attr-defined]  # read by tests and tools
    out = Outputs(app, settings, state)
    per_message = ReadingsPerMessage()
    handover = rebalance.install(app, settings, state, out, _chunk_learner(settings, state, out, per_message))
    state.handover = handover
    _install_agents(app, settings, state, out, handover, per_message)
    meta_follower.install(app, settings, state, out.send_all)
    if not tune.monitor:

        @app.task
        async def drop_monitor() -> None:
            """Faust adds its Monitor sensor at start; it times every event and nothing here reads it."""
            if app.monitor in set(app.sensors):
                app.sensors.remove(app.monitor)

    if web_port is not None:
        metrics.install(app, state, token=settings.metrics_token)
        dashboard.install(app, state, token=web_auth.resolve_token(settings))
    return app


def _chunk_learner(
    settings: Settings, state: PipelineState, out: Outputs, per_message: ReadingsPerMessage
) -> Callable[[Sequence[Raw]], Awaitable[Learned]]:
    """One chunk of readings messages through the core; the delivery futures of what it produced.

    If the learner raises, the chunk's offsets are recorded as suspect
    (:mod:`pipeline.suspects`) and the process stops (:mod:`pipeline.fatal`);
    after a restart suspect messages are learned alone, then dead-lettered.
    """
    suspects_topic = out[settings.suspects_topic]

    async def learn_chunk(chunk: Sequence[Raw]) -> list[Awaitable[Any]]:
        pending: list[Awaitable[Any]] = []
        for piece in state.core.suspects.pieces(chunk):
            try:
                outgoing = await state.run(state.core.on_readings, piece)
            except Exception:
                await record_suspects(piece)
                raise
            per_message.update(len(piece), state.core.stats())
            state.view.observe(outgoing, time.time())
            await out.send_soon(outgoing, pending)
        return pending

    async def record_suspects(piece: Sequence[Raw]) -> None:
        """The learner raised on ``piece``: its offsets go on the suspects topic before the process stops."""
        changed = state.core.suspects.failed(piece)
        try:
            pending = []
            for p, suspects in changed.items():
                kept = [s for s in suspects if s.last > state.checkpointed.get(p, -1)]
                payload = state.core.signer.seal(encode_suspects(p, kept, state.worker_id))
                pending.append(
                    await suspects_topic.send(key=str(p).encode(), value=payload, partition=p, force=True)
                )
            await asyncio.wait_for(asyncio.gather(*pending), timeout=10.0)
        except Exception as exc:  # the restart then fails on the same chunk again: a loop, but loudly
            log.error("could not record the suspect offsets %s: %r", changed, exc)

    return learn_chunk


def _install_agents(
    app: faust.App,
    settings: Settings,
    state: PipelineState,
    out: Outputs,
    handover: Handover[PartitionCheckpoint, Sequence[Raw], Learned],
    per_message: ReadingsPerMessage,
) -> None:
    @app.agent(out[settings.topic_readings], name="readings")
    async def on_readings(stream: StreamT[bytes]) -> None:
        """Batches of raw reading messages through the learner core, at least once.

        A batch (up to ``poll_max_messages`` messages or ``batch_window_s``) is acked,
        and so committed, only after the broker has acked everything it produced
        and a checkpoint covers it (:mod:`pipeline.handover`).  Inside a batch
        the core gets chunks of about ``core_batch_readings`` readings (gateway
        messages pack many), and each chunk's outputs are sent as soon as it is
        done, so a drift is published without waiting for the batch.
        """
        await state.fatal.guard("readings agent", learn_readings(stream))

    async def learn_readings(stream: StreamT[bytes]) -> None:
        # take_events (unlike take) keeps partition and offset; StreamT's stub lacks it, Stream has it.
        batches = cast(Stream, stream).take_events(settings.poll_max_messages, within=settings.batch_window_s)
        async for events in batches:
            batch = [_raw(e) for e in events]
            for e in events:
                handover.hold(e.message.partition, e.message)
            pending: list[Awaitable[Any]] = []
            start = 0
            while start < len(batch):
                chunk = batch[start : start + per_message.chunk(settings.core_batch_readings)]
                start += len(chunk)
                # Never learns a partition whose state is not restored yet (during a rebalance).
                pending += await handover.learn(chunk)
            await asyncio.gather(*pending)
            state.view.acked(time.time())
            state.sent += len(pending)
            state.messages += len(batch)
            metrics.track_processed(state.processed, batch)
            state.batches += 1

    @app.agent(out[settings.topic_deltas], name="meta-aggregator")
    async def on_deltas(stream: StreamT[bytes]) -> None:
        """Meta contributions → θ versions (only the owner of the single deltas partition)."""
        await state.fatal.guard("meta-aggregator agent", aggregate_deltas(stream))

    async def aggregate_deltas(stream: StreamT[bytes]) -> None:
        # Resume from the newest θ first, or the first contribution would publish version 1 again.
        await state.meta_ready.wait()
        async for event in stream.events():
            outgoing = await state.run(state.aggregator.on_delta, _value(event))
            await out.send_all(outgoing)

    _ = (on_readings, on_deltas)  # registered by the decorators


def _value(event: EventT) -> bytes:
    value = event.message.value
    return value if isinstance(value, bytes) else b""


def _raw(event: EventT) -> Raw:
    m = event.message
    return m.value, m.partition, m.offset
