"""``metastream keys``: Ed25519 key pairs, and root-signed key sets that rotate or revoke them.

``keys generate`` writes ``<name>.key.pem`` (PKCS#8, owner-only) for the
workers (``--signing-key``) and ``<name>.pub.pem`` for the edges
(``--trusted-key``).  Existing files are never overwritten: replacing a key
silently would make every edge refuse new models.

A *root* pair (``keys generate --name root``) signs key sets only; edges
trust its public half (``metastream-edge --root-key``).  ``keys sign-set``
signs a key set offline, where the root key lives, and ``keys publish-set``
puts the signed file on the meta topic, where every edge following it picks
it up: models signed by a rotated-in key are accepted from then on, and a
revoked key's models are refused.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from metastream_edge.keyset import KEYSET_KEY, KeySet, peek_keyset, seal_keyset
from metastream_edge.signing import Signer, key_id, load_public_key

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def key_paths(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """``(private, public)`` paths for key ``name`` in ``out_dir``.

    Examples
    --------
    >>> [p.name for p in key_paths("keys", "worker")]
    ['worker.key.pem', 'worker.pub.pem']
    >>> key_paths(".", "../x")
    Traceback (most recent call last):
    ...
    ValueError: key name '../x' must be letters, digits, '.', '_' or '-' (no path)
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"key name {name!r} must be letters, digits, '.', '_' or '-' (no path)")
    return Path(out_dir) / f"{name}.key.pem", Path(out_dir) / f"{name}.pub.pem"


def generate_key_pair(out_dir: str | Path = ".", name: str = "worker") -> tuple[Path, Path]:
    """Write a fresh Ed25519 key pair; returns ``(private, public)``.

    Raises
    ------
    FileExistsError
        If either file exists (nothing is written then).

    Examples
    --------
    >>> import tempfile
    >>> from connectors.signing import Signer, Verifier
    >>> with tempfile.TemporaryDirectory() as d:
    ...     private, public = generate_key_pair(d, "w1")
    ...     mode = oct(private.stat().st_mode & 0o777)
    ...     opened = Verifier.from_files(public).open(Signer.from_file(private).seal(b"m"))
    >>> mode, opened
    ('0o600', b'm')
    """
    private, public = key_paths(out_dir, name)
    existing = [str(p) for p in (private, public) if p.exists()]
    if existing:
        raise FileExistsError(
            f"refusing to overwrite {' and '.join(existing)}; move them away or pick another --name"
        )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    # Created owner-only: the key is never readable by others, not even for an instant.
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with open(public, "xb") as f:
        f.write(public_pem)
    return private, public


def revoked_id(spec: str) -> bytes:
    """A key id to revoke: 16 hex digits, or a PEM public key file.

    Examples
    --------
    >>> revoked_id("00112233445566ff").hex()
    '00112233445566ff'
    >>> revoked_id("nothing-here.pem")
    Traceback (most recent call last):
    ...
    ValueError: --revoke 'nothing-here.pem' is neither 16 hex digits nor a PEM public key file
    """
    if re.fullmatch(r"[0-9a-fA-F]{16}", spec):
        return bytes.fromhex(spec)
    if not Path(spec).is_file():
        raise ValueError(f"--revoke {spec!r} is neither 16 hex digits nor a PEM public key file")
    return key_id(load_public_key(spec))


def sign_key_set(
    root_key: str | Path, trusted: Sequence[str | Path], revoked: Sequence[str], version: int
) -> bytes:
    """The root-signed key set trusting the PEM public keys ``trusted`` and revoking ``revoked``.

    Examples
    --------
    >>> import tempfile
    >>> from metastream_edge.keyset import KeySetFollower
    >>> from metastream_edge.signing import Verifier
    >>> with tempfile.TemporaryDirectory() as d:
    ...     root, _ = generate_key_pair(d, "root")
    ...     _, old = generate_key_pair(d, "old")
    ...     new_key, new = generate_key_pair(d, "new")
    ...     signed = sign_key_set(root, [new], [str(old)], version=1)
    ...     models = Verifier.from_files(old)
    ...     _ = KeySetFollower(Verifier([Signer.from_file(root).public_key]), models).apply(signed)
    ...     accepted = models.open(Signer.from_file(new_key).seal(b"m"))
    >>> accepted
    b'm'
    """
    if not trusted:
        raise ValueError("a key set must trust at least one key (--trust)")
    keyset = KeySet(
        version, tuple(load_public_key(p) for p in trusted), tuple(revoked_id(r) for r in revoked)
    )
    return seal_keyset(Signer.from_file(root_key), keyset)


def cmd_keys_sign_set(args: argparse.Namespace) -> int:
    """Handler of ``metastream keys sign-set``."""
    signed = sign_key_set(args.root_key, args.trust, args.revoke, args.version)
    out = Path(args.out)
    if out.exists():
        raise FileExistsError(f"refusing to overwrite {out}")
    out.write_bytes(signed)
    print(f"wrote {out}: key set v{args.version}, {len(args.trust)} trusted, {len(args.revoke)} revoked")
    print("publish it with: metastream keys publish-set " + str(out))
    return 0


def cmd_keys_publish_set(args: argparse.Namespace) -> int:
    """Handler of ``metastream keys publish-set``: the signed file onto the meta topic."""
    from kafka import KafkaProducer

    from connectors import kafka_python_fix
    from connectors.settings import Settings

    signed = Path(args.file).read_bytes()
    keyset = peek_keyset(signed)  # a key set, not some other file: edges would only refuse it
    settings = Settings.load(args.settings, broker=args.broker)
    kafka_python_fix.apply()  # a refused password is an error, not endless retries
    producer = KafkaProducer(
        bootstrap_servers=settings.bootstrap, acks="all", **settings.kafka_python_security()
    )
    try:
        producer.send(settings.topic_meta, key=KEYSET_KEY.encode(), value=signed).get(timeout=30)
    finally:
        producer.close()
    print(
        f"published key set v{keyset.version} ({args.file}) to {settings.topic_meta} under key {KEYSET_KEY}"
    )
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    """Handler of ``metastream keys generate``."""
    private, public = generate_key_pair(args.out_dir, args.name)
    print(f"wrote {private} (private, owner-only: give it to workers as --signing-key)")
    print(f"wrote {public} (public: give it to edges as --trusted-key)")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``metastream keys generate|sign-set|publish-set``."""
    p = subparsers.add_parser(
        "keys", help="generate signing keys; sign and publish key sets (rotation, revocation)"
    )
    actions = p.add_subparsers(dest="action", required=True)
    g = actions.add_parser(
        "generate", help="write NAME.key.pem (owner-only, for workers) and NAME.pub.pem (for edges)"
    )
    g.add_argument("--out-dir", default=".", help="directory for the two files (default: here)")
    g.add_argument("--name", default="worker", help="file name stem (default: worker)")
    g.set_defaults(func=cmd_keys_generate)
    s = actions.add_parser(
        "sign-set", help="sign a key set with the root key (offline, where the root key is)"
    )
    s.add_argument("--root-key", required=True, help="the root's private PEM (keys generate --name root)")
    s.add_argument("--trust", action="append", default=[], help="PEM public key to trust; repeatable")
    s.add_argument(
        "--revoke", action="append", default=[], help="PEM public key or 16-hex key id; repeatable"
    )
    s.add_argument("--version", type=int, required=True, help="must be higher than the last published set's")
    s.add_argument("--out", required=True, help="file for the signed key set (never overwritten)")
    s.set_defaults(func=cmd_keys_sign_set)
    u = actions.add_parser("publish-set", help="put a signed key set on the meta topic for every edge")
    u.add_argument("file", help="a file written by keys sign-set")
    u.add_argument("--settings", help="JSON settings file (else METASTREAM_* environment and defaults)")
    u.add_argument("--broker", help="kafka://host:port[,host:port]; overrides the settings")
    u.set_defaults(func=cmd_keys_publish_set)
