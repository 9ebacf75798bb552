"""Root-signed key sets: which worker keys an edge trusts, changed without touching the device.

A device is installed with one *root* public key that signs nothing but key
sets.  A key set names the worker keys to trust from now on and the key ids
to refuse for good; it travels on the meta topic under :data:`KEYSET_KEY`
(compacted, so a device that starts later still gets the latest one).
Its payload starts with :data:`KEYSET_MAGIC`, so no signed model or θ can be
replayed as a key set, and its version must grow.

Revocations accumulate: a later key set cannot trust a key again once it was
revoked, because revocation is the answer to a leaked key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from metastream_edge.signing import HEADER_BYTES, SignatureError, Signer, Verifier, envelope_key_id, key_id

KEYSET_KEY = "__keyset__"
"""Message key of key sets on the meta topic."""

KEYSET_MAGIC = b"metastream-keyset/1\n"


class KeySetError(ValueError):
    """A key set that is not applied; ``reason`` is one of ``no_root_key``, ``not_root_signed``,
    ``bad_keyset`` or ``stale_version``."""

    def __init__(self, reason: str, detail: str, version: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.version = version


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class KeySet:
    """Version ``version`` of the trusted worker keys and the revoked key ids.

    Examples
    --------
    >>> a, b = Signer.generate(), Signer.generate()
    >>> ks = KeySet(2, (b.public_key,), (key_id(a.public_key),))
    >>> back = KeySet.decode(ks.encode())
    >>> back.version, back.trusted_ids == [key_id(b.public_key)], back.revoked == ks.revoked
    (2, True, True)
    >>> KeySet.decode(b"not a key set")
    Traceback (most recent call last):
    ...
    metastream_edge.keyset.KeySetError: bad_keyset: payload is not a key set
    """

    version: int
    trusted: tuple[Ed25519PublicKey, ...]
    revoked: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"a key set's version must be >= 1, got {self.version}")
        if not self.trusted:
            raise ValueError("a key set must trust at least one key")
        if any(len(r) != 8 for r in self.revoked):
            raise ValueError("revoked key ids are 8 bytes each")

    @property
    def trusted_ids(self) -> list[bytes]:
        """Key ids of :attr:`trusted`, in order."""
        return [key_id(k) for k in self.trusted]

    def encode(self) -> bytes:
        """The payload to sign: :data:`KEYSET_MAGIC` and canonical JSON."""
        body = {
            "version": self.version,
            "trusted": [_raw(k).hex() for k in self.trusted],
            "revoked": sorted(r.hex() for r in self.revoked),
        }
        return KEYSET_MAGIC + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> KeySet:
        """Parse :meth:`encode`'s output; :class:`KeySetError` (``bad_keyset``) for anything else."""
        if not payload.startswith(KEYSET_MAGIC):
            raise KeySetError("bad_keyset", "payload is not a key set")
        try:
            body = json.loads(payload[len(KEYSET_MAGIC) :])
            version = body["version"]
            if not isinstance(version, int) or isinstance(version, bool):
                raise TypeError("version is not an integer")
            trusted = tuple(Ed25519PublicKey.from_public_bytes(bytes.fromhex(h)) for h in body["trusted"])
            revoked = tuple(bytes.fromhex(h) for h in body["revoked"])
            return cls(version, trusted, revoked)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise KeySetError("bad_keyset", f"unreadable key set: {exc}") from exc


def seal_keyset(root: Signer, keyset: KeySet) -> bytes:
    """``keyset`` signed by the root key, ready to publish under :data:`KEYSET_KEY`."""
    return root.seal(keyset.encode())


def peek_keyset(envelope: bytes) -> KeySet:
    """The key set inside a signed envelope, NOT verified (for tools that check a file before sending it).

    Examples
    --------
    >>> root = Signer.generate()
    >>> peek_keyset(seal_keyset(root, KeySet(3, (root.public_key,)))).version
    3
    >>> peek_keyset(KeySet(3, (root.public_key,)).encode())
    Traceback (most recent call last):
    ...
    metastream_edge.keyset.KeySetError: bad_keyset: not a signed envelope
    """
    if envelope_key_id(envelope) is None:
        raise KeySetError("bad_keyset", "not a signed envelope")
    return KeySet.decode(envelope[HEADER_BYTES:])


class KeySetFollower:
    """Applies root-signed key sets to a :class:`~metastream_edge.signing.Verifier`.

    Parameters
    ----------
    root : Verifier
        The root public key(s); they verify key sets only.
    target : Verifier
        The verifier of models and θ whose trusted keys the key sets replace.

    Examples
    --------
    >>> root, old, new = Signer.generate(), Signer.generate(), Signer.generate()
    >>> models = Verifier([old.public_key])
    >>> follower = KeySetFollower(Verifier([root.public_key]), models)
    >>> rotate = KeySet(1, (new.public_key,), (key_id(old.public_key),))
    >>> follower.apply(seal_keyset(root, rotate)).version
    1
    >>> models.open(new.seal(b"m")), follower.version
    (b'm', 1)
    >>> follower.apply(seal_keyset(old, KeySet(2, (old.public_key,))))
    Traceback (most recent call last):
    ...
    metastream_edge.keyset.KeySetError: not_root_signed: signed by an unknown key
    """

    def __init__(self, root: Verifier, target: Verifier) -> None:
        self.root = root
        self.target = target
        self.version = 0
        """Version of the last applied key set (0: none yet)."""

    def apply(self, envelope: bytes) -> KeySet:
        """Verify, parse and apply one key set; :class:`KeySetError` says why one is not applied."""
        try:
            payload = self.root.open(envelope)
        except SignatureError as exc:
            raise KeySetError("not_root_signed", str(exc)) from exc
        keyset = KeySet.decode(payload)
        if keyset.version <= self.version:
            raise KeySetError("stale_version", f"key set v{self.version} is applied", keyset.version)
        try:
            self.target.replace(keyset.trusted, keyset.revoked)
        except ValueError as exc:  # every trusted key is revoked
            raise KeySetError("bad_keyset", str(exc), keyset.version) from exc
        self.version = keyset.version
        return keyset
