"""Per-partition snapshots of per-device learner state, without pickle.

A stream worker owns readings partitions; every device lives on one of them
(the producer keys or packs readings by the partition of the device id).  A
:class:`Checkpoint` holds, for every device of one partition, everything
needed to continue learning exactly where the worker stopped:

- the device's weights, its ring buffer of recent readings and its pending /
  meta-cadence flags (:meth:`learners.fleet.FleetLearner.export_devices`);
- its drift detector: ADWIN's window through River's own binary state
  encoding (plain bytes from its Rust extension, not pickle), PageHinkley and
  KSWIN as plain attributes (:meth:`learners.drift.DriftMonitor.export_slots`),
  so a restored detector raises the same alarms on the same errors;
- the counters the pipeline keeps per device: its latest model version and
  the readings processed into its model;
- the offset of the last readings message of the partition that is in the
  state: a redelivered message at or below it is already in the model;
- worker-wide state (feature/target scaler, fleet error scale, θ and its
  version, the meta cadence): a fresh worker takes it over, a worker that has
  its own keeps its own (see :meth:`~learners.fleet.FleetLearner.import_devices`).

Encoding: one safetensors payload (tensors + a JSON header in its metadata)
with a sha256 over both, like :mod:`learners.codec`.  Authenticity (a
signature) is added by the caller (:mod:`pipeline.worker_core` seals it with
the worker's Ed25519 key); this module stays free of keys and brokers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from learners.codec import _header_digest, _metadata, tensor_digest

CHECKPOINT_SCHEMA = "metastream.checkpoint/1"


class CheckpointError(ValueError):
    """A payload that is not a valid, unaltered checkpoint of a known schema."""


@dataclass
class Checkpoint:
    """The state of the devices of one readings partition after ``offset``.

    Examples
    --------
    >>> import torch
    >>> ck = Checkpoint(partition=2, offset=41, tensors={"w": torch.ones(2)},
    ...                 info={"device_ids": ["a"]}, versions={"a": 3}, readings={"a": 120})
    >>> back = decode_checkpoint(encode_checkpoint(ck))
    >>> back.partition, back.offset, back.versions, back.readings, back.tensors["w"].tolist()
    (2, 41, {'a': 3}, {'a': 120}, [1.0, 1.0])
    >>> decode_checkpoint(encode_checkpoint(ck).replace(b"41", b"99", 1))
    Traceback (most recent call last):
    ...
    learners.checkpoint.CheckpointError: checkpoint sha256 mismatch: payload was altered
    """

    partition: int
    offset: int
    """Offset of the last readings message of ``partition`` in this state (-1: none yet)."""
    tensors: dict[str, Tensor]
    info: dict[str, Any]
    """JSON-able learner state (see :meth:`learners.fleet.FleetLearner.export_devices`)."""
    versions: dict[str, int] = field(default_factory=dict)
    """Latest model version per device."""
    readings: dict[str, int] = field(default_factory=dict)
    """Readings processed into each device's model, ever."""
    drift_at: dict[str, float] = field(default_factory=dict)
    """When each device's not yet adapted drift was detected (for the published model's headers)."""
    writer: str = ""
    created_at: float = 0.0

    @property
    def device_ids(self) -> list[str]:
        """The devices in this checkpoint."""
        return list(self.info.get("device_ids", []))


def encode_checkpoint(ck: Checkpoint) -> bytes:
    """The checkpoint as safetensors bytes with a JSON header and a sha256 over both."""
    header = {
        "partition": ck.partition,
        "offset": ck.offset,
        "info": ck.info,
        "versions": ck.versions,
        "readings": ck.readings,
        "drift_at": ck.drift_at,
        "writer": ck.writer,
        "created_at": ck.created_at,
    }
    meta = {"schema": CHECKPOINT_SCHEMA, "header": json.dumps(header, allow_nan=False)}
    meta["sha256"] = tensor_digest(ck.tensors) + ":" + _header_digest(meta)
    return save({k: v.detach().contiguous().cpu() for k, v in ck.tensors.items()}, metadata=meta)


def decode_checkpoint(payload: bytes) -> Checkpoint:
    """Parse and verify :func:`encode_checkpoint` output; :class:`CheckpointError` on any problem."""
    try:
        tensors = load(payload)
        meta = _metadata(payload)
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"not a checkpoint payload: {exc}") from exc
    if meta.get("schema") != CHECKPOINT_SCHEMA:
        raise CheckpointError(
            f"unknown checkpoint schema {meta.get('schema')!r}; expected {CHECKPOINT_SCHEMA}"
        )
    digest = meta.pop("sha256", "")
    if digest != tensor_digest(tensors) + ":" + _header_digest(meta):
        raise CheckpointError("checkpoint sha256 mismatch: payload was altered")
    try:
        h = json.loads(meta["header"])
        return Checkpoint(
            partition=int(h["partition"]),
            offset=int(h["offset"]),
            tensors=tensors,
            info=dict(h["info"]),
            versions={str(k): int(v) for k, v in h["versions"].items()},
            readings={str(k): int(v) for k, v in h["readings"].items()},
            drift_at={str(k): float(v) for k, v in h["drift_at"].items()},
            writer=str(h["writer"]),
            created_at=float(h["created_at"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"bad checkpoint header: {exc}") from exc
