"""Typed events and messages: each round-trips, and its bytes are the ones consumers have always read."""

from __future__ import annotations

import math

import pytest

from connectors.settings import Settings
from pipeline.outgoing import Outgoing, to_records
from wire.events import (
    EVENT_TYPES,
    AdaptationRejected,
    AdaptationResult,
    Adapted,
    Drift,
    Event,
    EventError,
    Evicted,
    PrivacyBudgetExhausted,
    ThetaRefused,
    decode_event,
    encode_event,
)
from wire.messages import Contribution, ModelUpdate, ThetaVersion
from wire.readings import DeadLetter, Rejected

# One fixed example of each event, with the bytes the worker wrote for it before events were typed
# (encode_event(kind, **fields) with the fields in the order the worker core passed them).
EXAMPLES: list[tuple[Event, bytes]] = [
    (
        Drift("greenhouse-7", ts=1732540000.5, meta_version=3),
        b'{"v":1,"type":"drift","device_id":"greenhouse-7","ts":1732540000.5,"meta_version":3}',
    ),
    (
        Adapted("greenhouse-7", model_version=4, cause="drift", ts=1732540000.75, meta_version=3),
        b'{"v":1,"type":"adapted","device_id":"greenhouse-7","model_version":4,"cause":"drift",'
        b'"ts":1732540000.75,"meta_version":3}',
    ),
    (
        AdaptationResult(
            "greenhouse-7", model_version=4, error_before=0.8125, error_after=0.21875, readings=30
        ),
        b'{"v":1,"type":"adaptation_result","device_id":"greenhouse-7","model_version":4,'
        b'"error_before":0.8125,"error_after":0.21875,"readings":30}',
    ),
    (
        AdaptationRejected(
            "greenhouse-7",
            cause="new_device",
            current_loss=0.5,
            adapted_loss=0.75,
            held_back=6,
            model_version=2,
            ts=1732540001.0,
            meta_version=3,
        ),
        b'{"v":1,"type":"adaptation_rejected","device_id":"greenhouse-7","cause":"new_device",'
        b'"current_loss":0.5,"adapted_loss":0.75,"held_back":6,"model_version":2,"ts":1732540001.0,'
        b'"meta_version":3}',
    ),
    (
        Evicted(devices=12, resident=1000, stored=12, max_devices=1000, ts=1732540002.0),
        b'{"v":1,"type":"evicted","devices":12,"resident":1000,"stored":12,"max_devices":1000,'
        b'"ts":1732540002.0}',
    ),
    (
        ThetaRefused(
            reason="worse_on_held_back",
            current_loss=0.25,
            candidate_loss=0.5,
            devices=4,
            held_back=48,
            source="edge:greenhouse-7",
            meta_version=9,
            ts=1732540003.0,
        ),
        b'{"v":1,"type":"theta_refused","reason":"worse_on_held_back","current_loss":0.25,'
        b'"candidate_loss":0.5,"devices":4,"held_back":48,"source":"edge:greenhouse-7","meta_version":9,'
        b'"ts":1732540003.0}',
    ),
    (
        PrivacyBudgetExhausted("dev-9", contributions=4, epsilon=1.5, budget=2.0, delta=1e-05),
        b'{"v":1,"type":"privacy_budget_exhausted","device_id":"dev-9","contributions":4,"epsilon":1.5,'
        b'"budget":2.0,"delta":1e-05}',
    ),
]


def test_every_event_type_has_an_example() -> None:
    assert sorted(type(e).kind for e, _ in EXAMPLES) == sorted(EVENT_TYPES)


@pytest.mark.parametrize(("event", "wire"), EXAMPLES, ids=[type(e).kind for e, _ in EXAMPLES])
def test_encoding_is_byte_for_byte_the_format_consumers_read(event: Event, wire: bytes) -> None:
    # Execute / Assert
    assert encode_event(event) == wire


@pytest.mark.parametrize(("event", "wire"), EXAMPLES, ids=[type(e).kind for e, _ in EXAMPLES])
def test_each_event_round_trips(event: Event, wire: bytes) -> None:
    # Execute
    back = decode_event(encode_event(event))
    # Assert
    assert back == event and type(back) is type(event)
    assert decode_event(wire) == event


def test_non_finite_losses_are_written_as_null_and_read_as_nan() -> None:
    # Prepare: what the worker wrote for a guard refusal whose adapted loss was NaN
    wire = (
        b'{"v":1,"type":"adaptation_rejected","device_id":"greenhouse-7","cause":"new_device",'
        b'"current_loss":0.5,"adapted_loss":null,"held_back":6,"model_version":2,"ts":1732540001.0,'
        b'"meta_version":3}'
    )
    event = AdaptationRejected("greenhouse-7", "new_device", 0.5, math.nan, 6, 2, 1732540001.0, 3)
    refused = ThetaRefused("worse", 0.25, math.inf, 4, 48, "worker:w", 9, 3.0)
    # Execute
    encoded = encode_event(event)
    back = decode_event(encoded)
    # Assert
    assert encoded == wire
    assert isinstance(back, AdaptationRejected) and math.isnan(back.adapted_loss) and back.current_loss == 0.5
    assert b'"candidate_loss":null' in encode_event(refused)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"v":2,"type":"drift","device_id":"d","ts":1.0,"meta_version":0}', "v=2"),
        (b'{"v":1,"type":"party"}', "unknown event type"),
        (b'{"v":1,"type":"drift","device_id":"d","ts":1.0}', "without 'meta_version'"),
    ],
)
def test_bytes_that_are_no_event_are_refused_with_a_reason(raw: bytes, message: str) -> None:
    with pytest.raises(EventError, match=message):
        decode_event(raw)


def test_records_carry_the_topics_keys_and_headers_consumers_read() -> None:
    # Prepare: one message of every other kind the core returns
    s = Settings()
    letter = DeadLetter.of(Rejected("bad_target", "y must be a number", b"{}", "d7"), s.topic_readings, 0, 9)
    refused = ThetaRefused("non_finite", 0.5, math.nan, 0, 0, "worker:w1", 5, 12.0)
    messages = [
        ModelUpdate("d1", 3, "drift", detected_at=10.0, published_at=10.25, payload=b"sealed-model"),
        Contribution("w1", b"sealed-deltas"),
        ThetaVersion(5, b"sealed-theta"),
        letter,
        Evicted(2, 10, 2, 10, 11.0),
        refused,
    ]
    # Execute
    records = to_records(s, messages)
    # Assert: as the worker core built them before messages were typed
    assert records[:4] == [
        Outgoing(
            s.topic_models,
            b"d1",
            b"sealed-model",
            [
                ("model_version", b"3"),
                ("cause", b"drift"),
                ("detected_at", b"10.0"),
                ("published_at", b"10.25"),
            ],
        ),
        Outgoing(s.topic_deltas, b"w1", b"sealed-deltas", []),
        Outgoing(s.topic_meta, b"__meta__", b"sealed-theta", [("meta_version", b"5")]),
        Outgoing(s.topic_deadletter, b"d7", letter.encode(), [("reason", b"bad_target")]),
    ]
    assert [(r.topic, r.key) for r in records[4:]] == [(s.topic_events, None), (s.topic_events, b"__meta__")]
    assert records[5].value == encode_event(refused)
