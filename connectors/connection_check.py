"""Fail fast, and say why, when TLS or SASL settings cannot work.

kafka-python treats every failed connection as "not ready yet": a wrong
password or an untrusted CA only surfaces as ``Unable to bootstrap`` when
its bootstrap timeout (30 s by default) runs out, with the real reason in
a log line.  :func:`check_connection` makes one probe connection, watches
kafka-python's log for the reason, and raises :class:`BrokerConnectionError`
naming it and the setting to fix as soon as the failure is certain.

The ``kafka`` logger is shared by every client in the process, so only the
records of the probe's own IO thread count: another client's refusal (say,
one still retrying with an old password) must not be reported as this one's.
The probe is stopped once the check has its answer, so it does not keep
retrying in the background.

A broker that is merely unreachable is *not* an error for
:func:`check_connection`: the clients' own retries handle brokers that are
still starting or restarting.  A command that starts against no broker at
all calls :func:`require_broker` first, which says so within seconds
instead of kafka-python's 30 s wait and traceback.
"""

from __future__ import annotations

import functools
import itertools
import logging
import socket
import ssl
import threading
import time
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    SaslAuthenticationFailedError,
)
from kafka.net.compat import KafkaNetClient
from kafka.net.manager import KafkaConnectionManager
from kafka.net.selector import NetworkSelector

from connectors import kafka_python_fix
from connectors.settings import Settings

_checked: set[tuple[str, ...]] = set()
_checked_lock = threading.Lock()
_probe_numbers = itertools.count()


class BrokerConnectionError(RuntimeError):
    """The broker refused these TLS/SASL settings (wrong password, untrusted certificate, …)."""


class BrokerUnreachableError(BrokerConnectionError):
    """No broker of the bootstrap list accepted a connection in time."""


def _addresses(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port[,host:port]`` as pairs; a clear error for a malformed entry.

    Examples
    --------
    >>> _addresses("127.0.0.1:9092,[::1]:9093")
    [('127.0.0.1', 9092), ('::1', 9093)]
    """
    out = []
    for part in bootstrap.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"broker address {part.strip()!r} is not host:port")
        out.append((host.strip("[]"), int(port)))
    return out


def require_broker(settings: Settings, timeout_s: float = 5.0, *, sleep_s: float = 0.25) -> None:
    """Wait until one bootstrap broker accepts a TCP connection; raise after ``timeout_s``.

    Parameters
    ----------
    settings : Settings
        Its ``broker`` is probed (any of the listed addresses will do).
    timeout_s : float
        Longest wait: a broker that is still starting gets this long.
    sleep_s : float
        Pause between rounds of attempts.

    Raises
    ------
    BrokerUnreachableError
        If no address accepted a connection in time.
    ValueError
        If an address is not ``host:port``.

    Examples
    --------
    >>> with socket.socket() as s:  # a port nothing listens on
    ...     s.bind(("127.0.0.1", 0))
    ...     closed = f"kafka://127.0.0.1:{s.getsockname()[1]}"
    >>> require_broker(Settings(broker=closed), timeout_s=0.2)
    Traceback (most recent call last):
    ...
    connectors.connection_check.BrokerUnreachableError: no broker answers at 127.0.0.1:... (tried for 0.2 s)
    """
    addresses = _addresses(settings.bootstrap)
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while True:
        for host, port in addresses:
            left = deadline - time.monotonic()
            try:
                with socket.create_connection((host, port), timeout=max(0.1, min(left, 2.0))):
                    return
            except OSError as exc:
                last = exc
        if time.monotonic() + sleep_s >= deadline:
            break
        time.sleep(sleep_s)
    # "Connection refused" is what "no broker" means; anything else (a timeout, no route) is worth saying.
    why = "" if last is None or isinstance(last, ConnectionRefusedError) else f": {last.strerror or last}"
    raise BrokerUnreachableError(
        f"no broker answers at {settings.bootstrap} (tried for {timeout_s:g} s{why})"
    )


class _Reasons(logging.Handler):
    """Collects the exceptions kafka-python logs on one client's IO thread while it connects."""

    def __init__(self, io_thread: str) -> None:
        super().__init__(logging.WARNING)
        self.io_thread = io_thread
        self.errors: list[BaseException] = []
        self.definitive = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName != self.io_thread:
            return
        args = record.args if isinstance(record.args, tuple) else ()
        for exc in [a for a in args if isinstance(a, BaseException)]:
            self.errors.append(exc)
            if _explain(exc) is not None:
                self.definitive.set()


class _StoppableClient:
    """A ``kafka_client`` factory for the probe that keeps the IO loop and manager it makes.

    The probe's admin client is still in its constructor when the verdict
    comes, so only these parts can stop it.
    """

    def __init__(self) -> None:
        self.parts: list[tuple[NetworkSelector, KafkaConnectionManager]] = []

    def __call__(self, **configs: Any) -> KafkaNetClient:
        net = NetworkSelector(**configs)
        manager = KafkaConnectionManager(net, **configs)
        self.parts.append((net, manager))
        return KafkaNetClient(net=net, manager=manager, **configs)

    def stop(self, constructor_done: threading.Event) -> None:
        """End the bootstrap loop (the constructor then raises), then the IO thread.

        kafka-python leaves the IO thread running when the constructor fails, so
        this is needed after a timeout too.  A client that was closed is left alone.
        """
        for net, manager in self.parts:
            try:
                net.call_soon_threadsafe(functools.partial(_close, manager))  # on the IO thread
            except RuntimeError:  # "NetworkSelector closed!": the probe succeeded and closed it
                continue
            constructor_done.wait(2)
            net.stop(timeout_ms=2000)


async def _close(manager: KafkaConnectionManager) -> None:
    manager.close()


def _explain(exc: BaseException) -> str | None:
    """What a logged connection error means, when it is a settings problem (else ``None``)."""
    if isinstance(exc, SaslAuthenticationFailedError):
        return "SASL authentication failed: check sasl_username, sasl_password and sasl_mechanism"
    text = str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return "the broker's TLS certificate is not trusted: check ssl_cafile (and the broker's host name)"
    if any(alert in text for alert in ("ALERT_BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "ALERT_UNKNOWN_CA")):
        # TLS alerts from the broker: it wants a client certificate signed by a CA it trusts.
        return "the broker refused this client's certificate: check ssl_certfile and ssl_keyfile"
    if isinstance(exc, (ssl.SSLError, KafkaConnectionError)) and "Handshake failed" in text:
        return "the TLS handshake failed: check ssl_cafile, ssl_certfile, ssl_keyfile and security_protocol"
    return None


def _key(settings: Settings) -> tuple[str, ...]:
    return (
        settings.bootstrap,
        settings.security_protocol,
        settings.ssl_cafile,
        settings.ssl_certfile,
        settings.ssl_keyfile,
        settings.sasl_mechanism,
        settings.sasl_username,
        settings.sasl_password,
    )


def _probe(
    settings: Settings,
    options: dict[str, Any],
    client_id: str,
    client: _StoppableClient,
    timeout_s: float,
    outcome: list[BaseException | None],
    done: threading.Event,
) -> None:
    """Open and close one admin client; append ``None`` or the error to ``outcome``, then set ``done``."""
    try:
        ms = int(timeout_s * 1000)
        kafka_python_fix.apply()
        admin = KafkaAdminClient(
            bootstrap_servers=settings.bootstrap,
            client_id=client_id,
            kafka_client=client,
            bootstrap_timeout_ms=ms,
            request_timeout_ms=ms,
            # Retry within the window: after a first, inconclusive failure, kafka-python's
            # default backoff (up to 30 s) could outlast it and hide the refusal.
            reconnect_backoff_max_ms=500,
            **options,
        )
        admin.close()
        outcome.append(None)
    except BaseException as exc:  # check_connection reports it to its caller
        outcome.append(exc)
    finally:
        done.set()


def check_connection(settings: Settings, timeout_s: float = 10.0) -> None:
    """Probe the broker once with ``settings``' TLS/SASL options; raise if they are refused.

    Does nothing for ``PLAINTEXT`` (nothing to get wrong) and for settings
    that already passed in this process.

    Parameters
    ----------
    settings : Settings
        Broker and security settings.
    timeout_s : float
        Longest wait for a broker that does not answer at all; a refusal
        is reported as soon as it happens.

    Raises
    ------
    BrokerConnectionError
        If the broker refused the credentials or the TLS handshake failed.
    ValueError
        If a TLS file named in the settings does not exist.

    Examples
    --------
    >>> check_connection(Settings())  # PLAINTEXT: nothing to check
    """
    if settings.security_protocol == "PLAINTEXT" or _key(settings) in _checked:
        return
    options = settings.kafka_python_security()  # ValueError for missing files, before connecting
    client_id = f"{settings.app_id}-check-{next(_probe_numbers)}"
    reasons = _Reasons(io_thread=f"kafka-io-{client_id}")  # the name kafka-python gives that thread
    client = _StoppableClient()
    logger = logging.getLogger("kafka")
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)  # the reasons are logged at WARNING/ERROR
    logger.addHandler(reasons)
    outcome: list[BaseException | None] = []
    done = threading.Event()

    # On its own thread so a certain refusal is reported at once instead of after the timeout.
    threading.Thread(
        target=_probe,
        args=(settings, options, client_id, client, timeout_s, outcome, done),
        name="metastream-connection-check",
        daemon=True,
    ).start()
    deadline = time.monotonic() + timeout_s + 5
    try:
        while not done.wait(0.05) and not reasons.definitive.is_set() and time.monotonic() < deadline:
            pass
    finally:
        logger.removeHandler(reasons)
        logger.setLevel(old_level)
        if outcome != [None]:  # refused, timed out or still trying
            client.stop(constructor_done=done)
    for exc in reasons.errors:
        why = _explain(exc)
        if why is not None:
            how = settings.security_protocol
            if settings.sasl_username:
                how += f" {settings.sasl_mechanism} as {settings.sasl_username!r}"
            raise BrokerConnectionError(f"cannot connect to {settings.bootstrap} with {how}: {why} ({exc})")
    error = outcome[0] if outcome else None
    if error is None and outcome:
        with _checked_lock:
            _checked.add(_key(settings))
        return
    if error is not None and not isinstance(error, KafkaTimeoutError):
        # e.g. an unreadable key file: kafka-python fails while building its TLS context.
        raise BrokerConnectionError(f"cannot connect to {settings.bootstrap}: {error!r}") from error
    # Unreachable (not started yet, restarting): the real client's own retries deal with that.
