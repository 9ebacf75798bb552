"""``metastream mqtt-bridge``: devices that speak MQTT, on a Kafka pipeline.

Two directions, one process:

* **readings in**: what a device publishes on ``<prefix>/<device>/readings``
  (a reading or a gateway batch, :mod:`wire.readings`) is validated like
  the workers validate Kafka records; good readings go to the readings
  topic keyed by their device id, bad ones to the dead-letter topic with a
  reason, the original bytes and the MQTT topic as ``source_topic``.
* **models out**: every signed model on the models topic is published as
  a *retained* message on ``<prefix>/<device>/model``, so a device that
  connects later still gets its newest model at once.  At start-up the
  bridge reads the compacted models topic from the beginning and publishes
  only the newest model of each device; after that, each one as it comes.
  It does the same again when it reconnects to an MQTT broker that forgot
  its session (a restart without persistence loses the retained messages too).

Delivery guarantee (readings): at least once.  The bridge subscribes with
QoS 1 on a persistent MQTT session and acknowledges an MQTT message only
after Kafka acknowledged (``acks=all``) every record made from it.  If Kafka
refuses, the bridge stops without acknowledging; the MQTT broker keeps the
message in the bridge's session and delivers it again when the bridge
reconnects with the same client id.  A reading can thus reach Kafka twice,
never zero times once the MQTT broker acknowledged it to the device.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from kafka import KafkaProducer, TopicPartition

from connectors import kafka_python_fix
from connectors.admin import ensure_topics
from connectors.closing import ClosesOnExit
from connectors.mqtt_edge import QOS, MqttAddress, device_topic, make_client
from connectors.settings import Settings
from connectors.topic_reader import topic_reader
from pipeline.outgoing import Outgoing
from wire.readings import MAX_DEAD_LETTER_BYTES, DeadLetter, Reading, decode_readings, encode_readings

log = logging.getLogger(__name__)


def readings_subscription(prefix: str) -> str:
    """The MQTT topic filter of every device's readings.

    Examples
    --------
    >>> readings_subscription("metastream")
    'metastream/+/readings'
    """
    return f"{prefix}/+/readings"


def route_readings(settings: Settings, mqtt_topic: str, payload: bytes) -> list[Outgoing]:
    """The Kafka records one MQTT readings message becomes (never raises on bad input).

    Good readings are grouped per device, in arrival order, into one record
    keyed by the device id (so they land on the partition of that device);
    each refused reading becomes a dead letter whose ``source_topic`` is the
    MQTT topic.  The device id inside each reading is the one that counts:
    a gateway may publish readings of several devices on its own topic.

    Examples
    --------
    >>> s = Settings(n_features=2)
    >>> good = encode_readings([Reading("a", (1.0, 2.0), 3.0), Reading("b", (1.0, 1.0), 0.0)])
    >>> [(r.topic, r.key) for r in route_readings(s, "metastream/gw-1/readings", good)]
    [('metastream.readings', b'a'), ('metastream.readings', b'b')]
    >>> [letter] = route_readings(s, "metastream/d1/readings", b"{not json")
    >>> letter.topic, letter.headers[0], DeadLetter.decode(letter.value).source_topic
    ('metastream.deadletter', ('reason', b'malformed_json'), 'metastream/d1/readings')
    """
    good, bad = decode_readings(payload, settings.n_features, settings.max_abs_value)
    by_device: dict[str, list[Reading]] = {}
    for reading in good:
        by_device.setdefault(reading.device_id, []).append(reading)
    records = [
        Outgoing(settings.topic_readings, device.encode(), encode_readings(readings), [])
        for device, readings in by_device.items()
    ]
    for rejected in bad:
        letter = DeadLetter.of(rejected, mqtt_topic)
        headers = [("reason", rejected.reason.encode()), ("mqtt_topic", mqtt_topic.encode())]
        records.append(Outgoing(settings.topic_deadletter, None, letter.encode(), headers))
    return records


class _Pending:
    """An MQTT message waiting for Kafka's acknowledgement of each of its records."""

    def __init__(self, left: int, done: Callable[[], None]) -> None:
        self._left = left
        self._done = done
        self._lock = threading.Lock()

    def one_acked(self, _: object = None) -> None:
        with self._lock:
            self._left -= 1
            finished = self._left == 0
        if finished:
            self._done()


class MqttBridge(ClosesOnExit):
    """Forwards MQTT readings to Kafka and Kafka models to retained MQTT messages.

    Parameters
    ----------
    settings : Settings
        Kafka broker and topics, and the ``mqtt_*`` settings.
    linger_ms : int
        How long the Kafka producer waits to fill a batch.

    Attributes
    ----------
    stats : collections.Counter
        ``mqtt_messages``, ``records`` (reading records sent), ``dead_letters``, ``acked``,
        ``models_published``, ``models_cleared``, ``models_unroutable``.
    """

    def __init__(self, settings: Settings, linger_ms: int = 5) -> None:
        self.settings = settings
        self.prefix = settings.mqtt_topic_prefix.strip("/")
        if not self.prefix or set("+#") & set(self.prefix):
            raise ValueError(
                f"mqtt_topic_prefix must be a plain topic prefix; got {settings.mqtt_topic_prefix!r}"
            )
        self.address = MqttAddress.parse(settings.mqtt_broker)
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        self._catching_up = True
        self._newest: dict[str, bytes | None] = {}
        ensure_topics(settings)
        security = settings.kafka_python_security()
        kafka_python_fix.apply()
        self._producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap,
            client_id=f"{settings.app_id}-mqtt-bridge",
            acks="all",
            linger_ms=linger_ms,
            # One request in flight: a retried batch cannot overtake the next one of the same device.
            max_in_flight_requests_per_connection=1,
            max_request_size=MAX_DEAD_LETTER_BYTES + 64 * 1024,
            **security,
        )
        self._consumer = topic_reader(settings, "mqtt-bridge", auto_offset_reset="earliest")
        self._connected = threading.Event()
        self._connects = 0
        self._republish = threading.Event()
        self._mqtt = make_client(
            self.address,
            settings.mqtt_client_id or f"{settings.app_id}-mqtt-bridge",
            settings.mqtt_username,
            settings.mqtt_password,
            settings.mqtt_cafile,
            persistent=True,
            manual_ack=True,
        )
        self._mqtt.on_connect = self._on_connect
        self._mqtt.on_disconnect = self._on_disconnect
        self._mqtt.on_message = self._on_message
        try:
            self._assign_models()
        except BaseException:
            self._producer.close()
            self._consumer.close()
            raise

    # -- Kafka models → retained MQTT messages -----------------------------------------------

    def _assign_models(self) -> None:
        topic = self.settings.topic_models
        partitions = self._consumer.partitions_for_topic(topic)
        if not partitions:
            raise RuntimeError(f"topic {topic!r} not found on {self.settings.bootstrap}")
        self._partitions = [TopicPartition(topic, p) for p in sorted(partitions)]
        self._consumer.assign(self._partitions)
        self._consumer.seek_to_beginning(*self._partitions)
        self._catch_up_to: dict[TopicPartition, int] = self._consumer.end_offsets(self._partitions)

    def _caught_up(self) -> bool:
        return all(self._consumer.position(tp) >= end for tp, end in self._catch_up_to.items())

    def _publish_model(self, device_id: str, payload: bytes | None) -> None:
        try:
            topic = device_topic(self.prefix, device_id, "model")
        except ValueError as exc:
            with self._lock:
                self.stats["models_unroutable"] += 1
            log.warning("model not published over MQTT: %s", exc)
            return
        # A tombstone clears the retained model (an empty retained message deletes it).
        self._mqtt.publish(topic, payload or b"", qos=QOS, retain=True)
        with self._lock:  # paho's thread counts too; snapshot() copies under this lock
            self.stats["models_published" if payload else "models_cleared"] += 1

    def poll_models(self, timeout_ms: int = 200) -> None:
        """Read what arrived on the models topic and publish it (the newest per device at start-up)."""
        if self._republish.is_set():
            # The MQTT broker lost its state (restarted without persistence): retained models too.
            self._republish.clear()
            log.warning("MQTT broker forgot the bridge's session; publishing every newest model again")
            self._catching_up = True
            self._newest.clear()
            self._assign_models()
        for records in self._consumer.poll(timeout_ms=timeout_ms).values():
            for r in records:
                if r.key is None:
                    continue  # the worker always keys models by device; nothing to route
                device = r.key.decode("utf-8", "replace")
                if self._catching_up:
                    self._newest[device] = r.value
                else:
                    self._publish_model(device, r.value)
        if self._catching_up and self._caught_up():
            self._catching_up = False
            for device, payload in self._newest.items():
                self._publish_model(device, payload)
            self._newest.clear()

    @property
    def caught_up(self) -> bool:
        """Whether every model that was on the topic at start-up has been published."""
        return not self._catching_up

    # -- MQTT readings → Kafka (paho's network thread) ---------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: Any, props: object
    ) -> None:
        if rc.is_failure:
            log.warning("MQTT broker refused the bridge: %s", rc)
            return
        client.subscribe(readings_subscription(self.prefix), qos=QOS)
        if self._connects > 0 and not getattr(flags, "session_present", True):
            self._republish.set()
        self._connects += 1
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: Any, props: object
    ) -> None:
        self._connected.clear()
        if rc.is_failure:
            log.warning("MQTT connection lost (%s); paho reconnects", rc)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if self._failure is not None:
            return  # not acknowledged: the broker delivers it again after the restart
        records = route_readings(self.settings, message.topic, bytes(message.payload))
        with self._lock:
            self.stats["mqtt_messages"] += 1
            for r in records:
                self.stats["dead_letters" if r.topic == self.settings.topic_deadletter else "records"] += 1
        mid, qos = message.mid, message.qos

        def ack() -> None:
            client.ack(mid, qos)
            with self._lock:
                self.stats["acked"] += 1

        if not records:  # an empty gateway batch: nothing to forward
            ack()
            return
        pending = _Pending(len(records), ack)
        for r in records:
            future = self._producer.send(r.topic, key=r.key, value=r.value, headers=r.headers)
            future.add_callback(pending.one_acked)
            future.add_errback(self._kafka_failed)

    def _kafka_failed(self, exc: BaseException) -> None:
        log.error("Kafka refused a record from MQTT; stopping without acknowledging it: %s", exc)
        self._failure = exc

    # -- running ---------------------------------------------------------------------------------

    def connect(self, timeout_s: float = 30.0) -> MqttBridge:
        """Connect to the MQTT broker and start paho's network thread."""
        try:
            self._mqtt.connect(self.address.host, self.address.port)
        except OSError as exc:
            raise ConnectionError(f"MQTT broker {self.address.host}:{self.address.port}: {exc}") from exc
        self._mqtt.loop_start()
        if not self._connected.wait(timeout_s):
            raise ConnectionError(f"MQTT broker {self.address.host}:{self.address.port}: not connected")
        return self

    def run(
        self,
        until: Callable[[], bool] | None = None,
        timeout_s: float | None = None,
        on_stats: Callable[[dict[str, int]], None] | None = None,
        stats_interval_s: float = 0.0,
    ) -> None:
        """Bridge until ``until()`` or ``timeout_s`` (both ``None``: forever).

        Raises :class:`RuntimeError` when Kafka refused a record (nothing of it was acknowledged).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        next_stats = time.monotonic() + stats_interval_s
        while not (until is not None and until()):
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self._failure is not None:
                raise RuntimeError(f"Kafka refused a record from MQTT: {self._failure}")
            self.poll_models()
            if on_stats is not None and stats_interval_s > 0 and time.monotonic() >= next_stats:
                on_stats(self.snapshot())
                next_stats += stats_interval_s

    def snapshot(self) -> dict[str, int]:
        """The counters now."""
        with self._lock:
            return dict(self.stats)

    def close(self) -> None:
        """Flush what was sent to Kafka (so its MQTT messages get acknowledged), then disconnect."""
        try:
            self._producer.flush(timeout=30)
        finally:
            self._mqtt.disconnect()
            self._mqtt.loop_stop()
            self._producer.close()
            self._consumer.close()


# -- command line ------------------------------------------------------------------------


def cmd_mqtt_bridge(args: argparse.Namespace) -> int:
    """Handler of ``metastream mqtt-bridge``."""
    settings = Settings.load(args.settings, broker=args.broker, mqtt_broker=args.mqtt_broker)
    stop = threading.Event()
    # SIGTERM (systemd, Kubernetes) stops like Ctrl-C: flush, acknowledge, disconnect.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def print_stats(stats: dict[str, int]) -> None:
        print(json.dumps({"stats": stats}), flush=True)

    with MqttBridge(settings) as bridge:
        bridge.connect()
        print(
            f"bridging {bridge.address.host}:{bridge.address.port} "
            f"{readings_subscription(bridge.prefix)} <-> {settings.bootstrap}",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal stop without --duration
            bridge.run(
                until=stop.is_set,
                timeout_s=args.duration,
                on_stats=print_stats,
                stats_interval_s=args.stats_interval,
            )
    print(json.dumps({"stats": bridge.snapshot(), "final": True}), flush=True)
    return 0


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the ``mqtt-bridge`` sub-command; returns its parser."""
    p = subparsers.add_parser(
        "mqtt-bridge", help="forward MQTT readings to Kafka and models to retained MQTT messages"
    )
    p.add_argument("--settings", help="JSON settings file (else METASTREAM_* environment and defaults)")
    p.add_argument("--broker", help="kafka://host:port[,host:port]; overrides the settings")
    p.add_argument("--mqtt-broker", help="mqtt://host:port or mqtts://host:port; overrides the settings")
    p.add_argument("--duration", type=float, help="seconds to run (default: until SIGTERM or Ctrl-C)")
    p.add_argument("--stats-interval", type=float, default=0.0, metavar="S", help="print counters every S s")
    p.set_defaults(func=cmd_mqtt_bridge)
    return p
