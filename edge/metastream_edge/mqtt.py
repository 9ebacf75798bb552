"""A device that speaks MQTT: follow its model (retained message), publish readings.

``metastream mqtt-bridge`` (:mod:`pipeline.mqtt_bridge`) keeps the newest
signed model of every device as a *retained* message on
``<prefix>/<device>/model`` and forwards what devices publish on
``<prefix>/<device>/readings`` to Kafka.  :class:`MqttEdge` is the device
side: no Kafka, no Faust; each model that arrives goes to
:meth:`metastream_edge.state.EdgeState.offer`, which verifies it and hot-swaps it in.

Part of the device package: numpy, paho-mqtt (``pip install './edge[mqtt]'``)
and the package's own state and signing code; no torch, Kafka client or Faust.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import paho.mqtt.client as mqtt

from metastream_edge.signing import Verifier
from metastream_edge.state import Decision, EdgeState

SCHEMA_VERSION = 1
"""Version of the reading JSON (the same schema as ``wire.readings``)."""


class ReadingLike(Protocol):
    """A reading as the workers take it: ``wire.readings.Reading`` is one."""

    @property
    def device_id(self) -> str: ...

    @property
    def x(self) -> Sequence[float]: ...

    @property
    def y(self) -> float: ...

    @property
    def ts(self) -> float | None: ...


def encode_readings(readings: Sequence[ReadingLike]) -> bytes:
    """One reading, or a gateway batch when there are several (byte for byte as ``wire.readings``).

    Examples
    --------
    >>> from types import SimpleNamespace as R
    >>> encode_readings([R(device_id="d1", x=(1.0, 2.0), y=3.0, ts=None)])
    b'{"v":1,"device_id":"d1","x":[1.0,2.0],"y":3.0}'
    """

    def body(r: ReadingLike) -> dict[str, Any]:
        out: dict[str, Any] = {"device_id": r.device_id, "x": list(r.x), "y": r.y}
        if r.ts is not None:
            out["ts"] = r.ts
        return out

    if len(readings) == 1:
        message: dict[str, Any] = {"v": SCHEMA_VERSION, **body(readings[0])}
    else:
        message = {"v": SCHEMA_VERSION, "readings": [body(r) for r in readings]}
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()


QOS = 1
"""At least once, both ways: readings are re-sent until the broker acknowledges them."""

TOPIC_FORBIDDEN = frozenset("/+#\0")
"""Characters a device id cannot have in an MQTT topic level."""


@dataclass(frozen=True)
class MqttAddress:
    """Where an MQTT broker listens, parsed from ``mqtt://host:port`` or ``mqtts://host:port``.

    Examples
    --------
    >>> MqttAddress.parse("mqtt://10.0.0.5:1884")
    MqttAddress(host='10.0.0.5', port=1884, tls=False)
    >>> MqttAddress.parse("mqtts://broker.example")
    MqttAddress(host='broker.example', port=8883, tls=True)
    >>> MqttAddress.parse("kafka://x:9092")
    Traceback (most recent call last):
    ...
    ValueError: MQTT broker must be mqtt://host:port or mqtts://host:port; got 'kafka://x:9092'
    """

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> MqttAddress:
        """Parse a broker URL (default ports 1883 and 8883)."""
        parts = urlsplit(url.strip())
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or port == -1:
            raise ValueError(f"MQTT broker must be mqtt://host:port or mqtts://host:port; got {url!r}")
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, port or (8883 if tls else 1883), tls)


def device_topic(prefix: str, device_id: str, kind: str) -> str:
    """``<prefix>/<device>/<kind>``; :class:`ValueError` for an id MQTT cannot carry in a topic level.

    Examples
    --------
    >>> device_topic("metastream", "greenhouse-7", "model")
    'metastream/greenhouse-7/model'
    >>> device_topic("metastream", "a/b", "readings")
    Traceback (most recent call last):
    ...
    ValueError: device id 'a/b' cannot be an MQTT topic level (no '/', '+', '#' or NUL)
    """
    if not device_id or TOPIC_FORBIDDEN & set(device_id):
        raise ValueError(f"device id {device_id!r} cannot be an MQTT topic level (no '/', '+', '#' or NUL)")
    return f"{prefix}/{device_id}/{kind}"


def make_client(
    address: MqttAddress,
    client_id: str,
    username: str = "",
    password: str = "",
    cafile: str = "",
    persistent: bool = False,
    manual_ack: bool = False,
) -> mqtt.Client:
    """A paho-mqtt (v2 callback API, MQTT 3.1.1) client, not yet connected.

    ``persistent`` asks the broker to keep the session (subscriptions and
    unacknowledged QoS 1 messages) while the client is away.
    """
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    if username:
        client.username_pw_set(username, password or None)
    if address.tls:
        client.tls_set(ca_certs=cafile or None, cert_reqs=ssl.CERT_REQUIRED)
    return client


class MqttEdge:
    """Follows the models of some devices over MQTT and publishes their readings.

    Subscribes (QoS 1) to ``<prefix>/<device>/model`` of each device; the
    broker delivers the retained newest model at once, then every new one.
    Each payload goes to :attr:`state` (an :class:`~connectors.edge.EdgeState`),
    which accepts it only if signed by a trusted key, intact, for this
    device and newer; an empty payload (a retained model cleared) is ignored.

    Parameters
    ----------
    broker : str
        ``mqtt://host:port`` or ``mqtts://host:port``.
    devices : iterable of str
        Device ids to follow.
    verifier : Verifier
        The trusted public keys.
    prefix : str
        Topic prefix (``mqtt_topic_prefix`` of the settings).
    client_id, username, password, cafile : str
        MQTT connection options; an empty ``client_id`` lets the broker pick one.

    Examples
    --------
    >>> from connectors.signing import Signer
    >>> edge = MqttEdge("mqtt://127.0.0.1:1883", ["d1"], Verifier([Signer.generate().public_key]))
    >>> edge.topics
    ['metastream/d1/model']
    >>> edge.state.versions()
    {'d1': None}
    """

    def __init__(
        self,
        broker: str,
        devices: Iterable[str],
        verifier: Verifier,
        prefix: str = "metastream",
        client_id: str = "",
        username: str = "",
        password: str = "",
        cafile: str = "",
    ) -> None:
        self.address = MqttAddress.parse(broker)
        self.prefix = prefix
        self.state = EdgeState(verifier, devices)
        if not self.state.devices:
            raise ValueError("an MQTT edge needs at least one device")
        self.topics = [device_topic(prefix, d, "model") for d in sorted(self.state.devices)]
        self._by_topic = dict(zip(self.topics, sorted(self.state.devices), strict=True))
        self._changed = threading.Condition()
        self._decisions: list[Decision] = []
        self.on_decision: Callable[[Decision], None] | None = None
        self._client = make_client(self.address, client_id, username, password, cafile)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    # paho's network thread calls these two.
    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object
    ) -> None:
        # (Re)subscribe on every connect: a clean session forgets subscriptions.
        if not getattr(rc, "is_failure", False):
            client.subscribe([(t, QOS) for t in self.topics])

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        device = self._by_topic.get(message.topic)
        if device is None or not message.payload:
            return  # not ours, or a retained model being cleared: keep the running one
        decision = self.state.offer(device, bytes(message.payload))
        with self._changed:
            self._decisions.append(decision)
            self._changed.notify_all()
        if self.on_decision is not None:
            self.on_decision(decision)

    def connect(self, timeout_s: float = 30.0) -> MqttEdge:
        """Connect and start paho's network thread; :class:`ConnectionError` if that fails."""
        connected = threading.Event()
        failure: list[str] = []

        def on_connect_fail(client: mqtt.Client, userdata: object) -> None:
            failure.append("connection failed")
            connected.set()

        def on_first_connect(
            client: mqtt.Client, userdata: object, flags: object, rc: object, props: object
        ) -> None:
            self._on_connect(client, userdata, flags, rc, props)
            if getattr(rc, "is_failure", False):
                failure.append(str(rc))
            connected.set()

        self._client.on_connect = on_first_connect
        self._client.on_connect_fail = on_connect_fail
        try:
            self._client.connect(self.address.host, self.address.port)
        except OSError as exc:
            raise ConnectionError(f"MQTT broker {self.address.host}:{self.address.port}: {exc}") from exc
        self._client.loop_start()
        if not connected.wait(timeout_s) or failure:
            self.close()
            why = failure[0] if failure else f"no answer in {timeout_s:g} s"
            raise ConnectionError(f"MQTT broker {self.address.host}:{self.address.port}: {why}")
        self._client.on_connect = self._on_connect
        return self

    def wait_for(self, until: Callable[[], bool], timeout_s: float) -> bool:
        """Block until ``until()`` holds (checked after each model) or ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not until():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    @property
    def decisions(self) -> list[Decision]:
        """Every decision so far, oldest first."""
        with self._changed:
            return list(self._decisions)

    def publish_readings(self, readings: Sequence[ReadingLike], timeout_s: float = 30.0) -> None:
        """Publish readings (QoS 1) on the topic of their first device; returns once the broker has them.

        Several readings travel as one gateway batch.  Raises :class:`TimeoutError`
        if the broker did not acknowledge in time (then publish them again).
        """
        if readings:
            self.publish_payload(readings[0].device_id, encode_readings(readings), timeout_s)

    def publish_payload(self, device_id: str, payload: bytes, timeout_s: float = 30.0) -> None:
        """Publish an encoded reading message (QoS 1) on ``<prefix>/<device_id>/readings``."""
        topic = device_topic(self.prefix, device_id, "readings")
        info = self._client.publish(topic, payload, qos=QOS)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise TimeoutError(f"the MQTT broker did not acknowledge {topic} in {timeout_s:g} s")

    def predict(self, device_id: str, x: np.ndarray) -> np.ndarray:
        """Local inference with the running model of ``device_id``."""
        return self.state.predict(device_id, x)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttEdge:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()
