"""The reading decoder never crashes and never lets a bad value through."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.wire import MAX_ABS_VALUE, Reading, decode_readings, encode_readings

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
