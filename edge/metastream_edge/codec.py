"""Model and deltas payloads: self-describing, non-executable safetensors files, in numpy.

A model payload is a safetensors file: raw tensors plus a flat string header
carrying the schema version, device id, model version, parent meta version,
the architecture and a sha256 over tensors and header, so a device can check
and rebuild the model without pickle, torch or Faust.  A deltas payload
carries proposed changes of θ ``[n, P]`` and their weights ``[n]``.

The worker's :mod:`wire.models` converts torch tensors at its boundary and
calls these functions, so both ends write and read the same bytes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from safetensors.numpy import load, save

SCHEMA_VERSION = 1
NORM_KEYS = ("norm.x_mean", "norm.x_std", "norm.y_mean", "norm.y_std")
TASKS = ("regression", "classification")
META_KEY = "__meta__"
"""Key (and payload device id) of θ messages: θ is the model of no device."""

Arrays = dict[str, np.ndarray]


class CodecError(ValueError):
    """A payload that is not a valid model (or deltas) of a known schema."""


@dataclass(frozen=True)
class ModelHeader:
    """What a model payload says about itself.

    Examples
    --------
    >>> h = ModelHeader("dev-7", model_version=2, parent_meta_version=5, task="regression",
    ...                 n_features=8, n_outputs=1, hidden=(32,))
    >>> h.param_shapes()
    {'0.weight': (32, 8), '0.bias': (32,), '2.weight': (1, 32), '2.bias': (1,)}
    >>> h.schema_version == SCHEMA_VERSION
    True
    """

    device_id: str
    model_version: int
    parent_meta_version: int
    task: str
    n_features: int
    n_outputs: int
    hidden: tuple[int, ...]
    schema_version: int = SCHEMA_VERSION

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Weight shapes of the MLP ``n_features → hidden… → outputs`` (ReLU between), in layer order.

        Names follow the worker's ``nn.Sequential``: linear layers at even
        indices, ReLUs between them.  Regression has one output; classification
        at least two.  :class:`CodecError` for an impossible architecture.
        """
        if self.task not in TASKS:
            raise CodecError(f"bad architecture in header: unknown task {self.task!r}")
        widths = [self.n_features, *self.hidden]
        if any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
            raise CodecError(f"bad architecture in header: widths {widths} must be integers >= 1")
        if not isinstance(self.n_outputs, int):
            raise CodecError(f"bad architecture in header: n_outputs {self.n_outputs!r}")
        widths.append(1 if self.task == "regression" else max(self.n_outputs, 2))
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (w_in, w_out) in enumerate(itertools.pairwise(widths)):
            shapes[f"{2 * i}.weight"] = (w_out, w_in)
            shapes[f"{2 * i}.bias"] = (w_out,)
        return shapes


def array_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in sorted name order.

    Dtypes are spelled as torch spells them (``torch.float32``): the worker
    has always hashed torch tensors, and payloads must verify on both sides.
    """
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|torch.{a.dtype.name}|{tuple(int(n) for n in a.shape)}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def header_digest(meta: Mapping[str, str]) -> str:
    """sha256 of the string header (sorted JSON)."""
    return hashlib.sha256(json.dumps(dict(meta), sort_keys=True).encode()).hexdigest()


def read_metadata(payload: bytes) -> dict[str, str]:
    """The ``__metadata__`` mapping of a safetensors payload; :class:`ValueError` if malformed."""
    if len(payload) < 8:
        raise ValueError("payload too short")
    n = int.from_bytes(payload[:8], "little")
    if n > len(payload) - 8:
        raise ValueError("header length beyond payload")
    header = json.loads(payload[8 : 8 + n].decode())
    if not isinstance(header, dict):
        raise ValueError("header is not a mapping")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict):
        raise ValueError("metadata is not a mapping")
    return dict(meta)


def seal_arrays(arrays: Mapping[str, np.ndarray], fields: Mapping[str, Any]) -> bytes:
    """A safetensors payload of ``arrays`` whose header holds ``fields`` (JSON each) and a sha256."""
    meta = {k: json.dumps(v) for k, v in fields.items()}
    meta["sha256"] = array_digest(arrays) + ":" + header_digest(meta)
    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata=meta)


def open_arrays(payload: bytes, what: str) -> tuple[Arrays, dict[str, str]]:
    """Inverse of :func:`seal_arrays`: arrays and the string header, sha256 checked and removed.

    :class:`CodecError` names ``what`` the payload was meant to be.
    """
    try:
        arrays = load(payload)
        meta = read_metadata(payload)
    except Exception as exc:  # safetensors raises several types on hostile bytes; none may escape
        raise CodecError(f"not a safetensors {what} payload: {exc}") from exc
    digest = meta.pop("sha256", "")
    if digest != array_digest(arrays) + ":" + header_digest(meta):
        raise CodecError("sha256 mismatch: payload was altered")
    return arrays, meta


def encode_model(arrays: Mapping[str, np.ndarray], header: ModelHeader) -> bytes:
    """Serialise weights (and normalisation arrays) with their header.

    Examples
    --------
    >>> h = ModelHeader("dev-1", 3, 7, "regression", 2, 1, (4,))
    >>> arrays = {k: np.zeros(s, np.float32) for k, s in h.param_shapes().items()}
    >>> payload = encode_model(arrays, h)
    >>> back_arrays, back = decode_model(payload)
    >>> back == h, sorted(back_arrays)[:2]
    (True, ['0.bias', '0.weight'])
    >>> decode_model(payload.replace(b"dev-1", b"dev-2"))
    Traceback (most recent call last):
    ...
    metastream_edge.codec.CodecError: sha256 mismatch: payload was altered
    """
    return seal_arrays(arrays, asdict(header))


def decode_model(payload: bytes) -> tuple[Arrays, ModelHeader]:
    """Parse and verify a model payload; raises :class:`CodecError` on any problem."""
    try:
        meta = read_metadata(payload)
        version = json.loads(meta.get("schema_version", "null"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CodecError(f"not a safetensors model payload: {exc}") from exc
    if version != SCHEMA_VERSION:
        raise CodecError(f"unknown schema version {version!r}; this client reads {SCHEMA_VERSION}")
    arrays, meta = open_arrays(payload, "model")
    try:
        fields = {k: json.loads(v) for k, v in meta.items()}
        fields["hidden"] = tuple(fields["hidden"])
        header = ModelHeader(**fields)
    except (TypeError, KeyError, ValueError) as exc:
        raise CodecError(f"bad header: {exc}") from exc
    check_shapes(arrays, header)
    # Layer order, weight before bias, then normalisation: the order the worker's weights
    # are created in, so a flattened θ lines up with the meta agent's (safetensors sorts names).
    order = [*header.param_shapes(), *(k for k in NORM_KEYS if k in arrays)]
    return {k: arrays[k] for k in order}, header


def check_shapes(arrays: Mapping[str, Any], header: ModelHeader) -> None:
    """Raise :class:`CodecError` unless the weights fit the header's architecture."""
    expected = header.param_shapes()
    got = {k: tuple(v.shape) for k, v in arrays.items() if k not in NORM_KEYS}
    if got != expected:
        raise CodecError(f"weights do not match the architecture: expected {expected}, got {got}")


@dataclass(frozen=True)
class DeltaHeader:
    """Who sent proposed changes of θ, and from which θ version."""

    source: str
    base_meta_version: int
    n_params: int
    schema_version: int = SCHEMA_VERSION


def encode_deltas(deltas: np.ndarray, weights: np.ndarray, header: DeltaHeader) -> bytes:
    """Proposed θ changes ``[n, P]`` with their weights ``[n]`` (sample counts), as float32.

    Used by workers (their devices' Reptile directions) and by federated edge
    devices (``φ − θ`` of one device) alike.

    Examples
    --------
    >>> h = DeltaHeader("edge:dev-1", 3, 2)
    >>> d, w, back = decode_deltas(encode_deltas(np.ones((1, 2)), np.array([5.0]), h))
    >>> d.tolist(), w.tolist(), back == h
    ([[1.0, 1.0]], [5.0], True)
    """
    deltas, weights = np.asarray(deltas), np.asarray(weights)
    if deltas.ndim != 2 or weights.shape != (deltas.shape[0],) or deltas.shape[1] != header.n_params:
        raise CodecError(f"deltas {deltas.shape} / weights {weights.shape} do not fit the header")
    arrays = {"deltas": deltas.astype(np.float32), "weights": weights.astype(np.float32)}
    return seal_arrays(arrays, asdict(header))


def decode_deltas(payload: bytes) -> tuple[np.ndarray, np.ndarray, DeltaHeader]:
    """Parse and verify :func:`encode_deltas` output; :class:`CodecError` on any problem."""
    arrays, meta = open_arrays(payload, "deltas")
    try:
        fields = {k: json.loads(v) for k, v in meta.items()}
    except ValueError as exc:
        raise CodecError(f"not a deltas payload: {exc}") from exc
    if fields.get("schema_version") != SCHEMA_VERSION:
        raise CodecError(f"unknown schema version {fields.get('schema_version')!r}")
    try:
        header = DeltaHeader(**fields)
        deltas, weights = arrays["deltas"], arrays["weights"]
    except (TypeError, KeyError) as exc:
        raise CodecError(f"bad deltas payload: {exc}") from exc
    if deltas.ndim != 2 or deltas.shape[1] != header.n_params or weights.shape != (deltas.shape[0],):
        raise CodecError("deltas do not match their header")
    if not (np.isfinite(deltas).all() and np.isfinite(weights).all() and (weights >= 0).all()):
        raise CodecError("non-finite deltas or negative weights")
    return deltas, weights, header


__all__ = [
    "NORM_KEYS",
    "SCHEMA_VERSION",
    "CodecError",
    "DeltaHeader",
    "ModelHeader",
    "array_digest",
    "check_shapes",
    "decode_deltas",
    "decode_model",
    "encode_deltas",
    "encode_model",
    "header_digest",
    "read_metadata",
]
