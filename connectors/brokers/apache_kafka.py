"""Single-node Apache Kafka broker (KRaft mode) for local runs and tests, without Docker.

The broker jars come from Maven Central through ``kafka-pom.xml`` (next to this file)
and are cached under ``${METASTREAM_CACHE:-~/.cache/metastream}/kafka-<version>/libs``.
The broker itself runs as a plain ``java`` subprocess on loopback ports.
"""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

KAFKA_VERSION = "4.1.1"
"""Default Apache Kafka version (``kafka_2.13`` artifact on Maven Central)."""

_POM = Path(__file__).with_name("kafka-pom.xml")
_MARKER = ".complete"

# Kafka 4.x only ships a Log4j2 config inside its tarball; without one log4j logs
# errors only, so we write a console config and redirect stdout to a file.
_LOG4J2 = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
"""


class BrokerStartError(RuntimeError):
    """Raised when a broker process does not become ready."""


def cache_root() -> Path:
    """Return the metastream cache directory.

    Returns
    -------
    Path
        ``$METASTREAM_CACHE`` if set, else ``~/.cache/metastream``.
    """
    return Path(os.environ.get("METASTREAM_CACHE") or Path.home() / ".cache" / "metastream")


def ensure_jars(version: str = KAFKA_VERSION, cache_dir: Path | None = None) -> Path:
    """Fetch the Kafka broker jars with Maven unless they are cached already.

    Parameters
    ----------
    version : str
        Apache Kafka version to fetch.
    cache_dir : Path, optional
        Cache root; defaults to :func:`cache_root`.

    Returns
    -------
    Path
        Directory holding all jars, usable as ``java -cp '<dir>/*'``.

    Raises
    ------
    RuntimeError
        If ``mvn`` is missing or the fetch fails.
    """
    home = (cache_dir or cache_root()) / f"kafka-{version}"
    libs = home / "libs"
    # The marker is written last, so a half-finished copy is never trusted.
    if (home / _MARKER).exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError("Maven ('mvn') is needed to fetch the Kafka broker jars")
    home.mkdir(parents=True, exist_ok=True)
    # Copy into a private dir first so concurrent fetches cannot mix their files.
    tmp = Path(tempfile.mkdtemp(prefix="libs.", dir=home))
    try:
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(_POM),
            "dependency:copy-dependencies",
            f"-Dkafka.version={version}",
            f"-DoutputDirectory={tmp}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not any(tmp.glob(f"kafka_2.13-{version}.jar")):
            raise RuntimeError(
                f"fetching Kafka {version} jars failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            )
        shutil.rmtree(libs, ignore_errors=True)
        os.replace(tmp, libs)
        (home / _MARKER).write_text(version)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return libs


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a log file (empty if missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for_broker(bootstrap: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
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
            raise BrokerStartError(f"broker exited with code {proc.returncode}; log tail:\n{_log_tail(log)}")
        try:
            # Cheap port probe first: the admin client logs noisily when refused.
            socket.create_connection((host, int(port)), timeout=1).close()
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap, request_timeout_ms=5000, bootstrap_timeout_ms=5000
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
        f"broker at {bootstrap} not ready after {timeout:.0f}s ({error!r}); log tail:\n{_log_tail(log)}"
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


class ApacheKafkaBroker:
    """A single-node Apache Kafka broker+controller (KRaft) on loopback.

    Ports and the data directory are fixed at the first :meth:`start`, so
    :meth:`restart` brings the same broker back with its data.

    Parameters
    ----------
    version : str
        Apache Kafka version.
    work_dir : Path, optional
        Directory for config, data and ``broker.log``; a temporary one
        (removed by :meth:`close`) if omitted.
    heap : str
        JVM max heap, e.g. ``"512m"``.
    startup_timeout : float
        Seconds to wait for readiness in :meth:`start`.

    Examples
    --------
    >>> with ApacheKafkaBroker() as broker:  # doctest: +SKIP
    ...     producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    """

    def __init__(
        self,
        version: str = KAFKA_VERSION,
        work_dir: Path | None = None,
        heap: str = "512m",
        startup_timeout: float = 60.0,
    ) -> None:
        self.version = version
        self.heap = heap
        self.startup_timeout = startup_timeout
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="metastream-kafka-"))
        self.port: int | None = None
        self.controller_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.close)  # never leave a JVM behind if the caller forgets

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

    def _write_config(self) -> Path:
        """Write ``server.properties`` and the log4j2 config; return the former."""
        cfg = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            # Kafka 4.x dynamic quorum; pairs with `StorageTool format --standalone`.
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "log.dirs": str(self.work_dir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            # Single node: internal topics cannot have the default replication of 3.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Fewer internal partitions make the first group join / transaction quicker.
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        path = self.work_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in cfg.items()))
        (self.work_dir / "log4j2.properties").write_text(_LOG4J2)
        return path

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        """Build a ``java`` command line running ``main`` on the Kafka classpath."""
        java = Path(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else "java"
        return [
            str(java),
            f"-Xmx{self.heap}",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def start(self) -> ApacheKafkaBroker:
        """Start the broker (formatting storage on first start) and wait until it is ready.

        Returns
        -------
        ApacheKafkaBroker
            ``self``, for chaining.

        Raises
        ------
        BrokerStartError
            If formatting fails or the broker is not ready in time.
        """
        if self.is_running:
            return self
        libs = ensure_jars(self.version)
        if self.port is None:
            self.port, self.controller_port = free_port(), free_port()
            self.work_dir.mkdir(parents=True, exist_ok=True)
            props = self._write_config()
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            fmt = subprocess.run(
                self._java(
                    libs,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(props),
                    "--standalone",
                ),
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise BrokerStartError(f"kafka storage format failed:\n{(fmt.stdout + fmt.stderr)[-3000:]}")
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self._java(libs, "kafka.Kafka", str(self.work_dir / "server.properties")),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            wait_for_broker(self.bootstrap, self._proc, self.log_path, self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker gracefully (SIGTERM), killing it after ``timeout`` seconds.

        Data, ports and config are kept so :meth:`start` can bring it back.
        """
        stop_process(self._proc, timeout)
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same ports with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker and delete its work dir if it was a temporary one."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> ApacheKafkaBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
