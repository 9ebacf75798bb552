"""The reading decoder never crashes and never lets a bad value through."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hostile_json import as_message, hostile_message, hostile_reading
from wire.readings import (
    MAX_ABS_VALUE,
    MAX_DEAD_LETTER_BYTES,
    MAX_DEVICE_ID,
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
    "number_too_large",
    "undecodable",
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
        r.device_id.encode()  # a key every client can write
    for b in bad:
        assert b.reason in REASONS and isinstance(b.original, bytes)
        assert len(b.detail) <= 200
        if b.device_id is not None:
            assert b.device_id.strip() and len(b.device_id) <= MAX_DEVICE_ID
            b.device_id.encode()


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


def test_a_5000_digit_integer_is_refused_alone_and_named_by_its_device() -> None:
    # Prepare: the user's reading, between two good ones of a gateway batch
    huge = "9" * 5000
    raw = (
        '{"v":1,"readings":[{"device_id":"a","x":[1,2,3],"y":1},'
        f'{{"device_id":"sensor-9","x":[1,{huge},3],"y":1}},'
        '{"device_id":"b","x":[4,5,6],"y":2}]}'
    ).encode()
    # Execute
    good, bad = decode_readings(raw, n_features=3)
    # Assert
    assert [r.device_id for r in good] == ["a", "b"]
    assert [(b.reason, b.detail, b.device_id, b.original) for b in bad] == [
        ("number_too_large", "an integer of 5000 digits (at most 4300)", "sensor-9", raw)
    ]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('"x":[1,2,3],"y":-{big}', "number_too_large"),
        ('"x":[1,2,3],"y":1,"ts":{big}', "number_too_large"),
        ('"x":[1,2,3],"y":1,"ts":{int400}', "bad_timestamp"),
        ('"x":[1,2,3],"y":1,"ts":-{int400}', "bad_timestamp"),
    ],
)
def test_integers_too_large_in_any_field_are_refused_with_the_device(body: str, reason: str) -> None:
    raw = ('{"v":1,"device_id":"d1",' + body.format(big="1" * 4301, int400="2" * 400) + "}").encode()
    good, bad = decode_readings(raw, n_features=3)
    assert good == [] and [(b.reason, b.device_id, b.original) for b in bad] == [(reason, "d1", raw)]


def test_a_huge_integer_in_a_field_nobody_reads_does_not_refuse_the_reading() -> None:
    raw = ('{"v":1,"device_id":"d1","x":[1,2,3],"y":1,"note":' + "5" * 6000 + "}").encode()
    assert decode_readings(raw, n_features=3) == ([Reading("d1", (1.0, 2.0, 3.0), 1.0)], [])


def test_a_device_id_with_a_lone_surrogate_is_refused() -> None:
    raw = b'{"v":1,"device_id":"dev-\\ud800","x":[1,2,3],"y":1}'
    good, bad = decode_readings(raw, n_features=3)
    assert good == [] and [(b.reason, b.device_id) for b in bad] == [("bad_device_id", None)]


def test_unparseable_records_are_keyed_by_the_one_device_they_name() -> None:
    truncated = b'{"v":1,"device_id":"dev-3","x":[1,2'
    two = b'{"v":1,"readings":[{"device_id":"a","x":[1]},{"device_id":"b"'
    assert [b.device_id for b in decode_readings(truncated)[1]] == ["dev-3"]
    assert [b.device_id for b in decode_readings(two)[1]] == [None]
    assert [b.device_id for b in decode_readings(b"[" * 100_000)[1]] == [None]


def test_a_failure_the_checks_did_not_foresee_is_undecodable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a check that raises (standing in for any gap in the validation)
    import wire.readings as wire

    def broken(*args: object) -> object:
        raise ArithmeticError("a gap in the checks")

    monkeypatch.setattr(wire, "_reading", broken)
    raw = b'{"v":1,"readings":[{"device_id":"a","x":[1,2,3],"y":1}]}'
    # Execute
    good, bad = decode_readings(raw, n_features=3)
    # Assert
    assert good == []
    assert [(b.reason, b.detail, b.device_id) for b in bad] == [
        ("undecodable", "ArithmeticError: a gap in the checks", "a")
    ]


@settings(max_examples=300, deadline=None)
@given(hostile_message(n_features=3))
def test_hostile_messages_never_raise(raw: bytes) -> None:
    check(raw)


@settings(max_examples=200, deadline=None)
@given(hostile_message(n_features=3, where_in=("x", "y", "ts")))
def test_a_hostile_value_in_x_y_or_ts_refuses_the_reading(raw: bytes) -> None:
    good, bad = decode_readings(raw, n_features=3)
    assert good == [] and len(bad) == 1 and bad[0].original == raw
    assert bad[0].device_id in (None, "hostile", *(f"hostile-{i}" for i in range(10)))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), hostile_reading(n_features=3, where_in=("x", "y", "ts"))), max_size=6)
)
def test_in_a_gateway_batch_only_the_hostile_readings_are_refused(
    items: list[tuple[bool, tuple[str, str]]],
) -> None:
    # Prepare: good readings where the flag says so, hostile ones elsewhere
    texts = [
        f'{{"device_id":"good-{i}","x":[{i},1,2],"y":0.5}}' if ok else hostile
        for i, (ok, (hostile, _)) in enumerate(items)
    ]
    raw = ('{"v":1,"readings":[' + ",".join(texts) + "]}").encode(errors="surrogatepass")
    # Execute
    good, bad = decode_readings(raw, n_features=3)
    # Assert: unless the whole message is unreadable (deep nesting, invalid UTF-8), only the bad go
    whole = len(bad) == 1 and bad[0].reason in ("malformed_json", "oversized") and bad[0].original == raw
    if not whole:
        assert [r.device_id for r in good] == [f"good-{i}" for i, (ok, _) in enumerate(items) if ok]
        assert len(bad) == sum(not ok for ok, _ in items)
    check(raw)


def test_as_message_adds_the_schema_version() -> None:
    assert as_message('{"device_id":"d","x":[1,2,3],"y":1}') == b'{"v":1,"device_id":"d","x":[1,2,3],"y":1}'
