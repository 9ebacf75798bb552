"""Per-device checkpoints: snapshot, restore, refuse, deduplicate - without a broker."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save

from connectors.admin import partition_for
from connectors.settings import Settings
from connectors.signing import Signer
from learners.config import LearnerConfig
from learners.evaluation.synthetic import FleetStream, make_fleet_stream
from learners.fleet import FleetLearner
from metastream_edge.codec import header_digest
from pipeline.checkpoints import newest_checkpoint
from pipeline.chunk_layout import manifest_key
from pipeline.outgoing import Outgoing, to_records
from pipeline.worker_core import PartitionCheckpoint, WorkerCore
from wire.checkpoint import LEGACY_SCHEMA, Checkpoint, CheckpointError, Chunk, decode_chunk, encode_chunk
from wire.models import decode_deltas, decode_model, tensor_digest
from wire.readings import Reading, encode_readings

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


@dataclass
class Record:
    offset: int
    key: bytes | None
    value: bytes | None


class MemoryTopic:
    """The checkpoint topic as lists of records per partition (offsets count from 0)."""

    def __init__(self) -> None:
        self.parts: dict[int, list[Record]] = defaultdict(list)

    def append(self, partition: int, key: bytes | None, value: bytes | None) -> int:
        records = self.parts[partition]
        records.append(Record(len(records), key, value))
        return len(records) - 1

    def end(self, partition: int) -> int:
        return len(self.parts[partition])

    def log(self, partition: int) -> Any:
        records = self.parts[partition]

        class Log:
            async def read(self, start: int, end: int) -> list[Record]:
                return [r for r in records if start <= r.offset < end]

        return Log()


def write(
    core: WorkerCore, topic: MemoryTopic, partitions: list[int] | None = None
) -> list[PartitionCheckpoint]:
    """What :mod:`pipeline.app` does: every chunk, then the manifest with the chunks' offsets."""
    taken = core.checkpoint(partitions)
    for ck in taken:
        offsets = [topic.append(ck.partition, key.encode(), payload) for _, key, payload, _ in ck.chunks]
        topic.append(ck.partition, manifest_key(ck.partition).encode(), core.seal_manifest(ck, offsets))
    return taken


def newest(core: WorkerCore, topic: MemoryTopic, partition: int) -> Checkpoint | None:
    """The newest complete checkpoint of ``partition`` that ``core`` trusts."""
    source = topic.log(partition)
    return asyncio.run(
        newest_checkpoint(source, partition, core.open_manifest, core.open_chunk, 0, topic.end(partition))
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
    topic = MemoryTopic()
    taken = write(original, topic)
    restored = WorkerCore(SETTINGS, signer, clock=lambda: 7.0, worker_id="w")
    for p in (0, 1):
        ck = newest(restored, topic, p)
        assert ck is not None and (ck.partition, ck.offset) == (p, original.offsets[p])
        restored.restore(p, ck)

    # Execute
    out_original = to_records(SETTINGS, original.on_readings(messages[half:]))
    out_restored = to_records(SETTINGS, restored.on_readings(messages[half:]))

    # Assert: the same models, versions, drift events and θ contributions.
    assert [ck.partition for ck in taken] == [0, 1]
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
    topic = MemoryTopic()
    [taken] = write(writer, topic)
    partition, offset = taken.partition, taken.offset
    core = WorkerCore(SETTINGS, signer)
    core.restore(partition, newest(core, topic, partition))
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
    topic = MemoryTopic()
    write(writer, topic)
    device = next(d for d, v in writer.versions.items() if writer.partition_of[d] == 0 and v >= 1)
    core = WorkerCore(SETTINGS, signer)

    # Execute
    core.restore(0, newest(core, topic, 0), published={device: writer.versions[device] + 2})
    core.on_readings([(encode_readings([Reading(device, (0.1, 0.2, 0.3), 1.0)]), 0, 10_000)])
    out = to_records(SETTINGS, core._publish(device, 1.0))  # as after the device's next adaptation

    # Assert: the next model of that device gets the next number, never one already used.
    assert out[0].headers[0] == ("model_version", str(writer.versions[device] + 3).encode())
    others = {d: v for d, v in core.versions.items() if d != device}
    assert others == {d: v for d, v in writer.versions.items() if d != device and writer.partition_of[d] == 0}


def many_devices(n: int, readings_each: int = 2, offset0: int = 0) -> list[tuple[bytes, int, int]]:
    """``n`` devices of partition 0, ``readings_each`` readings each, 50 readings per message."""
    rng = np.random.default_rng(11)
    ids = [d for d in (f"flood-{i}" for i in range(4 * n)) if partition_for(d, PARTITIONS) == 0][:n]
    readings = [
        Reading(d, tuple(rng.normal(size=N_FEATURES).tolist()), float(rng.normal()))
        for _ in range(readings_each)
        for d in ids
    ]
    return [
        (encode_readings(readings[i : i + 50]), 0, offset0 + i // 50) for i in range(0, len(readings), 50)
    ]


def test_a_big_partition_is_chunked_and_only_changed_chunks_are_written_again() -> None:
    # Prepare: 600 devices on partition 0 (128 per chunk: 5 chunks), checkpointed once.
    signer = Signer.generate()
    writer = WorkerCore(SETTINGS, signer)
    writer.on_readings(many_devices(600))
    topic = MemoryTopic()
    [first] = write(writer, topic)

    # Execute: one more reading of one device, a second checkpoint; a fresh core restores.
    device = "flood-0" if partition_for("flood-0", PARTITIONS) == 0 else next(iter(writer.partition_of))
    writer.on_readings([(encode_readings([Reading(device, (0.5, 0.5, 0.5), 2.0)]), 0, 1000)])
    [second] = write(writer, topic)
    core = WorkerCore(SETTINGS, signer)
    ck = newest(core, topic, 0)
    assert ck is not None
    core.restore(0, ck)

    # Assert: 5 chunks, then only the changed device's chunk; the restored state is the newest.
    assert [n for _, _, _, n in first.chunks] == [128, 128, 128, 128, 88]
    assert all(len(payload) < 1024 * 1024 for _, _, payload, _ in first.chunks)
    assert [n for _, _, _, n in second.chunks] == [128] and second.chunks[0][1] == "0/c/0/1"
    assert (ck.offset, ck.manifest.seq, len(ck.chunks), len(ck.device_ids)) == (1000, 2, 5, 600)
    assert core.device_readings == writer.device_readings and core.device_readings[device] == 3
    for d in (device, "flood-1" if "flood-1" in writer.partition_of else ck.device_ids[-1]):
        for k, v in writer.fleet.device_params(d).items():
            assert torch.equal(core.fleet.device_params(d)[k], v)


def test_the_newest_complete_checkpoint_wins() -> None:
    # Prepare: two complete checkpoints of partition 0, then a third whose writer died
    # after its chunks (no manifest), then a fourth whose manifest names a chunk that is gone.
    signer = Signer.generate()
    writer = WorkerCore(SETTINGS, signer)
    messages = many_devices(300)
    writer.on_readings(messages[:6])
    topic = MemoryTopic()
    write(writer, topic)
    writer.on_readings(messages[6:])
    [complete] = write(writer, topic)
    writer.on_readings([(encode_readings([Reading("flood-x", (1.0, 1.0, 1.0), 1.0)]), 0, 500)])
    for _, key, payload, _ in writer.checkpoint()[0].chunks:  # died before the manifest
        topic.append(0, key.encode(), payload)
    writer.on_readings([(encode_readings([Reading("flood-y", (1.0, 1.0, 1.0), 1.0)]), 0, 501)])
    [last] = writer.checkpoint()
    offsets = [topic.append(0, key.encode(), payload) for _, key, payload, _ in last.chunks]
    topic.append(0, manifest_key(0).encode(), writer.seal_manifest(last, offsets))
    topic.parts[0][offsets[0]].value = None  # compacted away, or never acked

    # Execute
    core = WorkerCore(SETTINGS, signer)
    ck = newest(core, topic, 0)

    # Assert: the second checkpoint (the newest complete one), with every device it had.
    assert ck is not None and ck.offset == complete.offset == messages[-1][2]
    assert ck.manifest.seq == 2 and len(ck.device_ids) == 300 and "flood-x" not in ck.device_ids


def test_forged_altered_and_foreign_chunks_and_manifests_are_refused() -> None:
    # Prepare: a genuine checkpoint of partition 0; copies of the topic with one part replaced.
    signer = Signer.generate()
    writer = WorkerCore(SETTINGS, signer)
    writer.on_readings(many_devices(200))
    genuine = MemoryTopic()
    write(writer, genuine)
    stranger = WorkerCore(SETTINGS, Signer.generate())
    stranger.on_readings(many_devices(200))
    forged = MemoryTopic()
    write(stranger, forged)
    core = WorkerCore(SETTINGS, signer)

    def replaced(offset: int, value: bytes) -> MemoryTopic:
        topic = MemoryTopic()
        for r in genuine.parts[0]:
            topic.append(0, r.key, value if r.offset == offset else r.value)
        return topic

    chunk = genuine.parts[0][0].value
    assert chunk is not None
    flipped = bytearray(chunk)
    flipped[len(flipped) // 2] ^= 0xFF
    # A chunk signed by the genuine key but with other content: refused by the manifest's sha256.
    resealed = signer.seal(encode_chunk(Chunk(0, 0, 1, {"flood-0": b"x"})))
    manifest_at = genuine.end(0) - 1

    # Execute / Assert
    assert newest(core, genuine, 0) is not None
    for bad in (forged.parts[0][0].value, bytes(flipped), resealed, b"junk"):
        assert bad is not None
        assert newest(core, replaced(0, bad), 0) is None
    assert newest(core, replaced(manifest_at, forged.parts[0][-1].value or b""), 0) is None
    with pytest.raises(CheckpointError, match="unknown key"):
        core.open_manifest(forged.parts[0][-1].value or b"")
    with pytest.raises(CheckpointError, match="unknown key"):
        core.open_chunk(forged.parts[0][0].value or b"")
    with pytest.raises(CheckpointError, match="altered"):
        core.open_chunk(bytes(flipped))
    with pytest.raises(CheckpointError, match="unsigned"):
        core.open_chunk(chunk[4 + 8 + 64 :])
    with pytest.raises(CheckpointError, match="not a checkpoint payload"):
        decode_chunk(b"junk")
    with pytest.raises(CheckpointError, match="offered for partition 1"):
        core.restore(1, newest(core, genuine, 0))
    foreign = MemoryTopic()  # partition 0's checkpoint copied into partition 1, under 1's keys
    for r in genuine.parts[0]:
        foreign.append(1, (r.key or b"").replace(b"0/", b"1/", 1), r.value)
    assert newest(core, foreign, 1) is None


def test_a_checkpoint_of_another_architecture_is_refused_before_anything_changes() -> None:
    # Prepare: a checkpoint written with hidden (8,) offered to a core with hidden (16,).
    signer = Signer.generate()
    writer = WorkerCore(SETTINGS, signer)
    writer.on_readings([m for m in gateway_messages(fleet_stream()) if m[1] == 0][:10])
    topic = MemoryTopic()
    write(writer, topic)
    other = Settings(**{**SETTINGS.__dict__, "learner": {**SETTINGS.learner, "hidden": [16]}})
    core = WorkerCore(other, signer)
    ck = newest(core, topic, 0)

    # Execute / Assert
    with pytest.raises(CheckpointError, match=r"does not fit.*param\.0\.weight"):
        core.restore(0, ck)
    assert len(core.fleet.devices) == 0 and core.offsets == {}


def test_wrong_schema_is_refused() -> None:
    payload = encode_chunk(Chunk(0, 0, 1, {"a": b"x"}))
    with pytest.raises(CheckpointError, match="unknown checkpoint schema"):
        decode_chunk(payload.replace(b"metastream.checkpoint-chunk/1", b"metastream.checkpoint-chunk/9"))


def legacy_payload(core: WorkerCore, partition: int) -> bytes:
    """One partition as earlier versions wrote it: one signed message (their ``encode_checkpoint``)."""
    ids = [d for d, p in core.partition_of.items() if p == partition]
    tensors, info = core.fleet.export_devices(ids)
    header = {
        "partition": partition,
        "offset": core.offsets[partition],
        "info": info,
        "versions": {d: core.versions[d] for d in ids if d in core.versions},
        "readings": {d: core.device_readings[d] for d in ids},
        "drift_at": {},
        "writer": "old",
        "created_at": 1.0,
    }
    meta = {"schema": LEGACY_SCHEMA, "header": json.dumps(header)}
    meta["sha256"] = tensor_digest(tensors) + ":" + header_digest(meta)
    return core.signer.seal(save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta))


def test_a_checkpoint_of_the_earlier_one_message_format_is_taken_over_and_rewritten_as_chunks() -> None:
    # Prepare: partition 0 checkpointed by an earlier version (one message keyed "0").
    signer = Signer.generate()
    messages = [m for m in gateway_messages(fleet_stream()) if m[1] == 0]
    original = WorkerCore(SETTINGS, signer, clock=lambda: 7.0, worker_id="w")
    original.on_readings(messages[:60])
    old = MemoryTopic()
    old.append(0, b"0", legacy_payload(original, 0))
    readings, versions = dict(original.device_readings), dict(original.versions)
    upgraded = WorkerCore(SETTINGS, signer, clock=lambda: 7.0, worker_id="w")

    # Execute: restore it, write a checkpoint right away, and restore that in a third core.
    source = old.log(0)
    ck = asyncio.run(
        newest_checkpoint(
            source, 0, upgraded.open_manifest, upgraded.open_chunk, 0, 1, open_legacy=upgraded.open_legacy
        )
    )
    assert ck is not None
    upgraded.restore(0, ck)
    [rewritten] = write(upgraded, old)
    third = WorkerCore(SETTINGS, signer, clock=lambda: 7.0, worker_id="w")
    third.restore(0, newest(third, old, 0))
    out_original = to_records(SETTINGS, original.on_readings(messages[60:]))

    # Assert: every device, its counters and its learning carry over; all its chunks were written.
    assert upgraded.device_readings == readings and upgraded.versions == versions
    assert sum(n for _, _, _, n in rewritten.chunks) == len(ck.device_ids) > 0
    assert comparable(to_records(SETTINGS, third.on_readings(messages[60:]))) == comparable(out_original)
    assert newest(upgraded, old, 0) is not None and old.end(0) == 1 + len(rewritten.chunks) + 1
