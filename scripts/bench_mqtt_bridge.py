"""How many readings ``metastream mqtt-bridge`` moves from MQTT to Kafka per second.

Starts a real Apache Kafka broker and a real Mosquitto (as the tests do),
runs the bridge in this process, publishes seeded readings with QoS 1 and
times until the bridge has acknowledged every message (each one only after
Kafka acknowledged its records).  Run from the repository root::

    .venv/bin/python -m scripts.bench_mqtt_bridge [--messages 3000] [--per-message 1 100]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid

import numpy as np

from connectors.mqtt_edge import QOS, MqttAddress, device_topic, make_client
from connectors.settings import Settings
from pipeline.mqtt_bridge import MqttBridge
from pipeline.tools.brokers import ApacheKafkaBroker
from tests.integration.mosquitto import MosquittoBroker
from wire.readings import Reading, encode_readings


def bench(kafka: ApacheKafkaBroker, mosquitto: MosquittoBroker, n_messages: int, per_message: int) -> dict:
    run = uuid.uuid4().hex[:8]
    topics = {f"topic_{t}": f"b-{run}.{t}" for t in ("readings", "models", "meta", "deltas", "events")}
    settings = Settings(
        broker=f"kafka://{kafka.bootstrap}",
        app_id=f"bench-{run}",
        topic_deadletter=f"b-{run}.deadletter",
        mqtt_broker=mosquitto.url,
        mqtt_topic_prefix=f"b-{run}",
        **topics,  # type: ignore[arg-type]
    )
    rng = np.random.default_rng(0)
    payloads = []
    for i in range(n_messages):
        x = rng.normal(size=(per_message, settings.n_features)).round(4)
        readings = [
            Reading(f"dev-{(i * per_message + j) % 1000:04d}", tuple(r.tolist()), 1.0)
            for j, r in enumerate(x)
        ]
        payloads.append(encode_readings(readings))
    with MqttBridge(settings) as bridge:
        bridge.connect()
        stop = threading.Event()
        runner = threading.Thread(target=bridge.run, kwargs={"until": stop.is_set})
        runner.start()
        publisher = make_client(MqttAddress.parse(mosquitto.url), f"pub-{run}")
        publisher.connect(mosquitto.host, mosquitto.port)
        publisher.loop_start()
        topic = device_topic(settings.mqtt_topic_prefix, "gw", "readings")
        start = time.perf_counter()
        for p in payloads:
            publisher.publish(topic, p, qos=QOS)
        while bridge.snapshot().get("acked", 0) < n_messages:
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        stop.set()
        runner.join()
        publisher.disconnect()
        publisher.loop_stop()
    return {
        "per_message": per_message,
        "messages": n_messages,
        "seconds": round(elapsed, 2),
        "messages_per_s": round(n_messages / elapsed),
        "readings_per_s": round(n_messages * per_message / elapsed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--per-message", type=int, nargs="+", default=[1, 100])
    parser.add_argument(
        "--max-inflight", type=int, default=20, help="Mosquitto's max_inflight_messages (its default: 20)"
    )
    args = parser.parse_args()
    # Mosquitto drops QoS 1 messages beyond max_queued_messages (default 1000) for a client; 0: no limit.
    config = f"max_queued_messages 0\nmax_inflight_messages {args.max_inflight}\n"
    with ApacheKafkaBroker() as kafka, MosquittoBroker(config) as mosquitto:
        for per_message in args.per_message:
            print(json.dumps(bench(kafka, mosquitto, args.messages, per_message)), flush=True)


if __name__ == "__main__":
    main()
