"""Every Kafka client of the pipeline over TLS + SASL, on a broker that speaks nothing else.

The broker's only client listener is SASL_SSL (SCRAM-SHA-256) with a CA made
at start.  The worker gets its TLS/SASL settings from ``METASTREAM_*``
environment variables, exactly as the README shows; producer, edge
subscriber, federated client and topic admin get them from :class:`Settings`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaTimeoutError, SaslAuthenticationFailedError

from connectors import connection_check
from connectors.admin import ensure_topics
from connectors.connection_check import BrokerConnectionError
from connectors.edge import META_KEY, EdgeSubscriber
from connectors.federated import FederatedEdgeClient
from connectors.producer import SensorProducer
from connectors.settings import Settings
from connectors.signing import Signer
from learners.evaluation.synthetic import make_fleet_stream
from pipeline.tools.brokers import ApacheKafkaBroker
from pipeline.tools.brokers.certificates import make_local_pki
from pipeline.tools.demo import scratch_settings
from wire.readings import Reading

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECURITY_FIELDS = ("security_protocol", "ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_mechanism")
DEVICES = ("dev-0000", "dev-0001", "dev-0002")


@pytest.fixture(scope="module")
def secure_broker() -> Iterator[ApacheKafkaBroker]:
    """A broker whose only client listener is SASL_SSL with SCRAM-SHA-256."""
    with ApacheKafkaBroker(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256") as broker:
        yield broker


def secure_settings(broker: ApacheKafkaBroker, work: Path, prefix: str) -> Settings:
    """Scratch topics and keys for one test, a small learner, the broker's TLS/SASL settings."""
    base = scratch_settings(broker.bootstrap, work, prefix, partitions=2)
    return dataclasses.replace(
        base,
        n_features=2,
        micro_batch=50,
        learner={"adapt_after": 8, "meta_every": 50},
        **broker.client_security,
    )


def security_env(settings: Settings) -> dict[str, str]:
    """The settings' TLS/SASL part as the ``METASTREAM_*`` variables the README documents."""
    names = (*SECURITY_FIELDS, "sasl_username", "sasl_password")
    return {f"METASTREAM_{n.upper()}": str(getattr(settings, n)) for n in names if getattr(settings, n)}


def readme_env(settings: Settings) -> dict[str, str]:
    """The README's security example, verbatim except for this broker's CA file and password."""
    section = (ROOT / "README.md").read_text().split("### Security settings", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    exports = [re.match(r"export (METASTREAM_\w+)=(\S+)", ln) for ln in block.splitlines()]
    env = {m[1]: m[2] for m in exports if m}
    filled = {
        "METASTREAM_SSL_CAFILE": settings.ssl_cafile,
        "METASTREAM_SASL_PASSWORD": settings.sasl_password,
    }
    return env | {k: v for k, v in filled.items() if k in env}


def launch_worker(settings: Settings, work: Path, name: str = "worker") -> subprocess.Popen[bytes]:
    """``python -m pipeline.worker`` with everything but security in a file, security in the environment."""
    file_part = {
        k: v
        for k, v in dataclasses.asdict(settings).items()
        if k not in (*SECURITY_FIELDS, "sasl_username", "sasl_password")
    }
    (work / f"{name}.json").write_text(json.dumps(file_part))
    env = {k: v for k, v in os.environ.items() if not k.startswith("METASTREAM_")} | security_env(settings)
    with open(work / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.worker",
                "--settings",
                str(work / f"{name}.json"),
                "--stats-interval",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def last_stats(log: Path) -> dict[str, Any]:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith('{"stats"')]
    return dict(json.loads(lines[-1])["stats"]) if lines else {}


def readings(n_per_device: int) -> list[Reading]:
    stream = make_fleet_stream(
        n_devices=len(DEVICES), n_readings=n_per_device * len(DEVICES), n_features=2, late_joiners=0.0, seed=7
    )
    return [
        Reading(d, tuple(x), float(y))
        for d, x, y in zip(stream.device_ids, stream.x.tolist(), stream.y, strict=True)
    ]


def test_every_client_connects_over_sasl_ssl(secure_broker: ApacheKafkaBroker, tmp_path: Path) -> None:
    # Prepare: topics made by the admin client over SASL_SSL; a worker configured from the environment
    settings = secure_settings(secure_broker, tmp_path, "sec")
    # The federated client signs its contribution with its own key, which the meta agent allows.
    fed_key = Signer.generate()
    (tmp_path / "device-keys").mkdir()
    fed_key.save(tmp_path / "fed-0000.key.pem", tmp_path / "device-keys" / "fed-0000.pem")
    settings = dataclasses.replace(settings, device_keys=str(tmp_path / "device-keys"))
    # The README's example is exactly what this worker gets.
    assert readme_env(settings) == security_env(settings)
    ensure_topics(settings)
    worker = launch_worker(settings, tmp_path)
    edge: EdgeSubscriber | None = None
    fed: FederatedEdgeClient | None = None
    try:
        edge = EdgeSubscriber(settings, DEVICES, follow_meta=True)

        # Execute: readings through the producer; models back at the edge; a federated delta
        with SensorProducer(settings, gateway_size=10) as producer:
            producer.send_batch(readings(40))
        assert (producer.readings_sent, producer.readings_acked, producer.pending) == (120, 120, 0)
        deadline = time.monotonic() + 120
        # θ and the models come on different topics: wait for both (the edge follows θ too).
        while any(edge.current_version(d) is None for d in [*DEVICES, META_KEY]):
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (edge.state.versions(), last_stats(tmp_path / "worker.log"))
            edge.poll_once(500)
        fed = FederatedEdgeClient(settings, "fed-0000", signer=fed_key)
        deadline = time.monotonic() + 60
        while fed.theta_version is None:
            assert time.monotonic() < deadline, "θ never reached the federated client"
            fed.step([])
        before = fed.theta_version
        sent = fed.step(readings(20)[:20])
        deadline = time.monotonic() + 60
        while (fed.theta_version or 0) <= before:
            assert time.monotonic() < deadline, last_stats(tmp_path / "worker.log")
            fed.step([])
        deadline = time.monotonic() + 30
        while last_stats(tmp_path / "worker.log").get("theta_seen", 0) < 2:
            assert time.monotonic() < deadline, last_stats(tmp_path / "worker.log")
            time.sleep(0.5)

        # Assert: every device has a signed model at the edge, θ moved, the worker's meta follower saw it
        assert all(edge.current_version(d) is not None for d in DEVICES)
        assert edge.state.counts.keys() <= {"accepted", "stale_version"}, edge.state.counts
        assert sent and fed.sent == 1
        stats = last_stats(tmp_path / "worker.log")
        assert stats["readings"] == 120 and stats["dead_letters"] == 0
        assert stats["adaptations"] >= len(DEVICES)
    finally:
        for client in (edge, fed):
            if client is not None:
                client.close()
        code = stop(worker)
    assert code == 0, (tmp_path / "worker.log").read_text()[-3000:]


def test_a_plaintext_client_cannot_connect(secure_broker: ApacheKafkaBroker) -> None:
    with pytest.raises(KafkaTimeoutError, match="Unable to bootstrap"):
        KafkaAdminClient(bootstrap_servers=secure_broker.bootstrap, bootstrap_timeout_ms=3000)


def test_a_wrong_password_is_a_clear_error(secure_broker: ApacheKafkaBroker, tmp_path: Path) -> None:
    # Prepare: right CA, wrong password
    settings = dataclasses.replace(secure_settings(secure_broker, tmp_path, "pw"), sasl_password="wrong")

    # Execute / Assert: producer and edge refuse at once, naming the cause
    with pytest.raises(BrokerConnectionError, match=r"SASL authentication failed.*sasl_password"):
        SensorProducer(settings)
    with pytest.raises(BrokerConnectionError, match="SASL authentication failed"):
        EdgeSubscriber(settings, DEVICES, follow_meta=True)

    # ... and a worker exits with an error instead of retrying forever
    worker = launch_worker(settings, tmp_path)
    try:
        code = worker.wait(90)
    finally:
        stop(worker)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert code != 0
    assert "BrokerConnectionError" in log and "SASL authentication failed" in log, log[-3000:]


def test_an_untrusted_ca_is_a_clear_error(secure_broker: ApacheKafkaBroker, tmp_path: Path) -> None:
    # Prepare: the right password, but trusting another CA than the one that signed the broker
    stranger = make_local_pki(tmp_path / "other-ca")
    settings = dataclasses.replace(
        secure_settings(secure_broker, tmp_path, "ca"), ssl_cafile=str(stranger.ca_cert)
    )

    # Execute / Assert
    with pytest.raises(BrokerConnectionError, match=r"certificate is not trusted.*CERTIFICATE_VERIFY_FAILED"):
        ensure_topics(settings)
    with pytest.raises(BrokerConnectionError, match="certificate is not trusted"):
        EdgeSubscriber(settings, DEVICES)


def test_another_clients_refusal_is_not_reported_as_this_ones(
    secure_broker: ApacheKafkaBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: right settings, not yet checked in this process; meanwhile another thread
    # keeps logging refusals on kafka-python's logger, as a client with a wrong password does
    settings = secure_settings(secure_broker, tmp_path, "noise")
    monkeypatch.setattr(connection_check, "_checked", set())
    stop_noise = threading.Event()

    def other_client() -> None:
        noise = logging.getLogger("kafka.net.connection")
        while not stop_noise.wait(0.005):
            noise.error("Connection lost: %s", SaslAuthenticationFailedError("another client's password"))

    noisy = threading.Thread(target=other_client, daemon=True)
    noisy.start()

    # Execute
    try:
        connection_check.check_connection(settings)
    finally:
        stop_noise.set()
        noisy.join()

    # Assert: the check passed, so its settings are remembered as good
    assert connection_check._key(settings) in connection_check._checked


def test_a_wrong_password_is_refused_on_the_first_attempt(
    secure_broker: ApacheKafkaBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a wrong password; kafka-python's log of every connection attempt
    settings = dataclasses.replace(secure_settings(secure_broker, tmp_path, "first"), sasl_password="wrong")
    caplog.set_level(logging.WARNING, logger="kafka.net.manager")

    # Execute: five probes (a refusal is never remembered, so each one connects)
    for _ in range(5):
        with pytest.raises(BrokerConnectionError, match="SASL authentication failed"):
            connection_check.check_connection(settings)

    # Assert: each probe's first attempt already got the broker's refusal, not a bare
    # "socket disconnected" (what kafka-python 3.0.12 alone reports on most attempts)
    first_attempts: dict[str, str] = {}
    for record in caplog.records:
        if (
            f"{settings.app_id}-check-" in record.threadName
            and "Bootstrap connection to" in record.getMessage()
        ):
            first_attempts.setdefault(record.threadName, record.getMessage())
    assert len(first_attempts) == 5
    assert all("SaslAuthenticationFailedError" in m for m in first_attempts.values()), first_attempts


def test_a_probe_leaves_no_client_behind(secure_broker: ApacheKafkaBroker, tmp_path: Path) -> None:
    # Prepare: one probe the broker refuses, one that finds no broker at all
    settings = secure_settings(secure_broker, tmp_path, "stop")
    refused = dataclasses.replace(settings, sasl_password="wrong")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        unreachable = dataclasses.replace(settings, broker=f"kafka://127.0.0.1:{s.getsockname()[1]}")

    # Execute
    with pytest.raises(BrokerConnectionError, match="SASL authentication failed"):
        connection_check.check_connection(refused)
    connection_check.check_connection(unreachable, timeout_s=2)  # not an error: clients retry

    # Assert: no probe IO thread is left retrying in the background
    probes = [t.name for t in threading.enumerate() if t.name.startswith(f"kafka-io-{settings.app_id}-check")]
    assert probes == []


@pytest.mark.slow
def test_the_pipeline_runs_over_mutual_tls(tmp_path: Path) -> None:
    # Prepare: a broker whose only client listener is SSL and that requires client certificates
    with ApacheKafkaBroker(security_protocol="SSL") as broker:
        settings = secure_settings(broker, tmp_path, "mtls")
        assert (settings.ssl_certfile, settings.ssl_keyfile) != ("", "")
        ensure_topics(settings)
        worker = launch_worker(settings, tmp_path)
        try:
            # Execute: readings in, models out, every client with the client certificate
            with EdgeSubscriber(settings, DEVICES) as edge:
                with SensorProducer(settings, gateway_size=10) as producer:
                    producer.send_batch(readings(40))
                deadline = time.monotonic() + 120
                while any(edge.current_version(d) is None for d in DEVICES):
                    assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                    assert time.monotonic() < deadline, (
                        edge.state.versions(),
                        last_stats(tmp_path / "worker.log"),
                    )
                    edge.poll_once(500)

            # Assert: the models arrived and were accepted; a client without a certificate is refused
            assert producer.readings_acked == 120
            assert edge.state.counts["accepted"] >= len(DEVICES)
            no_cert = dataclasses.replace(settings, ssl_certfile="", ssl_keyfile="")
            with pytest.raises(BrokerConnectionError, match="refused this client's certificate"):
                SensorProducer(no_cert)
        finally:
            code = stop(worker)
        assert code == 0, (tmp_path / "worker.log").read_text()[-3000:]
