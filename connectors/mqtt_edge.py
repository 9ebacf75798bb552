"""The MQTT device client, for code that imports it from the worker side.

It lives in the device package (:mod:`metastream_edge.mqtt`, numpy and
paho-mqtt, no torch); this module re-exports it.
"""

from __future__ import annotations

from metastream_edge.mqtt import QOS, TOPIC_FORBIDDEN, MqttAddress, MqttEdge, device_topic, make_client

__all__ = ["QOS", "TOPIC_FORBIDDEN", "MqttAddress", "MqttEdge", "device_topic", "make_client"]
