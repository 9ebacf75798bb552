"""Per-device checkpoints: snapshot, restore, refuse, deduplicate - without a broker."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from connectors.admin import partition_for
from connectors.settings import Settings
from connectors.signing import Signer
from connectors.wire import Reading, encode_readings
from learners.checkpoint import Checkpoint, CheckpointError, decode_checkpoint, encode_checkpoint
from learners.codec import decode_deltas, decode_model
from learners.config import LearnerConfig
from learners.fleet import FleetLearner
from learners.synthetic import FleetStream, make_fleet_stream
from pipeline.worker_core import Outgoing, WorkerCore

N_FEATURES = 3
PARTITIONS = 2
SETTINGS = Settings(
    n_features=N_FEATURES,
    partitions=PARTITIONS,
    micro_batch=100,
    learner={"meta_every": 200, "hidden": [8], "adapt_after": 16, "buffer_size": 32},
)


def fleet_stream(detector: str = "adwin") -> FleetStream:
    return make_fleet_stream(
        n_devices=8, n_readings=6000, n_features=N_FEATURES, gradual_share=0.0, late_joiners=0.3, seed=5
    )


def gateway_messages(stream: FleetStream, per_message: int = 25) -> list[tuple[bytes, int, int]]:
    """``(value, partition, offset)`` as a gateway packs them: one partition per device, offsets counting."""
    by_partition: dict[int, list[Reading]] = {p: [] for p in range(PARTITIONS)}
    out: list[tuple[bytes, int, int]] = []
    next_offset = dict.fromkeys(range(PARTITIONS), 0)
    for d, x, y in zip(stream.device_ids, stream.x.tolist(), stream.y, strict=True):
        p = partition_for(d, PARTITIONS)
        by_partition[p].append(Reading(d, tuple(x), float(y)))
        if len(by_partition[p]) == per_message:
            out.append((encode_readings(by_partition[p]), p, next_offset[p]))
            next_offset[p] += 1
            by_partition[p] = []
    for p, rest in by_partition.items():
        if rest:
            out.append((encode_readings(rest), p, next_offset[p]))
    return out


def comparable(outgoing: list[Outgoing]) -> list[tuple[str, bytes | None, object, list[tuple[str, bytes]]]]:
    """Outputs minus ``adaptation_result`` events (their trackers are not checkpointed, by design).

    Payloads are compared decoded: safetensors does not keep the order of
    header fields, so equal models need not be equal bytes.  θ contributions
    are compared as sets of (delta, weight) rows: a restored core numbers its
    device slots partition by partition, so rows may come in another order.
    """
    out: list[tuple[str, bytes | None, object, list[tuple[str, bytes]]]] = []
    for o in outgoing:
        if o.topic == SETTINGS.topic_events and json.loads(o.value)["type"] == "adaptation_result":
            continue
        value: object = o.value
        if o.topic == SETTINGS.topic_deltas:
            deltas, weights, header = decode_deltas(o.value[4 + 8 + 64 :])  # signed, like models
            value = (sorted(zip(deltas.tolist(), weights.tolist(), strict=True)), header)
        elif o.topic == SETTINGS.topic_models:
            tensors, model_header = decode_model(o.value[4 + 8 + 64 :])
            value = ({k: v.tolist() for k, v in tensors.items()}, model_header)
        out.append((o.topic, o.key, value, o.headers))
    return out


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley", "kswin"])
def test_fleet_restored_from_snapshot_predicts_and_learns_identically(detector: str) -> None:
    # Prepare: a learner half-way through a seeded stream, and a fresh one restored from its snapshot.
    cfg = LearnerConfig(n_features=N_FEATURES, hidden=(8,), adapt_after=16, buffer_size=32, detector=detector)
    s = fleet_stream()
    half, batch = 3000, 50
    original = FleetLearner(cfg, init="reptile")
    for i in range(0, half, batch):
        original.learn_predict(s.device_ids[i : i + batch], s.x[i : i + batch], s.y[i : i + batch])
    tensors, info = original.export_devices(original.devices.ids)
    restored = FleetLearner(cfg, init="reptile")
    restored.import_devices(tensors, json.loads(json.dumps(info)), worker_wide=True)

    # Execute: the same following readings into both.
    steps = []
    for i in range(half, len(s), batch):
        ids, x, y = s.device_ids[i : i + batch], s.x[i : i + batch], s.y[i : i + batch]
        steps.append((original.learn_predict(ids, x, y), restored.learn_predict(ids, x, y)))

    # Assert: identical predictions, drifts, adaptations, meta versions and final weights.
    assert original.meta_version > 0 and original.n_drifts > 0
    for a, b in steps:
        np.testing.assert_array_equal(a.y_pred, b.y_pred)
        assert (a.drifted, a.adapted, a.meta_version) == (b.drifted, b.adapted, b.meta_version)
    assert restored.devices.ids == original.devices.ids
    for k in original.params:
        assert torch.equal(original.params[k][: len(s.device_ids)], restored.params[k][: len(s.device_ids)])


def test_worker_core_continues_from_checkpoints_exactly() -> None:
    # Prepare: a core half-way through; a fresh core (same key) restores every partition's checkpoint.
    signer = Signer.generate()
    messages = gateway_messages(fleet_stream())
    half = len(messages) // 2
    original = WorkerCore(SETTINGS, signer, clock=lambda: 7.0, worker_id="w")
    original.on_readings(messages[:half])
    taken = original.checkpoint()
    restored = WorkerCore(SETTINGS, signer, clock=lambda: 7.0, worker_id="w")
    for p, _, payload in taken:
        ck = restored.open_checkpoint(payload)
        assert (ck.partition, ck.offset) == (p, original.offsets[p])
        restored.restore(p, ck)

    # Execute
    out_original = original.on_readings(messages[half:])
    out_restored = restored.on_readings(messages[half:])

    # Assert: the same models, versions, drift events and θ contributions.
    assert [p for p, _, _ in taken] == [0, 1]
    assert sum(o.topic == SETTINGS.topic_models for o in out_original) > 0
    assert comparable(out_restored) == comparable(out_original)
    assert restored.versions == original.versions
    assert restored.device_readings == original.device_readings
    assert sum(restored.device_readings.values()) == 6000
    assert original.dirty_partitions() == {0, 1} and restored.checkpoint() != []


def test_readings_at_or_below_the_checkpoint_offset_are_skipped() -> None:
    # Prepare
    signer = Signer.generate()
    messages = [m for m in gateway_messages(fleet_stream()) if m[1] == 0][:40]
    writer = WorkerCore(SETTINGS, signer)
    writer.on_readings(messages[:30])
    [(partition, offset, payload)] = writer.checkpoint()
    core = WorkerCore(SETTINGS, signer)
    core.restore(partition, core.open_checkpoint(payload))
    before = dict(core.device_readings)

    # Execute: a redelivery from the committed offset (10) onwards, as after a crash.
    core.on_readings(messages[10:40])

    # Assert: only the 10 messages after offset 29 are learned, 25 readings each.
    assert (partition, offset) == (0, 29)
    assert core.stats()["duplicates_skipped"] == 20
    assert core.stats()["readings"] == 10 * 25
    assert sum(core.device_readings.values()) == sum(before.values()) + 250 == 40 * 25
    assert core.offsets == {0: 39}


def test_partitions_not_owned_are_not_learned() -> None:
    # Prepare: a core that owns partition 1 only (restored without a checkpoint: a new partition).
    core = WorkerCore(SETTINGS, Signer.generate())
    core.restore(1, None)
    messages = gateway_messages(fleet_stream())[:20]

    # Execute
    core.on_readings(messages)

    # Assert
    owned = [m for m in messages if m[1] == 1]
    assert core.stats()["not_owned_skipped"] == len(messages) - len(owned) > 0
    assert core.stats()["readings"] == 25 * len(owned)
    assert set(core.offsets) == {1}


def test_model_versions_continue_after_the_newest_published_one() -> None:
    # Prepare: a checkpoint at some version; the crashed writer published two more versions after it.
    signer = Signer.generate()
    messages = gateway_messages(fleet_stream())
    writer = WorkerCore(SETTINGS, signer)
    writer.on_readings(messages[:100])
    taken = {p: payload for p, _, payload in writer.checkpoint()}
    device = next(d for d, v in writer.versions.items() if writer.partition_of[d] == 0 and v >= 1)
    core = WorkerCore(SETTINGS, signer)

    # Execute
    core.restore(0, core.open_checkpoint(taken[0]), published={device: writer.versions[device] + 2})
    core.on_readings([(encode_readings([Reading(device, (0.1, 0.2, 0.3), 1.0)]), 0, 10_000)])
    out = core._publish(device, 1.0)  # as after the device's next adaptation

    # Assert: the next model of that device gets the next number, never one already used.
    assert out[0].headers[0] == ("model_version", str(writer.versions[device] + 3).encode())
    others = {d: v for d, v in core.versions.items() if d != device}
    assert others == {d: v for d, v in writer.versions.items() if d != device and writer.partition_of[d] == 0}


def test_forged_and_corrupt_checkpoints_are_refused() -> None:
    # Prepare
    signer = Signer.generate()
    writer = WorkerCore(SETTINGS, signer)
    writer.on_readings(gateway_messages(fleet_stream())[:10])
    [(_, _, payload), *_] = writer.checkpoint()
    core = WorkerCore(SETTINGS, signer)
    forger = WorkerCore(SETTINGS, Signer.generate())
    forger.on_readings(gateway_messages(fleet_stream())[:10])
    [(_, _, forged), *_] = forger.checkpoint()
    flipped = bytearray(payload)
    flipped[len(flipped) // 2] ^= 0xFF
    unsigned = payload[4 + 8 + 64 :]

    # Execute / Assert
    with pytest.raises(CheckpointError, match="unknown key"):
        core.open_checkpoint(forged)
    with pytest.raises(CheckpointError, match="altered"):
        core.open_checkpoint(bytes(flipped))
    with pytest.raises(CheckpointError, match="unsigned"):
        core.open_checkpoint(unsigned)
    with pytest.raises(CheckpointError, match="not a checkpoint payload"):
        decode_checkpoint(b"junk")
    assert core.open_checkpoint(payload).partition in (0, 1)  # the genuine one opens


def test_a_checkpoint_of_another_architecture_is_refused_before_anything_changes() -> None:
    # Prepare: a checkpoint written with hidden (8,) offered to a core with hidden (16,).
    signer = Signer.generate()
    writer = WorkerCore(SETTINGS, signer)
    writer.on_readings([m for m in gateway_messages(fleet_stream()) if m[1] == 0][:10])
    [(_, _, payload)] = writer.checkpoint()
    other = Settings(**{**SETTINGS.__dict__, "learner": {**SETTINGS.learner, "hidden": [16]}})
    core = WorkerCore(other, signer)

    # Execute / Assert
    with pytest.raises(CheckpointError, match=r"does not fit.*param\.0\.weight"):
        core.restore(0, core.open_checkpoint(payload))
    assert len(core.fleet.devices) == 0 and core.offsets == {}


def test_wrong_schema_is_refused() -> None:
    ck = Checkpoint(partition=0, offset=1, tensors={"w": torch.ones(1)}, info={})
    payload = encode_checkpoint(ck).replace(b"metastream.checkpoint/1", b"metastream.checkpoint/9")
    with pytest.raises(CheckpointError, match="unknown checkpoint schema"):
        decode_checkpoint(payload)
