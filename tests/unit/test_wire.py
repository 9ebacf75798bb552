"""The reading decoder never crashes and never lets a bad value through."""

from __future__ import annotations

import hashlib
import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.wire import (
    MAX_ABS_VALUE,
    MAX_DEAD_LETTER_BYTES,
    MAX_MESSAGE_BYTES,
    DeadLetter,
    Reading,
    Rejected,
    decode_readings,
    encode_readings,
)

REASONS = {
    "oversized",
    "malformed_json",
    "not_an_object",
    "unknown_schema_version",
    "bad_device_id",
    "bad_features",
    "wrong_feature_count",
    "non_finite",
    "out_of_range",
    "bad_target",
    "bad_timestamp",
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)


def check(raw: bytes) -> None:
    good, bad = decode_readings(raw, n_features=3)
    for r in good:
        assert r.device_id.strip() and len(r.x) == 3
        assert all(math.isfinite(v) and abs(v) <= MAX_ABS_VALUE for v in (*r.x, r.y))
    for b in bad:
        assert b.reason in REASONS and isinstance(b.original, bytes)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(raw: bytes) -> None:
    check(raw)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "v": st.sampled_from([1, 1, 2, None]),
            "device_id": json_values,
            "x": json_values | st.lists(st.floats() | st.integers(), max_size=4),
            "y": json_values,
        }
    )
)
def test_structured_but_wrong(body: dict[str, object]) -> None:
    check(json.dumps(body).encode())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=8).filter(str.strip),
            st.lists(st.floats(-1e6, 1e6), min_size=3, max_size=3),
            st.floats(-1e6, 1e6),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_valid_readings_round_trip(rows: list[tuple[str, list[float], float]]) -> None:
    readings = [Reading(d, tuple(x), y) for d, x, y in rows]
    good, bad = decode_readings(encode_readings(readings), n_features=3)
    assert bad == [] and good == readings


def test_huge_values_beyond_a_configurable_bound_are_out_of_range() -> None:
    raw = b'{"v":1,"device_id":"d","x":[1,2,-5000],"y":1}'
    assert decode_readings(raw, n_features=3)[0][0].x == (1.0, 2.0, -5000.0)  # default bound 1e9
    ok, bad = decode_readings(raw, n_features=3, max_abs=1000.0)
    assert ok == [] and [(b.reason, b.original) for b in bad] == [("out_of_range", raw)]


def test_a_message_without_a_schema_version_is_refused() -> None:
    raw = b'{"device_id":"d","x":[1,2,3],"y":1}'
    ok, bad = decode_readings(raw, n_features=3)
    assert ok == [] and [(b.reason, b.detail) for b in bad] == [
        ("unknown_schema_version", "v=None, expected 1")
    ]


def test_an_oversized_record_fits_its_dead_letter_whole() -> None:
    # Prepare: as large as a default broker delivers (message.max.bytes = 1,048,588)
    raw = b"y" * 1_048_588
    (rejected,) = decode_readings(raw)[1]
    # Execute
    letter = DeadLetter.of(rejected, "readings", 0, 7)
    # Assert
    assert rejected.reason == "oversized" and len(raw) > MAX_MESSAGE_BYTES
    assert not letter.truncated and letter.original == raw
    assert len(letter.encode()) <= MAX_DEAD_LETTER_BYTES
    assert DeadLetter.decode(letter.encode()) == letter


def test_a_record_too_large_for_any_dead_letter_is_cut_and_named_by_its_hash() -> None:
    # Prepare
    raw = bytes(range(256)) * 10_000  # 2.56 MB: more than a dead letter may carry
    # Execute
    letter = DeadLetter.of(Rejected("oversized", "too big", raw), "readings", 1, 3)
    # Assert
    encoded = letter.encode()
    assert len(encoded) <= MAX_DEAD_LETTER_BYTES and letter.truncated
    assert raw.startswith(letter.original) and len(letter.original) > MAX_DEAD_LETTER_BYTES // 2
    assert f"of {len(raw)} bytes" in letter.detail
    assert hashlib.sha256(raw).hexdigest() in letter.detail
    assert DeadLetter.decode(encoded) == letter
