"""Checkpoints of any size: per-device records, signed chunks and a manifest, without pickle.

A stream worker owns readings partitions; every device lives on one of them.
The state of a partition after its readings offset ``o`` is written as

- **device records**: one device's weights, ring buffer, pending / meta
  flags and drift detector (:meth:`learners.fleet.FleetLearner.export_devices`
  cut per device by :func:`split_export`), as safetensors bytes.  A worker
  also keeps the records of the devices it evicted from memory;
- **chunks** (:class:`Chunk`): a group of device records (well under 1 MB)
  with the counters the pipeline keeps per device (model version, readings
  learned, time of a drift not yet adapted to);
- a **manifest** (:class:`Manifest`): partition, offset, the worker-wide
  state (feature/target scaler, fleet error scale, θ and its version, the
  meta cadence, the random generator) and, for every chunk of the partition,
  where it is on the topic and the sha256 of its bytes.

A partition's checkpoint is complete when its manifest and every chunk it
names are there and verify (:func:`assemble`); a reader takes the newest
complete one.  Only the chunks of groups whose devices changed are written
again, so a checkpoint costs what changed, not the size of the partition.

Encoding: safetensors payloads (tensors + a JSON header in the metadata)
with a sha256 over both, like :mod:`wire.models`.  Authenticity (a
signature) is added by the caller (:mod:`pipeline.worker_core` seals chunks
and manifests with the worker's Ed25519 key, and the manifest pins each
chunk's sealed bytes by sha256); this module stays free of keys and brokers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from metastream_edge.codec import header_digest, read_metadata
from wire.models import tensor_digest

CHUNK_SCHEMA = "metastream.checkpoint-chunk/1"
MANIFEST_SCHEMA = "metastream.checkpoint-manifest/1"
LEGACY_SCHEMA = "metastream.checkpoint/1"
"""Earlier versions wrote a whole partition as one message of this schema (read on upgrade)."""
LEGACY_DEVICES_PER_CHUNK = 128

WORKER_TENSOR_PREFIXES = ("theta.", "scaler.", "pooled.")
"""Tensors of :meth:`~learners.fleet.FleetLearner.export_devices` that are worker-wide."""
WORKER_INFO_KEYS = ("scaler_counts", "error_scale", "processed", "meta_version", "rng", "meta_bounds")
"""Entries of its ``info`` that are worker-wide; every other entry is a list with one item per device."""
CHUNK_BYTES = 1024 * 1024
"""A chunk holds devices up to about this many bytes (one device's record is a few KB)."""
BLOBS = "detector.blobs"
"""The one per-device tensor that is not stacked: detector states, cut by ``info["blob_sizes"]``."""


class CheckpointError(ValueError):
    """A payload that is not a valid, unaltered checkpoint part of a known schema, or an incomplete set."""


@dataclass
class WorkerState:
    """The worker-wide part of a fleet export, and the shape of its per-device tensors."""

    tensors: dict[str, Tensor]
    info: dict[str, Any]
    device_shapes: dict[str, list[int]]
    """Per-device tensor name → shape of one device's row (to rebuild an empty export)."""
    device_dtypes: dict[str, str]
    device_fields: list[str] = field(default_factory=list)
    """Names of the per-device lists of the export's ``info``."""


def split_export(
    tensors: Mapping[str, Tensor], info: Mapping[str, Any]
) -> tuple[WorkerState, dict[str, bytes]]:
    """Cut a fleet export into its worker-wide part and one record per device.

    A record is plain bytes: a 4-byte length, a JSON header (device id, its
    per-device ``info`` fields, its detector blob's length), then the rows of
    its per-device tensors (in name order, shapes and dtypes as in the
    :class:`WorkerState`), then the blob.  No pickle, and no per-device
    container overhead: a record costs what its numbers cost.

    Examples
    --------
    >>> tensors = {"theta.w": torch.ones(3), "param.w": torch.arange(6.0).reshape(2, 3),
    ...            "buffer.x": torch.zeros(2, 4, 2)}
    >>> info = {"device_ids": ["a", "b"], "meta_version": 5, "pending": [True, False]}
    >>> worker, records = split_export(tensors, info)
    >>> sorted(records), record_device(records["b"]), worker.info, worker.device_fields
    (['a', 'b'], 'b', {'meta_version': 5}, ['device_ids', 'pending'])
    >>> tensors, info = merge_records(worker, [records["b"]])
    >>> info["device_ids"], info["pending"], tuple(tensors["buffer.x"].shape)
    (['b'], [False], (1, 4, 2))
    >>> tensors["param.w"].tolist(), tensors["theta.w"].tolist()
    ([[3.0, 4.0, 5.0]], [1.0, 1.0, 1.0])
    """
    ids = [str(d) for d in info["device_ids"]]
    n = len(ids)
    worker_tensors = {k: v for k, v in tensors.items() if k.startswith(WORKER_TENSOR_PREFIXES)}
    worker_info = {k: info[k] for k in WORKER_INFO_KEYS if k in info}
    names = sorted(k for k in tensors if k not in worker_tensors and k != BLOBS)
    lists = {k: v for k, v in info.items() if k not in worker_info}
    for k in names:
        if tensors[k].dim() == 0 or tensors[k].shape[0] != n:
            raise CheckpointError(f"export tensor {k} has no row per device ({tuple(tensors[k].shape)}, {n})")
    for k, lv in lists.items():
        if not isinstance(lv, list) or len(lv) != n:
            raise CheckpointError(f"export info {k!r} is not a list with one item per device")
    worker = WorkerState(
        tensors=worker_tensors,
        info=worker_info,
        device_shapes={k: list(tensors[k].shape[1:]) for k in names},
        device_dtypes={k: str(tensors[k].dtype).removeprefix("torch.") for k in names},
        device_fields=list(lists),
    )
    # Every device's tensor rows side by side, as bytes: one row of this matrix per device.
    rows = np.concatenate(
        [_rows(tensors[k], n) for k in names] or [np.zeros((n, 0), np.uint8)],
        axis=1,
    )
    sizes = [int(s) for s in info.get("blob_sizes", [0] * n)]
    blob = tensors[BLOBS].numpy().tobytes() if BLOBS in tensors else b""
    per_device = [k for k in lists if k not in ("device_ids", "blob_sizes")]
    records: dict[str, bytes] = {}
    start = 0
    for i, d in enumerate(ids):
        fields = {k: lists[k][i] for k in per_device}
        header = json.dumps({"d": d, "i": fields, "b": sizes[i]}, allow_nan=False).encode()
        own_blob = blob[start : start + sizes[i]]
        start += sizes[i]
        records[d] = len(header).to_bytes(4, "little") + header + rows[i].tobytes() + own_blob
    return worker, records


def _rows(t: Tensor, n: int) -> np.ndarray:
    """``t`` ([n, …]) as ``n`` rows of raw bytes."""
    a = t.detach().contiguous().numpy()
    return a.reshape(n, int(np.prod(a.shape[1:], dtype=np.int64))).view(np.uint8)


def _record_header(record: bytes) -> tuple[dict[str, Any], int]:
    n = int.from_bytes(record[:4], "little")
    if len(record) < 4 or n > len(record) - 4:
        raise ValueError("record header beyond the record")
    header = json.loads(record[4 : 4 + n].decode())
    if not isinstance(header, dict) or not isinstance(header.get("d"), str):
        raise ValueError("record header is not a device header")
    return header, 4 + n


def record_device(record: bytes) -> str:
    """The device id a record belongs to."""
    try:
        return str(_record_header(record)[0]["d"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"not a device record: {exc}") from exc


def merge_records(worker: WorkerState, records: Sequence[bytes]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The inverse of :func:`split_export` for any subset of records (in their order)."""
    names = sorted(worker.device_shapes)
    dtypes = {k: np.dtype(worker.device_dtypes[k]) for k in names}
    widths = [int(np.prod(worker.device_shapes[k], dtype=np.int64)) * dtypes[k].itemsize for k in names]
    row_bytes = sum(widths)
    rows: list[bytes] = []
    blobs: list[bytes] = []
    lists: dict[str, list[Any]] = {k: [] for k in worker.device_fields} | {"device_ids": []}
    for record in records:
        try:
            header, at = _record_header(record)
            n_blob = int(header["b"])
            if len(record) != at + row_bytes + n_blob:
                raise ValueError(f"record of {len(record)} bytes does not fit this learner's layout")
            fields = dict(header["i"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"bad device record: {exc}") from exc
        rows.append(record[at : at + row_bytes])
        blobs.append(record[at + row_bytes :])
        lists["device_ids"].append(header["d"])
        for k, v in fields.items():
            lists.setdefault(k, []).append(v)
    matrix = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(records), row_bytes)
    out: dict[str, Tensor] = dict(worker.tensors)
    col = 0
    for k, width in zip(names, widths, strict=True):
        part = np.ascontiguousarray(matrix[:, col : col + width]).view(dtypes[k])
        out[k] = torch.from_numpy(part.reshape(len(records), *worker.device_shapes[k]))
        col += width
    out[BLOBS] = torch.frombuffer(bytearray(b"".join(blobs) or b"\0"), dtype=torch.uint8)
    info: dict[str, Any] = {**worker.info, **lists, "blob_sizes": [len(b) for b in blobs]}
    return out, info


@dataclass
class Chunk:
    """The records of one group of devices of a partition, with the pipeline's counters for them."""

    partition: int
    group: int
    seq: int
    """The checkpoint (per partition, counting from 1) that wrote this chunk."""
    records: dict[str, bytes]
    versions: dict[str, int] = field(default_factory=dict)
    readings: dict[str, int] = field(default_factory=dict)
    drift_at: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkRef:
    """Where a chunk of a manifest is, and the sha256 of its sealed bytes."""

    group: int
    key: str
    offset: int
    sha256: str
    devices: int


@dataclass
class Manifest:
    """A partition's checkpoint: offset, worker-wide state and the chunks that hold its devices."""

    partition: int
    offset: int
    """Offset of the last readings message of ``partition`` in this state (-1: none yet)."""
    seq: int
    worker: WorkerState
    chunks: list[ChunkRef]
    writer: str = ""
    created_at: float = 0.0


def _encode(schema: str, tensors: dict[str, Tensor], header: dict[str, Any]) -> bytes:
    meta = {"schema": schema, "header": json.dumps(header, allow_nan=False)}
    meta["sha256"] = tensor_digest(tensors) + ":" + header_digest(meta)
    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)


def _decode(schema: str, payload: bytes) -> tuple[dict[str, Tensor], dict[str, Any]]:
    try:
        tensors = load(payload)
        meta = read_metadata(payload)
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"not a checkpoint payload: {exc}") from exc
    if meta.get("schema") != schema:
        raise CheckpointError(f"unknown checkpoint schema {meta.get('schema')!r}; expected {schema}")
    digest = meta.pop("sha256", "")
    if digest != tensor_digest(tensors) + ":" + header_digest(meta):
        raise CheckpointError("checkpoint sha256 mismatch: payload was altered")
    try:
        return tensors, dict(json.loads(meta["header"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"bad checkpoint header: {exc}") from exc


def encode_chunk(chunk: Chunk) -> bytes:
    """The chunk as safetensors bytes (its records concatenated) with a JSON header and a sha256.

    Examples
    --------
    >>> chunk = Chunk(partition=1, group=0, seq=3, records={"a": b"xy", "b": b"z"}, versions={"a": 2})
    >>> back = decode_chunk(encode_chunk(chunk))
    >>> back.records, back.versions, (back.partition, back.group, back.seq)
    ({'a': b'xy', 'b': b'z'}, {'a': 2}, (1, 0, 3))
    >>> decode_chunk(encode_chunk(chunk).replace(b"xyz", b"xyy", 1))
    Traceback (most recent call last):
    ...
    wire.checkpoint.CheckpointError: checkpoint sha256 mismatch: payload was altered
    """
    ids = list(chunk.records)
    data = b"".join(chunk.records[d] for d in ids)
    header = {
        "partition": chunk.partition,
        "group": chunk.group,
        "seq": chunk.seq,
        "device_ids": ids,
        "sizes": [len(chunk.records[d]) for d in ids],
        "versions": chunk.versions,
        "readings": chunk.readings,
        "drift_at": chunk.drift_at,
    }
    packed = torch.frombuffer(bytearray(data or b"\0"), dtype=torch.uint8)
    return _encode(CHUNK_SCHEMA, {"records": packed}, header)


def decode_chunk(payload: bytes) -> Chunk:
    """Parse and verify :func:`encode_chunk` output; :class:`CheckpointError` on any problem."""
    tensors, h = _decode(CHUNK_SCHEMA, payload)
    try:
        data = tensors["records"].numpy().tobytes()
        ids, sizes = [str(d) for d in h["device_ids"]], [int(s) for s in h["sizes"]]
        if len(ids) != len(sizes) or sum(sizes) > len(data):
            raise ValueError("record sizes do not match the data")
        records, start = {}, 0
        for d, n in zip(ids, sizes, strict=True):
            records[d], start = data[start : start + n], start + n
        return Chunk(
            partition=int(h["partition"]),
            group=int(h["group"]),
            seq=int(h["seq"]),
            records=records,
            versions={str(k): int(v) for k, v in h["versions"].items()},
            readings={str(k): int(v) for k, v in h["readings"].items()},
            drift_at={str(k): float(v) for k, v in h["drift_at"].items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"bad checkpoint header: {exc}") from exc


def encode_manifest(m: Manifest) -> bytes:
    """The manifest as safetensors bytes (worker-wide tensors) with a JSON header and a sha256."""
    header = {
        "partition": m.partition,
        "offset": m.offset,
        "seq": m.seq,
        "info": m.worker.info,
        "device_shapes": m.worker.device_shapes,
        "device_dtypes": m.worker.device_dtypes,
        "device_fields": m.worker.device_fields,
        "chunks": [[c.group, c.key, c.offset, c.sha256, c.devices] for c in m.chunks],
        "writer": m.writer,
        "created_at": m.created_at,
    }
    return _encode(MANIFEST_SCHEMA, m.worker.tensors, header)


def decode_manifest(payload: bytes) -> Manifest:
    """Parse and verify :func:`encode_manifest` output; :class:`CheckpointError` on any problem."""
    tensors, h = _decode(MANIFEST_SCHEMA, payload)
    try:
        return Manifest(
            partition=int(h["partition"]),
            offset=int(h["offset"]),
            seq=int(h["seq"]),
            worker=WorkerState(
                tensors=tensors,
                info=dict(h["info"]),
                device_shapes={str(k): [int(x) for x in v] for k, v in h["device_shapes"].items()},
                device_dtypes={str(k): str(v) for k, v in h["device_dtypes"].items()},
                device_fields=[str(k) for k in h["device_fields"]],
            ),
            chunks=[ChunkRef(int(g), str(k), int(o), str(s), int(n)) for g, k, o, s, n in h["chunks"]],
            writer=str(h["writer"]),
            created_at=float(h["created_at"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"bad checkpoint header: {exc}") from exc


def payload_digest(payload: bytes) -> str:
    """The sha256 a manifest pins a chunk's (sealed) bytes with."""
    return hashlib.sha256(payload).hexdigest()


@dataclass
class Checkpoint:
    """A complete, verified checkpoint of one partition: its manifest and every chunk it names.

    Examples
    --------
    >>> import torch
    >>> worker = WorkerState({"theta.w": torch.ones(2)}, {"meta_version": 4}, {}, {})
    >>> chunk = encode_chunk(Chunk(2, 0, 1, {"a": b"rec"}, versions={"a": 3}, readings={"a": 120}))
    >>> ref = ChunkRef(group=0, key="2/c/0/0", offset=40, sha256=payload_digest(chunk), devices=1)
    >>> manifest = Manifest(2, offset=41, seq=1, worker=worker, chunks=[ref])
    >>> ck = assemble(decode_manifest(encode_manifest(manifest)), {40: ("2/c/0/0", chunk)}, decode_chunk)
    >>> ck.partition, ck.offset, ck.device_ids, ck.versions, ck.readings
    (2, 41, ['a'], {'a': 3}, {'a': 120})
    >>> assemble(manifest, {}, decode_chunk)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    wire.checkpoint.CheckpointError: incomplete checkpoint of partition 2 (seq 1): ... missing
    """

    manifest: Manifest
    chunks: list[Chunk]

    @property
    def partition(self) -> int:
        """The readings partition."""
        return self.manifest.partition

    @property
    def offset(self) -> int:
        """Offset of the last readings message of the partition in this state."""
        return self.manifest.offset

    @property
    def created_at(self) -> float:
        """When the writer took it (its clock)."""
        return self.manifest.created_at

    @property
    def device_ids(self) -> list[str]:
        """The devices in this checkpoint."""
        return [d for c in self.chunks for d in c.records]

    @property
    def versions(self) -> dict[str, int]:
        """Latest model version per device."""
        return {d: v for c in self.chunks for d, v in c.versions.items()}

    @property
    def readings(self) -> dict[str, int]:
        """Readings processed into each device's model, ever."""
        return {d: v for c in self.chunks for d, v in c.readings.items()}

    @property
    def drift_at(self) -> dict[str, float]:
        """When each device's not yet adapted drift was detected."""
        return {d: v for c in self.chunks for d, v in c.drift_at.items()}


def assemble(
    manifest: Manifest,
    found: Mapping[int, tuple[str, bytes]],
    open_chunk: Callable[[bytes], Chunk],
) -> Checkpoint:
    """The checkpoint of ``manifest`` from the records ``found`` (offset → key, sealed chunk bytes).

    Raises
    ------
    CheckpointError
        If a named chunk is missing, has another key or other bytes than the
        manifest pins, does not open (signature, sha256, schema), or belongs
        to another partition or group: the set is incomplete or forged.
    """
    where = f"checkpoint of partition {manifest.partition} (seq {manifest.seq})"
    chunks: list[Chunk] = []
    for ref in manifest.chunks:
        got = found.get(ref.offset)
        if got is None:
            raise CheckpointError(f"incomplete {where}: chunk {ref.key} at offset {ref.offset} is missing")
        key, payload = got
        if key != ref.key or payload_digest(payload) != ref.sha256:
            raise CheckpointError(f"incomplete {where}: chunk {ref.key} at offset {ref.offset} differs")
        chunk = open_chunk(payload)
        if (chunk.partition, chunk.group) != (manifest.partition, ref.group) or chunk.seq > manifest.seq:
            raise CheckpointError(f"{where}: chunk at offset {ref.offset} belongs to another checkpoint")
        if len(chunk.records) != ref.devices:
            raise CheckpointError(f"{where}: chunk at offset {ref.offset} holds other devices")
        chunks.append(chunk)
    return Checkpoint(manifest, chunks)


def decode_legacy(payload: bytes) -> Checkpoint:
    """A one-message checkpoint of an earlier version, as a checkpoint whose chunks are not on the topic yet.

    Its manifest names no chunk: the worker that restores it writes every
    group again at its next checkpoint (:meth:`pipeline.chunk_layout.ChunkLayout.adopt`).
    :class:`CheckpointError` on any problem.
    """
    tensors, h = _decode(LEGACY_SCHEMA, payload)
    try:
        partition, offset = int(h["partition"]), int(h["offset"])
        worker, records = split_export(tensors, dict(h["info"]))
        versions = {str(k): int(v) for k, v in h["versions"].items()}
        readings = {str(k): int(v) for k, v in h["readings"].items()}
        drift_at = {str(k): float(v) for k, v in h["drift_at"].items()}
        manifest = Manifest(partition, offset, 0, worker, [], str(h["writer"]), float(h["created_at"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"bad checkpoint header: {exc}") from exc
    ids = list(records)
    chunks = []
    for g, start in enumerate(range(0, len(ids), LEGACY_DEVICES_PER_CHUNK)):
        own = ids[start : start + LEGACY_DEVICES_PER_CHUNK]
        chunks.append(
            Chunk(
                partition,
                g,
                0,
                {d: records[d] for d in own},
                versions={d: versions[d] for d in own if d in versions},
                readings={d: readings[d] for d in own if d in readings},
                drift_at={d: drift_at[d] for d in own if d in drift_at},
            )
        )
    return Checkpoint(manifest, chunks)
