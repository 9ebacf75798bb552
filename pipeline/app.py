"""The Faust app: topics and agents, a thin shell over :mod:`pipeline.worker_core`.

Everything that decides *what* to send lives in :class:`WorkerCore` and
:class:`MetaAggregator`; this module only moves bytes between Kafka and them:

- ``readings`` agent: micro-batches of raw messages (value, partition,
  offset) → :meth:`WorkerCore.on_readings` → dead letters, drift events,
  signed model updates and meta contributions.
- ``deltas`` agent (one partition, so exactly one worker of the group runs
  it): :meth:`MetaAggregator.on_delta` → a new signed θ on the meta topic
  (or, for a refused θ, a ``theta_refused`` event); unsigned or unknown-key
  contributions are refused and counted.
- meta follower (every worker, outside the consumer group): every θ version
  on the meta topic → :meth:`WorkerCore.on_meta`.  A Faust agent would be
  load-balanced and a ``GlobalTable`` is known to fall out of sync, so this
  is a plain aiokafka consumer with ``assign()`` started as an app task.

Delivery is at least once: an agent awaits the broker's ack of everything a
batch produced before Faust acks (and later commits) the batch's offsets.
The learner core runs on one dedicated thread, so the event loop keeps
fetching, heartbeating and producing while torch computes.

Per-device state survives crashes and rebalances through checkpoints
(:mod:`pipeline.checkpoints` describes the protocol and the guarantee): a
readings message becomes committable only once a checkpoint covering it is
on the checkpoint topic; on assignment a partition's state is restored from
its newest checkpoint before any of its readings is processed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import faust
import torch
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.helpers import create_ssl_context
from faust.streams import Stream
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types import TP, EventT, StreamT
from faust.types.auth import CredentialsT

from connectors.admin import CHECKPOINT_MAX_BYTES, partition_for, topic_specs
from connectors.settings import Settings
from connectors.signing import SignatureError, Signer, Verifier
from connectors.wire import MAX_DEAD_LETTER_BYTES
from learners.codec import CodecError, decode_model
from pipeline import dashboard, metrics, web_auth
from pipeline.checkpoints import (
    HeldMessages,
    KafkaPartition,
    newest_checkpoint,
    published_versions,
    read_range,
)
from pipeline.chunk_layout import manifest_key
from pipeline.fatal import FatalStop
from pipeline.fleet_view import FleetView
from pipeline.suspects import SuspectError, decode_suspects, encode_suspects
from pipeline.worker_core import (
    AGGREGATOR_COUNTS,
    META_KEY,
    MetaAggregator,
    Outgoing,
    PartitionCheckpoint,
    WorkerCore,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Tuning:
    """Faust/aiokafka knobs that matter for throughput (see ``pipeline/worker.py --help``).

    The defaults are what measured best on a 2-core machine with gateway
    messages of ~100 readings; see the module docs of :mod:`pipeline.worker`.

    Examples
    --------
    >>> Tuning().max_poll_records, Tuning(offload=False).offload
    (500, False)
    """

    max_poll_records: int | None = 500
    """Records per aiokafka ``getmany`` (Faust default: unlimited; 500 measured best)."""
    stream_buffer_maxsize: int = 4096
    """Events a stream may prefetch before Faust pauses the partition (~85 MB of gateway messages)."""
    max_fetch_bytes: int = 16 * 1024 * 1024
    """Per-partition fetch size; gateway messages are ~10 KB each (Faust default 4 MiB)."""
    producer_linger_s: float = 0.005
    """Let the producer batch the outputs of one micro-batch (Faust default 0)."""
    commit_interval_s: float = 1.0
    """How often acked offsets are committed (Faust default 2.8 s)."""
    offload: bool = True
    """Run the learner core on its own thread so fetching overlaps with learning."""
    monitor: bool = False
    """Keep Faust's per-event Monitor sensor (costs per event; nothing here reads it)."""
    torch_threads: int | None = 1
    """torch intra-op threads for this process (``None``: torch's default, one per core).

    With the event loop and Faust's consumer thread also running, torch's
    default OpenMP team waits on descheduled threads: measured 6-8x slower
    learning than with one thread.  Scale out with one worker per core instead.
    """


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
    restored: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while every owned readings partition has its state restored (cleared during a rebalance)."""
    held: HeldMessages = field(default_factory=HeldMessages)
    checkpoint_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    checkpointed: dict[int, int] = field(default_factory=dict)
    """Per owned readings partition, the offset of its newest checkpoint on the topic."""
    rebalances: int = 0
    """Assignments so far; a restore only completes the assignment it was started for."""
    restoring: asyncio.Future[None] | None = None
    started_at: float = field(default_factory=time.monotonic)
    processed: dict[int, int] = field(default_factory=dict)
    """Next readings offset to process, per owned partition (for consumer lag)."""
    view: FleetView = field(init=False)
    """Bounded recent history for ``/metrics`` and the dashboard."""
    fatal: FatalStop = field(default_factory=FatalStop)
    """Stops the process on the first unexpected failure of an agent or task (:mod:`pipeline.fatal`)."""

    def __post_init__(self) -> None:
        self.view = FleetView(self.settings)

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
            "assigned": self.assigned,
            "checkpointed": {str(p): o for p, o in sorted(self.checkpointed.items())},
            "devices_known": len(self.core.device_readings),  # resident and evicted
            "uptime_s": round(elapsed, 1),
        }

    def device_readings(self) -> dict[str, int]:
        """Readings learned per device, by device id (a fleet-sized map: not in :meth:`stats`)."""
        return dict(sorted(self.core.device_readings.items()))


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


def _ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of every aiokafka client of the worker (``None`` without TLS).

    Hostname checking stays on, as in kafka-python; files are checked first so a
    typo is a clear error rather than a handshake failure.
    """
    if not settings.uses_tls:
        return None
    files = settings.tls_files()
    return create_ssl_context(
        cafile=files.get("ssl_cafile"),
        certfile=files.get("ssl_certfile"),
        keyfile=files.get("ssl_keyfile"),
    )


def broker_credentials(settings: Settings) -> CredentialsT | None:
    """Faust credentials for ``settings.security_protocol`` (``None`` for PLAINTEXT).

    Faust hands them to its consumer, producer and topic admin; the meta
    follower gets the same through :func:`aiokafka_security`.

    Examples
    --------
    >>> broker_credentials(Settings()) is None
    True
    >>> creds = broker_credentials(Settings(security_protocol="SASL_PLAINTEXT",
    ...     sasl_mechanism="SCRAM-SHA-256", sasl_username="u", sasl_password="p"))
    >>> creds, creds.protocol.value, creds.mechanism.value
    (<SASLCredentials: username=u>, 'SASL_PLAINTEXT', 'SCRAM-SHA-256')
    """
    protocol = settings.security_protocol  # normalised and validated by Settings
    if protocol == "PLAINTEXT":
        return None
    context = _ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    # SASL_PLAINTEXT or SASL_SSL: Faust picks the protocol from whether there is a TLS context.
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password,
        ssl_context=context,
        mechanism=settings.sasl_mechanism,
    )


def aiokafka_security(settings: Settings) -> dict[str, Any]:
    """The same credentials in aiokafka's spelling (for the meta follower).

    Examples
    --------
    >>> aiokafka_security(Settings())
    {'security_protocol': 'PLAINTEXT'}
    """
    return dict(credentials_to_aiokafka_auth(broker_credentials(settings)))


def broker_urls(settings: Settings) -> list[str]:
    """``kafka://host:port`` for each bootstrap server (Faust takes a list)."""
    return [f"kafka://{hp}" for hp in settings.bootstrap.split(",") if hp]


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
    app = faust.App(
        settings.app_id,
        broker=broker_urls(settings),
        broker_credentials=broker_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        # Topics are created by connectors.admin.ensure_topics before start (with the right
        # cleanup.policy); Faust only declares its internal ones, and we have none.
        topic_disable_leader=True,
        store="memory://",
        web_enabled=web_port is not None,
        web_port=web_port or 6066,
        # Loopback unless configured: the pages show the whole fleet (pipeline/web_auth.py).
        web_bind=settings.web_host,
        consumer_auto_offset_reset="earliest",
        producer_linger=tune.producer_linger_s,
        broker_max_poll_records=tune.max_poll_records,
        stream_buffer_maxsize=tune.stream_buffer_maxsize,
        consumer_max_fetch_size=tune.max_fetch_bytes,
        broker_commit_interval=tune.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        # Heartbeats well inside the session, or a short session times out a live worker.
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 4),
        # The largest messages: a checkpoint chunk or manifest, and a dead letter that
        # carries a refused record whole (the topics' limits allow both).
        producer_max_request_size=max(CHECKPOINT_MAX_BYTES, MAX_DEAD_LETTER_BYTES + 64 * 1024),
        # Rebalances must not wait forever for an agent that is in the middle of a big batch.
        stream_wait_empty=False,
        worker_redirect_stdouts=False,
        autodiscover=False,
    )
    core = core or WorkerCore(settings, signer, worker_id=wid)
    state = PipelineState(
        settings=settings,
        core=core,
        # θ is checked on a few of this worker's devices' recent readings before it is published.
        aggregator=aggregator or MetaAggregator(settings, signer, fleet=core.fleet),
        verifier=Verifier([signer.public_key]),
        worker_id=wid,
        executor=ThreadPoolExecutor(1, thread_name_prefix="learner") if tune.offload else None,
        fatal=fatal or FatalStop(),
    )
    app.pipeline = state  # type: ignore[attr-defined]  # read by tests and tools

    specs = {s.name: s for s in topic_specs(settings)}

    def topic(name: str) -> faust.TopicT:
        spec = specs.get(name)
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            partitions=spec.partitions if spec else None,
            compacting="compact" in spec.configs.get("cleanup.policy", "") if spec else None,
        )

    out_topics: dict[str, faust.TopicT] = {name: topic(name) for name in specs}
    readings = out_topics[settings.topic_readings]
    deltas = out_topics[settings.topic_deltas]

    async def send_soon(outgoing: Sequence[Outgoing], pending: list[Awaitable[Any]]) -> None:
        """Hand every message to the producer now; their delivery futures go to ``pending``."""
        for o in outgoing:
            t = out_topics.get(o.topic)
            if t is None:
                t = out_topics[o.topic] = topic(o.topic)
            # force=True: send now instead of attaching to the current event (Faust would hold
            # attached messages until the next commit, adding up to commit_interval of latency).
            pending.append(await t.send(key=o.key, value=o.value, headers=o.headers, force=True))

    async def send_all(outgoing: Sequence[Outgoing]) -> None:
        """Produce every message, then wait until the broker has acked all of them."""
        pending: list[Awaitable[Any]] = []
        await send_soon(outgoing, pending)
        await asyncio.gather(*pending)
        state.sent += len(pending)

    @app.agent(readings, name="readings")
    async def on_readings(stream: StreamT[bytes]) -> None:
        """Batches of raw reading messages through the learner core, at least once.

        A batch (up to ``poll_max_messages`` messages or ``batch_window_s``) is acked,
        and so committed, only after the broker has acked everything it produced.
        Inside a batch the core gets chunks of about ``core_batch_readings`` readings
        (gateway messages pack many), and each chunk's outputs are sent as soon
        as it is done, so a drift is published without waiting for the batch.

        If the learner raises, the chunk's offsets are recorded as suspect
        (:mod:`pipeline.suspects`) and the process stops (:mod:`pipeline.fatal`);
        after a restart suspect messages are learned alone, then dead-lettered.
        """
        await state.fatal.guard("readings agent", learn_readings(stream))

    async def learn_readings(stream: StreamT[bytes]) -> None:
        per_message = ReadingsPerMessage()
        # take_events (unlike take) keeps partition and offset; StreamT's stub lacks it, Stream has it.
        batches = cast(Stream, stream).take_events(settings.poll_max_messages, within=settings.batch_window_s)
        async for events in batches:
            batch = [_raw(e) for e in events]
            # Committable only once a checkpoint covers them (see pipeline.checkpoints).
            for e in events:
                state.held.hold(e.message.partition, e.message)
            pending: list[Awaitable[Any]] = []
            start = 0
            while start < len(batch):
                chunk = batch[start : start + per_message.chunk(settings.core_batch_readings)]
                start += len(chunk)
                # Never learn a partition whose state is not restored yet (during a rebalance).
                await state.restored.wait()
                for piece in state.core.suspects.pieces(chunk):
                    try:
                        outgoing = await state.run(state.core.on_readings, piece)
                    except Exception:
                        await record_suspects(piece)
                        raise
                    per_message.update(len(piece), state.core.stats())
                    state.view.observe(outgoing, time.time())
                    await send_soon(outgoing, pending)
            await asyncio.gather(*pending)
            state.view.acked(time.time())
            state.sent += len(pending)
            state.messages += len(batch)
            metrics.track_processed(state.processed, batch)
            state.batches += 1

    suspects_topic = out_topics[settings.suspects_topic]

    async def record_suspects(piece: Sequence[tuple[bytes | None, int, int]]) -> None:
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

    @app.agent(deltas, name="meta-aggregator")
    async def on_deltas(stream: StreamT[bytes]) -> None:
        """Meta contributions → θ versions (only the owner of the single deltas partition)."""
        await state.fatal.guard("meta-aggregator agent", aggregate_deltas(stream))

    async def aggregate_deltas(stream: StreamT[bytes]) -> None:
        # Resume from the newest θ first, or the first contribution would publish version 1 again.
        await state.meta_ready.wait()
        async for event in stream.events():
            outgoing = await state.run(state.aggregator.on_delta, _value(event))
            await send_all(outgoing)

    @app.task
    async def follow_meta() -> None:
        """Every θ version → this worker's core (and the aggregator, so a new owner resumes)."""
        await state.fatal.guard("meta follower task", _follow_meta(settings, state, send_all))

    if not tune.monitor:

        @app.task
        async def drop_monitor() -> None:
            """Faust adds its Monitor sensor at start; it times every event and nothing here reads it."""
            if app.monitor in set(app.sensors):
                app.sensors.remove(app.monitor)

    checkpoints = out_topics[settings.checkpoints_topic]

    async def write_checkpoints(taken: Sequence[PartitionCheckpoint]) -> None:
        """Chunks, then (once acked) each partition's manifest; then let Faust commit what they cover."""
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
            manifest = await state.run(state.core.seal_manifest, ck, [m.offset for m in metas])
            key = manifest_key(ck.partition).encode()
            manifest_acks.append(
                await checkpoints.send(key=key, value=manifest, partition=ck.partition, force=True)
            )
        await asyncio.gather(*manifest_acks)
        for ck in taken:
            state.checkpointed[ck.partition] = ck.offset
        release_covered()

    def release_covered() -> None:
        for p, offset in state.checkpointed.items():
            for message in state.held.release(p, offset):
                message.ack(app.consumer)

    @app.timer(settings.checkpoint_interval_s)
    async def checkpoint_changed() -> None:
        """Checkpoint the partitions whose state changed since their last checkpoint."""
        await state.fatal.guard("checkpoint timer", take_checkpoints())

    async def take_checkpoints() -> None:
        async with state.checkpoint_lock:
            # After a fatal failure the state may be half updated: never checkpoint it.
            if state.restored.is_set() and state.fatal.failed is None:
                await write_checkpoints(await state.run(state.core.checkpoint))

    async def on_revoked(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        """Hand over revoked partitions: a final checkpoint, then stop learning them."""
        revoked = _readings_partitions(args[0] if args else set(), settings.topic_readings)
        state.restored.clear()
        async with state.checkpoint_lock:
            # Faust already forgot these partitions' acks; acking now would commit partitions
            # this worker no longer owns.  The next owner reads them again, skipping what it has.
            state.held.drop(revoked)
            state.core.suspects.forget(sorted(revoked))
            if state.fatal.failed is not None:
                return  # stopping after a failure: no checkpoint of a state that may be half updated
            taken = await state.run(state.core.release, sorted(revoked))
            await write_checkpoints(taken)
            for p in revoked:
                state.checkpointed.pop(p, None)

    async def on_assigned(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        """Restore the newly assigned readings partitions before any of their readings is learned."""
        assigned: set[TP] = args[0] if args else set()
        state.assigned = sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)
        owned = _readings_partitions(assigned, settings.topic_readings)
        for partition in set(state.processed) - owned:
            del state.processed[partition]  # another worker moves it on from here
        state.restored.clear()
        state.rebalances += 1
        # Restoring a big partition takes longer than a session timeout may allow inside the
        # rebalance callback: it runs as its own task while the consumer goes on heartbeating;
        # the readings agent waits for `restored` before it learns anything.
        state.restoring = asyncio.ensure_future(restore(owned, state.rebalances))

    async def restore(owned: set[int], generation: int) -> None:
        """Restore the owned partitions not restored yet; then let the agent learn (if still current)."""
        try:
            async with state.checkpoint_lock:
                new = sorted(owned - set(state.checkpointed))
                if new and generation == state.rebalances:
                    await _restore_partitions(settings, state, new)
                    await _restore_suspects(settings, state, new)
        except Exception as exc:  # unrestored partitions would never be learned: a zombie
            state.fatal.fail("partition restore", exc)
            return
        if generation == state.rebalances:  # a newer assignment restores (and sets it) itself
            state.restored.set()

    async def on_shutdown(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        """A last checkpoint on a clean stop, so the next owner need not learn anything again."""
        if state.fatal.failed is not None:
            log.warning("no final checkpoint: stopping after a failure of the %s", state.fatal.failed)
            return
        try:
            async with state.checkpoint_lock:
                taken = await state.run(state.core.release, sorted(state.checkpointed))
                await asyncio.wait_for(write_checkpoints(taken), timeout=10.0)
        except Exception as exc:  # the next owner replays from the previous checkpoint: nothing is lost
            log.warning("no final checkpoint at shutdown: %r", exc)

    # mode's signal typing does not accept a coroutine receiver, though it awaits one.
    app.on_before_shutdown.connect(cast(Any, on_shutdown))
    app.on_partitions_revoked.connect(cast(Any, on_revoked))
    app.on_partitions_assigned.connect(cast(Any, on_assigned))
    if web_port is not None:
        metrics.install(app, state, token=settings.metrics_token)
        dashboard.install(app, state, token=web_auth.resolve_token(settings))
    _ = (on_readings, on_deltas, follow_meta, checkpoint_changed)  # registered by the decorators
    return app


def _readings_partitions(tps: Any, topic: str) -> set[int]:
    return {tp.partition for tp in tps if tp.topic == topic}


async def _restore_partitions(settings: Settings, state: PipelineState, partitions: Sequence[int]) -> None:
    """Each partition's newest valid checkpoint and published model versions → the core.

    Everything is assigned and its offsets are listed at once: each
    ``assign`` of an aiokafka consumer costs a metadata round of ~0.5 s.  It
    runs as a task of its own after the rebalance callback (a partition of
    many devices takes longer than a session timeout), before the readings
    agent learns anything of the new assignment.  Failing to read is fatal
    (the worker crashes and its partitions move on): learning a partition
    without its state would restart its devices' model versions.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        client_id=f"{settings.app_id}-restore-{state.worker_id}",
        fetch_max_bytes=CHECKPOINT_MAX_BYTES,
        max_partition_fetch_bytes=CHECKPOINT_MAX_BYTES,
        **aiokafka_security(settings),
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
        for tp in wanted:
            for d, v in (await published_versions(consumer, tp, starts[tp], ends[tp])).items():
                published[d] = max(published.get(d, 0), v)
        for p, ck in cks.items():
            await state.run(state.core.restore, p, ck, published)
            state.checkpointed[p] = ck.offset if ck is not None else -1
            log.info("partition %d restored: %s", p, f"offset {ck.offset}" if ck else "no checkpoint")
    finally:
        await consumer.stop()


async def _restore_suspects(settings: Settings, state: PipelineState, partitions: Sequence[int]) -> None:
    """Each partition's newest signed list of suspect offsets (:mod:`pipeline.suspects`) → the core."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        enable_auto_commit=False,
        client_id=f"{settings.app_id}-suspects-{state.worker_id}",
        **aiokafka_security(settings),
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
                state.core.suspects.load(tp.partition, newest, after=state.checkpointed.get(tp.partition, -1))
                log.warning(
                    "partition %d: suspect offsets %s", tp.partition, state.core.suspects.of(tp.partition)
                )
    finally:
        await consumer.stop()


def _value(event: EventT) -> bytes:
    value = event.message.value
    return value if isinstance(value, bytes) else b""


def _raw(event: EventT) -> tuple[bytes | None, int, int]:
    m = event.message
    return m.value, m.partition, m.offset


async def _follow_meta(
    settings: Settings, state: PipelineState, send_all: Callable[[Sequence[Outgoing]], Awaitable[None]]
) -> None:
    """Read the meta topic from the start, outside the consumer group, for as long as the app runs."""
    tp = TopicPartition(settings.topic_meta, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=None,  # not load-balanced: every worker sees every θ version
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        client_id=f"{settings.app_id}-meta-{state.worker_id}",
        **aiokafka_security(settings),
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
    state.core.on_meta(value)
    try:
        tensors, header = decode_model(state.verifier.open(value))
    except (SignatureError, CodecError):
        return  # the core already logged and counted it
    if header.device_id == META_KEY:
        state.aggregator.meta.adopt(tensors, header.model_version)
