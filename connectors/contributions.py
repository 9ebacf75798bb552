"""Meta contributions on the wire: signed, attributed to a sender, refused with a reason.

Wire format
-----------
A contribution is one Kafka message on the deltas topic (``metastream.deltas``,
one partition), key = the sender's id (bytes, informative only), value =
``Signer.seal(payload)`` from :mod:`connectors.signing`, i.e.::

    b"MSG1" · key id (8 bytes: sha256(raw public key)[:8]) · Ed25519 signature (64 bytes) · payload

The signature covers the whole payload.  The payload is
:func:`wire.models.encode_deltas`: a safetensors file with the tensors
``deltas`` (float32 ``[n, P]``, proposed changes of θ) and ``weights``
(float32 ``[n]``, readings behind each row) and the string metadata
``source``, ``base_meta_version``, ``n_params``, ``schema_version`` (each
JSON-encoded) and ``sha256`` (tensors digest ``:`` header digest).  A row
is the parameters flattened in the architecture's order, the key order of
:func:`learners.nets.init_params` (``0.weight``, ``0.bias``, ``2.weight``,
``2.bias``, … each row-major), never the order of a decoded θ payload, which
safetensors does not keep.

Who may send what
-----------------
- ``source = "worker:<id>"``: signed with the workers' key (``signing_key``,
  the key that signs models and θ).
- ``source = "edge:<device_id>"``: signed with *that device's* key, listed
  in the ``device_keys`` directory as ``<device_id>.pem`` (a PEM Ed25519
  public key).  A device key signs for its own device only.  Files added
  later are picked up without a restart (the directory is re-read when an
  unknown key shows up and the directory changed).

Anything else is refused, counted by reason (:data:`REASONS`) and logged at
most once per reason per ``log_every_s``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from torch import Tensor

from connectors.signing import MAGIC, SignatureError, Verifier, key_id
from wire.models import CodecError, DeltaHeader, decode_deltas

log = logging.getLogger(__name__)

REASONS = ("unsigned", "unknown_key", "bad_signature", "wrong_source", "malformed", "wrong_shape")
"""Why a contribution is refused (``reason`` label of ``metastream_meta_contributions_rejected_total``)."""

WORKER_PREFIX = "worker:"
EDGE_PREFIX = "edge:"


class ContributionRefused(ValueError):
    """A contribution the meta agent does not apply; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def envelope_key_id(envelope: bytes) -> bytes | None:
    """The key id of a :meth:`Signer.seal` envelope, or ``None`` if it is not one."""
    if len(envelope) < len(MAGIC) + 8 + 64 or not envelope.startswith(MAGIC):
        return None
    return envelope[len(MAGIC) : len(MAGIC) + 8]


class DeviceKeys:
    """Federated devices' public keys: ``<device_id>.pem`` files in one directory.

    Examples
    --------
    >>> import tempfile
    >>> from connectors.signing import Signer
    >>> folder = Path(tempfile.mkdtemp())
    >>> Signer.generate().save(folder / "dev-1.key", folder / "dev-1.pem")
    >>> keys = DeviceKeys(folder)
    >>> sorted(keys.devices())
    ['dev-1']
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(f"device_keys: no such directory {str(self.directory)!r}")
        self._by_id: dict[bytes, tuple[str, Verifier]] = {}
        self._stamp: float | None = None
        self.reload()

    def reload(self) -> None:
        """Read every ``*.pem`` file again; a file that is not an Ed25519 public key is an error."""
        by_id: dict[bytes, tuple[str, Verifier]] = {}
        stamp = self.directory.stat().st_mtime
        for path in sorted(self.directory.glob("*.pem")):
            verifier = Verifier.from_files(path)
            device = path.name[: -len(".pem")]
            (kid,) = verifier.key_ids  # one key per file
            by_id[kid] = (device, verifier)
        self._by_id, self._stamp = by_id, stamp

    def devices(self) -> list[str]:
        """Device ids with a key."""
        return [d for d, _ in self._by_id.values()]

    def lookup(self, kid: bytes) -> tuple[str, Verifier] | None:
        """The device and verifier of a key id, re-reading the directory once if it changed."""
        found = self._by_id.get(kid)
        if found is None and self.directory.stat().st_mtime != self._stamp:
            self.reload()
            found = self._by_id.get(kid)
        return found


class RateLimitedLog:
    """At most one warning per key per ``every_s`` seconds, saying how many were not logged.

    Examples
    --------
    >>> now = [0.0]
    >>> limited = RateLimitedLog(every_s=60.0, clock=lambda: now[0])
    >>> limited.allow("unsigned"), limited.allow("unsigned"), limited.allow("unknown_key")
    ((True, 0), (False, 0), (True, 0))
    >>> now[0] = 61.0
    >>> limited.allow("unsigned")
    (True, 1)
    """

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._skipped: Counter[str] = Counter()

    def allow(self, key: str) -> tuple[bool, int]:
        """``(log now?, how many of this key were skipped since the last one logged)``."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._skipped[key] += 1
            return False, 0
        self._last[key] = now
        skipped, self._skipped[key] = self._skipped[key], 0
        return True, skipped


@dataclass(frozen=True)
class Contribution:
    """A verified contribution: its rows, weights, header and who signed it."""

    deltas: Tensor
    weights: Tensor
    header: DeltaHeader
    signer: str
    """``"worker"`` or ``"edge:<device_id>"``."""


class ContributionGate:
    """Verifies and attributes contribution messages; counts and logs what it refuses.

    Parameters
    ----------
    worker_keys
        Public keys of the workers (any ``worker:<id>`` source).
    device_keys
        Federated devices' keys; ``None``: no federated device is allowed.
    n_params
        Parameters of θ; a contribution of another width is refused.
    log_every_s, clock
        Rate limit of the refusal warnings, and the clock it reads.

    Examples
    --------
    >>> import torch
    >>> from connectors.signing import Signer
    >>> from wire.models import encode_deltas
    >>> worker = Signer.generate()
    >>> gate = ContributionGate([worker.public_key], None, n_params=2)
    >>> payload = encode_deltas(torch.ones(1, 2), torch.ones(1), DeltaHeader("worker:w1", 0, 2))
    >>> gate.open(worker.seal(payload)).signer
    'worker'
    >>> gate.open(payload)
    Traceback (most recent call last):
    ...
    connectors.contributions.ContributionRefused: unsigned: no signature envelope
    >>> gate.refused["unsigned"]
    1
    """

    def __init__(
        self,
        worker_keys: list[Ed25519PublicKey],
        device_keys: DeviceKeys | None,
        n_params: int,
        log_every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workers = Verifier(worker_keys)
        self._worker_ids = {key_id(k) for k in worker_keys}
        self.device_keys = device_keys
        self.n_params = n_params
        self.refused: Counter[str] = Counter({r: 0 for r in REASONS})
        self._log = RateLimitedLog(log_every_s, clock)

    def open(self, value: bytes) -> Contribution:
        """The verified contribution, or :class:`ContributionRefused` (counted and rate-limited logged)."""
        try:
            return self._open(value)
        except ContributionRefused as exc:
            self.refused[exc.reason] += 1
            now, skipped = self._log.allow(exc.reason)
            if now:
                more = f" ({skipped} more refused for this reason since the last warning)" if skipped else ""
                log.warning("meta contribution refused: %s%s", exc, more)
            raise

    def _open(self, value: bytes) -> Contribution:
        kid = envelope_key_id(value)
        if kid is None:
            raise ContributionRefused("unsigned", "no signature envelope")
        if kid in self._worker_ids:
            payload, signer = self._verify(self.workers, value), "worker"
        else:
            found = self.device_keys.lookup(kid) if self.device_keys is not None else None
            if found is None:
                raise ContributionRefused(
                    "unknown_key", f"key id {kid.hex()} is neither a worker's nor a device's"
                )
            device, verifier = found
            payload, signer = self._verify(verifier, value), EDGE_PREFIX + device
        try:
            deltas, weights, header = decode_deltas(payload)
        except CodecError as exc:
            raise ContributionRefused("malformed", str(exc)) from exc
        allowed = header.source.startswith(WORKER_PREFIX) if signer == "worker" else header.source == signer
        if not allowed:
            raise ContributionRefused("wrong_source", f"{header.source!r} signed by {signer}'s key")
        if deltas.shape[1] != self.n_params or float(weights.sum()) <= 0:
            raise ContributionRefused(
                "wrong_shape", f"expected {self.n_params} parameters and a positive weight"
            )
        return Contribution(deltas, weights, header, signer)

    @staticmethod
    def _verify(verifier: Verifier, value: bytes) -> bytes:
        try:
            return verifier.open(value)
        except SignatureError as exc:
            raise ContributionRefused("bad_signature", str(exc)) from exc


__all__ = [
    "REASONS",
    "Contribution",
    "ContributionGate",
    "ContributionRefused",
    "DeviceKeys",
    "RateLimitedLog",
    "envelope_key_id",
]
