"""A throw-away certificate authority for a local TLS broker: CA, server and client certificates.

Everything is PEM, which both the Kafka broker (``ssl.keystore.type=PEM``)
and the Python clients read directly, so no ``keytool`` run is needed.
Keys are unencrypted and owner-readable only: these certificates exist for
one local broker and its tests, never for a real deployment.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class LocalPki:
    """Paths of the PEM files :func:`make_local_pki` wrote.

    ``server_keystore`` holds the server key followed by its certificate and
    the CA (Kafka's PEM keystore layout); the others are single PEM objects.
    """

    ca_cert: Path
    server_keystore: Path
    client_cert: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "metastream local test PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # PKCS#8: the only unencrypted private-key layout Kafka's PEM keystore reads.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def make_local_pki(
    directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), days: int = 30
) -> LocalPki:
    """Create a CA, a server certificate for ``hosts`` and a client certificate in ``directory``.

    Parameters
    ----------
    directory : Path
        Where to write ``ca.pem``, ``server.keystore.pem``, ``client.pem`` and ``client.key.pem``.
    hosts : tuple of str
        Names and IP addresses the server certificate is valid for (hostname checks stay on).
    days : int
        Validity of every certificate.

    Returns
    -------
    LocalPki
        The paths written.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     pki = make_local_pki(Path(tmp))
    ...     client = x509.load_pem_x509_certificate(pki.client_cert.read_bytes())
    ...     pki.ca_cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    True
    >>> client.issuer.rfc4514_string()
    'CN=metastream test CA,O=metastream local test PKI'
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    # A minute of back-dating tolerates small clock differences between processes.
    start, end = now - dt.timedelta(minutes=1), now + dt.timedelta(days=days)

    ca_key = _key()
    ca_name = _name("metastream test CA")
    ca = _ca_certificate(ca_name, ca_key, start, end)
    signer = (ca_name, ca_key, start, end)
    server_key, client_key = _key(), _key()
    server = _leaf(signer, hosts[0], server_key, hosts)
    client = _leaf(signer, "metastream-client", client_key, None)

    pem = serialization.Encoding.PEM
    pki = LocalPki(
        ca_cert=directory / "ca.pem",
        server_keystore=directory / "server.keystore.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key.pem",
    )
    _write(pki.ca_cert, ca.public_bytes(pem))
    _write(pki.server_keystore, _key_pem(server_key) + server.public_bytes(pem) + ca.public_bytes(pem), True)
    _write(pki.client_cert, client.public_bytes(pem))
    _write(pki.client_key, _key_pem(client_key), True)
    return pki


def _ca_certificate(
    ca_name: x509.Name, ca_key: ec.EllipticCurvePrivateKey, start: dt.datetime, end: dt.datetime
) -> x509.Certificate:
    """The self-signed CA certificate, valid from ``start`` to ``end``."""
    return (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )


_Signer = tuple[x509.Name, ec.EllipticCurvePrivateKey, dt.datetime, dt.datetime]
"""The CA's name and key, and the validity period of the certificates it signs."""


def _leaf(
    signer: _Signer, common_name: str, key: ec.EllipticCurvePrivateKey, hosts: tuple[str, ...] | None
) -> x509.Certificate:
    """A certificate signed by the CA: a server's for ``hosts``, or (``None``) a client's."""
    ca_name, ca_key, start, end = signer
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if hosts is not None:
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        # The broker also connects to itself (inter-broker listener) and then shows this
        # certificate as a client, so it needs both usages.
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca_key, hashes.SHA256())
