"""A real Mosquitto MQTT broker for tests, on a free loopback port.

Debian's ``mosquitto`` package (``scripts/install_mosquitto.sh``, run by
``make test``) with a generated config: one listener, anonymous clients
allowed, no persistence, logs to a file the failure messages can show.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from pipeline.tools.brokers.apache_kafka import free_port


def mosquitto_binary() -> str:
    """Path of the ``mosquitto`` executable (``/usr/sbin`` is often not on a user's PATH)."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).is_file()), None
    )
    if found is None:
        raise RuntimeError(
            "mosquitto is not installed: run `bash scripts/install_mosquitto.sh` (or make test)"
        )
    return found


class MosquittoBroker:
    """``with MosquittoBroker() as broker:`` runs mosquitto until the block ends."""

    def __init__(self, extra_config: str = "") -> None:
        self.extra_config = extra_config
        """More ``mosquitto.conf`` lines (e.g. ``max_queued_messages 0``)."""
        self.port = free_port()
        self.host = "127.0.0.1"
        self._dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.log_path = self._dir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``, the form of the ``mqtt_broker`` setting."""
        return f"mqtt://{self.host}:{self.port}"

    def log(self) -> str:
        """The broker's log so far (for assertion messages)."""
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def start(self, timeout_s: float = 15.0) -> None:
        conf = self._dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n" + self.extra_config
        )
        self._proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log = self.log()
                    self.stop()
                    raise RuntimeError(f"mosquitto did not start:\n{log}") from None
                time.sleep(0.05)

    def restart(self) -> None:
        """Stop the broker and start it again on the same port: it forgets everything (no persistence)."""
        self._terminate()
        self.start()

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _terminate(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
