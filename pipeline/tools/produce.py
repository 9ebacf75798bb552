"""Demo streams for a sensor producer: CSV and synthetic sources, paced sending, ``metastream produce``.

The producer SDK (:class:`connectors.producer.SensorProducer`) sends what it is
given; this tooling decides what to send and how fast, with a progress bar.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from itertools import islice
from pathlib import Path
from typing import Any

from connectors.admin import ensure_topics
from connectors.producer import ProducerClient, SensorProducer
from connectors.settings import Settings
from wire.readings import Reading

log = logging.getLogger(__name__)


# -- sources ---------------------------------------------------------------------------


def csv_source(
    path: str | Path, device_col: str, target_col: str, time_col: str | None = None
) -> list[Reading]:
    """Readings of a CSV (see :func:`pipeline.tools.csv_source.load_readings_csv`), in time order.

    Bad rows are skipped and counted in a warning.  Classification labels
    become class indices, as in ``metastream replay``.
    """
    from pipeline.tools.csv_source import load_readings_csv

    table = load_readings_csv(path, device_col, target_col, time_col)
    if table.skipped:
        first = table.skipped[0]
        log.warning(
            "%s: skipped %d bad rows (first: line %d, %s)", path, len(table.skipped), first.line, first.reason
        )
    return [
        Reading(device, tuple(x), y)
        for device, x, y in zip(table.device_ids, table.x.tolist(), table.y.tolist(), strict=True)
    ]


def synthetic_source(n_devices: int, n_readings: int, seed: int = 0, **options: Any) -> Iterator[Reading]:
    """Readings of a seeded synthetic fleet with drift (:mod:`learners.evaluation.synthetic`).

    ``options`` go to ``make_fleet_stream`` (``n_features``, ``task``, …).

    Examples
    --------
    >>> next(synthetic_source(2, 10, seed=1, n_features=2)).device_id
    'dev-0000'
    """
    from learners.evaluation.synthetic import make_fleet_stream

    stream = make_fleet_stream(n_devices=n_devices, n_readings=n_readings, seed=seed, **options)
    # Lazily, so a long stream never exists as millions of Reading objects at once.
    for device, x, y in zip(stream.device_ids, stream.x, stream.y.tolist(), strict=True):
        yield Reading(device, tuple(x.tolist()), y)


# -- running -----------------------------------------------------------------------------


def _chunks(readings: Iterator[Reading], size: int) -> Iterator[list[Reading]]:
    while chunk := list(islice(readings, size)):
        yield chunk


def run_producer(
    settings: Settings,
    readings: Iterable[Reading],
    rate: float | None,
    gateway_size: int = 1,
    limit: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    client: ProducerClient | None = None,
    show_progress: bool | None = None,
    flush_timeout_s: float | None = 300.0,
) -> dict[str, Any]:
    """Send ``readings`` at ``rate`` readings/s (``None``: as fast as possible).

    Pacing follows an absolute schedule from the start (reading *i* is due
    at ``start + i / rate``), so sleep overshoot never accumulates into
    drift.  In gateway mode (``gateway_size > 1``) readings are taken
    ``gateway_size × partitions`` at a time so messages come out nearly full.
    At the end it waits up to ``flush_timeout_s`` (``None``: as long as it
    takes) for the broker to acknowledge everything, then raises if it did not.

    Returns
    -------
    dict
        ``readings``, ``messages``, ``acked`` (readings the broker acknowledged),
        ``resent`` (messages sent again after a broker outage), ``seconds`` and the achieved ``rate``.

    Examples
    --------
    >>> from connectors.producer import MemoryProducer
    >>> now = [0.0]
    >>> def oversleep(s: float) -> None:  # a sleep that is always 1 ms late
    ...     now[0] += s + 0.001
    >>> readings = [Reading("d1", (1.0,), 2.0)] * 100
    >>> out = run_producer(Settings(), readings, rate=50.0, clock=lambda: now[0], sleep=oversleep,
    ...                    client=MemoryProducer())
    >>> out["readings"], out["messages"], round(out["seconds"], 3)
    (100, 100, 2.001)
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 readings/s, got {rate}")
    from pipeline.tools.progress import Progress

    total = limit if limit is not None else (len(readings) if isinstance(readings, Sized) else None)
    stream = iter(readings) if limit is None else islice(readings, limit)
    producer = SensorProducer(settings, gateway_size, client)
    # A bar on a terminal when the total is known, unless ``show_progress`` says otherwise.
    enabled = show_progress if show_progress is not None else (None if total else False)
    progress = Progress(total or 0, "produce", enabled=enabled)
    start = clock()
    try:
        done = _send_paced(producer, stream, gateway_size, rate, start, clock, sleep, progress)
        # Waits out a broker outage (unacknowledged readings are resent), but not forever.
        producer.flush(flush_timeout_s)
        seconds = clock() - start
    finally:
        # After the flush above this returns at once; after an error it must not wait forever.
        producer.close(timeout_s=30.0)
        progress.close()
    return {
        "readings": done,
        "messages": producer.messages_sent,
        "acked": producer.readings_acked,
        "resent": producer.resent,
        "seconds": seconds,
        "rate": done / seconds if seconds > 0 else float("inf"),
    }


def _send_paced(
    producer: SensorProducer,
    stream: Iterator[Reading],
    gateway_size: int,
    rate: float | None,
    start: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    progress: Any,
) -> int:
    """Send ``stream`` one reading (or one gateway chunk) at a time on schedule; returns readings sent."""
    done = 0
    size = 1 if gateway_size == 1 else gateway_size * producer.n_partitions
    for chunk in _chunks(stream, size):
        if gateway_size == 1:
            producer.send(chunk[0])
        else:
            producer.send_batch(chunk)
        done += len(chunk)
        if rate is not None:
            # Wait until this chunk's time slot is over (absolute target: no drift).
            wait = start + done / rate - clock()
            if wait > 0:
                sleep(wait)
        progress.update(done)
    return done


# -- command line ------------------------------------------------------------------------


def cmd_produce(args: argparse.Namespace) -> int:
    """Handler of ``metastream produce``."""
    settings = Settings.load(args.settings, broker=args.broker)
    readings: Iterable[Reading]
    if args.source == "csv":
        if not (args.file and args.device_col and args.target_col):
            raise ValueError("--source csv needs --file, --device-col and --target-col")
        table = csv_source(args.file, args.device_col, args.target_col, args.time_col)
        if table and len(table[0].x) != settings.n_features:
            raise ValueError(
                f"{args.file} has {len(table[0].x)} features but settings.n_features is "
                f"{settings.n_features}; workers would dead-letter every reading"
            )
        readings, limit = table, args.limit
    else:
        readings = synthetic_source(
            args.devices,
            args.readings,
            args.seed,
            n_features=settings.n_features,
            task=settings.task,
            n_classes=settings.n_classes,
        )
        limit = args.readings if args.limit is None else min(args.limit, args.readings)
    if args.ensure_topics:
        ensure_topics(settings)
    out = run_producer(settings, readings, args.rate, args.gateway_size, limit)
    print(
        f"produced {out['readings']:,} readings in {out['messages']:,} messages to "
        f"{settings.topic_readings} in {out['seconds']:.1f} s ({out['rate']:,.0f} readings/s)"
    )
    return 0


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the ``produce`` sub-command; returns its parser."""
    p = subparsers.add_parser("produce", help="send sensor readings (synthetic or CSV) to the readings topic")
    p.add_argument("--settings", help="JSON settings file (else METASTREAM_* environment and defaults)")
    p.add_argument("--broker", help="kafka://host:port[,host:port]; overrides the settings")
    p.add_argument("--source", choices=["synthetic", "csv"], default="synthetic")
    p.add_argument("--file", help="CSV file (--source csv)")
    p.add_argument("--device-col", help="CSV column with the device id")
    p.add_argument("--target-col", help="CSV column with the target")
    p.add_argument("--time-col", help="CSV column to sort by (optional)")
    p.add_argument("--devices", type=int, default=100, help="synthetic devices")
    p.add_argument("--readings", type=int, default=60_000, help="synthetic readings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, help="readings per second (default: as fast as possible)")
    p.add_argument("--gateway-size", type=int, default=1, help="readings packed per message (1: keyed)")
    p.add_argument("--limit", type=int, help="stop after this many readings")
    p.add_argument(
        "--no-ensure-topics",
        dest="ensure_topics",
        action="store_false",
        help="do not create missing topics first (e.g. no admin rights on the cluster)",
    )
    p.set_defaults(func=cmd_produce)
    return p
