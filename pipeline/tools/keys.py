"""``metastream keys generate``: the workers' Ed25519 signing key pair, as PEM files.

``<name>.key.pem`` (PKCS#8, owner-only) is for the workers (``--signing-key``),
``<name>.pub.pem`` for the edges (``--trusted-key``).  Existing files are never
overwritten: replacing a key silently would make every edge refuse new models.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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


def cmd_keys_generate(args: argparse.Namespace) -> int:
    """Handler of ``metastream keys generate``."""
    private, public = generate_key_pair(args.out_dir, args.name)
    print(f"wrote {private} (private, owner-only: give it to workers as --signing-key)")
    print(f"wrote {public} (public: give it to edges as --trusted-key)")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``metastream keys generate``."""
    p = subparsers.add_parser("keys", help="generate the workers' Ed25519 signing key pair")
    actions = p.add_subparsers(dest="action", required=True)
    g = actions.add_parser(
        "generate", help="write NAME.key.pem (owner-only, for workers) and NAME.pub.pem (for edges)"
    )
    g.add_argument("--out-dir", default=".", help="directory for the two files (default: here)")
    g.add_argument("--name", default="worker", help="file name stem (default: worker)")
    g.set_defaults(func=cmd_keys_generate)
