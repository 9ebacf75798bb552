"""What a stream worker does with messages, as plain classes (no Faust, no Kafka).

:class:`WorkerCore` turns raw reading messages into typed messages
(:data:`wire.messages.Message`): dead letters, events (:mod:`wire.events`),
signed model updates and meta contributions.
:class:`MetaAggregator` is the meta agent: it applies contributions (from
workers, or from edge devices in federated mode) to θ with the Reptile
aggregation of :mod:`learners.meta` and emits signed θ versions.  The Faust
app in :mod:`pipeline.app` feeds them bytes and encodes what they return
(:func:`pipeline.outgoing.to_records`) when it sends it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from connectors.contributions import ContributionGate, ContributionRefused, DeviceKeys
from connectors.settings import Settings
from connectors.signing import SignatureError, Signer, Verifier
from learners.adaptation import AdaptationTracker
from learners.base import reading_errors
from learners.fleet import FleetLearner
from learners.guard import GuardCheck
from learners.meta import MetaLearner, Reptile
from learners.nets import FunctionalNet, Params, init_params
from learners.theta_check import ThetaCheck, check_theta, sample_held_back
from learners.theta_source import RemoteTheta
from pipeline.chunk_layout import ChunkLayout
from pipeline.device_store import DeviceStore
from pipeline.eviction import LruEviction
from pipeline.suspects import SuspectLedger
from pipeline.theta_owner import ThetaOwner
from wire.checkpoint import (
    CHUNK_BYTES,
    Checkpoint,
    CheckpointError,
    Chunk,
    ChunkRef,
    Manifest,
    WorkerState,
    decode_chunk,
    decode_legacy,
    decode_manifest,
    encode_chunk,
    encode_manifest,
    merge_records,
    payload_digest,
    split_export,
)
from wire.events import (
    AdaptationRejected,
    AdaptationResult,
    Adapted,
    Drift,
    Evicted,
    ThetaRefused,
)
from wire.messages import Contribution, Message, ModelUpdate, ThetaVersion
from wire.models import (
    META_KEY,
    DeltaHeader,
    ModelHeader,
    encode_deltas,
    encode_model,
)
from wire.readings import DeadLetter, Reading, Rejected, decode_readings, device_named_in

if TYPE_CHECKING:
    from metastream_edge.secagg import AggregateResult
    from pipeline.privacy import PrivacyGate

log = logging.getLogger(__name__)

AGGREGATOR_COUNTS = (
    "theta_refused",
    "theta_unchecked",
    "rows_clipped",
    "weights_capped",
    "privacy_refused",
    "secure_rounds_refused",
)
"""Counters of :attr:`MetaAggregator.counts` (worker stats and /metrics)."""


def theta_message(settings: Settings, signer: Signer, theta: Params, version: int) -> ThetaVersion:
    """θ as a signed model payload for the (compacted) meta topic."""
    cfg = settings.learner_config()
    header = ModelHeader(META_KEY, version, version - 1, cfg.task, cfg.n_features, cfg.n_outputs, cfg.hidden)
    return ThetaVersion(version, signer.seal(encode_model(theta, header)))


class WorkerCore:
    """Validate, learn, detect drift, adapt and publish, one micro-batch at a time.

    Parameters
    ----------
    settings
        Topics and learner settings.
    signer
        Signs every published model.
    clock
        Wall clock for event timestamps (injected so tests control it).
    worker_id
        Names this worker in the meta contributions it sends.

    Examples
    --------
    >>> from wire.readings import Reading, encode_readings
    >>> core = WorkerCore(Settings(n_features=2), Signer.generate(), clock=lambda: 100.0)
    >>> msgs = [(encode_readings([Reading("d1", (1.0, 2.0), 3.0)]), 0, 0), (b"{oops", 0, 1)]
    >>> [(type(m).__name__, m.reason, m.offset) for m in core.on_readings(msgs)]
    [('DeadLetter', 'malformed_json', 1)]
    >>> core.stats()["readings"], core.stats()["dead_letters"]
    (1, 1)
    """

    def __init__(
        self,
        settings: Settings,
        signer: Signer,
        clock: Callable[[], float] = time.time,
        worker_id: str = "worker",
        trusted: Verifier | None = None,
        store: DeviceStore | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = settings.learner_config()
        self.signer = signer
        self.clock = clock
        self.worker_id = worker_id
        self.verifier = trusted or Verifier([signer.public_key])
        self.fleet = FleetLearner(self.cfg, RemoteTheta(self.cfg, Reptile()))
        self.theta = ThetaOwner(self.verifier, self.fleet.theta, [self.fleet])
        """The one owner of θ: every θ message is opened here, once."""
        self.versions: dict[str, int] = {}
        self._drift_at: dict[str, float] = {}
        self._counts: Counter[str] = Counter()
        self.tracker = AdaptationTracker()
        # Checkpoint bookkeeping (see the methods under "checkpoints" below).
        self.offsets: dict[int, int] = {}
        """Per readings partition, the offset of the last message processed into the state."""
        self.device_readings: Counter[str] = Counter()
        """Per device, readings processed into its model (restored from checkpoints)."""
        self.partition_of: dict[str, int] = {}
        """The readings partition each device arrives on (where its state is checkpointed)."""
        self.owned: set[int] | None = None
        """Partitions this core may process; ``None``: all (no checkpointing, e.g. benchmarks)."""
        self._dirty: set[int] = set()
        self.suspects = SuspectLedger()
        """Messages the learner failed on (see :mod:`pipeline.suspects`); refused ones are dead letters."""
        self._layouts: dict[int, ChunkLayout] = {}
        self.lru = LruEviction(settings.max_devices)
        """Resident devices, least recently seen first, and the bound on them."""
        self.store = store if store is not None else DeviceStore()
        """Records of the devices evicted from memory."""

    def stats(self) -> dict[str, int]:
        """Counters of what this worker did, and the θ version it is on.

        readings, dead_letters, drifts, adaptations, rejected, published,
        meta_refused, the checkpoint counters (duplicates_skipped,
        not_owned_skipped, checkpoints_written, checkpoints_restored),
        evicted (devices moved out of memory) and devices_restored (brought
        back), devices (resident in memory), devices_stored (evicted, in the
        store), meta_version.  ``rejected`` counts adaptations
        the regression guard refused (the device kept its current model;
        nothing was published).
        """
        names = (
            "readings",
            "dead_letters",
            "drifts",
            "adaptations",
            "rejected",
            "published",
            "meta_refused",
            "duplicates_skipped",
            "not_owned_skipped",
            "checkpoints_written",
            "checkpoints_restored",
            "evicted",
            "devices_restored",
        )
        return {
            **{n: self._counts[n] for n in names},
            "meta_refused": self.theta.refused,
            "devices": len(self.fleet.devices),
            "devices_stored": len(self.store),
            "max_devices": self.lru.max_devices,
            "meta_version": self.fleet.meta_version,
        }

    def device_errors(self) -> dict[str, float]:
        """Each device's current smoothed error (NaN until it has one), by device id.

        Safe to call from another thread while the core learns: it reads a
        snapshot of the device list and a copy of the error array.
        """
        ids = list(self.fleet.devices.ids)
        errors = self.tracker.smoothed()
        return {d: float(e) for d, e in zip(ids, errors.tolist(), strict=False)}

    def model_versions(self) -> dict[str, int]:
        """The model version last published for each device (a copy)."""
        return dict(self.versions)

    def on_readings(self, messages: Sequence[tuple[bytes | None, int, int]]) -> list[Message]:
        """Process raw reading messages ``(value, partition, offset)`` as one micro-batch.

        Once partitions are managed by checkpoints (after :meth:`restore`), a
        message at or below the partition's last processed offset is a
        redelivery (after a restart or rebalance) whose readings are already
        in the model: it is skipped.  So is a message of a partition this core
        does not own.  Without :meth:`restore` (benchmarks, tools) every
        message is learned.

        Bad input never raises here: every refused record becomes a dead
        letter (keyed by the device it names, if any).  A message the learner
        failed on too often (:attr:`suspects`) becomes a ``learner_failed``
        dead letter.  If the learner raises, the exception propagates and
        nothing of the micro-batch is registered for checkpoints: offsets,
        devices and reading counts move only with readings actually learned.
        """
        s = self.settings
        out: list[Message] = []
        good: list[tuple[Reading, int]] = []
        seen: dict[int, int] = {}
        letters = 0
        for value, partition, offset in messages:
            if self.owned is not None:  # partitions restored from checkpoints (the Faust app)
                if partition not in self.owned:
                    self._counts["not_owned_skipped"] += 1
                    continue
                if offset <= self.offsets.get(partition, -1):
                    self._counts["duplicates_skipped"] += 1
                    continue
            seen[partition] = max(offset, seen.get(partition, -1))
            if self.suspects.refused(partition, offset):
                raw = value or b""
                failures = self.suspects.attempts(partition, offset)
                detail = f"the learner failed on it {failures} times"
                bad = [Rejected("learner_failed", detail, raw, device_named_in(raw))]
            else:
                ok, bad = decode_readings(value, self.cfg.n_features, s.max_abs_value)
                good.extend((reading, partition) for reading in ok)
            for r in bad:
                out.append(DeadLetter.of(r, s.topic_readings, partition, offset))
                letters += 1
        for start in range(0, len(good), self.cfg.learn_slice):
            out += self._learn(good[start : start + self.cfg.learn_slice])
        for partition, offset in seen.items():
            self.offsets[partition] = max(offset, self.offsets.get(partition, -1))
            self._dirty.add(partition)
        self._counts["dead_letters"] += letters
        return out

    def _learn(self, part: list[tuple[Reading, int]]) -> list[Message]:
        """Learn readings ``(reading, partition)``; the devices are registered once they are learned."""
        readings = [r for r, _ in part]
        ids = [r.device_id for r in readings]
        x = np.array([r.x for r in readings], dtype=np.float64)
        y = np.array([r.y for r in readings], dtype=np.float64)
        self._bring_back(ids)
        result = self.fleet.learn_predict(ids, x, y)
        # Registered only once learned: a checkpoint must never name a device the fleet lacks.
        for reading, partition in part:
            self.partition_of[reading.device_id] = partition
            self.device_readings[reading.device_id] += 1
        self._changed(ids)
        now = self.clock()
        self._counts["readings"] += len(readings)
        assert result.slots is not None  # a FleetLearner always reports them
        self.tracker.update(result.slots, reading_errors(self.cfg.task, y, result.y_pred))
        out: list[Message] = []
        for d in result.drifted:
            self._drift_at[d] = now
            self._counts["drifts"] += 1
            out.append(Drift(d, ts=now, meta_version=self.fleet.meta_version))
        for d in result.adapted:
            out += self._publish(d, now)
        for check in result.rejected:
            out.append(self._rejected(check, now))
        for tag, before, after in self.tracker.finished():
            device, version = tag.rsplit(" ", 1)
            out.append(AdaptationResult(device, int(version), before, after, readings=self.tracker.after))
        for deltas, weights in self.fleet.take_contributions():
            header = DeltaHeader(f"worker:{self.worker_id}", self.fleet.meta_version, deltas.shape[1])
            # Signed like models: the meta agent applies only contributions it can attribute.
            payload = self.signer.seal(encode_deltas(deltas, weights, header))
            out.append(Contribution(self.worker_id, payload))
        return out + self._evict(ids, now)

    def _publish(self, device_id: str, now: float) -> list[Message]:
        """A new signed model version for ``device_id``, plus its ``adapted`` event."""
        version = self.versions[device_id] = self.versions.get(device_id, 0) + 1
        cause = "drift" if device_id in self._drift_at else "new_device"
        detected = self._drift_at.pop(device_id, now)
        model = self.signer.seal(self.fleet.export(device_id, version))
        self.tracker.adapted(self.fleet.devices.slot(device_id), f"{device_id} {version}")
        self._counts["adaptations"] += 1
        self._counts["published"] += 1
        return [
            ModelUpdate(device_id, version, cause, detected_at=detected, published_at=now, payload=model),
            Adapted(device_id, version, cause, ts=now, meta_version=self.fleet.meta_version),
        ]

    def _rejected(self, check: GuardCheck, now: float) -> AdaptationRejected:
        """The guard kept the current model: nothing is published, an event says why.

        The drift time stays: the fleet retries a rejected adaptation a few
        readings later, and a model published then is still the drift's answer.
        """
        cause = "drift" if check.device_id in self._drift_at else "new_device"
        self._counts["rejected"] += 1
        return AdaptationRejected(
            device_id=check.device_id,
            cause=cause,
            current_loss=check.current_loss,
            adapted_loss=check.adapted_loss,
            held_back=check.held_back,
            model_version=self.versions.get(check.device_id, 0),
            ts=now,
            meta_version=self.fleet.meta_version,
        )

    def on_meta(self, value: bytes) -> bool:
        """Adopt a θ version from the meta topic; refuses unsigned or foreign ones (see :attr:`theta`)."""
        return self.theta.receive(value)

    # -- checkpoints and residency ---------------------------------------------------------

    def dirty_partitions(self) -> set[int]:
        """Partitions whose state changed since their last checkpoint."""
        return set(self._dirty)

    def checkpoint(self, partitions: Sequence[int] | None = None) -> list[PartitionCheckpoint]:
        """Signed chunks of what changed in ``partitions`` (default: all changed), manifests to come.

        For every changed partition: the chunks of the groups whose devices
        changed (sealed, with their keys), and a draft of the manifest that
        :meth:`seal_manifest` completes once the chunks' offsets are known.
        A partition is clean again afterwards; write the chunks, then the
        manifest, before letting the consumer commit past ``offset`` (see
        :mod:`pipeline.app`).
        """
        wanted = self._dirty if partitions is None else self._dirty & set(partitions)
        out = [self._checkpoint_partition(p) for p in sorted(wanted)]
        self._dirty -= wanted
        self._counts["checkpoints_written"] += len(out)
        return out

    def _checkpoint_partition(self, partition: int) -> PartitionCheckpoint:
        layout = self._layout(partition)
        seq = layout.seq + 1
        dirty = layout.take_dirty()
        chunks: list[tuple[int, str, bytes, int]] = []
        groups = sorted(dirty)
        while groups:
            g = groups.pop(0)
            members = layout.groups.get(g, [])
            if not members:
                continue
            records = self._records(members)
            size = sum(len(r) for r in records.values())
            if size > CHUNK_BYTES and len(members) > 1:
                # Too big for one message: keep what fits, the rest becomes a new group.
                fit = max(1, int(len(members) * CHUNK_BYTES / size))
                groups.append(layout.split(g, fit))
                records = {d: records[d] for d in members[:fit]}
            chunk = Chunk(
                partition=partition,
                group=g,
                seq=seq,
                records=records,
                versions={d: self.versions[d] for d in records if d in self.versions},
                readings={d: self.device_readings[d] for d in records},
                drift_at={d: self._drift_at[d] for d in records if d in self._drift_at},
            )
            chunks.append((g, layout.key_for(g), self.signer.seal(encode_chunk(chunk)), len(records)))
        worker, _ = split_export(*self.fleet.export_devices([]))
        return PartitionCheckpoint(
            partition=partition,
            offset=self.offsets.get(partition, -1),
            seq=seq,
            chunks=chunks,
            worker=worker,
            created_at=self.clock(),
        )

    def _records(self, device_ids: Sequence[str]) -> dict[str, bytes]:
        """Current records of ``device_ids``: resident ones exported now, evicted ones from the store."""
        resident = [d for d in device_ids if d in self.fleet.devices]
        records = split_export(*self.fleet.export_devices(resident))[1] if resident else {}
        away = [d for d in device_ids if d not in records]
        if away:
            records |= self.store.get(away)
        missing = [d for d in device_ids if d not in records]
        if missing:
            raise CheckpointError(f"no state for {len(missing)} devices, e.g. {missing[:5]}")
        return {d: records[d] for d in device_ids}

    def seal_manifest(self, taken: PartitionCheckpoint, offsets: Sequence[int]) -> bytes:
        """The signed manifest of ``taken`` once its chunks are on the topic at ``offsets``."""
        refs = [
            ChunkRef(g, key, offset, payload_digest(payload), n)
            for (g, key, payload, n), offset in zip(taken.chunks, offsets, strict=True)
        ]
        layout = self._layout(taken.partition)
        manifest = Manifest(
            partition=taken.partition,
            offset=taken.offset,
            seq=taken.seq,
            worker=taken.worker,
            chunks=layout.manifest_refs(refs),
            writer=self.worker_id,
            created_at=taken.created_at,
        )
        layout.written(refs, taken.seq)
        return self.signer.seal(encode_manifest(manifest))

    def open_manifest(self, payload: bytes) -> Manifest:
        """Verify (signature, then sha256 and schema) and decode a manifest.

        Raises
        ------
        CheckpointError
            If it is unsigned, signed by an untrusted key, altered or malformed.
        """
        try:
            return decode_manifest(self.verifier.open(payload))
        except SignatureError as exc:
            raise CheckpointError(f"checkpoint refused: {exc}") from exc

    def open_chunk(self, payload: bytes) -> Chunk:
        """Verify (signature, then sha256 and schema) and decode a chunk; :class:`CheckpointError` if bad."""
        try:
            return decode_chunk(self.verifier.open(payload))
        except SignatureError as exc:
            raise CheckpointError(f"checkpoint refused: {exc}") from exc

    def open_legacy(self, payload: bytes) -> Checkpoint:
        """Verify and decode a one-message checkpoint of an earlier version (see :func:`decode_legacy`)."""
        try:
            return decode_legacy(self.verifier.open(payload))
        except SignatureError as exc:
            raise CheckpointError(f"checkpoint refused: {exc}") from exc

    def release(self, partitions: Sequence[int]) -> list[PartitionCheckpoint]:
        """Checkpoints of the changed ones of ``partitions``, then stop processing them (revoked).

        Their devices leave this worker's memory and store (the chunks taken
        here hold their state); the manifests are sealed as usual.
        """
        out = self.checkpoint(partitions)
        gone = set(partitions)
        self.owned = (self.owned or set()) - gone
        leaving = [d for d, p in self.partition_of.items() if p in gone]
        self._forget(leaving)
        return out

    def _forget(self, device_ids: Sequence[str]) -> None:
        """Drop devices from memory and store without saving them (another owner has them)."""
        resident = [d for d in device_ids if d in self.fleet.devices]
        if resident:
            self.tracker.retain(self.fleet.drop_devices(resident))
        self.lru.forget(resident)
        self.store.delete(device_ids)

    def restore(self, partition: int, ck: Checkpoint | None, published: dict[str, int] | None = None) -> None:
        """Take over ``partition`` from its newest complete checkpoint (``None``: it has none yet).

        Devices are loaded into memory while there is room under
        ``max_devices``; the others go to the store and come back on their
        next reading.  ``published`` maps devices to the newest model
        version already on the models topic: a version published after the
        checkpoint was written is never reused, so edges never see a number
        twice or going down.  The worker-wide state in the checkpoint is
        adopted only by a core that has not learned anything yet.
        """
        if ck is not None and ck.partition != partition:
            raise CheckpointError(f"checkpoint of partition {ck.partition} offered for partition {partition}")
        layout = self._layouts[partition] = ChunkLayout(partition)
        if ck is None:
            self.offsets.pop(partition, None)
        else:
            fresh = self.fleet.scaler.x.count == 0
            records = {d: r for c in ck.chunks for d, r in c.records.items()}
            room = max(0, self.lru.max_devices - len(self.lru))
            ids = list(records)
            try:
                tensors, info = merge_records(ck.manifest.worker, [records[d] for d in ids[:room]])
                loaded = self.fleet.import_devices(tensors, info, worker_wide=fresh)
            except CheckpointError:
                raise
            except (KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"checkpoint of partition {partition} does not fit: {exc}") from exc
            self.lru.touch(loaded)
            self.store.put({d: records[d] for d in ids[room:]})
            drift_at, versions, readings = ck.drift_at, ck.versions, ck.readings
            for d in ids:
                self.partition_of[d] = partition
                self.device_readings[d] = readings.get(d, 0)
                self.versions[d] = versions.get(d, 0)
                self._drift_at.pop(d, None)
                if d in drift_at:
                    self._drift_at[d] = drift_at[d]
            layout.adopt(ck.manifest.chunks, {c.group: list(c.records) for c in ck.chunks}, ck.manifest.seq)
            self.offsets[partition] = ck.offset
            self._counts["checkpoints_restored"] += 1
        self.owned = (self.owned or set()) | {partition}
        self._dirty.discard(partition)
        if layout.is_dirty():  # restored from an earlier format: its chunks are still to be written
            self._dirty.add(partition)
        for d, v in (published or {}).items():
            self.versions[d] = max(self.versions.get(d, 0), v)

    def _layout(self, partition: int) -> ChunkLayout:
        layout = self._layouts.get(partition)
        if layout is None:
            layout = self._layouts[partition] = ChunkLayout(partition)
        return layout

    def _bring_back(self, device_ids: Sequence[str]) -> None:
        """Before learning: evicted devices of the batch back into memory."""
        uniq = list(dict.fromkeys(device_ids))
        away = [d for d in uniq if d not in self.fleet.devices]
        if away and len(self.store):
            records = self.store.pop(away)
            if records:
                worker, _ = split_export(*self.fleet.export_devices([]))
                tensors, info = merge_records(worker, list(records.values()))
                self.fleet.import_devices(tensors, info)
                self._counts["devices_restored"] += len(records)

    def _changed(self, device_ids: Sequence[str]) -> None:
        """After learning: the devices' chunks must be written again, and they were seen now."""
        uniq = list(dict.fromkeys(device_ids))
        by_partition: dict[int, list[str]] = {}
        for d in uniq:
            by_partition.setdefault(self.partition_of.get(d, -1), []).append(d)
        for p, ids in by_partition.items():
            if p >= 0:
                for other, layout in self._layouts.items():
                    if other != p:
                        layout.remove([d for d in ids if d in layout.group_of])
                self._layout(p).changed(ids)
        self.lru.touch(uniq)

    def _evict(self, busy: Sequence[str], now: float) -> list[Message]:
        """After learning: idle devices beyond ``max_devices`` to the store, least recently seen first."""
        victims = self.lru.victims(set(busy))
        if not victims:
            return []
        self.store.put(split_export(*self.fleet.export_devices(victims))[1])
        self.tracker.retain(self.fleet.drop_devices(victims))
        self._counts["evicted"] += len(victims)
        return [
            Evicted(
                devices=len(victims),
                resident=len(self.fleet.devices),
                stored=len(self.store),
                max_devices=self.lru.max_devices,
                ts=now,
            )
        ]


@dataclass
class PartitionCheckpoint:
    """What :meth:`WorkerCore.checkpoint` took of one partition, until its manifest is sealed."""

    partition: int
    offset: int
    """Offset of the last readings message of ``partition`` in the state."""
    seq: int
    chunks: list[tuple[int, str, bytes, int]]
    """``(group, key, sealed payload, devices)`` of each chunk to write, in order."""
    worker: WorkerState
    created_at: float


class MetaAggregator:
    """The meta agent: θ ← θ + ε · aggregate(contributions), each version checked and signed.

    A contribution is applied only if it is signed by a worker's key or by
    the allowed key of the federated device it names
    (:class:`connectors.contributions.ContributionGate`); its rows are
    clipped and its claimed weights capped (:mod:`learners.bounds`).  The
    resulting θ is published only if it passes :func:`learners.theta_check.check_theta`
    on a few devices' recent readings from ``fleet`` (the worker's own
    learner, when the aggregator runs inside a worker); otherwise θ stays,
    and a ``theta_refused`` event says why.  Without ``fleet`` (or before it
    holds enough readings) only finiteness is checked.

    Examples
    --------
    >>> import torch
    >>> from wire.models import DeltaHeader, encode_deltas
    >>> signer = Signer.generate()
    >>> agg = MetaAggregator(Settings(n_features=2), signer)
    >>> n = agg.n_params
    >>> payload = encode_deltas(torch.ones(2, n) / n, torch.tensor([1.0, 3.0]), DeltaHeader("worker:w", 0, n))
    >>> out = agg.on_delta(signer.seal(payload))
    >>> agg.version, out[0].version
    (1, 1)
    >>> agg.on_delta(payload), agg.on_delta(b"junk"), agg.rejected  # unsigned
    ([], [], 2)
    """

    def __init__(
        self,
        settings: Settings,
        signer: Signer,
        *,
        fleet: FleetLearner | None = None,
        device_keys: DeviceKeys | None = None,
        clock: Callable[[], float] = time.time,
        privacy: PrivacyGate | None = None,
    ) -> None:
        self.settings = settings
        cfg = settings.learner_config()
        self.signer = signer
        self.privacy = privacy
        self.clock = clock
        # θ₀ is the fleet's when the aggregator runs inside a worker: built once.
        self.meta = MetaLearner.from_config(fleet.theta if fleet is not None else init_params(cfg), cfg)
        self.n_params = sum(v.numel() for v in self.meta.theta.values())
        if device_keys is None and settings.device_keys:
            device_keys = DeviceKeys(settings.device_keys)
        self.gate = ContributionGate([signer.public_key], device_keys, self.n_params)
        self.fleet = fleet
        self.net = FunctionalNet(cfg)
        self._rng = np.random.default_rng(cfg.seed)
        self.counts: Counter[str] = Counter({k: 0 for k in AGGREGATOR_COUNTS})
        """See :data:`AGGREGATOR_COUNTS`."""
        self.last_check: ThetaCheck | None = None

    @property
    def version(self) -> int:
        """Current θ version."""
        return self.meta.version

    def adopt_theta(self, theta: Params, version: int) -> bool:
        """Continue from θ published elsewhere if it is newer (see :mod:`pipeline.theta_owner`)."""
        return self.meta.adopt(theta, version)

    @property
    def rejected(self) -> int:
        """Contributions refused (every reason)."""
        return sum(self.gate.refused.values())

    def current_theta(self) -> list[ThetaVersion]:
        """θ as it is now, as the message to publish (at start, and after every step)."""
        return [theta_message(self.settings, self.signer, self.meta.theta, self.meta.version)]

    def on_delta(self, value: bytes) -> list[Message]:
        """Apply one contribution message; returns the new θ version to publish (or a refusal event)."""
        try:
            c = self.gate.open(value)
        except ContributionRefused:
            return []  # counted and logged by the gate
        if self.privacy is not None:
            admitted, budget_events = self.privacy.screen(c.header.source)
            if not admitted:
                self.counts["privacy_refused"] += 1
                return list[Message](budget_events)
        return self._apply(c.deltas, c.weights, c.header.source)

    def privacy_stats(self) -> dict[str, float]:
        """θ's ε with respect to any one device and the devices out of budget (empty without a budget)."""
        if self.privacy is None:
            return {}
        ledger = self.privacy.ledger
        return {
            "privacy_theta_epsilon": ledger.theta_epsilon(),
            "privacy_devices_exhausted": float(ledger.exhausted_count()),
        }

    def device_epsilons(self) -> dict[str, float]:
        """ε each federated device has spent so far (empty without a budget)."""
        if self.privacy is None:
            return {}
        return self.privacy.ledger.device_epsilons()

    def on_secure_round(self, result: AggregateResult) -> list[Message]:
        """Apply a secure-aggregation round's weighted mean as one contribution of its total weight.

        The aggregator never saw a device's own Δ, only the round's sum, so
        the mean goes through the same bounds and θ check as any contribution.
        Devices over their privacy budget must be left out of the round
        before it starts (:mod:`pipeline.secure_rounds`): a masked input cannot
        be taken out of a sum afterwards.
        """
        if result.mean.shape != (self.n_params,):
            raise ValueError(
                f"round {result.round_id}: mean has shape {result.mean.shape}, θ has {self.n_params}"
            )
        deltas = torch.as_tensor(result.mean, dtype=torch.float32).reshape(1, -1)
        weights = torch.tensor([result.total_weight], dtype=torch.float32)
        return self._apply(deltas, weights, f"secagg:{result.round_id}")

    def _apply(self, deltas: torch.Tensor, weights: torch.Tensor, source: str) -> list[Message]:
        proposal = self.meta.propose(deltas, weights)
        self.counts["rows_clipped"] += proposal.bounded.clipped
        self.counts["weights_capped"] += proposal.bounded.capped
        held = None
        if self.fleet is not None:
            held = sample_held_back(self.fleet.buffers, len(self.fleet.devices), self._rng)
        check = self.last_check = check_theta(self.net, self.meta.theta, proposal.theta, held)
        if not check.accepted:
            self.counts["theta_refused"] += 1
            log.warning(
                "θ refused (%s): k-shot loss %.4g → %.4g, contribution from %s",
                check.reason,
                check.current_loss,
                check.candidate_loss,
                source,
            )
            refused = ThetaRefused(
                reason=check.reason,
                current_loss=check.current_loss,
                candidate_loss=check.candidate_loss,
                devices=check.devices,
                held_back=check.readings,
                source=source,
                meta_version=self.meta.version,
                ts=self.clock(),
            )
            return [refused]
        if check.reason == "unchecked":
            self.counts["theta_unchecked"] += 1
        self.meta.commit(proposal)
        return [*self.current_theta()]
