"""A bound on devices per worker: the eviction policy, and evicted devices coming back exactly."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from connectors.signing import Signer
from learners.config import LearnerConfig
from learners.fleet import FleetLearner
from pipeline.eviction import LruEviction
from pipeline.outgoing import to_records
from pipeline.worker_core import WorkerCore
from tests.unit.test_checkpoint import (
    SETTINGS,
    MemoryTopic,
    comparable,
    fleet_stream,
    gateway_messages,
    newest,
    write,
)


def test_lru_evicts_idle_devices_least_recently_seen_first_down_to_the_low_water_mark() -> None:
    # Prepare
    lru = LruEviction(max_devices=4, low_water=2)
    lru.touch(["a", "b", "c", "d"])
    lru.touch(["b"])

    # Execute
    under = lru.victims()
    lru.touch(["e"])
    over = lru.victims(busy={"c", "e"})

    # Assert: nothing while at the bound; then the oldest idle ones (c and e are busy) down to 2.
    assert under == []
    assert over == ["a", "d", "b"]
    assert list(lru) == ["c", "e"] and not lru.over()


def test_lru_default_low_water_forget_and_bad_bounds() -> None:
    lru = LruEviction(max_devices=10)
    lru.touch(str(i) for i in range(12))
    lru.forget(["0", "zz"])
    assert lru.low_water == 9 and len(lru) == 11
    assert lru.victims() == ["1", "2"] and len(lru) == 9
    with pytest.raises(ValueError, match="max_devices must be >= 1"):
        LruEviction(0)
    with pytest.raises(ValueError, match="low_water"):
        LruEviction(5, low_water=6)


def test_dropped_devices_leave_the_others_untouched() -> None:
    # Prepare
    cfg = LearnerConfig(n_features=2, hidden=(4,), buffer_size=4, adapt_after=2)
    fleet = FleetLearner(cfg)
    rng = np.random.default_rng(3)
    ids = ["a", "b", "c", "d", "e"]
    for _ in range(3):
        fleet.learn_predict(ids, rng.normal(size=(5, 2)), rng.normal(size=5))
    before = {d: fleet.device_params(d) for d in ("a", "c", "e")}
    buffers = {d: fleet.buffers.recent(np.array([fleet.devices.slot(d)]), 4) for d in ("a", "c", "e")}

    # Execute
    keep = fleet.drop_devices(["b", "d"])

    # Assert: slots 0, 2, 4 became 0, 1, 2 with their weights and buffers.
    assert keep.tolist() == [0, 2, 4] and fleet.devices.ids == ["a", "c", "e"]
    for d, params in before.items():
        assert all(torch.equal(fleet.device_params(d)[k], v) for k, v in params.items())
        got = fleet.buffers.recent(np.array([fleet.devices.slot(d)]), 4)
        assert all(torch.equal(g, w) for g, w in zip(got, buffers[d], strict=True))
    assert fleet.buffers.count[3:5].tolist() == [0, 0] and not fleet._pending[3:5].any()


def test_a_bounded_worker_learns_every_device_exactly_as_an_unbounded_one() -> None:
    # Prepare: the same seeded stream into a core without a practical bound and one holding 3 of 8 devices.
    signer = Signer.generate()
    messages = gateway_messages(fleet_stream(), per_message=5)
    free = WorkerCore(SETTINGS, signer, clock=lambda: 7.0, worker_id="w")
    bounded = WorkerCore(replace(SETTINGS, max_devices=3), signer, clock=lambda: 7.0, worker_id="w")

    # Execute: small batches, so devices come and go.
    out_free, out_bounded = [], []
    for i in range(0, len(messages), 4):
        out_free += to_records(SETTINGS, free.on_readings(messages[i : i + 4]))
        out_bounded += to_records(SETTINGS, bounded.on_readings(messages[i : i + 4]))

    # Assert: the same models, versions and drift events; evictions reported; at most 3 + one batch resident.
    evicted = [o for o in out_bounded if o.topic == SETTINGS.topic_events and b'"evicted"' in o.value]
    per_device = [o for o in out_bounded if o not in evicted and o.topic != SETTINGS.topic_deltas]
    expected = [o for o in out_free if o.topic != SETTINGS.topic_deltas]
    assert comparable(per_device) == comparable(expected)
    assert bounded.versions == free.versions and bounded.device_readings == free.device_readings
    stats = bounded.stats()
    assert stats["evicted"] == sum(json.loads(o.value)["devices"] for o in evicted) > 100
    assert stats["devices_restored"] > 100
    assert stats["devices"] + stats["devices_stored"] == 8 and stats["devices"] <= 3 + 4 * 5
    for d in free.fleet.devices.ids:
        if d in bounded.fleet.devices:
            mine, theirs = bounded.fleet.device_params(d), free.fleet.device_params(d)
            assert all(torch.equal(mine[k], v) for k, v in theirs.items())


def test_evicted_devices_are_in_the_checkpoint_and_restored_exactly() -> None:
    # Prepare: a worker holding 2 devices checkpoints a partition of more.
    signer = Signer.generate()
    messages = [m for m in gateway_messages(fleet_stream(), per_message=5) if m[1] == 0]
    writer = WorkerCore(replace(SETTINGS, max_devices=2), signer, clock=lambda: 7.0, worker_id="w")
    for m in messages[:300]:  # one message (5 readings) at a time, so devices idle and leave
        writer.on_readings([m])
    topic = MemoryTopic()
    write(writer, topic)
    core = WorkerCore(SETTINGS, signer, clock=lambda: 7.0, worker_id="w")
    reference = WorkerCore(SETTINGS, signer, clock=lambda: 7.0, worker_id="w")
    for m in messages[:300]:  # the same cuts (one learner step per device per batch)
        reference.on_readings([m])

    # Execute
    ck = newest(core, topic, 0)
    assert ck is not None
    core.restore(0, ck)
    out = to_records(SETTINGS, core.on_readings(messages[300:]))
    out_reference = to_records(SETTINGS, reference.on_readings(messages[300:]))

    # Assert: every device of the partition is in it; the restored core goes on as one that never evicted.
    assert writer.stats()["devices_stored"] > 0
    assert sorted(ck.device_ids) == sorted(d for d, p in writer.partition_of.items() if p == 0)
    keep = [o for o in out if o.topic != SETTINGS.topic_deltas]
    assert comparable(keep) == comparable([o for o in out_reference if o.topic != SETTINGS.topic_deltas])
