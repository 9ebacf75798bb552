"""Kill a worker mid-stream while several run, then count (issue 5).

Three ``python -m pipeline.worker`` processes share six readings partitions
on a real Apache Kafka broker.  One is SIGKILLed half-way through the stream;
the survivors take over its partitions from their checkpoints, a replacement
joins (another rebalance), and then every device's state and every published
model version is counted.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as AioTP
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from connectors.admin import ensure_topics, partition_for
from connectors.settings import Settings
from connectors.signing import Signer
from learners.evaluation.synthetic import FleetStream, make_fleet_stream
from pipeline.checkpoints import KafkaPartition, RecordList, newest_checkpoint, published_versions
from pipeline.chunk_layout import manifest_key
from pipeline.worker_core import WorkerCore
from tests.integration.test_worker import Launch, last_stats, worker_log
from wire.checkpoint import Checkpoint
from wire.readings import Reading, encode_readings

pytestmark = pytest.mark.integration

PARTITIONS = 6  # Faust's assignor gives 3 workers 2 each (with 4, one may get none)
PER_MESSAGE = 20


def crash_settings(base: Settings) -> Settings:
    """A small learner, six partitions, short session and checkpoint interval."""
    return replace(
        base,
        partitions=PARTITIONS,
        micro_batch=100,
        session_timeout_s=6.0,  # the broker's minimum: the victim's partitions move after ~6 s
        checkpoint_interval_s=1.0,
        learner={"hidden": [8], "adapt_after": 16, "buffer_size": 32, "meta_every": 500},
    )


def produce(cfg: Settings, readings: list[Reading]) -> Counter[str]:
    """Gateway messages packed per partition; returns the readings per device the broker acked."""
    producer = KafkaProducer(bootstrap_servers=cfg.bootstrap, linger_ms=5, acks="all")
    acked: Counter[str] = Counter()
    try:
        futures = []
        for start in range(0, len(readings), PER_MESSAGE):
            groups: dict[int, list[Reading]] = defaultdict(list)
            for r in readings[start : start + PER_MESSAGE]:
                groups[partition_for(r.device_id, PARTITIONS)].append(r)
            for p, group in groups.items():
                fut = producer.send(cfg.topic_readings, value=encode_readings(group), partition=p)
                futures.append((fut, group))
        producer.flush()
        for fut, group in futures:
            fut.get(timeout=30)  # raises unless the broker acked it
            acked.update(r.device_id for r in group)
    finally:
        producer.close()
    return acked


def as_readings(stream: FleetStream) -> list[Reading]:
    return [
        Reading(d, tuple(x), float(y))
        for d, x, y in zip(stream.device_ids, stream.x.tolist(), stream.y, strict=True)
    ]


def read_all(cfg: Settings, topic: str, **consumer_options: Any) -> list[Any]:
    """Every record on ``topic`` (``PARTITIONS`` of them), in offset order per partition (kafka-python)."""
    consumer = KafkaConsumer(bootstrap_servers=cfg.bootstrap, enable_auto_commit=False, **consumer_options)
    out: list[Any] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for records in consumer.poll(timeout_ms=500).values():
                out += sorted(records, key=lambda rec: rec.offset)
    finally:
        consumer.close()
    return out


def newest_checkpoints(cfg: Settings, key: Signer) -> dict[int, Checkpoint]:
    """The newest complete checkpoint of each partition that ``key``'s public half verifies."""
    core = WorkerCore(cfg, key)
    by_partition: dict[int, list[Any]] = defaultdict(list)
    for r in read_all(cfg, cfg.checkpoints_topic, fetch_max_bytes=64 * 1024 * 1024):
        by_partition[r.partition].append(r)
    newest: dict[int, Checkpoint] = {}
    for p, records in by_partition.items():
        source = RecordList(records)
        ck = asyncio.run(newest_checkpoint(source, p, core.open_manifest, core.open_chunk, 0, source.end))
        if ck is not None:
            newest[p] = ck
    return newest


def model_versions(cfg: Settings) -> dict[str, list[int]]:
    """Per device, the ``model_version`` of every model on the models topic, in offset order."""
    versions: dict[str, list[int]] = defaultdict(list)
    for r in read_all(cfg, cfg.topic_models):
        versions[r.key.decode()].append(int(dict(r.headers)["model_version"]))
    return dict(versions)


def readings_tps(stats: dict[str, Any], topic: str) -> set[str]:
    return {tp for tp in stats.get("assigned", []) if tp.startswith(topic + ":")}


def wait_until(cond: Any, timeout: float, describe: Any) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, describe()
        time.sleep(0.5)


@pytest.mark.slow
def produce_paced(cfg: Settings, readings: list[Reading], produced: Counter[str]) -> None:
    """Produce ``readings`` in chunks of 1,000, 0.4 s apart, counting the acked ones into ``produced``."""
    for i in range(0, len(readings), 1000):
        produced.update(produce(cfg, readings[i : i + 1000]))
        time.sleep(0.4)


def checkpointed_readings(cfg: Settings, key: Signer) -> Counter[str]:
    """Readings per device in the newest checkpoints of all partitions."""
    learned: Counter[str] = Counter()
    for ck in newest_checkpoints(cfg, key).values():
        learned.update(ck.readings)
    return learned


def test_sigkill_one_of_three_workers_then_count(
    settings: Settings,
    signer: Signer,
    start_worker: Launch,
    tmp_path: Path,
) -> None:
    # Prepare: three workers of one group, every readings partition owned.
    s = crash_settings(settings)
    procs = [start_worker(s) for _ in range(3)]
    all_tps = {f"{s.topic_readings}:{p}" for p in range(PARTITIONS)}
    logs = lambda: "\n".join(worker_log(tmp_path, n)[-1500:] for n in range(len(procs)))  # noqa: E731

    def owned_by(workers: list[int]) -> list[set[str]]:
        return [readings_tps(last_stats(tmp_path, n), s.topic_readings) for n in workers]

    def settled(workers: list[int]) -> bool:
        owned = owned_by(workers)
        return all(owned) and set().union(*owned) == all_tps and sum(map(len, owned)) == PARTITIONS

    wait_until(lambda: settled([0, 1, 2]), 90, logs)
    stream = make_fleet_stream(
        n_devices=16, n_readings=16_000, n_features=4, gradual_share=0.0, late_joiners=0.0, seed=11
    )
    readings = as_readings(stream)
    victim = 0
    victim_tps = owned_by([victim])[0]

    # Execute: the stream flows (paced, from a thread); SIGKILL one worker while it is learning;
    # a replacement joins after the survivors took over.
    produced: Counter[str] = Counter()
    producer = threading.Thread(target=produce_paced, args=(s, readings, produced))
    producer.start()
    wait_until(lambda: last_stats(tmp_path, victim).get("readings", 0) >= 2000, 60, logs)
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait(10)
    killed_at = last_stats(tmp_path, victim)
    producer.join(120)
    wait_until(lambda: settled([1, 2]), 60, logs)
    procs.append(start_worker(s))
    wait_until(lambda: settled([1, 2, 3]), 60, logs)
    wait_until(
        lambda: checkpointed_readings(s, signer) == produced,
        120,
        lambda: f"{newest_checkpoints(s, signer)}\n{logs()}",
    )
    checkpoints = newest_checkpoints(s, signer)
    versions = model_versions(s)
    survivors = [last_stats(tmp_path, n) for n in (1, 2, 3)]

    # Assert: the victim owned partitions and had learned readings when it was killed.
    assert victim_tps and killed_at["readings"] > 0, killed_at
    # Every acked reading is in its device's model exactly once (counted per device).
    learned: Counter[str] = Counter()
    for p, ck in checkpoints.items():
        assert {partition_for(d, PARTITIONS) for d in ck.readings} <= {p}
        learned.update(ck.readings)
    assert sum(produced.values()) == len(readings)
    assert learned == produced
    # Model versions: per device 1..max, none missing, none repeated, increasing in offset order.
    assert set(versions) == set(stream.device_ids)
    for device, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), (device, seen)
        assert checkpoints[partition_for(device, PARTITIONS)].versions[device] == seen[-1]
    # The survivors (and the replacement) own every readings partition; nobody owns one twice.
    owned = [readings_tps(st, s.topic_readings) for st in survivors]
    assert set().union(*owned) == all_tps and sum(map(len, owned)) == PARTITIONS
    assert all(p.poll() is None for p in procs[1:]), logs()
    restored = sum(st.get("checkpoints_restored", 0) for st in survivors)
    skipped = sum(st.get("duplicates_skipped", 0) for st in survivors)
    print(f"restored {restored} checkpoints; skipped {skipped} redelivered messages; versions {versions}")


def test_restore_reads_the_newest_genuine_checkpoint_and_published_versions(
    settings: Settings,
    signer: Signer,
) -> None:
    # Prepare: on partition 1 of the checkpoint topic a genuine checkpoint at offset 29, then a
    # newer one signed by a stranger, then garbage; two model versions of one device on the models topic.
    s = crash_settings(settings)
    ensure_topics(s)
    core = WorkerCore(s, signer)
    stranger = WorkerCore(s, Signer.generate())
    device = next(f"dev-{i}" for i in range(100) if partition_for(f"dev-{i}", PARTITIONS) == 1)
    message = encode_readings([Reading(device, (1.0, 2.0, 3.0, 4.0), 1.0)])
    core.on_readings([(message, 1, 29)])
    stranger.on_readings([(message, 1, 99)])
    producer = KafkaProducer(bootstrap_servers=s.bootstrap, max_request_size=8 * 1024 * 1024)
    for writer in (core, stranger):  # chunks, then the manifest naming their offsets
        [taken] = writer.checkpoint()
        sent = [
            producer.send(s.checkpoints_topic, key=k.encode(), value=v, partition=1)
            for _, k, v, _ in taken.chunks
        ]
        manifest = writer.seal_manifest(taken, [f.get(timeout=30).offset for f in sent])
        producer.send(s.checkpoints_topic, key=manifest_key(1).encode(), value=manifest, partition=1)
    producer.send(s.checkpoints_topic, key=manifest_key(1).encode(), value=b"junk", partition=1)
    for v in (1, 2):
        headers = [("model_version", str(v).encode())]
        producer.send(s.topic_models, key=device.encode(), value=b"m", headers=headers, partition=1)
    producer.flush()
    producer.close()

    async def read() -> tuple[Checkpoint | None, Checkpoint | None, dict[str, int]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [AioTP(s.checkpoints_topic, 1), AioTP(s.checkpoints_topic, 0), AioTP(s.topic_models, 1)]
            consumer.assign(tps)
            begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
            ck, none = [
                await newest_checkpoint(
                    KafkaPartition(consumer, tp),
                    tp.partition,
                    core.open_manifest,
                    core.open_chunk,
                    begin[tp],
                    end[tp],
                )
                for tp in tps[:2]
            ]
            return ck, none, await published_versions(consumer, tps[2], begin[tps[2]], end[tps[2]])
        finally:
            await consumer.stop()

    # Execute
    ck, none, published = asyncio.run(read())

    # Assert: the stranger's newer checkpoint and the garbage are skipped; the empty partition has none.
    assert ck is not None and (ck.partition, ck.offset, ck.readings) == (1, 29, {device: 1})
    assert none is None
    assert published == {device: 2}


@pytest.mark.slow
def test_a_clean_stop_writes_a_final_checkpoint(
    settings: Settings,
    signer: Signer,
    start_worker: Launch,
    tmp_path: Path,
) -> None:
    # Prepare: one worker whose periodic checkpoint would come only after 10 minutes.
    s = replace(crash_settings(settings), checkpoint_interval_s=600.0)
    proc = start_worker(s)
    log = lambda: worker_log(tmp_path)  # noqa: E731
    wait_until(lambda: readings_tps(last_stats(tmp_path, 0), s.topic_readings), 90, log)
    stream = make_fleet_stream(n_devices=8, n_readings=3000, n_features=4, late_joiners=0.0, seed=2)
    produced = produce(s, as_readings(stream))
    wait_until(lambda: last_stats(tmp_path, 0).get("readings") == 3000, 60, log)
    before = newest_checkpoints(s, signer)

    # Execute
    proc.send_signal(signal.SIGTERM)

    # Assert: it exits cleanly, and its last state is on the checkpoint topic.
    assert proc.wait(30) == 0, worker_log(tmp_path)
    learned: Counter[str] = Counter()
    for ck in newest_checkpoints(s, signer).values():
        learned.update(ck.readings)
    learned_before: Counter[str] = Counter()
    for ck in before.values():
        learned_before.update(ck.readings)
    assert learned_before != produced, learned_before  # the final checkpoint is needed
    assert learned == produced
