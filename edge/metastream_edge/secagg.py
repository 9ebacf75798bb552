"""Secure aggregation of device updates (SecAgg, Bonawitz et al. 2017), as plain state machines.

The meta agent learns Σ w·Δ and Σ w over a round's devices, never one device's
Δ: each device adds masks to its quantised vector that cancel in the sum.

Protocol, one round (no transport here; a runner carries the messages):

1. **advertise** — each device sends two fresh X25519 public keys: one to
   agree pairwise masks (``mask``), one to encrypt Shamir shares to its
   peers (``enc``).  The aggregator closes the phase (all expected devices
   in, or the deadline) and broadcasts the :class:`Roster`.
2. **share** — each device splits its mask private key and a fresh
   self-mask seed into Shamir shares (threshold ``t`` of ``n``; pycryptodome's
   :class:`~Crypto.Protocol.SecretSharing.Shamir`) and sends one share of
   each, encrypted (ChaCha20-Poly1305) under a key it agreed with the
   recipient's ``enc`` key, so the aggregator that relays them reads none.
3. **masked input** — each device quantises ``[w·Δ, w]`` to integers mod
   2^64 (:data:`SCALE`, :data:`LIMIT`), adds a self mask expanded from its
   seed and, for every peer ``j`` that shared in phase 2, ``±`` a pairwise
   mask expanded from the X25519 secret they agree on (``+`` towards
   peers after it in roster order, ``-`` towards those before it).
4. **unmask** — the aggregator names the devices whose masked input arrived
   (survivors) and the ones that shared but sent none (dropped).  Each
   survivor returns its shares of the survivors' seeds and of the dropped
   devices' mask keys — never both for one device, and only once per round.
   With ``t`` answers the aggregator removes the self masks of the
   survivors and the pairwise masks the dropped devices left behind; what
   remains is the exact sum of the survivors' quantised vectors.

The aggregator is trusted to follow the protocol but not with any one
device's update (honest-but-curious); ``t`` must exceed half the roster,
so no two disjoint groups of answers exist.  Adverts are not signed here:
an aggregator that forges devices is out of this model.

Fixed point: every entry ``v`` of ``[w·Δ, w]`` becomes ``round(v · SCALE)``;
``|v|`` must stay within :data:`LIMIT` (larger values are refused, not
clipped).  The sum of up to :data:`MAX_DEVICES` devices then fits in a signed
64-bit integer, and each entry of the sum is within
``n_devices / (2 · SCALE)`` of the true sum of floats.

Examples
--------
Three devices, one of which vanishes after sharing its keys:

>>> import numpy as np
>>> clock = FakeClock()
>>> config = RoundConfig("r1", n_params=3, threshold=2, phase_timeout_s=10.0)
>>> ids = ["a", "b", "c"]
>>> rngs = {d: np.random.default_rng(i) for i, d in enumerate(ids)}
>>> devices = {d: DeviceRound(d, config, random_bytes=lambda n, r=rngs[d]: r.bytes(n)) for d in ids}
>>> server = AggregatorRound(config, expected=ids, clock=clock)
>>> for d in ids:
...     server.receive_advert(devices[d].advertise())
>>> roster = server.step()
>>> for d in ids:
...     server.receive_shares(d, devices[d].share_keys(roster))
>>> inbox = server.step()
>>> deltas = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([-1.0, 0.0, 1.0])}
>>> weights = {"a": 1.0, "b": 3.0}
>>> for d in ("a", "b"):  # "c" is gone
...     server.receive_masked(devices[d].masked_input(inbox[d], deltas[d], weights[d]))
>>> clock.now = 10.0  # c's deadline passes
>>> request = server.step()
>>> request.dropped
('c',)
>>> for d in ("a", "b"):
...     server.receive_unmask(devices[d].unmask(request))
>>> result = server.step()
>>> result.mean.round(6).tolist(), result.total_weight
([-0.5, 0.5, 1.5], 4.0)
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SCALE = float(2**24)
"""Fixed-point scale: an entry ``v`` is sent as ``round(v · SCALE)`` mod 2^64."""

LIMIT = float(2**23)
"""Largest ``|v|`` accepted in ``[w·Δ, w]``; beyond it :func:`quantise` raises."""

MAX_DEVICES = 2**15
"""Devices whose sum of in-range vectors still fits a signed 64-bit integer (``LIMIT·SCALE·n < 2^63``)."""

SHARE_BYTES = 16
"""pycryptodome's Shamir shares 16-byte secrets (GF(2^128)); a 32-byte key is shared as two halves."""

RandomBytes = Callable[[int], bytes]


class ProtocolError(ValueError):
    """A message that breaks the protocol (wrong phase, unknown device, bad share, refused request)."""


class LateMessage(ProtocolError):
    """A message for a phase that has already closed (the runner may log and drop it)."""


class Phase(enum.Enum):
    """Where an :class:`AggregatorRound` is."""

    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED = "masked"
    UNMASK = "unmask"
    DONE = "done"
    FAILED = "failed"


class FakeClock:
    """A clock for tests and doctests: ``clock()`` returns ``clock.now``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class RoundConfig:
    """What every party of one round agrees on.

    Parameters
    ----------
    round_id
        Unique per round; bound into every derived key, so nothing carries over.
    n_params
        Length of Δ (the vector sent is ``n_params + 1`` long: ``[w·Δ, w]``).
    threshold
        Shares needed to rebuild a secret, and the fewest devices a phase
        may close with; must exceed half the roster.
    phase_timeout_s
        Each phase closes this long after it opened, with whoever answered.
    """

    round_id: str
    n_params: int
    threshold: int
    phase_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.round_id:
            raise ValueError("round_id must not be empty")
        if self.n_params < 1:
            raise ValueError(f"n_params must be >= 1; got {self.n_params}")
        if self.threshold < 2:
            raise ValueError(f"threshold must be >= 2; got {self.threshold}")
        if not self.phase_timeout_s > 0:
            raise ValueError(f"phase_timeout_s must be > 0; got {self.phase_timeout_s}")

    @property
    def length(self) -> int:
        """Entries of a masked vector: ``n_params`` of ``w·Δ`` plus ``w``."""
        return self.n_params + 1


# --- messages -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyAdvert:
    """Phase 1, device → all: the device's two public keys (raw 32 bytes each)."""

    device_id: str
    mask_key: bytes
    enc_key: bytes


@dataclass(frozen=True)
class Roster:
    """Phase 1 result, aggregator → devices: every advert, in roster (device id) order."""

    round_id: str
    adverts: tuple[KeyAdvert, ...]

    @property
    def device_ids(self) -> tuple[str, ...]:
        return tuple(a.device_id for a in self.adverts)


@dataclass(frozen=True)
class EncryptedShare:
    """Phase 2, device → device via the aggregator: one sealed share pair."""

    sender: str
    recipient: str
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class MaskedInput:
    """Phase 3, device → aggregator: the masked, quantised ``[w·Δ, w]`` (uint64)."""

    device_id: str
    vector: np.ndarray


@dataclass(frozen=True)
class UnmaskRequest:
    """Phase 4, aggregator → survivors: whose seeds and whose mask keys to reveal."""

    round_id: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class UnmaskResponse:
    """Phase 4, survivor → aggregator: its shares (index, bytes) by owner."""

    device_id: str
    seed_shares: Mapping[str, tuple[int, bytes]]
    """Share of each survivor's self-mask seed (16 bytes)."""
    key_shares: Mapping[str, tuple[int, bytes]]
    """Share of each dropped device's mask private key (two 16-byte halves, concatenated)."""


@dataclass(frozen=True)
class AggregateResult:
    """What a round yields: the weighted mean of the survivors' Δ and their total weight."""

    round_id: str
    mean: np.ndarray
    """Σ w·Δ / Σ w over the survivors (float64)."""
    total_weight: float
    weighted_sum: np.ndarray
    """Σ w·Δ (float64)."""
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


# --- fixed point and masks -------------------------------------------------------------------------


def quantise(values: np.ndarray) -> np.ndarray:
    """Float entries → integers mod 2^64 (``round(v · SCALE)``, two's complement).

    Raises
    ------
    ValueError
        On a non-finite entry or one beyond :data:`LIMIT` (refused, not clipped).

    Examples
    --------
    >>> q = quantise(np.array([0.5, -1.0]))
    >>> dequantise(q).tolist()
    [0.5, -1.0]
    >>> quantise(np.array([1e9]))
    Traceback (most recent call last):
    ...
    ValueError: 1 entries beyond the secure-aggregation range ±8388608 (largest |v| 1e+09)
    """
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError("secure aggregation: non-finite entries")
    over = np.abs(v) > LIMIT
    if over.any():
        raise ValueError(
            f"{int(over.sum())} entries beyond the secure-aggregation range ±{LIMIT:.0f} "
            f"(largest |v| {float(np.abs(v).max()):.3g})"
        )
    return np.round(v * SCALE).astype(np.int64).view(np.uint64)


def dequantise(q: np.ndarray) -> np.ndarray:
    """Integers mod 2^64 (a quantised vector or a sum of them) → floats."""
    return np.asarray(q, dtype=np.uint64).view(np.int64).astype(np.float64) / SCALE


def _hkdf(secret: bytes, purpose: str, round_id: str) -> bytes:
    info = f"metastream-secagg/{purpose}/{round_id}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def expand_mask(secret: bytes, purpose: str, round_id: str, length: int) -> np.ndarray:
    """``length`` uint64 words of a ChaCha20 keystream keyed by HKDF(``secret``, purpose, round).

    Examples
    --------
    >>> a = expand_mask(b"s" * 32, "self", "r1", 4)
    >>> a.dtype, len(a), bool((a == expand_mask(b"s" * 32, "self", "r1", 4)).all())
    (dtype('uint64'), 4, True)
    >>> bool((a == expand_mask(b"s" * 32, "self", "r2", 4)).any())
    False
    """
    key = _hkdf(secret, f"mask/{purpose}", round_id)
    # A fresh key per (secret, purpose, round), so the all-zero nonce is never reused with a key.
    encryptor = Cipher(algorithms.ChaCha20(key, b"\x00" * 16), mode=None).encryptor()
    stream = encryptor.update(b"\x00" * (8 * length))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def _pair_mask(own: X25519PrivateKey, peer_public: bytes, round_id: str, length: int) -> np.ndarray:
    secret = own.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return expand_mask(secret, "pair", round_id, length)


def _share_key(own: X25519PrivateKey, peer_public: bytes, round_id: str) -> bytes:
    return _hkdf(own.exchange(X25519PublicKey.from_public_bytes(peer_public)), "share", round_id)


def _aad(round_id: str, sender: str, recipient: str) -> bytes:
    return f"{round_id}\x00{sender}\x00{recipient}".encode()


def _shamir_split(threshold: int, n: int, secret: bytes) -> list[list[tuple[int, bytes]]]:
    """``secret`` (a multiple of 16 bytes) split chunk by chunk; one list of ``(index, share)`` per chunk."""
    chunks = [secret[i : i + SHARE_BYTES] for i in range(0, len(secret), SHARE_BYTES)]
    return [Shamir.split(threshold, n, chunk) for chunk in chunks]


def _shamir_combine(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """The secret from ``(index, share)`` pairs whose shares hold one or more 16-byte chunks."""
    n_chunks = len(shares[0][1]) // SHARE_BYTES
    out = b""
    for c in range(n_chunks):
        part = [(i, s[c * SHARE_BYTES : (c + 1) * SHARE_BYTES]) for i, s in shares]
        out += Shamir.combine(part)
    return out


# --- the device's side -------------------------------------------------------------------------------


class DeviceRound:
    """One device's part in one round (it runs on the edge: numpy and cryptography only).

    Parameters
    ----------
    device_id
        This device's id (its place in the roster is its sorted position).
    config
        The round's :class:`RoundConfig`.
    random_bytes
        Source of the keys and the seed; ``os.urandom`` unless a test seeds one.
    """

    def __init__(self, device_id: str, config: RoundConfig, random_bytes: RandomBytes = os.urandom) -> None:
        self.device_id = device_id
        self.config = config
        self.random_bytes = random_bytes
        self._mask_sk = X25519PrivateKey.from_private_bytes(random_bytes(32))
        self._enc_sk = X25519PrivateKey.from_private_bytes(random_bytes(32))
        self._seed = random_bytes(SHARE_BYTES)
        self._roster: Roster | None = None
        self._peers: tuple[str, ...] = ()
        # Shares this device holds, by owner: (index, seed share, mask-key share).
        self._held: dict[str, tuple[int, bytes, bytes]] = {}
        self._answered = False

    def advertise(self) -> KeyAdvert:
        """Phase 1: the two public keys."""
        return KeyAdvert(
            self.device_id,
            self._mask_sk.public_key().public_bytes_raw(),
            self._enc_sk.public_key().public_bytes_raw(),
        )

    def share_keys(self, roster: Roster) -> list[EncryptedShare]:
        """Phase 2: a sealed share of the mask key and of the seed for every other device in ``roster``."""
        cfg = self.config
        ids = roster.device_ids
        if roster.round_id != cfg.round_id:
            raise ProtocolError(f"roster for round {roster.round_id!r}, not {cfg.round_id!r}")
        if self.device_id not in ids or len(set(ids)) != len(ids) or list(ids) != sorted(ids):
            raise ProtocolError("roster must list this device once, every device once, in sorted order")
        if len(ids) < cfg.threshold or 2 * cfg.threshold <= len(ids):
            raise ProtocolError(f"threshold {cfg.threshold} must be <= {len(ids)} devices and above half")
        self._roster = roster
        key_bytes = self._mask_sk.private_bytes_raw()
        key_split = _shamir_split(cfg.threshold, len(ids), key_bytes)
        (seed_split,) = _shamir_split(cfg.threshold, len(ids), self._seed)
        out = []
        for pos, advert in enumerate(roster.adverts):
            index = pos + 1
            seed_share = seed_split[pos][1]
            key_share = b"".join(chunk[pos][1] for chunk in key_split)
            assert all(chunk[pos][0] == index for chunk in key_split) and seed_split[pos][0] == index
            if advert.device_id == self.device_id:
                self._held[self.device_id] = (index, seed_share, key_share)
                continue
            nonce = self.random_bytes(12)
            aead = ChaCha20Poly1305(_share_key(self._enc_sk, advert.enc_key, cfg.round_id))
            plain = index.to_bytes(4, "big") + seed_share + key_share
            sealed = aead.encrypt(nonce, plain, _aad(cfg.round_id, self.device_id, advert.device_id))
            out.append(EncryptedShare(self.device_id, advert.device_id, nonce, sealed))
        return out

    def masked_input(self, inbox: Iterable[EncryptedShare], delta: np.ndarray, weight: float) -> MaskedInput:
        """Phase 3: ``[w·Δ, w]`` quantised and masked, given the shares the other devices sent this one.

        The pairwise masks are with exactly the senders in ``inbox``: those
        the aggregator will also count as having shared.
        """
        cfg = self.config
        if self._roster is None:
            raise ProtocolError("masked_input before share_keys")
        delta = np.asarray(delta, dtype=np.float64).reshape(-1)
        if delta.shape != (cfg.n_params,):
            raise ValueError(f"delta has {delta.size} entries; the round expects {cfg.n_params}")
        if not (np.isfinite(weight) and weight > 0):
            raise ValueError(f"weight must be a positive number; got {weight}")
        adverts = {a.device_id: a for a in self._roster.adverts}
        peers = []
        for share in inbox:
            if share.recipient != self.device_id or share.sender not in adverts:
                raise ProtocolError(f"share {share.sender!r} → {share.recipient!r} is not for this device")
            if share.sender in self._held or share.sender == self.device_id:
                raise ProtocolError(f"two shares from {share.sender!r}")
            aead = ChaCha20Poly1305(_share_key(self._enc_sk, adverts[share.sender].enc_key, cfg.round_id))
            try:
                plain = aead.decrypt(
                    share.nonce, share.ciphertext, _aad(cfg.round_id, share.sender, self.device_id)
                )
            except InvalidTag as exc:
                raise ProtocolError(f"share from {share.sender!r} does not decrypt") from exc
            index = int.from_bytes(plain[:4], "big")
            if index != self._held[self.device_id][0]:
                raise ProtocolError(f"share from {share.sender!r} has index {index}, not this device's")
            self._held[share.sender] = (index, plain[4 : 4 + SHARE_BYTES], plain[4 + SHARE_BYTES :])
            peers.append(share.sender)
        if len(peers) + 1 < cfg.threshold:
            raise ProtocolError(f"only {len(peers) + 1} devices shared keys; the round needs {cfg.threshold}")
        self._peers = tuple(sorted(peers))
        y = quantise(np.concatenate([weight * delta, [weight]]))
        y = y + expand_mask(self._seed, "self", cfg.round_id, cfg.length)
        for peer in self._peers:
            m = _pair_mask(self._mask_sk, adverts[peer].mask_key, cfg.round_id, cfg.length)
            # Adding a mask for later peers and subtracting it for earlier ones cancels in the sum.
            y = y + m if self.device_id < peer else y - m
        return MaskedInput(self.device_id, y)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Phase 4: this device's shares of the survivors' seeds and of the dropped devices' keys.

        Refuses a second request, a request naming a device both ways, one
        naming this device as dropped, or one with fewer survivors than the
        threshold (each would let the aggregator unmask one device's input).
        """
        cfg = self.config
        survivors, dropped = set(request.survivors), set(request.dropped)
        if request.round_id != cfg.round_id:
            raise ProtocolError(f"unmask request for round {request.round_id!r}, not {cfg.round_id!r}")
        if self._answered:
            raise ProtocolError("this device already answered an unmask request this round")
        if survivors & dropped or self.device_id not in survivors:
            raise ProtocolError(
                "a device is named both survivor and dropped, or this device is not a survivor"
            )
        known = set(self._peers) | {self.device_id}
        if not (survivors | dropped) <= known:
            raise ProtocolError(
                f"unmask request names devices that did not share: {sorted((survivors | dropped) - known)}"
            )
        if len(survivors) < cfg.threshold:
            raise ProtocolError(f"{len(survivors)} survivors; unmasking needs {cfg.threshold}")
        self._answered = True
        seeds = {d: (self._held[d][0], self._held[d][1]) for d in sorted(survivors)}
        keys = {d: (self._held[d][0], self._held[d][2]) for d in sorted(dropped)}
        return UnmaskResponse(self.device_id, seeds, keys)


# --- the aggregator's side ----------------------------------------------------------------------------


@dataclass
class _Collected:
    adverts: dict[str, KeyAdvert] = field(default_factory=dict)
    shares: dict[str, list[EncryptedShare]] = field(default_factory=dict)
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    unmask: dict[str, UnmaskResponse] = field(default_factory=dict)


class AggregatorRound:
    """The aggregator's side of one round: collects each phase, closes it, and sums.

    Each phase closes at :meth:`step` once every device expected in it has
    answered, or once ``config.phase_timeout_s`` has passed since it opened
    (``clock`` is injected); closing with fewer than ``config.threshold``
    devices fails the round (:attr:`failure` says why).

    Parameters
    ----------
    config
        The round's :class:`RoundConfig`.
    expected
        Devices invited to the round (the advertise phase waits for these).
    clock
        Seconds, monotonic (``time.monotonic`` in a runner).
    """

    def __init__(self, config: RoundConfig, expected: Iterable[str], clock: Callable[[], float]) -> None:
        self.config = config
        self.expected = frozenset(expected)
        if len(self.expected) < config.threshold:
            raise ValueError(f"{len(self.expected)} devices invited; the threshold is {config.threshold}")
        if len(self.expected) > MAX_DEVICES:
            raise ValueError(f"{len(self.expected)} devices invited; at most {MAX_DEVICES} fit the sum")
        self.clock = clock
        self.phase = Phase.ADVERTISE
        self.failure = ""
        self.result: AggregateResult | None = None
        """The round's outcome once it is done."""
        self._opened = clock()
        self._got = _Collected()
        self._roster: Roster | None = None
        self._sharers: tuple[str, ...] = ()
        self._request: UnmaskRequest | None = None

    # arrivals

    def _check(self, phase: Phase, device_id: str, allowed: Iterable[str]) -> None:
        if self.phase is not phase:
            raise LateMessage(
                f"{phase.value} message from {device_id!r} while the round is in {self.phase.value}"
            )
        if device_id not in allowed:
            raise ProtocolError(f"{device_id!r} has no part in the {phase.value} phase of this round")

    def receive_advert(self, advert: KeyAdvert) -> None:
        """Phase 1 arrival."""
        self._check(Phase.ADVERTISE, advert.device_id, self.expected)
        if len(advert.mask_key) != 32 or len(advert.enc_key) != 32 or advert.mask_key == advert.enc_key:
            raise ProtocolError(f"advert of {advert.device_id!r}: two distinct 32-byte X25519 keys expected")
        self._got.adverts[advert.device_id] = advert

    def receive_shares(self, device_id: str, shares: Sequence[EncryptedShare]) -> None:
        """Phase 2 arrival: one device's sealed shares, one for every other roster device."""
        assert self._roster is not None or self.phase is not Phase.SHARE
        self._check(Phase.SHARE, device_id, self._roster.device_ids if self._roster else ())
        others = set(self._roster.device_ids if self._roster else ()) - {device_id}
        if {s.recipient for s in shares} != others or len(shares) != len(others):
            raise ProtocolError(f"{device_id!r} must send exactly one share to each other roster device")
        if any(s.sender != device_id for s in shares):
            raise ProtocolError(f"shares sent by {device_id!r} name another sender")
        self._got.shares[device_id] = list(shares)

    def receive_masked(self, masked: MaskedInput) -> None:
        """Phase 3 arrival."""
        self._check(Phase.MASKED, masked.device_id, self._sharers)
        v = np.asarray(masked.vector)
        if v.dtype != np.uint64 or v.shape != (self.config.length,):
            raise ProtocolError(
                f"masked input of {masked.device_id!r}: {self.config.length} uint64 entries expected, "
                f"got {v.shape} {v.dtype}"
            )
        self._got.masked[masked.device_id] = v

    def receive_unmask(self, response: UnmaskResponse) -> None:
        """Phase 4 arrival."""
        assert self._request is not None or self.phase is not Phase.UNMASK
        self._check(Phase.UNMASK, response.device_id, self._request.survivors if self._request else ())
        assert self._request is not None
        if set(response.seed_shares) != set(self._request.survivors) or set(response.key_shares) != set(
            self._request.dropped
        ):
            raise ProtocolError(f"unmask response of {response.device_id!r} does not answer the request")
        self._got.unmask[response.device_id] = response

    # closing phases

    def _waiting_for(self) -> set[str]:
        if self.phase is Phase.ADVERTISE:
            return set(self.expected) - set(self._got.adverts)
        if self.phase is Phase.SHARE:
            assert self._roster is not None
            return set(self._roster.device_ids) - set(self._got.shares)
        if self.phase is Phase.MASKED:
            return set(self._sharers) - set(self._got.masked)
        if self.phase is Phase.UNMASK:
            assert self._request is not None
            return set(self._request.survivors) - set(self._got.unmask)
        return set()

    def _fail(self, why: str) -> None:
        self.phase = Phase.FAILED
        self.failure = why

    def step(self) -> Roster | dict[str, list[EncryptedShare]] | UnmaskRequest | AggregateResult | None:
        """Close the current phase if it is complete or past its deadline.

        Returns what the next phase starts with: the :class:`Roster` (to
        every device), each device's inbox of sealed shares (by device id),
        the :class:`UnmaskRequest` (to the survivors), or the
        :class:`AggregateResult`; ``None`` while the phase stays open or
        once the round has failed.
        """
        if self.phase in (Phase.DONE, Phase.FAILED):
            return None
        now = self.clock()
        if self._waiting_for() and now < self._opened + self.config.phase_timeout_s:
            return None
        t = self.config.threshold
        self._opened = now
        if self.phase is Phase.ADVERTISE:
            ids = sorted(self._got.adverts)
            if len(ids) < t or 2 * t <= len(ids):
                self._fail(f"advertise: {len(ids)} devices; threshold {t} needs between {t} and {2 * t - 1}")
                return None
            self._roster = Roster(self.config.round_id, tuple(self._got.adverts[d] for d in ids))
            self.phase = Phase.SHARE
            return self._roster
        if self.phase is Phase.SHARE:
            self._sharers = tuple(sorted(self._got.shares))
            if len(self._sharers) < t:
                self._fail(f"share: {len(self._sharers)} devices shared keys; threshold {t}")
                return None
            inbox: dict[str, list[EncryptedShare]] = {d: [] for d in self._sharers}
            for sender in self._sharers:
                for share in self._got.shares[sender]:
                    if share.recipient in inbox:
                        inbox[share.recipient].append(share)
            self.phase = Phase.MASKED
            return inbox
        if self.phase is Phase.MASKED:
            survivors = tuple(sorted(self._got.masked))
            if len(survivors) < t:
                self._fail(f"masked input: {len(survivors)} devices; threshold {t}")
                return None
            dropped = tuple(d for d in self._sharers if d not in self._got.masked)
            self._request = UnmaskRequest(self.config.round_id, survivors, dropped)
            self.phase = Phase.UNMASK
            return self._request
        # Phase.UNMASK
        if len(self._got.unmask) < t:
            self._fail(f"unmask: {len(self._got.unmask)} answers; threshold {t}")
            return None
        try:
            self.result = self._unmask()
        except (ProtocolError, ValueError) as exc:  # bad shares: the round fails, with the reason
            self._fail(f"unmask: {exc}")
            return None
        self.phase = Phase.DONE
        return self.result

    def _unmask(self) -> AggregateResult:
        assert self._request is not None and self._roster is not None
        cfg = self.config
        answers = list(self._got.unmask.values())[: cfg.threshold]
        adverts = {a.device_id: a for a in self._roster.adverts}
        total = np.zeros(cfg.length, dtype=np.uint64)
        for d in self._request.survivors:
            total = total + self._got.masked[d]
        for d in self._request.survivors:
            seed = _shamir_combine([a.seed_shares[d] for a in answers])
            total = total - expand_mask(seed, "self", cfg.round_id, cfg.length)
        for d in self._request.dropped:
            key = X25519PrivateKey.from_private_bytes(_shamir_combine([a.key_shares[d] for a in answers]))
            if key.public_key().public_bytes_raw() != adverts[d].mask_key:
                raise ProtocolError(f"the shares of {d!r}'s mask key do not rebuild the key it advertised")
            for s in self._request.survivors:
                m = _pair_mask(key, adverts[s].mask_key, cfg.round_id, cfg.length)
                # Survivor s added m towards a later d and subtracted it towards an earlier one.
                total = total - m if s < d else total + m
        summed = dequantise(total)
        weight = float(summed[-1])
        if not weight > 0:
            raise ProtocolError(f"the unmasked total weight is {weight}; the sum is not usable")
        return AggregateResult(
            cfg.round_id,
            mean=summed[:-1] / weight,
            total_weight=weight,
            weighted_sum=summed[:-1],
            survivors=self._request.survivors,
            dropped=self._request.dropped,
        )
