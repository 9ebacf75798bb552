"""``metastream soak``: a sustained paced load for minutes, watching the worker's memory and the lag.

One worker (``python -m pipeline.worker``, as deployed) on an Apache Kafka
broker started here (or ``--broker``), a paced gateway producer on a
thread, and a sampler that every ``--sample`` seconds records

- the worker's resident memory (``VmRSS`` of ``/proc/<pid>/status``), and
- the consumer lag of the worker's group on the readings topic: end
  offsets minus committed offsets, in messages (gateway messages of
  ``--gateway`` readings each; commits happen about once a second).

It prints one progress line per sample to stderr and a summary at the end
(JSON with ``--json``).  The run fails (exit code 1) when the worker's RSS
grew after warm-up by more than ``--max-growth-pct`` percent or
``--max-growth-mb`` MB, or the lag kept growing over the second half of the
run (a least-squares slope above ``--max-lag-slope`` of the produced
message rate, amounting to more than ``--lag-noise`` seconds of input over
the second half), i.e. the worker did not keep up.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from connectors import kafka_python_fix
from connectors.admin import admin_client
from connectors.settings import Settings
from connectors.signing import Signer
from learners.evaluation.synthetic import make_fleet_stream
from pipeline.tools.brokers import ApacheKafkaBroker
from pipeline.tools.demo import running_worker
from pipeline.tools.produce import run_producer
from wire.readings import Reading

FLEET_READINGS = 300_000
"""Distinct readings generated; longer runs cycle through them (the devices keep learning)."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One observation of the running worker."""

    t: float
    """Seconds since production started."""
    rss_mb: float
    lag: int
    """Readings-topic messages not yet committed by the worker's group."""
    readings: int
    """Readings the worker has learned from (its own counter)."""


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MB (Linux ``/proc``).

    Examples
    --------
    >>> rss_mb(os.getpid()) > 1
    True
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def slope_per_s(ts: list[float], values: list[float]) -> float:
    """Least-squares slope of ``values`` over ``ts`` (0 with fewer than two points).

    Examples
    --------
    >>> round(slope_per_s([0, 1, 2, 3], [10, 12, 14, 16]), 6)
    2.0
    """
    if len(ts) < 2 or max(ts) == min(ts):
        return 0.0
    return float(np.polyfit(np.asarray(ts, float), np.asarray(values, float), 1)[0])


class LagProbe:
    """Consumer lag of one group on one topic: end offsets minus committed offsets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.group = settings.app_id  # Faust's consumer group is the app id
        self.admin = admin_client(settings)
        kafka_python_fix.apply()
        self.consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap, group_id=None, **settings.kafka_python_security()
        )
        self.partitions = [TopicPartition(settings.topic_readings, p) for p in range(settings.partitions)]

    def __call__(self) -> int:
        ends = self.consumer.end_offsets(self.partitions)
        # kafka-python 3.x: list_group_offsets({group: partitions}) -> {group: {tp: OffsetAndMetadata}}
        committed = self.admin.list_group_offsets({self.group: self.partitions}).get(self.group, {})
        lag = 0
        for tp in self.partitions:
            done = committed.get(tp)
            position = done.offset if done is not None and done.offset >= 0 else 0
            lag += max(0, ends[tp] - position)
        return lag

    def close(self) -> None:
        self.consumer.close()
        self.admin.close()


def worker_stats(log: Path) -> dict[str, Any]:
    """The last counters the worker printed (``--stats-interval``)."""
    last: dict[str, Any] = {}
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith('{"stats"'):
                last = json.loads(line)["stats"]
    return last


def soak_settings(base: Settings, bootstrap: str, work: Path, partitions: int) -> Settings:
    """``base`` (security etc.) with this run's own app id, topics and a fresh signing key."""
    tag = f"soak-{uuid.uuid4().hex[:8]}"
    Signer.generate().save(work / "worker.key.pem", work / "worker.pub.pem")
    topics: dict[str, Any] = {
        f"topic_{t}": f"{tag}.{t}" for t in ("readings", "models", "meta", "deltas", "events", "deadletter")
    }
    return dataclasses.replace(
        base,
        broker=f"kafka://{bootstrap}",
        app_id=tag,
        partitions=partitions,
        signing_key=str(work / "worker.key.pem"),
        trusted_keys=str(work / "worker.pub.pem"),
        **topics,
    )


def fleet(n_devices: int, n_features: int, seed: int) -> Iterator[Reading]:
    """An endless seeded fleet stream: :data:`FLEET_READINGS` readings, cycled."""
    s = make_fleet_stream(
        n_devices=n_devices, n_readings=FLEET_READINGS, n_features=n_features, late_joiners=0.0, seed=seed
    )
    rows = list(zip(s.device_ids, s.x.tolist(), s.y.tolist(), strict=True))
    return (Reading(d, tuple(x), float(y)) for d, x, y in itertools.cycle(rows))


def wait_until_assigned(log: Path, settings: Settings, worker: Any, timeout_s: float) -> None:
    """Until the worker owns every readings partition (its first group join is done)."""
    wanted = {f"{settings.topic_readings}:{p}" for p in range(settings.partitions)}
    deadline = time.monotonic() + timeout_s
    while not wanted <= set(worker_stats(log).get("assigned", [])):
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode}; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not join its group in {timeout_s:.0f} s; see {log}")
        time.sleep(0.5)


def _pct(values: list[int], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def summarise(
    samples: list[Sample],
    duration_s: float,
    warmup_s: float,
    message_rate: float,
    limits: dict[str, float],
) -> dict[str, Any]:
    """RSS and lag figures of a run, and whether they stayed within ``limits``.

    ``samples`` are those taken while the producer ran; ``limits`` has
    ``max_growth_pct``, ``max_growth_mb``, ``max_lag_slope`` (a share of
    ``message_rate``) and ``lag_noise_s`` (lag growth below this many seconds
    of input over the second half is jitter, not growth).

    Examples
    --------
    >>> samples = [Sample(t, 100 + t / 10, 5, 0) for t in range(0, 100, 10)]
    >>> limits = {"max_growth_pct": 10, "max_growth_mb": 64, "max_lag_slope": 0.02, "lag_noise_s": 3}
    >>> out = summarise(samples, 100, 20, 50.0, limits)
    >>> out["rss_mb"]["after_warmup"], out["rss_mb"]["end"], out["rss_mb"]["slope_second_half_mb_per_min"]
    (102.0, 109.0, 6.0)
    >>> out["memory_ok"], out["lag_messages"]["bounded"]
    (True, True)
    """
    if not samples:
        raise RuntimeError("no samples were taken; the run was too short")
    warm = [s for s in samples if s.t >= warmup_s] or samples[-1:]
    second = [s for s in samples if s.t >= duration_s / 2] or samples[-2:]
    rss = [s.rss_mb for s in samples]
    after_warmup, end = warm[0].rss_mb, samples[-1].rss_mb
    growth = end - after_warmup
    growth_pct = 100 * growth / after_warmup if after_warmup else 0.0
    rss_slope = slope_per_s([s.t for s in second], [s.rss_mb for s in second]) * 60
    lags = [s.lag for s in samples]
    lag_slope = slope_per_s([s.t for s in second], [float(s.lag) for s in second])
    # Growing means faster than the allowed share of the input AND by more, over the second half,
    # than a few seconds of input: commits (every ~1 s) make the lag jitter by about that much.
    span = second[-1].t - second[0].t
    lag_bounded = (
        lag_slope <= limits["max_lag_slope"] * message_rate
        or lag_slope * span <= limits["lag_noise_s"] * message_rate
    )
    memory_ok = growth_pct <= limits["max_growth_pct"] and growth <= limits["max_growth_mb"]
    return {
        "rss_mb": {
            "start": round(rss[0], 1),
            "after_warmup": round(after_warmup, 1),
            "end": round(end, 1),
            "max": round(max(rss), 1),
            "growth_after_warmup": round(growth, 1),
            "growth_pct": round(growth_pct, 2),
            "slope_second_half_mb_per_min": round(rss_slope, 2),
        },
        "lag_messages": {
            "p50": _pct(lags, 50),
            "p99": _pct(lags, 99),
            "max": max(lags),
            "slope_second_half_per_s": round(lag_slope, 3),
            "bounded": lag_bounded,
        },
        "memory_ok": memory_ok,
        "lag_ok": lag_bounded,
        "ok": memory_ok and lag_bounded,
    }


def run_soak(
    minutes: float,
    rate: float,
    n_devices: int = 200,
    *,
    broker: str | None = None,
    base: Settings | None = None,
    sample_s: float = 5.0,
    warmup_s: float | None = None,
    gateway: int = 100,
    partitions: int = 4,
    limits: dict[str, float] | None = None,
    drain_s: float = 60.0,
    seed: int = 0,
    broker_security: str = "PLAINTEXT",
) -> dict[str, Any]:
    """Run the soak and return its summary (see the module docs).

    ``broker_security`` (``PLAINTEXT``, ``SSL`` or ``SASL_SSL``) is the client
    listener of the broker started here; every client then uses it.
    """
    duration = minutes * 60
    if duration <= 0 or rate <= 0:
        raise ValueError("--minutes and --rate must be > 0")
    limits = {
        "max_growth_pct": 10.0,
        "max_growth_mb": 64.0,
        "max_lag_slope": 0.02,
        "lag_noise_s": 3.0,
        **(limits or {}),
    }
    warmup = min(60.0, duration / 4) if warmup_s is None else warmup_s
    base = base or Settings.load(environ={})
    own_broker = ApacheKafkaBroker(security_protocol=broker_security) if broker is None else None
    load_start = os.getloadavg()
    try:
        if own_broker is not None:
            bootstrap = own_broker.start().bootstrap
            security: dict[str, Any] = dict(own_broker.client_security)
            base = dataclasses.replace(base, **security)
        else:
            bootstrap = str(broker).split("://", 1)[-1]
        with tempfile.TemporaryDirectory(prefix="metastream-soak-") as tmp:
            work = Path(tmp)
            settings = soak_settings(base, bootstrap, work, partitions)
            log = work / "worker.log"
            with running_worker(settings, work, "--stats-interval", "1") as worker:
                wait_until_assigned(log, settings, worker, timeout_s=120)
                out = _drive(
                    settings, worker, log, duration, rate, n_devices, sample_s, gateway, drain_s, seed
                )
            out["worker_exit_code"] = worker.returncode
    finally:
        if own_broker is not None:
            own_broker.close()
    message_rate = rate / gateway
    summary = summarise(out.pop("samples_during"), duration, warmup, message_rate, limits)
    return {
        "minutes": minutes,
        "rate": rate,
        "devices": n_devices,
        "gateway": gateway,
        "partitions": partitions,
        "broker": f"apache-kafka {broker_security} (started here)" if broker is None else broker,
        "warmup_s": warmup,
        "limits": limits,
        **summary,
        **out,
        "load_average": {
            "start": [round(v, 2) for v in load_start],
            "end": [round(v, 2) for v in os.getloadavg()],
        },
        "cpus": os.cpu_count(),
    }


def _drive(
    settings: Settings,
    worker: Any,
    log: Path,
    duration: float,
    rate: float,
    n_devices: int,
    sample_s: float,
    gateway: int,
    drain_s: float,
    seed: int,
) -> dict[str, Any]:
    """Produce for ``duration`` s while sampling; then wait for the worker to drain."""
    limit = int(duration * rate)
    readings = fleet(n_devices, settings.n_features, seed)
    produced: dict[str, Any] = {}
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            produced.update(
                run_producer(
                    settings, readings, rate=rate, gateway_size=gateway, limit=limit, show_progress=False
                )
            )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    probe = LagProbe(settings)
    producer = threading.Thread(target=produce, name="soak-producer", daemon=True)
    start = time.monotonic()
    producer.start()
    try:
        samples = _sample_while_producing(worker, log, probe, producer, start, sample_s)
        if errors:
            raise RuntimeError(f"the producer failed: {errors[0]!r}") from errors[0]
        drained_at, lag = _wait_for_drain(log, probe, produced.get("readings", 0), drain_s)
        final_rss = rss_mb(worker.pid)
    finally:
        probe.close()
    stats = worker_stats(log)
    return {
        "samples_during": samples,
        "samples": [dataclasses.astuple(s) for s in samples],
        "sample_fields": [f.name for f in dataclasses.fields(Sample)],
        "produced": {k: round(v, 1) if isinstance(v, float) else v for k, v in produced.items()},
        "drain_s": None if drained_at is None else round(drained_at, 1),
        "final_lag_messages": lag,
        "rss_mb_after_drain": round(final_rss, 1),
        "worker": {
            "readings": stats.get("readings"),
            "dead_letters": stats.get("dead_letters"),
            "drifts": stats.get("drifts"),
            "adaptations": stats.get("adaptations"),
            "published": stats.get("published"),
            # Over production and drain: at a sustainable rate this is about the produced rate.
            "readings_per_s": round(stats.get("readings", 0) / (time.monotonic() - start), 1),
        },
    }


def _sample_while_producing(
    worker: Any, log: Path, probe: LagProbe, producer: threading.Thread, start: float, sample_s: float
) -> list[Sample]:
    """Sample the worker every ``sample_s`` s until the producer thread ends."""
    samples: list[Sample] = []
    next_at = start
    while producer.is_alive():
        next_at += sample_s
        producer.join(max(0.0, next_at - time.monotonic()))
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode} during the soak; see {log}")
        sample = Sample(
            round(time.monotonic() - start, 2),
            rss_mb(worker.pid),
            probe(),
            int(worker_stats(log).get("readings", 0)),
        )
        samples.append(sample)
        print(
            f"[soak {sample.t:7.1f}s] worker rss {sample.rss_mb:7.1f} MB   "
            f"lag {sample.lag:6d} messages   learned {sample.readings:,} readings",
            file=sys.stderr,
            flush=True,
        )
    return samples


def _wait_for_drain(log: Path, probe: LagProbe, produced: int, drain_s: float) -> tuple[float | None, int]:
    """Seconds until the worker has learned and committed all ``produced`` readings (None: not within
    ``drain_s``), and the last lag seen."""
    drained_at: float | None = None
    end_of_production = time.monotonic()
    lag = probe()
    while time.monotonic() - end_of_production < drain_s:
        stats = worker_stats(log)
        done = int(stats.get("readings", 0)) + int(stats.get("dead_letters", 0))
        if lag == 0 and done >= produced:
            drained_at = time.monotonic() - end_of_production
            break
        time.sleep(0.5)
        lag = probe()
    return drained_at, lag


def format_summary(s: dict[str, Any]) -> str:
    """The soak's numbers for a terminal."""
    r, lag = s["rss_mb"], s["lag_messages"]
    verdict = (
        "OK"
        if s["ok"]
        else "FAILED ("
        + ", ".join(
            what
            for what, ok in (("memory grew", s["memory_ok"]), ("lag kept growing", s["lag_ok"]))
            if not ok
        )
        + ")"
    )
    return "\n".join(
        [
            "",
            f"metastream soak — {s['minutes']:g} min at {s['rate']:,.0f} readings/s, "
            f"{s['devices']} devices: {verdict}",
            f"  produced        {s['produced'].get('readings', 0):,} readings "
            f"at {s['produced'].get('rate', 0):,.0f}/s",
            f"  worker learned  {s['worker']['readings']:,} readings; drained {s['drain_s']} s after the end",
            f"  worker RSS MB   start {r['start']}  after warm-up {r['after_warmup']}  end {r['end']}  "
            f"max {r['max']}  (growth {r['growth_after_warmup']} MB, {r['growth_pct']}%; "
            f"2nd-half slope {r['slope_second_half_mb_per_min']} MB/min)",
            f"  lag (messages)  p50 {lag['p50']:g}  p99 {lag['p99']:g}  max {lag['max']}  "
            f"(2nd-half slope {lag['slope_second_half_per_s']}/s; bounded: {lag['bounded']})",
            f"  load average    start {s['load_average']['start']}  end {s['load_average']['end']} "
            f"on {s['cpus']} CPUs",
        ]
    )


def cmd_soak(args: argparse.Namespace) -> int:
    """Handler of ``metastream soak``: 0 when memory and lag stayed bounded, else 1."""
    # A given broker may need TLS/SASL from METASTREAM_* or --settings; the one started here does not.
    base = Settings.load(args.settings) if args.broker else Settings.load(args.settings, environ={})
    summary = run_soak(
        args.minutes,
        args.rate,
        args.devices,
        broker=args.broker,
        base=base,
        sample_s=args.sample,
        warmup_s=args.warmup,
        gateway=args.gateway,
        partitions=args.partitions,
        limits={
            "max_growth_pct": args.max_growth_pct,
            "max_growth_mb": args.max_growth_mb,
            "max_lag_slope": args.max_lag_slope,
            "lag_noise_s": args.lag_noise,
        },
        seed=args.seed,
        broker_security=args.broker_security,
    )
    print(json.dumps(summary) if args.json else format_summary(summary), flush=True)
    return 0 if summary["ok"] else 1


def add_cli(subparsers: Any) -> None:
    """Register the ``soak`` sub-command."""
    p = subparsers.add_parser(
        "soak", help="sustained paced load on one worker for minutes: memory (RSS) and consumer lag"
    )
    p.add_argument("--minutes", type=float, default=5.0, help="minutes of production (fractions allowed)")
    p.add_argument("--rate", type=float, default=5000.0, help="readings/s")
    p.add_argument("--devices", type=int, default=200)
    p.add_argument(
        "--broker", help="kafka://host:port of a running broker (default: start Apache Kafka here)"
    )
    p.add_argument(
        "--settings", help="JSON settings (security, learner) for --broker; topics are the run's own"
    )
    p.add_argument(
        "--broker-security",
        choices=["PLAINTEXT", "SSL", "SASL_SSL"],
        default="PLAINTEXT",
        help="client listener of the broker started here (SSL: mutual TLS; SASL_SSL: SCRAM-SHA-256)",
    )
    p.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    p.add_argument(
        "--warmup", type=float, help="seconds before the RSS baseline (default min(60, 1/4 of the run))"
    )
    p.add_argument("--gateway", type=int, default=100, help="readings per message")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--max-growth-pct", type=float, default=10.0, help="RSS growth after warm-up allowed, %%")
    p.add_argument("--max-growth-mb", type=float, default=64.0, help="RSS growth after warm-up allowed, MB")
    p.add_argument(
        "--max-lag-slope",
        type=float,
        default=0.02,
        help="lag growth allowed over the 2nd half, as a share of the produced message rate",
    )
    p.add_argument(
        "--lag-noise",
        type=float,
        default=3.0,
        metavar="S",
        help="lag growth over the 2nd half below S seconds of input is jitter (commits), not growth",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_soak)
