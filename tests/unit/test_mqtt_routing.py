"""MQTT without a broker: what the bridge makes of a payload, and what a device does with a model message."""

from __future__ import annotations

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from connectors.mqtt_edge import MqttAddress, MqttEdge, device_topic
from connectors.settings import Settings
from connectors.signing import Signer, Verifier
from learners import LearnerConfig
from learners.fleet import FleetLearner
from pipeline.mqtt_bridge import route_readings
from wire.readings import DeadLetter, Reading, decode_readings, encode_readings

SETTINGS = Settings(n_features=2)
TOPIC = "metastream/gw-1/readings"


def test_a_gateway_batch_becomes_one_record_per_device_in_arrival_order() -> None:
    # Prepare
    readings = [
        Reading("b", (1.0, 2.0), 1.0),
        Reading("a", (3.0, 4.0), 2.0, ts=5.0),
        Reading("b", (5.0, 6.0), 3.0),
    ]

    # Execute
    records = route_readings(SETTINGS, TOPIC, encode_readings(readings))

    # Assert
    assert [(r.topic, r.key, r.headers) for r in records] == [
        ("metastream.readings", b"b", []),
        ("metastream.readings", b"a", []),
    ]
    assert decode_readings(records[0].value)[0] == [readings[0], readings[2]]
    assert decode_readings(records[1].value)[0] == [readings[1]]


def test_bad_readings_of_a_batch_are_dead_lettered_and_the_good_ones_still_pass() -> None:
    # Prepare
    payload = b'{"v":1,"readings":[{"device_id":"a","x":[1,2],"y":1},{"device_id":"a","x":[1],"y":1}]}'

    # Execute
    records = route_readings(SETTINGS, TOPIC, payload)

    # Assert
    good, letter = records
    assert (good.topic, good.key) == ("metastream.readings", b"a")
    assert letter.topic == "metastream.deadletter" and letter.key is None
    assert dict(letter.headers) == {"reason": b"wrong_feature_count", "mqtt_topic": TOPIC.encode()}
    decoded = DeadLetter.decode(letter.value)
    assert (decoded.reason, decoded.original, decoded.source_topic) == (
        "wrong_feature_count",
        b'{"device_id":"a","x":[1],"y":1}',
        TOPIC,
    )


def test_an_empty_batch_makes_no_record() -> None:
    assert route_readings(SETTINGS, TOPIC, b'{"v":1,"readings":[]}') == []


def test_an_oversized_payload_is_one_dead_letter_that_keeps_its_start() -> None:
    # Prepare
    payload = b"[" + b"1," * 600_000 + b"1]"

    # Execute
    [letter] = route_readings(SETTINGS, TOPIC, payload)

    # Assert
    decoded = DeadLetter.decode(letter.value)
    assert decoded.reason == "oversized" and not decoded.truncated
    assert decoded.original == payload


@pytest.mark.parametrize("device", ["a/b", "a+", "#", ""])
def test_device_ids_mqtt_cannot_carry_are_refused(device: str) -> None:
    with pytest.raises(ValueError, match="cannot be an MQTT topic level"):
        device_topic("metastream", device, "model")


@pytest.mark.parametrize("url", ["kafka://x:9092", "mqtt://", "mqtt://host:notaport", "host:1883"])
def test_bad_mqtt_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="mqtt://host:port"):
        MqttAddress.parse(url)


def model_message(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(topic=topic.encode())
    message.payload = payload
    return message


def test_a_device_verifies_its_model_and_ignores_cleared_and_foreign_topics() -> None:
    # Prepare: a device that is not connected (the callbacks are what paho would call)
    signer = Signer.generate()
    fleet = FleetLearner(LearnerConfig(n_features=2))
    fleet.learn_predict(["d1", "d1"], np.ones((2, 2)), np.ones(2))
    edge = MqttEdge("mqtt://127.0.0.1:1", ["d1"], Verifier([signer.public_key]))

    # Execute
    edge._on_message(
        edge._client, None, model_message("metastream/d1/model", signer.seal(fleet.export("d1", 2)))
    )
    edge._on_message(edge._client, None, model_message("metastream/d1/model", b""))  # retained model cleared
    edge._on_message(edge._client, None, model_message("metastream/d2/model", b"anything"))
    stranger = Signer.generate().seal(fleet.export("d1", 3))
    edge._on_message(edge._client, None, model_message("metastream/d1/model", stranger))

    # Assert: v2 runs; the stranger's v3 was refused; the rest never reached the checks
    assert [str(d) for d in edge.decisions] == ["d1 v2 accepted", "d1 v? refused unknown_key"]
    assert edge.state.version("d1") == 2
    assert edge.predict("d1", np.ones((1, 2))).shape == (1,)
