"""A flood of new devices (issue 12): 50,000 readings from 50,000 new ids on 4 partitions.

One ``python -m pipeline.worker`` process on a real Apache Kafka broker, with
``max_devices`` well below the flood.  Good devices send normal streams
before, during and after the flood.  The worker must survive, stay under
its memory bound, checkpoint every device (chunked: no partition has a
device cap), restore all of them after a SIGKILL, and the good devices must
keep learning and get models.  Timings and the worker's RSS are printed.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KafkaTP

from connectors.admin import ensure_topics
from connectors.settings import Settings
from connectors.signing import Signer
from learners.evaluation.synthetic import make_fleet_stream
from pipeline.checkpoints import KafkaPartition, newest_checkpoint
from pipeline.worker_core import WorkerCore
from tests.integration.test_worker import Launch, last_stats, worker_log
from wire.checkpoint import Checkpoint
from wire.readings import Reading, encode_readings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 4
FLOOD = 50_000
MAX_DEVICES = 5_000
GOOD = 20
MEMORY_BOUND_MB = 150
"""Most the worker's peak RSS may grow during the flood (without the bound it grew by about 250 MB)."""


def flood_settings(base: Settings) -> Settings:
    return replace(
        base,
        partitions=PARTITIONS,
        micro_batch=1000,
        max_devices=MAX_DEVICES,
        checkpoint_interval_s=2.0,
        session_timeout_s=6.0,
    )


def send(cfg: Settings, readings: list[Reading]) -> tuple[Counter[str], float]:
    """One message per reading, keyed by device id (as the user did); acked counts and seconds taken."""
    producer = KafkaProducer(bootstrap_servers=cfg.bootstrap, linger_ms=5, acks="all")
    start = time.monotonic()
    try:
        futures = [
            (producer.send(cfg.topic_readings, key=r.device_id.encode(), value=encode_readings([r])), r)
            for r in readings
        ]
        producer.flush()
        acked: Counter[str] = Counter()
        for fut, r in futures:
            fut.get(timeout=60)
            acked[r.device_id] += 1
    finally:
        producer.close()
    return acked, time.monotonic() - start


def end_offsets(cfg: Settings) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=cfg.bootstrap)
    try:
        tps = [KafkaTP(cfg.topic_readings, p) for p in range(PARTITIONS)]
        return {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def newest_checkpoints(cfg: Settings, key: Signer) -> dict[int, Checkpoint | None]:
    """Each partition's newest complete checkpoint, read as a restoring worker reads it."""
    core = WorkerCore(cfg, key)

    async def read() -> dict[int, Checkpoint | None]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap,
            enable_auto_commit=False,
            fetch_max_bytes=8 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        try:
            tps = [TopicPartition(cfg.checkpoints_topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
            return {
                tp.partition: await newest_checkpoint(
                    KafkaPartition(consumer, tp),
                    tp.partition,
                    core.open_manifest,
                    core.open_chunk,
                    begin[tp],
                    end[tp],
                )
                for tp in tps
            }
        finally:
            await consumer.stop()

    return asyncio.run(read())


def models_of(cfg: Settings, devices: set[str]) -> dict[str, list[int]]:
    """Model versions published per device (of ``devices``), in offset order."""
    consumer = KafkaConsumer(bootstrap_servers=cfg.bootstrap, enable_auto_commit=False)
    out: dict[str, list[int]] = {}
    try:
        tps = [KafkaTP(cfg.topic_models, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=500).values():
                for r in sorted(records, key=lambda rec: rec.offset):
                    device = r.key.decode()
                    if device in devices:
                        out.setdefault(device, []).append(int(dict(r.headers)["model_version"]))
    finally:
        consumer.close()
    return out


def wait_until(cond: Any, timeout: float, describe: Any) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, describe()
        time.sleep(0.25)


def good_and_flood_readings(n_features: int) -> tuple[list[str], list[list[Reading]], list[Reading]]:
    """The good devices' ids, their readings in three parts, and the flood mixed with the second part."""
    good_stream = make_fleet_stream(
        n_devices=GOOD, n_readings=6000, n_features=n_features, gradual_share=0.0, late_joiners=0.0, seed=8
    )
    good = [
        Reading(d, tuple(x), float(y))
        for d, x, y in zip(good_stream.device_ids, good_stream.x.tolist(), good_stream.y, strict=True)
    ]
    parts = [good[:2000], good[2000:4000], good[4000:]]
    flood = [Reading(f"flood-{i:05d}", (0.1, -0.2, 0.3, 0.5), 1.0) for i in range(FLOOD)]
    step = FLOOD // len(parts[1])  # one good reading every `step` flood readings
    mixed = [
        r
        for k, good_reading in enumerate(parts[1])
        for r in (good_reading, *flood[k * step : (k + 1) * step])
    ]
    mixed += flood[len(parts[1]) * step :]
    return good_stream.device_ids, parts, mixed


def wait_all_checkpointed(cfg: Settings, tmp_path: Path, n: int, timeout: float) -> None:
    """Wait until worker ``n`` has checkpointed every partition up to its current end offset."""
    ends = end_offsets(cfg)
    wait_until(
        lambda: all(
            last_stats(tmp_path, n).get("checkpointed", {}).get(str(p), -1) == ends[p] - 1
            for p in range(PARTITIONS)
        ),
        timeout,
        lambda: worker_log(tmp_path, n),
    )


def print_report(
    n_sent: int,
    seconds: dict[str, float],
    before_flood: dict[str, int],
    peak: dict[str, int],
    stats: dict[str, Any],
    after: dict[str, Any],
    stages: dict[str, float],
) -> None:
    """Timings, the worker's RSS and its device counts, for the reader of the test's output."""
    mb = {k: v / 1024 for k, v in {**{f"before_{k}": v for k, v in before_flood.items()}, **peak}.items()}
    print(
        f"\nflood: sent {n_sent} messages in {seconds['send']:.1f} s; learned {seconds['learned']:.1f} s"
        f" after the flood began, checkpointed {seconds['checkpointed']:.1f} s; restart restored"
        f" {PARTITIONS} partitions in {seconds['restored']:.1f} s\nworker RSS before the flood"
        f" {mb['before_VmRSS']:.0f} MB, after {mb['VmRSS']:.0f} MB, peak {mb['VmHWM']:.0f} MB;"
        f" resident devices {stats['devices']}, stored"
        f" {stats['devices_stored']}, evicted {stats['evicted']}; restarted worker: resident"
        f" {after['devices']}, restored from the store {after['devices_restored']}, redelivered"
        f" messages skipped {after['duplicates_skipped']}\nstages (s): "
        + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
    )


def test_a_flood_of_new_devices_is_survived_checkpointed_and_restored(
    settings: Settings,
    signer: Signer,
    start_worker: Launch,
    tmp_path: Path,
) -> None:
    # Prepare: one worker owning the 4 partitions; good devices with normal streams in three parts.
    s = flood_settings(settings)
    ensure_topics(s)
    good_ids, parts, mixed = good_and_flood_readings(s.n_features)
    t0 = time.monotonic()
    first = start_worker(s)
    logs = lambda n=0: worker_log(tmp_path, n)  # noqa: E731
    owns_all = lambda n: len(last_stats(tmp_path, n).get("assigned", [])) >= PARTITIONS  # noqa: E731
    wait_until(lambda: owns_all(0), 90, logs)
    stages = {"worker up": time.monotonic() - t0}
    produced, _ = send(s, parts[0])
    wait_until(lambda: last_stats(tmp_path, 0).get("readings") == len(parts[0]), 60, logs)
    before_flood = memory_kb(first.pid)

    # Execute: the flood, mixed with the good devices' second part.
    start = time.monotonic()
    acked, send_s = send(s, mixed)
    produced += acked
    total = sum(produced.values())
    wait_until(lambda: last_stats(tmp_path, 0).get("readings") == total, 180, logs)
    learned_s = time.monotonic() - start
    wait_all_checkpointed(s, tmp_path, 0, 120)
    checkpointed_s = time.monotonic() - start
    peak = memory_kb(first.pid)
    stats = last_stats(tmp_path, 0)
    first.send_signal(signal.SIGKILL)
    first.wait(30)

    # ... a new worker restores every partition; the good devices' third part follows.
    restart = time.monotonic()
    start_worker(s)
    wait_until(
        lambda: owns_all(1) and last_stats(tmp_path, 1).get("checkpoints_restored") == PARTITIONS, 120, logs
    )
    restored_s = time.monotonic() - restart
    acked, _ = send(s, parts[2])
    produced += acked
    wait_until(lambda: last_stats(tmp_path, 1).get("readings") == len(parts[2]), 120, lambda: logs(1))
    after = last_stats(tmp_path, 1)
    wait_all_checkpointed(s, tmp_path, 1, 60)
    stages["after restart"] = time.monotonic() - restart
    final = newest_checkpoints(s, signer)
    models = models_of(s, set(good_ids))
    stages["total"] = time.monotonic() - t0

    # Assert: the first worker survived the flood and learned every reading exactly once,
    # with at most max_devices (plus one batch) in memory.
    assert (
        stats["readings"] == sum(produced.values()) - len(parts[2]) and stats["devices_known"] == FLOOD + GOOD
    )
    assert stats["devices"] <= MAX_DEVICES + s.core_batch_readings and stats["evicted"] >= FLOOD - MAX_DEVICES
    assert stats["devices"] + stats["devices_stored"] == FLOOD + GOOD
    # Memory: all 50,000 flood devices resident grew the worker by about 250 MB; bounded, far less.
    assert peak["VmHWM"] - before_flood["VmRSS"] < MEMORY_BOUND_MB * 1024, (before_flood, peak)
    # The restarted worker restored every device and learned only the new readings (messages
    # redelivered from a commit that lagged its checkpoint are skipped as already learned).
    assert after["readings"] == len(parts[2])
    assert after["devices"] + after["devices_stored"] == FLOOD + GOOD
    assert after["devices"] <= MAX_DEVICES + s.core_batch_readings
    # Every reading is in its device's checkpointed state exactly once, across the flood and the restart.
    learned: Counter[str] = Counter()
    for ck in final.values():
        assert ck is not None
        learned.update(ck.readings)
    assert learned == produced and len(learned) == FLOOD + GOOD
    assert all(len(ck.chunks) >= (FLOOD // PARTITIONS) // 128 for ck in final.values() if ck)
    # The good devices kept learning and have models, versions 1, 2, … without gaps or repeats.
    assert set(models) == set(good_ids)
    for device, versions in models.items():
        assert versions == list(range(1, len(versions) + 1)), (device, versions)
    seconds = {"send": send_s, "learned": learned_s, "checkpointed": checkpointed_s, "restored": restored_s}
    print_report(len(mixed), seconds, before_flood, peak, stats, after, stages)
