"""One device's model as a self-describing, non-executable payload (safetensors), torch side.

The format lives in the torch-free :mod:`metastream_edge.codec` (numpy), which
devices use directly; this module converts torch tensors at the boundary so
workers and devices write and read the same bytes.  The header carries the
schema version, device id, model version, parent meta version, the
architecture and a sha256 over the tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from metastream_edge import codec as _np
from metastream_edge.codec import (
    META_KEY,
    NORM_KEYS,
    SCHEMA_VERSION,
    CodecError,
    DeltaHeader,
    ModelHeader,
)

__all__ = [
    "META_KEY",
    "NORM_KEYS",
    "SCHEMA_VERSION",
    "CodecError",
    "DeltaHeader",
    "ModelHeader",
    "check_shapes",
    "decode_deltas",
    "decode_model",
    "encode_deltas",
    "encode_model",
    "tensor_digest",
]


def _to_numpy(tensors: dict[str, Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().contiguous().cpu().numpy() for k, v in tensors.items()}


def _to_torch(arrays: dict[str, np.ndarray]) -> dict[str, Tensor]:
    # A copy: the decoded arrays may be read-only views of the payload.
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}


def tensor_digest(tensors: dict[str, Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in sorted name order."""
    return _np.array_digest(_to_numpy(tensors))


def encode_model(tensors: dict[str, Tensor], header: ModelHeader) -> bytes:
    """Serialise weights (and normalisation tensors) with their header.

    Examples
    --------
    >>> weights = {"0.weight": torch.zeros(4, 2), "0.bias": torch.zeros(4),
    ...            "2.weight": torch.zeros(1, 4), "2.bias": torch.zeros(1)}
    >>> h = ModelHeader("dev-1", 3, 7, "regression", 2, 1, (4,))
    >>> payload = encode_model(weights, h)
    >>> tensors, back = decode_model(payload)
    >>> back == h, list(tensors)
    (True, ['0.weight', '0.bias', '2.weight', '2.bias'])
    >>> decode_model(payload.replace(b"dev-1", b"dev-2"))
    Traceback (most recent call last):
    ...
    metastream_edge.codec.CodecError: sha256 mismatch: payload was altered
    """
    return _np.encode_model(_to_numpy(tensors), header)


def decode_model(payload: bytes) -> tuple[dict[str, Tensor], ModelHeader]:
    """Parse and verify a payload; raises :class:`CodecError` on any problem.

    Weights come in layer order (weight before bias), then the normalisation tensors.
    """
    arrays, header = _np.decode_model(payload)
    return _to_torch(arrays), header


def check_shapes(tensors: dict[str, Tensor], header: ModelHeader) -> None:
    """Raise :class:`CodecError` unless the weights fit the header's architecture."""
    _np.check_shapes(tensors, header)


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
    return _np.encode_deltas(
        deltas.detach().float().cpu().numpy(), weights.detach().float().cpu().numpy(), header
    )


def decode_deltas(payload: bytes) -> tuple[Tensor, Tensor, DeltaHeader]:
    """Parse and verify :func:`encode_deltas` output; :class:`CodecError` on any problem."""
    deltas, weights, header = _np.decode_deltas(payload)
    return torch.from_numpy(np.array(deltas)), torch.from_numpy(np.array(weights)), header
