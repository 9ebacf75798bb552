"""Single-node Apache Kafka broker (KRaft mode) for local runs and tests, without Docker.

The broker jars come from Maven Central through ``kafka-pom.xml`` (next to this file)
and are cached under ``${METASTREAM_CACHE:-~/.cache/metastream}/kafka-<version>/libs``.
The broker itself runs as a plain ``java`` subprocess on loopback ports.

Its client listener is PLAINTEXT by default; ``security_protocol="SSL"``
(mutual TLS) or ``"SASL_SSL"`` (TLS + SCRAM-SHA-256/512 or PLAIN users)
makes it the *only* client listener, with a throw-away CA generated at the
first start (:mod:`pipeline.tools.brokers.certificates`).  The controller
listener stays PLAINTEXT on loopback; clients never use it.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from connectors.kafka_security import kafka_python_spelling

from .certificates import LocalPki, make_local_pki
from .process import BrokerProcess, BrokerStartError, free_port

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


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_SSL")
"""Client listener protocols :class:`ApacheKafkaBroker` can run."""

SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")
"""SASL mechanisms of its ``SASL_SSL`` listener."""

_BROKER_USER = "broker"  # the broker's own SASL identity on its inter-broker (= client) listener


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


class ApacheKafkaBroker(BrokerProcess):
    """A single-node Apache Kafka broker+controller (KRaft) on loopback.

    Ports and the data directory are fixed at the first :meth:`start`, so
    :meth:`restart` brings the same broker back with its data.

    Parameters
    ----------
    version : str
        Apache Kafka version.
    work_dir : Path, optional
        Directory for config, data and ``broker.log``; a temporary one
        (removed by :meth:`close`) if omitted.  A directory given here is
        kept, and a later broker (another process too) started on it comes
        back with its topics and, unless ``port`` says otherwise, its port
        (PLAINTEXT only: a TLS/SASL broker's users and CA are not kept).
    port : int, optional
        Client port (default: a free one, or the port ``work_dir`` last had).
    heap : str
        JVM max heap, e.g. ``"512m"``.
    startup_timeout : float
        Seconds to wait for readiness in :meth:`start`.
    security_protocol : {"PLAINTEXT", "SSL", "SASL_SSL"}
        The client listener.  ``SSL`` requires client certificates (mutual
        TLS); ``SASL_SSL`` requires a user name and password over TLS.
    sasl_mechanism : {"SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"}
        Mechanism of a ``SASL_SSL`` listener.
    username, password : str
        The client user of a ``SASL_SSL`` listener (password: random if empty).

    :meth:`stop` keeps data, ports and config, so :meth:`start` brings the same
    broker back; :meth:`close` also removes a temporary ``work_dir``.

    Examples
    --------
    >>> with ApacheKafkaBroker() as broker:  # doctest: +SKIP
    ...     producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    >>> with ApacheKafkaBroker(security_protocol="SASL_SSL") as broker:  # doctest: +SKIP
    ...     settings = Settings(broker=broker.bootstrap, **broker.client_security)
    ...     producer = KafkaProducer(bootstrap_servers=broker.bootstrap, **settings.kafka_python_security())
    """

    stop_timeout = 30.0
    """Seconds a graceful stop may take (the JVM flushes its logs) before the broker is killed."""

    def __init__(
        self,
        version: str = KAFKA_VERSION,
        work_dir: Path | None = None,
        heap: str = "512m",
        startup_timeout: float = 60.0,
        *,
        security_protocol: str = "PLAINTEXT",
        sasl_mechanism: str = "SCRAM-SHA-256",
        username: str = "metastream",
        password: str = "",
        port: int | None = None,
    ) -> None:
        if security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"security_protocol must be one of {SECURITY_PROTOCOLS}, got {security_protocol!r}"
            )
        if sasl_mechanism not in SASL_MECHANISMS:
            raise ValueError(f"sasl_mechanism must be one of {SASL_MECHANISMS}, got {sasl_mechanism!r}")
        for what, value in (("username", username), ("password", password)):
            # Both end up inside a JAAS config string or a --add-scram argument.
            if any(c in value for c in "\"'=[],;\n"):
                raise ValueError(f"{what} must not contain quotes, '=', brackets, ',' or ';'")
        own_dir = work_dir is None
        super().__init__(
            Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="metastream-kafka-")),
            own_dir,
            startup_timeout,
        )
        self.version = version
        self.heap = heap
        self.security_protocol = security_protocol
        self.sasl_mechanism = sasl_mechanism
        self.username = username
        self.password = password or secrets.token_urlsafe(16)
        self._broker_password = secrets.token_urlsafe(16)
        self.pki: LocalPki | None = None
        self.controller_port: int | None = None
        self._wanted_port = port

    @property
    def client_security(self) -> dict[str, str]:
        """What a client needs to connect, as :class:`connectors.settings.Settings` fields.

        Empty for PLAINTEXT; valid after :meth:`start` (the CA is made there).
        """
        if self.security_protocol == "PLAINTEXT":
            return {}
        if self.pki is None:
            raise RuntimeError("broker not started")
        out = {"security_protocol": self.security_protocol, "ssl_cafile": str(self.pki.ca_cert)}
        if self.security_protocol == "SSL":
            out |= {"ssl_certfile": str(self.pki.client_cert), "ssl_keyfile": str(self.pki.client_key)}
        else:
            out |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_username": self.username,
                "sasl_password": self.password,
            }
        return out

    def client_options(self) -> dict[str, Any]:
        """:attr:`client_security` in kafka-python's spelling (for ``KafkaProducer(**...)`` etc.)."""
        return kafka_python_spelling(self.client_security)

    def _write_config(self) -> Path:
        """Write ``server.properties`` and the log4j2 config; return the former."""
        # One client listener, also used between brokers: a plaintext client has nowhere to go.
        name = "PLAINTEXT" if self.security_protocol == "PLAINTEXT" else "CLIENT"
        cfg = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": f"{name}://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"{name}://127.0.0.1:{self.port}",
            "listener.security.protocol.map": f"{name}:{self.security_protocol},CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": name,
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
            **self._security_config(),
        }
        path = self.work_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in cfg.items()))
        (self.work_dir / "log4j2.properties").write_text(_LOG4J2)
        return path

    def _security_config(self) -> dict[str, str]:
        """TLS and SASL settings of the ``CLIENT`` listener (none for PLAINTEXT)."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        if self.pki is None:
            self.pki = make_local_pki(self.work_dir / "tls")
        cfg = {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.pki.server_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.pki.ca_cert),
            # SSL alone authenticates nobody unless the client shows a certificate.
            "ssl.client.auth": "required" if self.security_protocol == "SSL" else "none",
        }
        if self.security_protocol == "SASL_SSL":
            mech = self.sasl_mechanism
            if mech == "PLAIN":
                users = {_BROKER_USER: self._broker_password, self.username: self.password}
                module = "org.apache.kafka.common.security.plain.PlainLoginModule"
                extra = "".join(f' user_{u}="{p}"' for u, p in users.items())
            else:  # SCRAM users are stored in the metadata log at format time (see start)
                module = "org.apache.kafka.common.security.scram.ScramLoginModule"
                extra = ""
            jaas = f'{module} required username="{_BROKER_USER}" password="{self._broker_password}"{extra};'
            cfg |= {
                "sasl.enabled.mechanisms": mech,
                "sasl.mechanism.inter.broker.protocol": mech,
                f"listener.name.client.{mech.lower()}.sasl.jaas.config": jaas,
            }
        return cfg

    def _scram_users(self) -> list[str]:
        """``kafka-storage format --add-scram`` arguments for the broker and client users."""
        if self.security_protocol != "SASL_SSL" or not self.sasl_mechanism.startswith("SCRAM"):
            return []
        users = {_BROKER_USER: self._broker_password, self.username: self.password}
        return [
            arg
            for user, pw in users.items()
            for arg in ("--add-scram", f"{self.sasl_mechanism}=[name={user},password={pw}]")
        ]

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

    def _command(self) -> list[str]:
        """Format storage on the first start (ports and config fixed then); the ``kafka.Kafka`` command.

        Raises
        ------
        BrokerStartError
            If formatting fails.
        """
        libs = ensure_jars(self.version)
        saved = self._saved_ports()
        if self.port is None and saved is not None:
            # A data directory formatted by an earlier broker: same cluster, same controller.
            self.port = self._wanted_port or saved["port"]
            self.controller_port = saved["controller_port"]
            self._write_config()
            self._save_ports()
        if self.port is None:
            self.port, self.controller_port = self._wanted_port or free_port(), free_port()
            self.work_dir.mkdir(parents=True, exist_ok=True)
            props = self._write_config()
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            fmt = subprocess.run(
                self._java(
                    libs,
                    "kafka.tools.StorageTool",
                    "format",
                    # One argument: a random id may start with "-", which the parser takes for an option.
                    f"--cluster-id={cluster_id}",
                    "-c",
                    str(props),
                    "--standalone",
                    *self._scram_users(),
                ),
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise BrokerStartError(f"kafka storage format failed:\n{(fmt.stdout + fmt.stderr)[-3000:]}")
            self._save_ports()
        return self._java(libs, "kafka.Kafka", str(self.work_dir / "server.properties"))

    def _probe_options(self) -> dict[str, Any]:
        return self.client_options()

    @property
    def _ports_file(self) -> Path:
        return self.work_dir / "ports.json"

    def _saved_ports(self) -> dict[str, int] | None:
        """The ports of the broker that formatted ``work_dir`` (PLAINTEXT only; else ``None``)."""
        if self._own_dir or self.security_protocol != "PLAINTEXT" or not self._ports_file.exists():
            return None
        if not (self.work_dir / "data" / "meta.properties").exists():
            return None
        ports: dict[str, int] = json.loads(self._ports_file.read_text())
        return ports

    def _save_ports(self) -> None:
        self._ports_file.write_text(json.dumps({"port": self.port, "controller_port": self.controller_port}))
