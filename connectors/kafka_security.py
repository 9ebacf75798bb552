"""TLS/SASL for every Kafka client, spelled once per client library.

The settings name the security of the deployment once (``security_protocol``,
``ssl_*``, ``sasl_*``: :class:`connectors.settings.Settings`); each client
library wants it spelled its own way:

- kafka-python (the SDK: producer, edge, admin, tools): :func:`kafka_python_options`;
- aiokafka (the worker's own consumers: meta follower, restore): :func:`aiokafka_options`;
- Faust (the worker's consumer group, producer and admin): :func:`faust_credentials`.

All three derive from the same fields here, so a deployment that connects one
way connects every way.  Faust is imported only inside :func:`faust_credentials`:
the SDK never needs it.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT


class SecuritySettings(Protocol):
    """The security fields of :class:`connectors.settings.Settings` (validated and normalised there)."""

    @property
    def security_protocol(self) -> str: ...
    @property
    def sasl_mechanism(self) -> str: ...
    @property
    def sasl_username(self) -> str: ...
    @property
    def sasl_password(self) -> str: ...
    @property
    def uses_tls(self) -> bool: ...

    def tls_files(self) -> dict[str, str]:
        """The TLS files that are set, by setting name, after checking that each exists."""
        ...


def kafka_python_spelling(fields: Mapping[str, str]) -> dict[str, Any]:
    """Settings-named security fields → kafka-python's keyword arguments.

    kafka-python names the SASL user ``sasl_plain_username`` for every
    mechanism, SCRAM included.

    Examples
    --------
    >>> kafka_python_spelling({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
    ...     "sasl_username": "u", "sasl_password": "p", "ssl_cafile": "ca.pem"})["sasl_plain_username"]
    'u'
    """
    opts: dict[str, Any] = {k: v for k, v in fields.items() if k.startswith(("security_", "ssl_", "sasl_m"))}
    if "sasl_username" in fields:
        opts["sasl_plain_username"] = fields["sasl_username"]
        opts["sasl_plain_password"] = fields.get("sasl_password", "")
    return opts


def kafka_python_options(settings: SecuritySettings) -> dict[str, Any]:
    """TLS/SASL options in kafka-python's spelling (``KafkaProducer(**opts)`` etc.).

    TLS files are only passed with a TLS protocol, where kafka-python reads
    them (and are checked to exist first).

    Examples
    --------
    >>> from connectors.settings import Settings
    >>> kafka_python_options(Settings())
    {'security_protocol': 'PLAINTEXT'}
    """
    fields: dict[str, str] = {"security_protocol": settings.security_protocol}
    if settings.uses_tls:
        fields |= settings.tls_files()
    if settings.security_protocol.startswith("SASL"):
        fields |= {
            "sasl_mechanism": settings.sasl_mechanism,
            "sasl_username": settings.sasl_username,
            "sasl_password": settings.sasl_password,
        }
    return kafka_python_spelling(fields)


def ssl_context(settings: SecuritySettings) -> ssl.SSLContext | None:
    """The TLS context of every aiokafka/Faust client of the worker (``None`` without TLS).

    Hostname checking stays on, as in kafka-python (it is what aiokafka's
    ``create_ssl_context`` builds); files are checked first so a typo is a
    clear error rather than a handshake failure.

    Examples
    --------
    >>> from connectors.settings import Settings
    >>> ssl_context(Settings()) is None
    True
    """
    if not settings.uses_tls:
        return None
    files = settings.tls_files()
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.get("ssl_cafile"))
    if "ssl_certfile" in files:
        context.load_cert_chain(files["ssl_certfile"], files.get("ssl_keyfile"))
    return context


def aiokafka_options(settings: SecuritySettings) -> dict[str, Any]:
    """TLS/SASL options in aiokafka's spelling (``AIOKafkaConsumer(**opts)``).

    The same keys Faust hands its own aiokafka clients for :func:`faust_credentials`.

    Examples
    --------
    >>> from connectors.settings import Settings
    >>> aiokafka_options(Settings())
    {'security_protocol': 'PLAINTEXT'}
    >>> opts = aiokafka_options(Settings(security_protocol="SASL_PLAINTEXT",
    ...     sasl_mechanism="SCRAM-SHA-256", sasl_username="u", sasl_password="p"))
    >>> opts == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
    ...     "sasl_plain_username": "u", "sasl_plain_password": "p", "ssl_context": None}
    True
    """
    protocol = settings.security_protocol  # normalised and validated by Settings
    if protocol == "PLAINTEXT":
        return {"security_protocol": protocol}
    opts: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL"):
        opts |= {
            "sasl_mechanism": settings.sasl_mechanism,
            "sasl_plain_username": settings.sasl_username,
            "sasl_plain_password": settings.sasl_password,
        }
    opts["ssl_context"] = ssl_context(settings)
    return opts


def faust_credentials(settings: SecuritySettings) -> CredentialsT | None:
    """Faust credentials for ``settings.security_protocol`` (``None`` for PLAINTEXT).

    Faust hands them to its consumer, producer and topic admin.

    Examples
    --------
    >>> from connectors.settings import Settings
    >>> faust_credentials(Settings()) is None
    True
    >>> creds = faust_credentials(Settings(security_protocol="SASL_PLAINTEXT",
    ...     sasl_mechanism="SCRAM-SHA-256", sasl_username="u", sasl_password="p"))
    >>> creds, creds.protocol.value, creds.mechanism.value
    (<SASLCredentials: username=u>, 'SASL_PLAINTEXT', 'SCRAM-SHA-256')
    """
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    import faust  # here only: the SDK side of this module must not need Faust

    context = ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    # SASL_PLAINTEXT or SASL_SSL: Faust picks the protocol from whether there is a TLS context.
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password,
        ssl_context=context,
        mechanism=settings.sasl_mechanism,
    )
