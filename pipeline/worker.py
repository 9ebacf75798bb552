"""Run one stream worker in this process: ``metastream worker`` or ``python -m pipeline.worker``.

Start as many as you like with the same settings (same ``app_id``): they form
one consumer group and share the readings partitions; exactly one of them
owns the single deltas partition and so runs the meta aggregator.  They must
share one signing key (``--signing-key``), since every worker and edge only
trusts θ and models signed by the keys it knows.

Examples
--------
.. code-block:: bash

    metastream worker --broker kafka://127.0.0.1:9092 --partitions 8 --signing-key worker.pem
    METASTREAM_BROKER=kafka://kafka:9092 python -m pipeline.worker --settings prod.json

SIGTERM or SIGINT stops the worker cleanly: the current batch finishes, its
outputs are acked by the broker, offsets are committed, the group is left.

An unexpected failure of any agent or task (the learner raising, say) stops
the worker with exit status 70 (:mod:`pipeline.fatal`) and one ``fatal:`` log
line, for its orchestrator to restart it; the restarted worker resumes from
the last checkpoint, and a message the learner keeps failing on is
dead-lettered (:mod:`pipeline.suspects`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from connectors.admin import ensure_topics
from connectors.settings import Settings
from connectors.signing import Signer
from pipeline.broker_log import DropMessages, OutageLog, install

if TYPE_CHECKING:  # imported where used: `metastream worker --help` must not wait for Faust and torch
    import faust

    from pipeline.app import Tuning
    from pipeline.state import PipelineState

log = logging.getLogger(__name__)


def load_signer(settings: Settings) -> Signer:
    """The worker's signing key: ``settings.signing_key``, or an ephemeral one (with a warning).

    The ephemeral key's public half is written to a temporary file whose path
    is printed, so edge clients of a demo or test can trust it.
    """
    if settings.signing_key:
        return Signer.from_file(settings.signing_key)
    signer = Signer.generate()
    with tempfile.NamedTemporaryFile(prefix="metastream-worker-", suffix=".pub.pem", delete=False) as f:
        public = Path(f.name)
    private = public.with_suffix("").with_suffix(".key.pem")
    # The private half is written (owner-only) so a second worker of the same demo can share it.
    signer.save(private, public)
    print(
        f"warning: no signing key given; using an ephemeral Ed25519 key (demo/tests only).\n"
        f"  public key (give to edge clients as trusted_keys): {public}\n"
        f"  private key (pass to other workers as --signing-key): {private}",
        file=sys.stderr,
        flush=True,
    )
    return signer


def run_worker(
    settings: Settings,
    signer: Signer | None = None,
    loglevel: str = "warning",
    *,
    web_port: int | None = None,
    tuning: Tuning | None = None,
    worker_id: str | None = None,
    stats_interval_s: float = 0.0,
) -> None:
    """Create the topics if needed, then run the Faust worker until SIGTERM/SIGINT or a fatal failure.

    After a fatal failure of an agent or task it raises ``SystemExit(70)``
    (:data:`pipeline.fatal.EXIT_FATAL`).

    Parameters
    ----------
    settings
        Deployment settings (broker, topics, partitions, security, learner).
    signer
        Signs published models and θ; :func:`load_signer` when ``None``.
    loglevel
        ``debug``, ``info``, ``warning`` or ``error``.
    web_port
        Serve ``/metrics`` (Prometheus), ``/dashboard``, ``/fleet.json`` and
        Faust's web views on this port; off when ``None``.
    tuning
        Throughput knobs (:class:`pipeline.app.Tuning`).
    worker_id
        Name of this worker in meta contributions (default ``host-pid``).
    stats_interval_s
        When > 0, print a JSON line of counters to stderr this often.
    """
    import faust

    from pipeline import faults
    from pipeline.app import Tuning, create_app, default_worker_id

    signer = signer or load_signer(settings)
    # Before Faust subscribes: a subscription to a missing topic may let the broker
    # auto-create it with the wrong partition count and without compaction.
    ensure_topics(settings)
    # A fresh loop: mode's Worker closes its loop on exit, so a second run in the same
    # process (tests, notebooks) must not inherit a closed one.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    wid = worker_id or default_worker_id()
    core = faults.core_from_env(settings, signer, wid, os.environ)  # tests only; None unless asked
    app = create_app(settings, signer, worker_id=wid, web_port=web_port, tuning=tuning, core=core)
    state: PipelineState = app.pipeline  # type: ignore[attr-defined]
    quiet_client_logs(app, state, tuning or Tuning())
    if stats_interval_s > 0:

        @app.timer(stats_interval_s)
        async def print_stats() -> None:
            print(json.dumps({"stats": state.stats()}), file=sys.stderr, flush=True)

    worker = faust.Worker(app, loglevel=loglevel, quiet=True, loop=loop, redirect_stdouts=False)
    worker.spinner = None  # it writes cursor escape codes to stdout even when that is not a terminal
    try:
        worker.execute_from_commandline()  # returns by raising SystemExit
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        state.fatal.cancel()
        if state.executor is not None:
            state.executor.shutdown(wait=True, cancel_futures=True)
        asyncio.set_event_loop(None)
    if stats_interval_s > 0:
        print(json.dumps({"stats": state.stats(), "final": True}), file=sys.stderr, flush=True)
    if state.fatal.failed is not None:
        raise SystemExit(state.fatal.exit_code)


def quiet_client_logs(app: faust.App, state: PipelineState, tuning: Tuning) -> None:
    """An outage in a few lines, not thousands; a "worker ready" line; no benign warnings.

    See :mod:`pipeline.broker_log`.
    """
    outage = OutageLog()
    install(outage)
    if not tuning.monitor:
        # Faust warns on every rebalance when no sensor is installed; the app drops its only one.
        logging.getLogger("faust.app.base").addFilter(DropMessages("Missing sensor state for rebalance"))
    started = time.monotonic()
    pending: set[asyncio.Future[None]] = set()

    @app.timer(1.0)
    async def watch_broker() -> None:
        if outage.in_trouble:
            outage.tick(await broker_answers(state.settings.bootstrap))

    async def announce_ready() -> None:
        await state.restored.wait()
        readings = state.settings.topic_readings
        owned = sorted(int(tp.rsplit(":", 1)[1]) for tp in state.assigned if tp.rsplit(":", 1)[0] == readings)
        print(
            f"worker ready: owns partitions {','.join(map(str, owned)) or 'none'} of {readings} "
            f"({len(state.core.fleet.devices)} devices restored) after {time.monotonic() - started:.1f} s",
            file=sys.stderr,
            flush=True,
        )

    async def on_assigned(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        # Not awaited here: the app's own receiver restores the partitions after this one returns.
        pending.add(task := asyncio.ensure_future(announce_ready()))
        task.add_done_callback(pending.discard)

    app.on_partitions_assigned.connect(cast(Any, on_assigned))
    _ = watch_broker


async def broker_answers(bootstrap: str, timeout_s: float = 1.0) -> bool:
    """Whether one of the bootstrap brokers accepts a TCP connection."""
    for part in bootstrap.split(","):
        host, _, port = part.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), timeout_s
            )
        except (TimeoutError, OSError, ValueError):
            continue
        writer.close()
        return True
    return False


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Defaults ← ``METASTREAM_*`` environment ← ``--settings`` file ← flags."""
    return Settings.load(
        args.settings,
        broker=args.broker,
        partitions=args.partitions,
        app_id=args.app_id,
        signing_key=args.signing_key,
    )


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--settings", metavar="FILE", help="JSON settings file (see connectors/settings.py)")
    p.add_argument("--broker", help="bootstrap servers, e.g. kafka://127.0.0.1:9092")
    p.add_argument("--partitions", type=int, help="partitions of the readings/models/events topics")
    p.add_argument("--app-id", help="consumer group / Faust app id (same for every worker of a deployment)")
    p.add_argument(
        "--signing-key",
        metavar="FILE",
        help="Ed25519 private key (PEM); without it an ephemeral key is generated (demo/tests only)",
    )
    p.add_argument("--loglevel", default="warning", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--web-port", type=int, help="serve /metrics (Prometheus), /dashboard and Faust's views on this port"
    )
    p.add_argument("--worker-id", help="name in meta contributions (default host-pid)")
    p.add_argument("--stats-interval", type=float, default=0.0, metavar="S", help="print counters every S s")
    t = p.add_argument_group("throughput tuning (defaults measured on 2 cores)")
    # Defaults (None here) come from pipeline.app.Tuning in cmd_worker.
    t.add_argument("--max-poll-records", type=int, help="default: Tuning.max_poll_records")
    t.add_argument("--stream-buffer", type=int, help="default: Tuning.stream_buffer_maxsize")
    t.add_argument("--linger-ms", type=float, help="default: Tuning.producer_linger_s in ms")
    t.add_argument(
        "--no-offload", action="store_true", help="run the learner on the event loop instead of a thread"
    )


def cmd_worker(args: argparse.Namespace) -> int:
    """Entry point of the ``worker`` sub-command."""
    from pipeline.app import Tuning

    settings = settings_from_args(args)
    d = Tuning()
    tuning = Tuning(
        max_poll_records=d.max_poll_records if args.max_poll_records is None else args.max_poll_records,
        stream_buffer_maxsize=d.stream_buffer_maxsize if args.stream_buffer is None else args.stream_buffer,
        max_fetch_bytes=d.max_fetch_bytes,
        producer_linger_s=d.producer_linger_s if args.linger_ms is None else args.linger_ms / 1000,
        commit_interval_s=d.commit_interval_s,
        offload=not args.no_offload,
    )
    run_worker(
        settings,
        loglevel=args.loglevel,
        web_port=args.web_port,
        tuning=tuning,
        worker_id=args.worker_id,
        stats_interval_s=args.stats_interval,
    )
    return 0


def add_cli(subparsers: Any) -> None:
    """Register the ``worker`` sub-command on an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser("worker", help="run a stream worker (Faust) until SIGTERM/SIGINT")
    _add_arguments(p)
    p.set_defaults(func=cmd_worker)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.worker [flags]``."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.worker", description=__doc__.split("\n")[0])
    _add_arguments(parser)
    return cmd_worker(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
