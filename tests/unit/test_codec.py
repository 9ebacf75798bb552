"""Model payloads: round trip, integrity, and refusal of anything else."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learners import LearnerConfig
from learners.nets import init_params
from wire.models import CodecError, ModelHeader, decode_model, encode_model

CFG = LearnerConfig(n_features=3, hidden=(5,))
HEADER = ModelHeader("dev-7", 4, 2, "regression", 3, 1, (5,))


def test_round_trip_keeps_every_bit() -> None:
    # Prepare
    params = init_params(CFG, seed=3)
    # Execute
    tensors, header = decode_model(encode_model(params, HEADER))
    # Assert
    assert header == HEADER
    assert all(torch.equal(tensors[k], params[k]) for k in params)


def test_payload_is_not_pickle() -> None:
    payload = encode_model(init_params(CFG), HEADER)
    assert not payload.startswith(b"\x80")  # pickle protocol marker
    n = int.from_bytes(payload[:8], "little")
    assert json.loads(payload[8 : 8 + n])["__metadata__"]["device_id"] == '"dev-7"'


def test_tampered_weights_are_refused() -> None:
    payload = bytearray(encode_model(init_params(CFG), HEADER))
    payload[-1] ^= 0x01
    with pytest.raises(CodecError, match="sha256 mismatch"):
        decode_model(bytes(payload))


def test_wrong_shape_is_refused() -> None:
    wrong = ModelHeader("dev-7", 4, 2, "regression", 3, 1, (6,))
    with pytest.raises(CodecError, match="do not match the architecture"):
        decode_model(encode_model(init_params(CFG), wrong))


def test_unknown_schema_version_is_refused() -> None:
    future = ModelHeader("dev-7", 4, 2, "regression", 3, 1, (5,), schema_version=99)
    with pytest.raises(CodecError, match="unknown schema version 99"):
        decode_model(encode_model(init_params(CFG), future))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_decode_and_never_crash(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_model(data)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=4000), st.integers(min_value=0, max_value=255))
def test_any_single_byte_change_is_refused_or_harmless(position: int, value: int) -> None:
    # Prepare
    payload = bytearray(encode_model(init_params(CFG), HEADER))
    position %= len(payload)
    changed = payload[position] != value
    payload[position] = value
    # Execute / Assert: either refused, or (unchanged byte / JSON whitespace) identical content
    try:
        tensors, header = decode_model(bytes(payload))
    except CodecError:
        return
    assert header == HEADER or not changed
    original = init_params(CFG)
    assert all(torch.equal(tensors[k], original[k]) for k in original)
