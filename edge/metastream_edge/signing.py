"""Ed25519-signed envelopes for model payloads (and θ).

Envelope layout: ``b"MSG1"`` · 8-byte key id · 64-byte signature · payload.
The key id is the first 8 bytes of sha256 of the raw public key, so a
verifier holding several trusted keys (key rotation) knows which to use.
The trusted set can change while running (:meth:`Verifier.replace`, driven
by root-signed key sets, :mod:`metastream_edge.keyset`); a revoked key id
is refused for good.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAGIC = b"MSG1"
_HEAD = len(MAGIC) + 8 + 64
HEADER_BYTES = _HEAD
"""Bytes before the payload in an envelope."""


class SignatureError(ValueError):
    """An envelope that is unsigned, signed by an unknown key, or altered."""


def key_id(public: Ed25519PublicKey) -> bytes:
    """First 8 bytes of sha256 over the raw public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:8]


def envelope_key_id(envelope: bytes) -> bytes | None:
    """The key id an envelope claims (unverified), ``None`` if it is no envelope.

    Examples
    --------
    >>> signer = Signer.generate()
    >>> envelope_key_id(signer.seal(b"m")) == key_id(signer.public_key), envelope_key_id(b"plain")
    (True, None)
    """
    if len(envelope) < _HEAD or not envelope.startswith(MAGIC):
        return None
    return envelope[len(MAGIC) : len(MAGIC) + 8]


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file; :class:`ValueError` for any other kind of key."""
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


class Signer:
    """Signs payloads with one private key.

    Examples
    --------
    >>> signer = Signer.generate()
    >>> verifier = Verifier([signer.public_key])
    >>> verifier.open(signer.seal(b"model bytes"))
    b'model bytes'
    >>> Verifier([Signer.generate().public_key]).open(signer.seal(b"x"))
    Traceback (most recent call last):
    ...
    metastream_edge.signing.SignatureError: signed by an unknown key
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self._id = key_id(self.public_key)

    @classmethod
    def generate(cls) -> Signer:
        """A signer with a fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: str | Path) -> Signer:
        """Load a PEM (PKCS#8, unencrypted) private key."""
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def save(self, private_path: str | Path, public_path: str | Path) -> None:
        """Write the key pair as PEM files (private one readable by the owner only)."""
        priv = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        Path(private_path).write_bytes(priv)
        Path(private_path).chmod(0o600)
        Path(public_path).write_bytes(
            self.public_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def seal(self, payload: bytes) -> bytes:
        """The signed envelope of ``payload``."""
        return MAGIC + self._id + self._key.sign(payload) + payload


class Verifier:
    """Opens envelopes signed by any of the trusted public keys.

    Several keys may be trusted at once, e.g. the old and the new one during a key rotation.

    Examples
    --------
    >>> old, new = Signer.generate(), Signer.generate()
    >>> verifier = Verifier([old.public_key, new.public_key])
    >>> verifier.open(old.seal(b"v1")), verifier.open(new.seal(b"v2"))
    (b'v1', b'v2')
    >>> verifier.open(b"plain bytes")
    Traceback (most recent call last):
    ...
    metastream_edge.signing.SignatureError: unsigned: no signature envelope
    >>> verifier.replace([new.public_key], revoked=[key_id(old.public_key)])
    >>> verifier.open(old.seal(b"v3"))
    Traceback (most recent call last):
    ...
    metastream_edge.signing.SignatureError: signed by a revoked key
    """

    def __init__(self, public_keys: list[Ed25519PublicKey]) -> None:
        if not public_keys:
            raise ValueError("a verifier needs at least one trusted public key")
        self._keys = {key_id(k): k for k in public_keys}
        self._revoked: set[bytes] = set()

    @property
    def revoked(self) -> frozenset[bytes]:
        """Ids of the keys refused for good."""
        return frozenset(self._revoked)

    def replace(self, public_keys: Iterable[Ed25519PublicKey], revoked: Iterable[bytes] = ()) -> None:
        """Trust exactly ``public_keys`` from now on; add ``revoked`` to the ids refused for good.

        A revoked id stays revoked even if a later call lists its key as trusted:
        revocation answers a leaked key, so nothing may quietly undo it.
        """
        revoked_now = self._revoked | set(revoked)
        keys = {key_id(k): k for k in public_keys}
        keys = {kid: k for kid, k in keys.items() if kid not in revoked_now}
        if not keys:
            raise ValueError("a verifier needs at least one trusted, unrevoked public key")
        self._keys, self._revoked = keys, revoked_now

    @classmethod
    def from_files(cls, *paths: str | Path) -> Verifier:
        """Trust the PEM public keys in ``paths``."""
        return cls([load_public_key(p) for p in paths])

    @property
    def key_ids(self) -> tuple[bytes, ...]:
        """The ids (:func:`key_id`) of the trusted keys, in the order they were given."""
        return tuple(self._keys)

    def open(self, envelope: bytes) -> bytes:
        """The payload, or :class:`SignatureError` if anything is wrong."""
        if len(envelope) < _HEAD or not envelope.startswith(MAGIC):
            raise SignatureError("unsigned: no signature envelope")
        kid, sig, payload = envelope[4:12], envelope[12:_HEAD], envelope[_HEAD:]
        if kid in self._revoked:
            raise SignatureError("signed by a revoked key")
        key = self._keys.get(kid)
        if key is None:
            raise SignatureError("signed by an unknown key")
        try:
            key.verify(sig, payload)
        except InvalidSignature as exc:
            raise SignatureError("bad signature: payload or signature altered") from exc
        return payload
