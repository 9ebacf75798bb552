"""Which models an edge device accepts, and the ones it runs: no Kafka in sight.

Models arrive as :class:`~metastream_edge.signing.Signer` envelopes around
:mod:`metastream_edge.codec` payloads, keyed by device id; θ versions come
under the key :data:`META_KEY`, and root-signed key sets under
:data:`~metastream_edge.keyset.KEYSET_KEY`.  :class:`EdgeState` verifies each
offer and hot-swaps what it accepts; every refusal has a reason from
:data:`REFUSALS`.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from metastream_edge.codec import META_KEY, Arrays, CodecError, ModelHeader, decode_model
from metastream_edge.keyset import KEYSET_KEY, KeySetError, KeySetFollower
from metastream_edge.model import EdgeModel
from metastream_edge.signing import SignatureError, Verifier

REFUSALS = (
    "unsigned",
    "unknown_key",
    "revoked_key",
    "bad_signature",
    "bad_payload",
    "wrong_device",
    "stale_version",
    "shape_mismatch",
    "not_subscribed",
    "no_root_key",
    "not_root_signed",
    "bad_keyset",
)
"""Every reason :meth:`EdgeState.offer` can refuse with."""


@dataclass(frozen=True)
class Decision:
    """What :class:`EdgeState` did with one offered model.

    ``reason`` is ``"accepted"`` or one of :data:`REFUSALS`; ``version`` is
    the payload's model version when it could be read; ``payload_device`` the
    device id inside the payload when it is not the key's (``wrong_device``).

    Examples
    --------
    >>> print(Decision("dev-0001", 3, True, "accepted"))
    dev-0001 v3 accepted
    >>> print(Decision("dev-0001", None, False, "unsigned", "no signature envelope"))
    dev-0001 v? refused unsigned
    >>> print(Decision("dev-0001", 7, False, "wrong_device", payload_device="dev-0002"))
    dev-0001 v7 refused wrong_device (a model of dev-0002)
    """

    device_id: str
    version: int | None
    accepted: bool
    reason: str
    detail: str = ""
    payload_device: str | None = None

    def __str__(self) -> str:
        version = "v?" if self.version is None else f"v{self.version}"
        line = f"{self.device_id} {version} {'accepted' if self.accepted else 'refused ' + self.reason}"
        if self.payload_device is not None and self.payload_device != self.device_id:
            line += f" (a model of {self.payload_device})"
        return line


def _architecture(h: ModelHeader) -> tuple[object, ...]:
    return (h.task, h.n_features, h.n_outputs, h.hidden)


def _signature_reason(exc: SignatureError) -> str:
    # SignatureError carries no code; its messages start with a stable word.
    text = str(exc)
    if text.startswith("unsigned"):
        return "unsigned"
    if "revoked key" in text:
        return "revoked_key"
    return "unknown_key" if "unknown key" in text else "bad_signature"


class EdgeState:
    """The models an edge device runs, and the rules for replacing them.

    An offered envelope replaces the current model only if it is signed by
    a trusted key, decodes to an intact payload for the same device id,
    has a newer version and the same architecture; otherwise it is refused
    with a reason and the last good model keeps running.

    Parameters
    ----------
    verifier : Verifier
        The trusted public keys.
    devices : iterable of str
        Device ids this edge runs models for (θ under ``"__meta__"`` is always allowed).
    log_size : int
        How many recent decisions :attr:`log` keeps.
    root : Verifier, optional
        The root key that signs key sets.  Without it, key sets are refused
        (``no_root_key``) and the trusted keys never change.

    A model refused for an ``unknown_key`` is kept (the latest per device)
    and offered again once a key set is applied: after a key rotation, a new
    model can arrive before the key set that trusts its key.

    Examples
    --------
    >>> from metastream_edge.codec import encode_model
    >>> from metastream_edge.signing import Signer
    >>> signer = Signer.generate()
    >>> def model(device: str, version: int) -> bytes:
    ...     h = ModelHeader(device, version, 0, "regression", 2, 1, (4,))
    ...     arrays = {k: np.full(s, 0.1, np.float32) for k, s in h.param_shapes().items()}
    ...     arrays |= {"norm.x_mean": np.zeros(2, np.float32), "norm.x_std": np.ones(2, np.float32),
    ...                "norm.y_mean": np.zeros(1, np.float32), "norm.y_std": np.ones(1, np.float32)}
    ...     return signer.seal(encode_model(arrays, h))
    >>> state = EdgeState(Verifier([signer.public_key]), ["d1"])
    >>> print(state.offer("d1", model("d1", 2)))
    d1 v2 accepted
    >>> print(state.offer("d1", model("d1", 1)))
    d1 v1 refused stale_version
    >>> print(state.offer("d1", Signer.generate().seal(b"x")))
    d1 v? refused unknown_key
    >>> state.version("d1"), state.predict("d1", np.ones((1, 2))).shape
    (2, (1,))
    """

    def __init__(
        self, verifier: Verifier, devices: Iterable[str], log_size: int = 1000, root: Verifier | None = None
    ) -> None:
        self.verifier = verifier
        self.devices = frozenset(devices)
        self.log: deque[Decision] = deque(maxlen=log_size)
        self.counts: Counter[str] = Counter()
        self.keysets = None if root is None else KeySetFollower(root, verifier)
        self._models: dict[str, EdgeModel] = {}
        self._theta: tuple[Arrays, ModelHeader] | None = None
        self._parked: dict[str, bytes] = {}

    def offer(self, device_id: str, envelope: bytes) -> Decision:
        """Verify ``envelope`` (received under key ``device_id``) and hot-swap it in if acceptable.

        An accepted key set also re-offers the parked models; their decisions
        follow it in :attr:`log` (see :meth:`offer_all` to get them back).
        """
        return self.offer_all(device_id, envelope)[0]

    def offer_all(self, device_id: str, envelope: bytes) -> list[Decision]:
        """Like :meth:`offer`, with the decisions on re-offered parked models after the first."""
        if device_id == KEYSET_KEY:
            decisions = [self._apply_keyset(envelope)]
            if decisions[0].accepted:
                parked, self._parked = self._parked, {}
                decisions += [self._record(d, self._decide(d, env), env) for d, env in sorted(parked.items())]
            return decisions
        return [self._record(device_id, self._decide(device_id, envelope), envelope)]

    def _record(self, device_id: str, decision: Decision, envelope: bytes | None = None) -> Decision:
        if decision.reason == "unknown_key" and envelope is not None:
            self._parked[device_id] = envelope
        elif decision.accepted:
            self._parked.pop(device_id, None)
        self.log.append(decision)
        self.counts[decision.reason] += 1
        return decision

    def _apply_keyset(self, envelope: bytes) -> Decision:
        if self.keysets is None:
            decision = Decision(KEYSET_KEY, None, False, "no_root_key", "this edge trusts no root key")
        else:
            try:
                applied = self.keysets.apply(envelope)
                decision = Decision(KEYSET_KEY, applied.version, True, "accepted")
            except KeySetError as exc:
                decision = Decision(KEYSET_KEY, exc.version, False, exc.reason, exc.detail)
        return self._record(KEYSET_KEY, decision)

    def _decide(self, device_id: str, envelope: bytes) -> Decision:
        def refuse(reason: str, detail: str, version: int | None = None) -> Decision:
            return Decision(device_id, version, False, reason, detail)

        if device_id != META_KEY and device_id not in self.devices:
            return refuse("not_subscribed", "not one of this edge's devices")
        try:
            arrays, header = decode_model(self.verifier.open(envelope))
        except SignatureError as exc:
            return refuse(_signature_reason(exc), str(exc))
        except CodecError as exc:  # signed but broken: a bug upstream, never run it
            return refuse("bad_payload", str(exc))
        version = header.model_version
        if header.device_id != device_id:
            # A genuine model of another device re-sent under this key.
            detail = f"payload is for {header.device_id!r}"
            return Decision(device_id, version, False, "wrong_device", detail, header.device_id)
        current = self._header(device_id)
        if current is not None and version <= current.model_version:
            return refuse("stale_version", f"running v{current.model_version}", version)
        if current is not None and _architecture(header) != _architecture(current):
            detail = f"{_architecture(header)} != running {_architecture(current)}"
            return refuse("shape_mismatch", detail, version)
        if device_id == META_KEY:
            self._theta = (arrays, header)
        else:
            try:
                model = EdgeModel(arrays, header)
            except KeyError as exc:
                return refuse("bad_payload", f"missing tensor {exc}", version)
            self._models[device_id] = model  # one reference swap: readers see old or new, never half
        return Decision(device_id, version, True, "accepted")

    def _header(self, device_id: str) -> ModelHeader | None:
        if device_id == META_KEY:
            return None if self._theta is None else self._theta[1]
        model = self._models.get(device_id)
        return None if model is None else model.header

    def model(self, device_id: str) -> EdgeModel | None:
        """The running model of ``device_id`` (``None`` before the first accepted one)."""
        return self._models.get(device_id)

    def version(self, device_id: str) -> int | None:
        """The running model version of ``device_id`` (or of θ for ``"__meta__"``)."""
        header = self._header(device_id)
        return None if header is None else header.model_version

    def versions(self) -> dict[str, int | None]:
        """Running version of every subscribed device, ``None`` where nothing was accepted yet."""
        return {d: self.version(d) for d in sorted(self.devices)}

    @property
    def theta(self) -> tuple[Arrays, ModelHeader] | None:
        """The latest accepted θ (arrays and header), for on-device adaptation and federated mode."""
        return self._theta

    def predict(self, device_id: str, x: np.ndarray) -> np.ndarray:
        """Local inference with the running model; :class:`LookupError` if there is none yet."""
        model = self._models.get(device_id)
        if model is None:
            raise LookupError(f"no model accepted for {device_id!r} yet")
        return model.predict(x)

    def summary(self) -> str:
        """One line for the operator: accepted and refused counts (by reason) and running versions.

        Examples
        --------
        >>> from metastream_edge.signing import Signer
        >>> state = EdgeState(Verifier([Signer.generate().public_key]), ["d1", "d2"])
        >>> _ = state.offer("d1", b"plain")
        >>> state.summary()
        'accepted 0, refused 1 (unsigned 1); running d1 -, d2 -, θ -'
        """
        refused = {r: n for r, n in sorted(self.counts.items()) if r != "accepted" and n}
        by_reason = ", ".join(f"{r} {n}" for r, n in refused.items())
        line = f"accepted {self.counts['accepted']}, refused {sum(refused.values())}"
        if by_reason:
            line += f" ({by_reason})"
        versions = {**self.versions(), "θ": self.version(META_KEY)}
        running = ", ".join(f"{d} {'-' if v is None else f'v{v}'}" for d, v in versions.items())
        return f"{line}; running {running}"
