"""What every local broker launcher shares: a process on a loopback port, its log, its lifecycle.

:class:`BrokerProcess` holds start (launch, wait until a client can list
topics, stop again on failure), stop, restart and close (stop, then remove a
temporary work dir); a launcher says only how to prepare its command line.
"""

from __future__ import annotations

import atexit
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Self

from connectors import kafka_python_fix
from connectors.closing import ClosesOnExit


class BrokerStartError(RuntimeError):
    """Raised when a broker process does not become ready."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a log file (empty if missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for_broker(
    bootstrap: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout: float,
    client_options: dict[str, Any] | None = None,
) -> None:
    """Block until a broker accepts connections and answers a metadata request.

    Parameters
    ----------
    bootstrap : str
        ``"host:port"`` of the broker.
    proc : subprocess.Popen
        The broker process; failing early when it dies.
    log : Path
        Broker log file, quoted in the error message.
    timeout : float
        Seconds to wait.
    client_options : dict, optional
        kafka-python TLS/SASL options for the probe (:meth:`Settings.kafka_python_security` spelling).

    Raises
    ------
    BrokerStartError
        If the process exits or the broker is not ready within ``timeout``.
    """
    from kafka import KafkaAdminClient  # heavy import, only needed here
    from kafka.errors import KafkaConfigurationError

    host, port = bootstrap.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerStartError(f"broker exited with code {proc.returncode}; log tail:\n{log_tail(log)}")
        try:
            # Cheap port probe first: the admin client logs noisily when refused.
            socket.create_connection((host, int(port)), timeout=1).close()
            kafka_python_fix.apply()
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                request_timeout_ms=5000,
                bootstrap_timeout_ms=5000,
                **(client_options or {}),
            )
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except KafkaConfigurationError:
            raise  # a bug on our side, not a broker that is still starting
        except Exception as exc:  # any other failure means "not ready yet"
            error = exc
            time.sleep(0.5)
    raise BrokerStartError(
        f"broker at {bootstrap} not ready after {timeout:.0f}s ({error!r}); log tail:\n{log_tail(log)}"
    )


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Stop a process with SIGTERM, then SIGKILL if it lingers past ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class BrokerProcess(ClosesOnExit):
    """The lifecycle of one broker process; subclasses give :meth:`_command`.

    Parameters
    ----------
    work_dir : Path
        Holds ``broker.log`` (appended to across restarts) and whatever the broker keeps.
    own_dir : bool
        Whether ``work_dir`` is temporary, removed by :meth:`close`.
    startup_timeout : float
        Seconds :meth:`start` waits for readiness.

    Examples
    --------
    >>> import sys, tempfile
    >>> class Sleeper(BrokerProcess):  # a "broker" that never answers
    ...     def _command(self) -> list[str]:
    ...         return [sys.executable, "-c", "import time; time.sleep(30)"]
    >>> b = Sleeper(Path(tempfile.mkdtemp()), own_dir=True, startup_timeout=0.1)
    >>> b.port = free_port()
    >>> try:
    ...     b.start()
    ... except BrokerStartError as e:
    ...     print("not ready", b.is_running)
    not ready False
    >>> b.close(); b.work_dir.exists()
    False
    """

    stop_timeout = 10.0
    """Seconds :meth:`stop` waits after SIGTERM before it kills."""

    def __init__(self, work_dir: Path, own_dir: bool, startup_timeout: float) -> None:
        self.work_dir = work_dir
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self._own_dir = own_dir
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.close)  # never leave a broker behind if the caller forgets

    def _command(self) -> list[str]:
        """Prepare what the broker needs (port, config, storage) and return its command line."""
        raise NotImplementedError

    def _probe_options(self) -> dict[str, Any]:
        """kafka-python TLS/SASL options of the readiness probe (none by default)."""
        return {}

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

    def start(self) -> Self:
        """Start the broker and wait until a Kafka admin client can list topics.

        Returns
        -------
        Self
            ``self``, for chaining.

        Raises
        ------
        BrokerStartError
            If preparing fails or the broker is not ready in time.
        """
        if self.is_running:
            return self
        cmd = self._command()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for_broker(
                self.bootstrap, self._proc, self.log_path, self.startup_timeout, self._probe_options()
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout``, default :attr:`stop_timeout`)."""
        stop_process(self._proc, self.stop_timeout if timeout is None else timeout)
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker and delete its work dir if it was a temporary one."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()
