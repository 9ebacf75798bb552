"""A real worker with its web server on, fed a seeded fleet with drift (for the metrics and dashboard tests).

The worker is ``python -m pipeline.worker --web-port PORT`` (via
:func:`tests.harness.running_worker`) on the session's Apache Kafka broker;
the fleet and the bad messages are those of :mod:`tests.harness`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors.settings import Settings
from learners.evaluation.synthetic import FleetStream
from pipeline.tools.brokers import ApacheKafkaBroker
from tests.harness import (
    BAD_MESSAGES,
    N_FEATURES,
    PER_MESSAGE,
    fleet,
    produce,
    running_worker,
    scratch_settings,
)

WEB_TOKEN = "dashboard-test-token"


@dataclass
class FedWorker:
    """A running worker that has processed the whole fleet."""

    settings: Settings
    url: str
    stream: FleetStream
    work: Path
    rates_seen: list[float] = field(default_factory=list)
    """``readings_per_s`` of /fleet.json, polled while the worker processed the fleet."""

    @property
    def messages(self) -> int:
        """Reading messages produced: gateway messages plus the bad ones."""
        return -(-len(self.stream) // PER_MESSAGE) + len(BAD_MESSAGES)

    @property
    def token(self) -> str:
        """The dashboard's bearer token (``Settings.web_token``)."""
        return self.settings.web_token

    def get(self, path: str) -> bytes:
        """GET ``path`` from the worker's web server, with the dashboard token."""
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())

    def fleet(self) -> dict[str, Any]:
        """``/fleet.json``."""
        return dict(json.loads(self.get("/fleet.json")))

    def log(self) -> str:
        path = self.work / "worker.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, describe: Callable[[], str]) -> None:
    """Poll ``check`` (exceptions count as not yet) until true or fail with ``describe()``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        assert time.monotonic() < deadline, describe()
        time.sleep(0.5)


@contextlib.contextmanager
def fed_worker(broker: ApacheKafkaBroker, work: Path) -> Iterator[FedWorker]:
    """Start a worker with ``--web-port``, produce the fleet, wait until all of it is processed."""
    base = scratch_settings(broker.bootstrap, work, "web", partitions=2)
    settings = dataclasses.replace(
        base, n_features=N_FEATURES, micro_batch=200, batch_window_s=0.05, web_token=WEB_TOKEN
    )
    port = free_port()
    with running_worker(settings, work, "--web-port", str(port)):
        w = FedWorker(settings, f"http://127.0.0.1:{port}", fleet(), work)
        # Up once θ version 0 is adopted and the readings partitions are assigned.
        readings_tps = {f"{settings.topic_readings}:{p}" for p in range(settings.partitions)}
        wait_until(
            lambda: w.fleet()["meta"] != [] and readings_tps <= set(w.fleet()["stats"]["assigned"]),
            timeout=90,
            describe=w.log,
        )
        produce(settings, w.stream)

        def done() -> bool:
            d = w.fleet()
            w.rates_seen.append(float(d["stats"]["readings_per_s"]))
            s = d["stats"]
            return (
                s["messages"] == w.messages
                and s["meta_version"] >= 1
                and len(d["results"]) >= 10  # every device's first model measured after adaptation
                and any(e["type"] == "drift" for e in d["timeline"])
            )

        wait_until(done, timeout=120, describe=lambda: f"{w.fleet()['stats']}\n{w.log()}")
        # θ versions may still trail the last readings (queued meta contributions): wait until still.
        settled: list[tuple[Any, ...]] = []

        def still() -> bool:
            s = w.fleet()["stats"]
            settled.append((s["meta_version"], s["aggregator_version"], s["theta_seen"], s["sent"]))
            return len(settled) >= 4 and len(set(settled[-4:])) == 1  # unchanged for 1.5 s

        wait_until(still, timeout=60, describe=lambda: f"{settled[-5:]}\n{w.log()}")
        yield w
