"""How a worker's Faust app is configured: throughput knobs (:class:`Tuning`) and broker settings."""

from __future__ import annotations

from dataclasses import dataclass

import faust

from connectors.admin import CHECKPOINT_MAX_BYTES
from connectors.kafka_security import faust_credentials
from connectors.settings import Settings
from wire.readings import MAX_DEAD_LETTER_BYTES


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


def broker_urls(settings: Settings) -> list[str]:
    """``kafka://host:port`` for each bootstrap server (Faust takes a list)."""
    return [f"kafka://{hp}" for hp in settings.bootstrap.split(",") if hp]


def faust_app(settings: Settings, tune: Tuning, web_port: int | None) -> faust.App:
    """The Faust app for ``settings`` and ``tune``, its web server on ``web_port`` (``None``: off)."""
    return faust.App(
        settings.app_id,
        broker=broker_urls(settings),
        broker_credentials=faust_credentials(settings),
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
