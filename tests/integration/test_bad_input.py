"""Bad input on a real Apache Kafka broker: every bad record is dead-lettered, nothing learns from it.

One worker subprocess (``python -m pipeline.worker``) gets one record of
every kind of bad input the issue lists, then good readings.  Each bad
record must come out on the dead-letter topic with its machine-readable
reason and its original bytes; the worker must keep running, learn from the
good readings that follow, and create no device (so no model) from the bad ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from connectors.settings import Settings
from tests import harness
from wire.readings import MAX_MESSAGE_BYTES, DeadLetter, Reading, encode_readings

pytestmark = pytest.mark.integration

ONES = ",".join(["1"] * harness.N_FEATURES)


def oversized() -> bytes:
    """A well-formed reading padded past the decoder's limit, still below the broker's (1 MiB)."""
    head = f'{{"v":1,"device_id":"bad-oversized","x":[{ONES}],"y":1,"pad":"'.encode()
    return head + b"p" * (MAX_MESSAGE_BYTES + 100 - len(head) - 2) + b'"}'


BAD: list[tuple[bytes, str]] = [
    (b'{"v":1,"device_id":"bad-truncated","x":[1,2', "malformed_json"),
    (f'{{"v":1,"device_id":"bad-x-type","x":"{ONES}","y":1}}'.encode(), "bad_features"),
    (f'{{"v":1,"device_id":"bad-y-type","x":[{ONES}],"y":"1"}}'.encode(), "bad_target"),
    (f'{{"v":1,"device_id":"bad-bool","x":[true,{ONES[2:]}],"y":1}}'.encode(), "bad_features"),
    (f'{{"v":1,"device_id":"bad-nan","x":[NaN,{ONES[2:]}],"y":1}}'.encode(), "non_finite"),
    (f'{{"v":1,"device_id":"bad-inf","x":[{ONES}],"y":-Infinity}}'.encode(), "non_finite"),
    (b'{"v":1,"device_id":"bad-count","x":[1,2],"y":1}', "wrong_feature_count"),
    (f'{{"v":1,"device_id":"bad-huge","x":[1e300,{ONES[2:]}],"y":1}}'.encode(), "out_of_range"),
    (f'{{"v":1,"device_id":"bad-bigint","x":[{ONES}],"y":{10**400}}}'.encode(), "out_of_range"),
    (oversized(), "oversized"),
    (f'{{"v":2,"device_id":"bad-version","x":[{ONES}],"y":1}}'.encode(), "unknown_schema_version"),
    (f'{{"device_id":"bad-no-version","x":[{ONES}],"y":1}}'.encode(), "unknown_schema_version"),
    (f'{{"v":1,"device_id":"","x":[{ONES}],"y":1}}'.encode(), "bad_device_id"),
    (f'{{"v":1,"device_id":"   ","x":[{ONES}],"y":1}}'.encode(), "bad_device_id"),
    (f'[{{"v":1,"device_id":"bad-array","x":[{ONES}],"y":1}}]'.encode(), "not_an_object"),
    (f'{{"v":1,"device_id":"bad-ts","x":[{ONES}],"y":1,"ts":"noon"}}'.encode(), "bad_timestamp"),
    (b"\xff\xfe not even utf-8", "malformed_json"),
]
N_GOOD = 40


def good_readings() -> list[bytes]:
    """One reading per message, all of device ``good``, after the bad ones."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_GOOD, harness.N_FEATURES))
    y = 2.0 * x[:, 0] - x[:, 1]
    return [
        encode_readings([Reading("good", tuple(r), float(t))]) for r, t in zip(x.tolist(), y, strict=True)
    ]


def test_every_bad_record_is_dead_lettered_and_the_worker_learns_on(
    settings: Settings, start_worker: harness.Launch, tmp_path: Path
) -> None:
    # Prepare: a running worker
    proc = start_worker(settings)
    harness.wait_for_topics(settings)
    # Execute: the bad records, then good readings, on one partition (one key) so order holds
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
    beyond_broker = KafkaProducer(bootstrap_servers=settings.bootstrap, max_request_size=4 * 1024 * 1024)
    try:
        # Above the broker's limit (message.max.bytes, ~1 MiB) a record never reaches the worker:
        # the producer refuses it itself (max_request_size), or the broker does when allowed through.
        with pytest.raises(MessageSizeTooLargeError):
            producer.send(settings.topic_readings, key=b"gateway", value=b"x" * 1_100_000)
        with pytest.raises(MessageSizeTooLargeError):
            beyond_broker.send(settings.topic_readings, key=b"gateway", value=b"x" * 1_100_000).get(30)
        for raw, _ in BAD:
            producer.send(settings.topic_readings, key=b"gateway", value=raw).get(timeout=30)
        for raw in good_readings():
            producer.send(settings.topic_readings, key=b"gateway", value=raw)
        producer.flush()
    finally:
        producer.close()
        beyond_broker.close()

    def done(got: harness.Collected) -> bool:
        return (
            len(got.of(settings.topic_deadletter)) >= len(BAD)
            and harness.last_stats(tmp_path, 0).get("readings", 0) >= N_GOOD
        )

    got = harness.collect_until(settings, done, timeout=90, describe=lambda: harness.worker_log(tmp_path))
    time.sleep(1.5)  # one more stats line, in case anything else were still to come

    # Assert: one dead letter per bad record (the letters spread over partitions: order by source offset)
    # with its reason, in the letter and its header, and the original bytes
    pairs = sorted(
        (
            (DeadLetter.decode(r.value), harness.headers(r)["reason"].decode())
            for r in got.of(settings.topic_deadletter)
        ),
        key=lambda p: p[0].offset,
    )
    letters = [d for d, _ in pairs]
    assert [(d.original, d.reason) for d in letters] == BAD
    assert [header for _, header in pairs] == [reason for _, reason in BAD]
    assert all(d.source_topic == settings.topic_readings and not d.truncated for d in letters)
    assert len({(d.partition, d.offset) for d in letters}) == len(BAD)
    # The worker is alive, learned from exactly the good readings, and no bad record made a device
    assert proc.poll() is None, harness.worker_log(tmp_path)
    stats = harness.last_stats(tmp_path, 0)
    assert stats["readings"] == N_GOOD and stats["dead_letters"] == len(BAD)
    assert stats["devices"] == 1
    named = {
        r.key.decode() for t in (settings.topic_models, settings.topic_events) for r in got.of(t) if r.key
    }
    assert named <= {"good"}, named
    events = [json.loads(r.value) for r in got.of(settings.topic_events)]
    assert {e["type"] for e in events} & {"adapted", "adaptation_rejected"}, events  # it learned on
