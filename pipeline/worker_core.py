"""What a stream worker does with messages, as plain classes (no Faust, no Kafka).

:class:`WorkerCore` turns raw reading messages into outgoing messages: dead
letters, drift events, signed model updates and meta contributions.
:class:`MetaAggregator` is the meta agent: it applies contributions (from
workers, or from edge devices in federated mode) to θ with the Reptile
aggregation of :mod:`learners.meta` and emits signed θ versions.  The Faust
app in :mod:`pipeline.app` only moves bytes in and out of these.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from connectors.contributions import ContributionGate, ContributionRefused, DeviceKeys
from connectors.settings import Settings
from connectors.signing import SignatureError, Signer, Verifier
from connectors.wire import DeadLetter, Reading, Rejected, decode_readings, device_named_in, encode_event
from learners.base import reading_errors
from learners.checkpoint import Checkpoint, CheckpointError, decode_checkpoint, encode_checkpoint
from learners.codec import (
    CodecError,
    DeltaHeader,
    ModelHeader,
    decode_model,
    encode_deltas,
    encode_model,
)
from learners.evaluation import AdaptationTracker
from learners.fleet import FleetLearner
from learners.guard import GuardCheck
from learners.meta import MetaLearner
from learners.nets import FunctionalNet, Params, init_params
from learners.theta_check import ThetaCheck, check_theta, sample_held_back
from pipeline.suspects import SuspectLedger

log = logging.getLogger(__name__)

META_KEY = "__meta__"

AGGREGATOR_COUNTS = ("theta_refused", "theta_unchecked", "rows_clipped", "weights_capped")
"""Counters of :attr:`MetaAggregator.counts` (worker stats and /metrics)."""


@dataclass(frozen=True)
class Outgoing:
    """One message to send: topic name, key, value and headers."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def theta_message(settings: Settings, signer: Signer, theta: Params, version: int) -> Outgoing:
    """θ as a signed model payload on the (compacted) meta topic."""
    cfg = settings.learner_config()
    header = ModelHeader(META_KEY, version, version - 1, cfg.task, cfg.n_features, cfg.n_outputs, cfg.hidden)
    payload = signer.seal(encode_model(theta, header))
    return Outgoing(
        settings.topic_meta, META_KEY.encode(), payload, [("meta_version", str(version).encode())]
    )


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
    >>> from connectors.wire import Reading, encode_readings
    >>> core = WorkerCore(Settings(n_features=2), Signer.generate(), clock=lambda: 100.0)
    >>> msgs = [(encode_readings([Reading("d1", (1.0, 2.0), 3.0)]), 0, 0), (b"{oops", 0, 1)]
    >>> [(o.topic, o.headers[0]) for o in core.on_readings(msgs)]
    [('metastream.deadletter', ('reason', b'malformed_json'))]
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
    ) -> None:
        self.settings = settings
        self.cfg = settings.learner_config()
        self.signer = signer
        self.clock = clock
        self.worker_id = worker_id
        self.verifier = trusted or Verifier([signer.public_key])
        self.fleet = FleetLearner(self.cfg, init="reptile", local_meta=False)
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

    def stats(self) -> dict[str, int]:
        """Counters of what this worker did, and the θ version it is on.

        readings, dead_letters, drifts, adaptations, rejected, published,
        meta_refused, the checkpoint counters (duplicates_skipped,
        not_owned_skipped, checkpoints_written, checkpoints_restored), devices
        (known to this worker), meta_version.  ``rejected`` counts adaptations
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
        )
        return {
            **{n: self._counts[n] for n in names},
            "devices": len(self.fleet.devices),
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

    def on_readings(self, messages: Sequence[tuple[bytes | None, int, int]]) -> list[Outgoing]:
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
        out: list[Outgoing] = []
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
                letter = DeadLetter.of(r, s.topic_readings, partition, offset)
                key = r.device_id.encode() if r.device_id is not None else None
                out.append(
                    Outgoing(s.topic_deadletter, key, letter.encode(), [("reason", r.reason.encode())])
                )
                letters += 1
        for start in range(0, len(good), s.micro_batch):
            part = good[start : start + s.micro_batch]
            out += self._learn([r for r, _ in part])
            # Registered only once learned: a checkpoint must never name a device the fleet lacks.
            for reading, partition in part:
                self.partition_of[reading.device_id] = partition
                self.device_readings[reading.device_id] += 1
        for partition, offset in seen.items():
            self.offsets[partition] = max(offset, self.offsets.get(partition, -1))
            self._dirty.add(partition)
        self._counts["dead_letters"] += letters
        return out

    def _learn(self, readings: list[Reading]) -> list[Outgoing]:
        s = self.settings
        ids = [r.device_id for r in readings]
        x = np.array([r.x for r in readings], dtype=np.float64)
        y = np.array([r.y for r in readings], dtype=np.float64)
        result = self.fleet.learn_predict(ids, x, y)
        now = self.clock()
        self._counts["readings"] += len(readings)
        assert result.slots is not None  # a FleetLearner always reports them
        self.tracker.update(result.slots, reading_errors(self.cfg.task, y, result.y_pred))
        out: list[Outgoing] = []
        for d in result.drifted:
            self._drift_at[d] = now
            self._counts["drifts"] += 1
            event = encode_event("drift", device_id=d, ts=now, meta_version=self.fleet.meta_version)
            out.append(Outgoing(s.topic_events, d.encode(), event, []))
        for d in result.adapted:
            out += self._publish(d, now)
        for check in result.rejected:
            out.append(self._rejected(check, now))
        for tag, before, after in self.tracker.finished():
            device, version = tag.rsplit(" ", 1)
            event = encode_event(
                "adaptation_result",
                device_id=device,
                model_version=int(version),
                error_before=before,
                error_after=after,
                readings=self.tracker.after,
            )
            out.append(Outgoing(s.topic_events, device.encode(), event, []))
        for deltas, weights in self.fleet.take_contributions():
            header = DeltaHeader(f"worker:{self.worker_id}", self.fleet.meta_version, deltas.shape[1])
            # Signed like models: the meta agent applies only contributions it can attribute.
            payload = self.signer.seal(encode_deltas(deltas, weights, header))
            out.append(Outgoing(s.topic_deltas, self.worker_id.encode(), payload, []))
        return out

    def _publish(self, device_id: str, now: float) -> list[Outgoing]:
        """A new signed model version for ``device_id``, plus its ``adapted`` event."""
        s = self.settings
        version = self.versions[device_id] = self.versions.get(device_id, 0) + 1
        cause = "drift" if device_id in self._drift_at else "new_device"
        detected = self._drift_at.pop(device_id, now)
        headers = [
            ("model_version", str(version).encode()),
            ("cause", cause.encode()),
            ("detected_at", repr(detected).encode()),
            ("published_at", repr(now).encode()),
        ]
        model = self.signer.seal(self.fleet.export(device_id, version))
        self.tracker.adapted(self.fleet.devices.slot(device_id), f"{device_id} {version}")
        event = encode_event(
            "adapted",
            device_id=device_id,
            model_version=version,
            cause=cause,
            ts=now,
            meta_version=self.fleet.meta_version,
        )
        self._counts["adaptations"] += 1
        self._counts["published"] += 1
        return [
            Outgoing(s.topic_models, device_id.encode(), model, headers),
            Outgoing(s.topic_events, device_id.encode(), event, []),
        ]

    def _rejected(self, check: GuardCheck, now: float) -> Outgoing:
        """The guard kept the current model: nothing is published, an event says why.

        The drift time stays: the fleet retries a rejected adaptation a few
        readings later, and a model published then is still the drift's answer.
        """
        cause = "drift" if check.device_id in self._drift_at else "new_device"
        self._counts["rejected"] += 1
        event = encode_event(
            "adaptation_rejected",
            device_id=check.device_id,
            cause=cause,
            current_loss=_json_number(check.current_loss),
            adapted_loss=_json_number(check.adapted_loss),
            held_back=check.held_back,
            model_version=self.versions.get(check.device_id, 0),
            ts=now,
            meta_version=self.fleet.meta_version,
        )
        return Outgoing(self.settings.topic_events, check.device_id.encode(), event, [])

    def on_meta(self, value: bytes) -> bool:
        """Adopt a θ version from the meta topic; refuses unsigned or foreign ones."""
        try:
            tensors, header = decode_model(self.verifier.open(value))
        except (SignatureError, CodecError) as exc:
            log.warning("ignoring θ message: %s", exc)
            self._counts["meta_refused"] += 1
            return False
        if header.device_id != META_KEY:
            return False
        return self.fleet.adopt_theta(tensors, header.model_version)

    # -- checkpoints -------------------------------------------------------------------

    def dirty_partitions(self) -> set[int]:
        """Partitions whose state changed since their last checkpoint."""
        return set(self._dirty)

    def checkpoint(self, partitions: Sequence[int] | None = None) -> list[tuple[int, int, bytes]]:
        """Signed checkpoints ``(partition, offset, payload)`` of the changed ``partitions`` (default all).

        A partition is clean again afterwards; write the payloads before
        letting the consumer commit past ``offset`` (see :mod:`pipeline.app`).
        """
        wanted = self._dirty if partitions is None else self._dirty & set(partitions)
        out = [(p, self.offsets.get(p, -1), self.signer.seal(self.snapshot(p))) for p in sorted(wanted)]
        self._dirty -= wanted
        self._counts["checkpoints_written"] += len(out)
        return out

    def snapshot(self, partition: int) -> bytes:
        """The unsigned checkpoint payload of one partition (see :mod:`learners.checkpoint`)."""
        ids = [d for d, p in self.partition_of.items() if p == partition]
        tensors, info = self.fleet.export_devices(ids)
        ck = Checkpoint(
            partition=partition,
            offset=self.offsets.get(partition, -1),
            tensors=tensors,
            info=info,
            versions={d: self.versions[d] for d in ids if d in self.versions},
            readings={d: self.device_readings[d] for d in ids},
            drift_at={d: self._drift_at[d] for d in ids if d in self._drift_at},
            writer=self.worker_id,
            created_at=self.clock(),
        )
        return encode_checkpoint(ck)

    def open_checkpoint(self, payload: bytes) -> Checkpoint:
        """Verify (signature, then sha256 and schema) and decode a checkpoint.

        Raises
        ------
        CheckpointError
            If it is unsigned, signed by an untrusted key, altered or malformed.
        """
        try:
            return decode_checkpoint(self.verifier.open(payload))
        except SignatureError as exc:
            raise CheckpointError(f"checkpoint refused: {exc}") from exc

    def release(self, partitions: Sequence[int]) -> list[tuple[int, int, bytes]]:
        """Checkpoints of the changed ones of ``partitions``, then stop processing them (revoked)."""
        out = self.checkpoint(partitions)
        self.owned = (self.owned or set()) - set(partitions)
        return out

    def restore(self, partition: int, ck: Checkpoint | None, published: dict[str, int] | None = None) -> None:
        """Take over ``partition`` from its newest checkpoint (``None``: it has none yet).

        ``published`` maps devices to the newest model version already on the
        models topic: a version published after the checkpoint was written is
        never reused, so edges never see a number twice or going down.  The
        worker-wide state in the checkpoint is adopted only by a core that has
        not learned anything yet.
        """
        if ck is not None and ck.partition != partition:
            raise CheckpointError(f"checkpoint of partition {ck.partition} offered for partition {partition}")
        self.owned = (self.owned or set()) | {partition}
        self._dirty.discard(partition)
        if ck is None:
            self.offsets.pop(partition, None)
        else:
            fresh = self.fleet.scaler.x.count == 0
            try:
                ids = self.fleet.import_devices(ck.tensors, ck.info, worker_wide=fresh)
            except CheckpointError:
                raise
            except (KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"checkpoint of partition {partition} does not fit: {exc}") from exc
            for d in ids:
                self.partition_of[d] = partition
                self.device_readings[d] = ck.readings.get(d, 0)
                self.versions[d] = ck.versions.get(d, 0)
                self._drift_at.pop(d, None)
                if d in ck.drift_at:
                    self._drift_at[d] = ck.drift_at[d]
            self.offsets[partition] = ck.offset
            self._counts["checkpoints_restored"] += 1
        for d, v in (published or {}).items():
            self.versions[d] = max(self.versions.get(d, 0), v)


def _json_number(value: float) -> float | None:
    """``None`` for NaN and infinities, which strict JSON cannot carry."""
    return value if math.isfinite(value) else None


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
    >>> from learners.codec import DeltaHeader, encode_deltas
    >>> signer = Signer.generate()
    >>> agg = MetaAggregator(Settings(n_features=2), signer)
    >>> n = agg.n_params
    >>> payload = encode_deltas(torch.ones(2, n) / n, torch.tensor([1.0, 3.0]), DeltaHeader("worker:w", 0, n))
    >>> out = agg.on_delta(signer.seal(payload))
    >>> agg.version, out[0].topic, out[0].headers
    (1, 'metastream.meta', [('meta_version', b'1')])
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
    ) -> None:
        self.settings = settings
        cfg = settings.learner_config()
        self.signer = signer
        self.clock = clock
        self.meta = MetaLearner.from_config(init_params(cfg), cfg)
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

    @property
    def rejected(self) -> int:
        """Contributions refused (every reason)."""
        return sum(self.gate.refused.values())

    def current_theta(self) -> list[Outgoing]:
        """θ as it is now, as the message to publish (at start, and after every step)."""
        return [theta_message(self.settings, self.signer, self.meta.theta, self.meta.version)]

    def on_delta(self, value: bytes) -> list[Outgoing]:
        """Apply one contribution message; returns the new θ version to publish (or a refusal event)."""
        try:
            c = self.gate.open(value)
        except ContributionRefused:
            return []  # counted and logged by the gate
        proposal = self.meta.propose(c.deltas, c.weights)
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
                c.header.source,
            )
            event = encode_event(
                "theta_refused",
                reason=check.reason,
                current_loss=_json_number(check.current_loss),
                candidate_loss=_json_number(check.candidate_loss),
                devices=check.devices,
                held_back=check.readings,
                source=c.header.source,
                meta_version=self.meta.version,
                ts=self.clock(),
            )
            return [Outgoing(self.settings.topic_events, META_KEY.encode(), event, [])]
        if check.reason == "unchecked":
            self.counts["theta_unchecked"] += 1
        self.meta.commit(proposal)
        return self.current_theta()
