"""Nothing in a message can stop a worker (issue #12), on a real Apache Kafka broker.

Workers run as subprocesses (``python -m pipeline.worker``) as deployed:

- hostile records (a 5,000-digit integer, hypothesis-drawn huge integers,
  deep nesting, huge strings, odd unicode) between good readings: one dead
  letter each, every good reading learned, the worker healthy, and after a
  restart nothing is learned again;
- a learner failure (injected with ``METASTREAM_INJECT_FAULT``) stops the
  worker with exit status 70 within seconds, and a restarted one goes on
  from the last checkpoint;
- a message the learner always fails on is dead-lettered after two failures.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer

from connectors.admin import ensure_topics
from connectors.settings import Settings
from connectors.signing import Signer
from pipeline.fatal import EXIT_FATAL
from pipeline.faults import ENV
from tests import harness
from tests.hostile_json import hostile_message
from tests.integration import test_crash_restart as cr
from wire.readings import DeadLetter, Reading, encode_readings

pytestmark = pytest.mark.integration

N = harness.N_FEATURES
BIG_INT_READING = ('{"v":1,"device_id":"sensor-9","x":[' + "9" * 5000 + ',1,1,1],"y":1}').encode()


def good(i: int, device: str = "good") -> bytes:
    return encode_readings([Reading(device, (0.1 * (i % 7), 1.0, -0.5, 0.25 * (i % 3)), 0.3 * (i % 5))])


class DeadLetters:
    """The dead-letter topic, read incrementally from the start."""

    def __init__(self, cfg: Settings) -> None:
        self.consumer = KafkaConsumer(
            cfg.topic_deadletter,
            bootstrap_servers=cfg.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_bytes=8 * 1024 * 1024,
        )
        self.records: list[Any] = []

    def until(self, n: int, timeout: float, describe: Any) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.records) < n:
            assert time.monotonic() < deadline, f"{len(self.records)} of {n} dead letters\n{describe()}"
            for records in self.consumer.poll(timeout_ms=300).values():
                self.records += records
        return self.records

    def close(self) -> None:
        self.consumer.close()


def wait_until(cond: Any, timeout: float, describe: Any) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, describe()
        time.sleep(0.3)


def owns_readings(tmp_path: Path, n: int, cfg: Settings) -> bool:
    return any(
        tp.startswith(cfg.topic_readings + ":") for tp in harness.last_stats(tmp_path, n).get("assigned", [])
    )


class GoodAndBad:
    """A producer on one key (one partition, so order holds): bad records between good readings."""

    def __init__(self, cfg: Settings, proc: subprocess.Popen[Any], tmp_path: Path) -> None:
        self.cfg, self.proc, self.tmp_path = cfg, proc, tmp_path
        self.producer = KafkaProducer(
            bootstrap_servers=cfg.bootstrap, acks="all", max_request_size=2 * 1024 * 1024
        )
        self.letters = DeadLetters(cfg)
        self.sent_bad: dict[int, bytes] = {}
        self.sent_good = 0

    def send(self, value: bytes) -> int:
        sent = self.producer.send(self.cfg.topic_readings, key=b"gateway", value=value)
        return int(sent.get(timeout=30).offset)

    def between_good_readings(self, bad: list[bytes]) -> None:
        """Each bad record after a good reading; then wait for their letters and the good readings."""
        for raw in bad:
            self.send(good(self.sent_good))
            self.sent_good += 1
            self.sent_bad[self.send(raw)] = raw
        self.send(good(self.sent_good))
        self.sent_good += 1
        self.letters.until(len(self.sent_bad), 60, lambda: harness.worker_log(self.tmp_path))
        wait_until(
            lambda: harness.last_stats(self.tmp_path, 0).get("readings") == self.sent_good,
            60,
            lambda: harness.worker_log(self.tmp_path),
        )
        assert self.proc.poll() is None, harness.worker_log(self.tmp_path)

    def close(self) -> None:
        self.producer.close()
        self.letters.close()


@pytest.mark.slow
def test_hostile_records_are_dead_letters_and_every_good_reading_is_learned_once(
    settings: Settings, start_worker: harness.Launch, tmp_path: Path
) -> None:
    # Prepare: a running worker, a producer on one key (one partition, so order holds)
    cfg = replace(settings, checkpoint_interval_s=1.0)
    proc = start_worker(cfg)
    wait_until(lambda: owns_readings(tmp_path, 0, cfg), 90, lambda: harness.worker_log(tmp_path))
    mixer = GoodAndBad(cfg, proc, tmp_path)
    letters, sent_bad = mixer.letters, mixer.sent_bad

    # A fixed seed; the first example hypothesis tries is the simplest, the other four are varied.
    @seed(20261203)
    @hsettings(
        max_examples=5,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(st.lists(hostile_message(N, where_in=("x", "y", "ts")), min_size=6, max_size=10))
    def hostile_batches(bad: list[bytes]) -> None:
        mixer.between_good_readings(bad)

    try:
        # Execute: the user's 5,000-digit integer, then hypothesis' hostile records
        mixer.between_good_readings([BIG_INT_READING])
        hostile_batches()
        sent_good = mixer.sent_good
        stats = harness.last_stats(tmp_path, 0)
        # Assert: one dead letter per bad record, with its original bytes; every good reading learned
        got = {}
        for r in letters.records:
            d = DeadLetter.decode(r.value)
            got[d.offset] = (d.original, d.reason, r.key)
        assert {o: raw for o, (raw, _, _) in got.items()} == sent_bad
        assert got[min(sent_bad)][1:] == ("number_too_large", b"sensor-9")
        assert len(sent_bad) >= 30
        assert stats["readings"] == sent_good and stats["dead_letters"] == len(sent_bad)
        assert stats["devices"] == 1
        assert proc.poll() is None

        # Execute: a clean restart, then one more good reading
        proc.terminate()
        assert proc.wait(30) == 0, harness.worker_log(tmp_path)
        start_worker(cfg)
        wait_until(lambda: owns_readings(tmp_path, 1, cfg), 90, lambda: harness.worker_log(tmp_path, 1))
        mixer.send(good(sent_good))
        wait_until(
            lambda: harness.last_stats(tmp_path, 1).get("readings") == 1,
            60,
            lambda: harness.worker_log(tmp_path, 1),
        )
        time.sleep(2.0)  # two more stats lines: anything re-learned or looping would show
        # Assert: nothing learned twice, no letter twice
        again = harness.last_stats(tmp_path, 1)
        assert again["readings"] == 1 and again["dead_letters"] == 0 and again["duplicates_skipped"] == 0
        letters.consumer.poll(timeout_ms=1000)
        assert len(letters.records) == len(sent_bad)
    finally:
        mixer.close()


@pytest.mark.slow
def test_a_learner_failure_stops_the_worker_and_a_restart_goes_on_from_the_checkpoint(
    settings: Settings,
    signer: Signer,
    start_worker: harness.Launch,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a worker whose learner raises at its 2,000th reading
    cfg = cr.crash_settings(settings)
    monkeypatch.setenv(ENV, "reading=2000")
    proc = start_worker(cfg)
    monkeypatch.delenv(ENV)
    wait_until(lambda: owns_readings(tmp_path, 0, cfg), 90, lambda: harness.worker_log(tmp_path))
    stream = cr.make_fleet_stream(n_devices=8, n_readings=4000, n_features=N, late_joiners=0.0, seed=5)

    # Execute
    produced = cr.produce(cfg, cr.as_readings(stream))
    started = time.monotonic()
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not exit:\n" + harness.worker_log(tmp_path))
    exited_after = time.monotonic() - started
    restarted = start_worker(cfg)
    wait_until(
        lambda: cr.checkpointed_readings(cfg, signer) == produced,
        120,
        lambda: f"{cr.checkpointed_readings(cfg, signer)}\n{harness.worker_log(tmp_path, 1)}",
    )

    # Assert: exit status 70 with one fatal line; every acked reading learned exactly once
    log = harness.worker_log(tmp_path)
    assert code == EXIT_FATAL, log
    assert log.count("fatal: ") == 1 and "injected: at reading 2000" in log, log
    assert exited_after < 45, exited_after
    assert sum(produced.values()) == 4000
    assert restarted.poll() is None, harness.worker_log(tmp_path, 1)
    print(f"exited {exited_after:.1f} s after the stream was produced")


@pytest.mark.slow
def test_a_message_the_learner_always_fails_on_is_dead_lettered_after_two_failures(
    settings: Settings,
    signer: Signer,
    start_worker: harness.Launch,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: good readings of 6 devices with one message of device "poison" in the middle
    cfg = cr.crash_settings(settings)
    monkeypatch.setenv(ENV, "device=poison")
    stream = cr.make_fleet_stream(n_devices=6, n_readings=3000, n_features=N, late_joiners=0.0, seed=8)
    readings = cr.as_readings(stream)
    poison = encode_readings([Reading("poison", (1.0, 2.0, 3.0, 4.0), 1.0)])
    ensure_topics(cfg)
    producer = KafkaProducer(bootstrap_servers=cfg.bootstrap, acks="all")
    try:
        produced = cr.produce(cfg, readings[:1500])
        poison_at = producer.send(cfg.topic_readings, value=poison, partition=0).get(30)
    finally:
        producer.close()
    produced += cr.produce(cfg, readings[1500:])

    # Execute: start workers, one after the other, as an orchestrator restarts them
    codes = []
    for n in range(4):
        proc = start_worker(cfg)
        wait_until(
            lambda: proc.poll() is not None or harness.last_stats(tmp_path, n).get("dead_letters", 0) >= 1,  # noqa: B023
            90,
            lambda: harness.worker_log(tmp_path, n),  # noqa: B023
        )
        if proc.poll() is None:
            break  # it got past the poison
        codes.append(proc.returncode)
    last = len(codes)
    wait_until(
        lambda: cr.checkpointed_readings(cfg, signer) == produced,
        120,
        lambda: f"{codes}\n{cr.checkpointed_readings(cfg, signer)}\n{harness.worker_log(tmp_path, last)}",
    )
    letters = DeadLetters(cfg)
    try:
        records = letters.until(1, 30, lambda: harness.worker_log(tmp_path, last))
    finally:
        letters.close()

    # Assert: two failures, then the poison is a dead letter and every good reading is learned once
    assert codes == [EXIT_FATAL, EXIT_FATAL], [harness.worker_log(tmp_path, n) for n in range(len(codes) + 1)]
    (record,) = records
    letter = DeadLetter.decode(record.value)
    assert (letter.reason, letter.partition, letter.offset, letter.original) == (
        "learner_failed",
        0,
        poison_at.offset,
        poison,
    )
    assert record.key == b"poison" and letter.device_id == "poison"
    assert harness.last_stats(tmp_path, last)["dead_letters"] == 1
