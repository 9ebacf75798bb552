"""One device's model as a self-describing, non-executable payload (safetensors).

The payload is a safetensors file: raw tensors plus a flat string header.
The header carries the schema version, device id, model version, parent
meta version, the architecture and a sha256 over the tensors, so an edge
device can check and rebuild the model without pickle and without Faust.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from learners.config import LearnerConfig
from learners.nets import init_params

SCHEMA_VERSION = 1
NORM_KEYS = ("norm.x_mean", "norm.x_std", "norm.y_mean", "norm.y_std")


class CodecError(ValueError):
    """A payload that is not a valid model of a known schema."""


@dataclass(frozen=True)
class ModelHeader:
    """What a model payload says about itself.

    Examples
    --------
    >>> h = ModelHeader("dev-7", model_version=2, parent_meta_version=5, task="regression",
    ...                 n_features=8, n_outputs=1, hidden=(32,))
    >>> cfg = h.config()
    >>> cfg.n_features, cfg.hidden, h.schema_version == SCHEMA_VERSION
    (8, (32,), True)
    """

    device_id: str
    model_version: int
    parent_meta_version: int
    task: str
    n_features: int
    n_outputs: int
    hidden: tuple[int, ...]
    schema_version: int = SCHEMA_VERSION

    def config(self) -> LearnerConfig:
        """A config with this model's architecture."""
        n_classes = max(self.n_outputs, 2)
        return LearnerConfig(
            n_features=self.n_features,
            task=self.task,  # type: ignore[arg-type]  # checked by LearnerConfig
            n_classes=n_classes,
            hidden=self.hidden,
        )


def tensor_digest(tensors: dict[str, Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def encode_model(tensors: dict[str, Tensor], header: ModelHeader) -> bytes:
    """Serialise weights (and normalisation tensors) with their header.

    Examples
    --------
    >>> cfg = LearnerConfig(n_features=2, hidden=(4,))
    >>> h = ModelHeader("dev-1", 3, 7, "regression", 2, 1, (4,))
    >>> payload = encode_model(init_params(cfg), h)
    >>> tensors, back = decode_model(payload)
    >>> back == h, sorted(tensors)[:2]
    (True, ['0.bias', '0.weight'])
    >>> decode_model(payload.replace(b"dev-1", b"dev-2"))
    Traceback (most recent call last):
    ...
    learners.codec.CodecError: sha256 mismatch: payload was altered
    """
    meta = {k: json.dumps(v) for k, v in asdict(header).items()}
    meta["sha256"] = tensor_digest(tensors) + ":" + _header_digest(meta)
    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)


def decode_model(payload: bytes) -> tuple[dict[str, Tensor], ModelHeader]:
    """Parse and verify a payload; raises :class:`CodecError` on any problem."""
    try:
        tensors = load(payload)
        meta = _metadata(payload)
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CodecError(f"not a safetensors model payload: {exc}") from exc
    try:
        version = json.loads(meta.get("schema_version", "null"))
    except json.JSONDecodeError as exc:
        raise CodecError("bad schema_version") from exc
    if version != SCHEMA_VERSION:
        raise CodecError(f"unknown schema version {version!r}; this client reads {SCHEMA_VERSION}")
    digest = meta.pop("sha256", "")
    if digest != tensor_digest(tensors) + ":" + _header_digest(meta):
        raise CodecError("sha256 mismatch: payload was altered")
    try:
        fields = {k: json.loads(v) for k, v in meta.items()}
        fields["hidden"] = tuple(fields["hidden"])
        header = ModelHeader(**fields)
    except (TypeError, KeyError, json.JSONDecodeError) as exc:
        raise CodecError(f"bad header: {exc}") from exc
    check_shapes(tensors, header)
    return tensors, header


def check_shapes(tensors: dict[str, Tensor], header: ModelHeader) -> None:
    """Raise :class:`CodecError` unless the weights fit the header's architecture."""
    try:
        expected = {k: tuple(v.shape) for k, v in init_params(header.config()).items()}
    except (ValueError, TypeError) as exc:
        raise CodecError(f"bad architecture in header: {exc}") from exc
    got = {k: tuple(v.shape) for k, v in tensors.items() if k not in NORM_KEYS}
    if got != expected:
        raise CodecError(f"weights do not match the architecture: expected {expected}, got {got}")


def _header_digest(meta: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _metadata(payload: bytes) -> dict[str, str]:
    if len(payload) < 8:
        raise ValueError("payload too short")
    n = int.from_bytes(payload[:8], "little")
    if n > len(payload) - 8:
        raise ValueError("header length beyond payload")
    header = json.loads(payload[8 : 8 + n].decode())
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a mapping")
    return dict(meta)


__all__ = ["SCHEMA_VERSION", "CodecError", "ModelHeader", "decode_model", "encode_model"]


@dataclass(frozen=True)
class DeltaHeader:
    """Who sent proposed changes of θ, and from which θ version."""

    source: str
    base_meta_version: int
    n_params: int
    schema_version: int = SCHEMA_VERSION


def encode_deltas(deltas: Tensor, weights: Tensor, header: DeltaHeader) -> bytes:
    """Proposed θ changes ``[n, P]`` with their weights ``[n]`` (sample counts).

    Used by workers (their devices' Reptile directions) and by federated edge
    devices (``φ − θ`` of one device) alike.

    Examples
    --------
    >>> h = DeltaHeader("edge:dev-1", 3, 2)
    >>> d, w, back = decode_deltas(encode_deltas(torch.ones(1, 2), torch.tensor([5.0]), h))
    >>> d.tolist(), w.tolist(), back == h
    ([[1.0, 1.0]], [5.0], True)
    """
    if deltas.dim() != 2 or weights.shape != (deltas.shape[0],) or deltas.shape[1] != header.n_params:
        raise CodecError(
            f"deltas {tuple(deltas.shape)} / weights {tuple(weights.shape)} do not fit the header"
        )
    tensors = {
        "deltas": deltas.detach().float().contiguous(),
        "weights": weights.detach().float().contiguous(),
    }
    meta = {k: json.dumps(v) for k, v in asdict(header).items()}
    meta["sha256"] = tensor_digest(tensors) + ":" + _header_digest(meta)
    return save(tensors, metadata=meta)


def decode_deltas(payload: bytes) -> tuple[Tensor, Tensor, DeltaHeader]:
    """Parse and verify :func:`encode_deltas` output; :class:`CodecError` on any problem."""
    try:
        tensors = load(payload)
        meta = _metadata(payload)
        digest = meta.pop("sha256", "")
        fields = {k: json.loads(v) for k, v in meta.items()}
    except (SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CodecError(f"not a deltas payload: {exc}") from exc
    if fields.get("schema_version") != SCHEMA_VERSION:
        raise CodecError(f"unknown schema version {fields.get('schema_version')!r}")
    if digest != tensor_digest(tensors) + ":" + _header_digest(meta):
        raise CodecError("sha256 mismatch: payload was altered")
    try:
        header = DeltaHeader(**fields)
        deltas, weights = tensors["deltas"], tensors["weights"]
    except (TypeError, KeyError) as exc:
        raise CodecError(f"bad deltas payload: {exc}") from exc
    if deltas.dim() != 2 or deltas.shape[1] != header.n_params or weights.shape != (deltas.shape[0],):
        raise CodecError("deltas do not match their header")
    if not (torch.isfinite(deltas).all() and torch.isfinite(weights).all() and (weights >= 0).all()):
        raise CodecError("non-finite deltas or negative weights")
    return deltas, weights, header
