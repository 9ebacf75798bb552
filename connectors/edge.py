"""Edge subscriber SDK: receive, verify and hot-swap per-device models (and θ).

Models arrive on the compacted ``settings.topic_models`` (key = device id,
value = a :class:`~connectors.signing.Signer` envelope around a
:mod:`learners.codec` payload); θ versions on ``settings.topic_meta`` under
the key ``"__meta__"``.  :class:`EdgeState` decides what to accept and holds
the running models, with no Kafka in sight; :class:`EdgeSubscriber` feeds it
from a kafka-python consumer.  Nothing here needs Faust.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from kafka import KafkaConsumer, TopicPartition
from torch import Tensor

from connectors.admin import partition_for
from connectors.closing import ClosesOnExit
from connectors.connection_check import check_connection
from connectors.settings import Settings
from connectors.signing import SignatureError, Verifier
from learners.codec import CodecError, ModelHeader, decode_model
from learners.edge_model import EdgeModel

META_KEY = "__meta__"
"""Key (and payload device id) of θ messages; same value as ``pipeline.worker_core.META_KEY``."""

REFUSALS = (
    "unsigned",
    "unknown_key",
    "bad_signature",
    "bad_payload",
    "wrong_device",
    "stale_version",
    "shape_mismatch",
    "not_subscribed",
)
"""Every reason :meth:`EdgeState.offer` can refuse with."""


@dataclass(frozen=True)
class Decision:
    """What :class:`EdgeState` did with one offered model.

    ``reason`` is ``"accepted"`` or one of :data:`REFUSALS`; ``version`` is
    the payload's model version when it could be read.

    Examples
    --------
    >>> print(Decision("dev-0001", 3, True, "accepted"))
    dev-0001 v3 accepted
    >>> print(Decision("dev-0001", None, False, "unsigned", "no signature envelope"))
    dev-0001 v? refused unsigned
    """

    device_id: str
    version: int | None
    accepted: bool
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        version = "v?" if self.version is None else f"v{self.version}"
        return f"{self.device_id} {version} {'accepted' if self.accepted else 'refused ' + self.reason}"


def _architecture(h: ModelHeader) -> tuple[object, ...]:
    return (h.task, h.n_features, h.n_outputs, h.hidden)


def _signature_reason(exc: SignatureError) -> str:
    # SignatureError carries no code; its messages start with a stable word.
    text = str(exc)
    if text.startswith("unsigned"):
        return "unsigned"
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

    Examples
    --------
    >>> from connectors.signing import Signer
    >>> from learners import LearnerConfig
    >>> from learners.fleet import FleetLearner
    >>> fleet, signer = FleetLearner(LearnerConfig(n_features=2)), Signer.generate()
    >>> _ = fleet.learn_predict(["d1"], np.ones((1, 2)), np.ones(1))
    >>> state = EdgeState(Verifier([signer.public_key]), ["d1"])
    >>> print(state.offer("d1", signer.seal(fleet.export("d1", 2))))
    d1 v2 accepted
    >>> print(state.offer("d1", signer.seal(fleet.export("d1", 1))))
    d1 v1 refused stale_version
    >>> print(state.offer("d1", Signer.generate().seal(fleet.export("d1", 3))))
    d1 v? refused unknown_key
    >>> state.version("d1"), state.predict("d1", np.ones((1, 2))).shape
    (2, (1,))
    """

    def __init__(self, verifier: Verifier, devices: Iterable[str], log_size: int = 1000) -> None:
        self.verifier = verifier
        self.devices = frozenset(devices)
        self.log: deque[Decision] = deque(maxlen=log_size)
        self.counts: Counter[str] = Counter()
        self._models: dict[str, EdgeModel] = {}
        self._theta: tuple[dict[str, Tensor], ModelHeader] | None = None

    def offer(self, device_id: str, envelope: bytes) -> Decision:
        """Verify ``envelope`` (received under key ``device_id``) and hot-swap it in if acceptable."""
        decision = self._decide(device_id, envelope)
        self.log.append(decision)
        self.counts[decision.reason] += 1
        return decision

    def _decide(self, device_id: str, envelope: bytes) -> Decision:
        def refuse(reason: str, detail: str, version: int | None = None) -> Decision:
            return Decision(device_id, version, False, reason, detail)

        if device_id != META_KEY and device_id not in self.devices:
            return refuse("not_subscribed", "not one of this edge's devices")
        try:
            tensors, header = decode_model(self.verifier.open(envelope))
        except SignatureError as exc:
            return refuse(_signature_reason(exc), str(exc))
        except CodecError as exc:  # signed but broken: a bug upstream, never run it
            return refuse("bad_payload", str(exc))
        version = header.model_version
        if header.device_id != device_id:
            # A genuine model of another device re-sent under this key.
            return refuse("wrong_device", f"payload is for {header.device_id!r}", version)
        current = self._header(device_id)
        if current is not None and version <= current.model_version:
            return refuse("stale_version", f"running v{current.model_version}", version)
        if current is not None and _architecture(header) != _architecture(current):
            detail = f"{_architecture(header)} != running {_architecture(current)}"
            return refuse("shape_mismatch", detail, version)
        if device_id == META_KEY:
            self._theta = (tensors, header)
        else:
            try:
                model = EdgeModel(tensors, header)
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
    def theta(self) -> tuple[dict[str, Tensor], ModelHeader] | None:
        """The latest accepted θ (tensors and header), for federated mode."""
        return self._theta

    def predict(self, device_id: str, x: np.ndarray) -> np.ndarray:
        """Local inference with the running model; :class:`LookupError` if there is none yet."""
        model = self._models.get(device_id)
        if model is None:
            raise LookupError(f"no model accepted for {device_id!r} yet")
        return model.predict(x)


@dataclass(frozen=True)
class Received:
    """One model message as the subscriber received it (for latency measurements)."""

    decision: Decision
    received_at: float
    """``time.time()`` when the poll returned it."""
    sent_at: float | None
    """The record's timestamp (producer create time) in seconds, if the broker kept one."""
    partition: int
    offset: int
    headers: dict[str, bytes] = field(default_factory=dict)

    @property
    def latency_s(self) -> float | None:
        """Seconds from producing to receiving (clocks of both hosts must agree)."""
        return None if self.sent_at is None else self.received_at - self.sent_at


def trusted_verifier(settings: Settings, key_files: Sequence[str] = ()) -> Verifier:
    """A verifier for ``key_files``, or else for ``settings.trusted_keys`` (comma-separated PEM files)."""
    paths = list(key_files) or [p.strip() for p in settings.trusted_keys.split(",") if p.strip()]
    if not paths:
        raise ValueError("no trusted public keys: pass --trusted-key or set METASTREAM_TRUSTED_KEYS")
    return Verifier.from_files(*paths)


class EdgeSubscriber(ClosesOnExit):
    """Follows the models of some devices (and optionally θ) on a Kafka broker.

    No consumer group: the consumer is assigned exactly the partitions of
    the models topic that hold its devices' keys and reads them from the
    beginning, so it starts with the latest compacted model of each device.

    Parameters
    ----------
    settings : Settings
        Broker, topics and TLS/SASL options.
    devices : iterable of str
        Device ids to follow.
    verifier : Verifier, optional
        Trusted keys; default :func:`trusted_verifier` of ``settings``.
    follow_meta : bool
        Also follow θ on the meta topic.
    log_size : int
        How many recent messages :attr:`received` keeps.
    """

    def __init__(
        self,
        settings: Settings,
        devices: Iterable[str],
        verifier: Verifier | None = None,
        follow_meta: bool = False,
        log_size: int = 10_000,
    ) -> None:
        self.settings = settings
        self.follow_meta = follow_meta
        self.state = EdgeState(verifier or trusted_verifier(settings), devices, log_size)
        if not self.state.devices and not follow_meta:
            raise ValueError("an edge subscriber needs at least one device (or follow_meta=True)")
        self.received: deque[Received] = deque(maxlen=log_size)
        check_connection(settings)  # a refused password or CA: a clear error now, not a 30 s timeout
        self._consumer = KafkaConsumer(
            bootstrap_servers=settings.bootstrap,
            client_id=f"{settings.app_id}-edge",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **settings.kafka_python_security(),
        )
        try:
            self._assign()
        except BaseException:
            self._consumer.close()
            raise

    def _partitions(self, topic: str) -> set[int]:
        partitions: set[int] = self._consumer.partitions_for_topic(topic)
        if not partitions:
            raise RuntimeError(f"topic {topic!r} not found on {self.settings.bootstrap}; create it first")
        return partitions

    def _assign(self) -> None:
        models = self.settings.topic_models
        n = len(self._partitions(models)) if self.state.devices else 0
        wanted = {TopicPartition(models, partition_for(d, n)) for d in self.state.devices}
        if self.follow_meta:
            meta = self.settings.topic_meta
            wanted |= {TopicPartition(meta, p) for p in self._partitions(meta)}
        self._consumer.assign(sorted(wanted))
        self._consumer.seek_to_beginning(*wanted)

    def poll_once(self, timeout_ms: int = 500) -> list[Decision]:
        """Fetch what arrived (waiting up to ``timeout_ms``), offer it to the state, return the decisions."""
        batches = self._consumer.poll(timeout_ms=timeout_ms)
        now = time.time()
        decisions: list[Decision] = []
        for tp, records in batches.items():
            is_meta = tp.topic == self.settings.topic_meta
            for r in records:
                key = r.key.decode("utf-8", "replace") if r.key is not None else ""
                # Partitions are shared with other devices: skip theirs without verifying.
                if (key != META_KEY) if is_meta else (key not in self.state.devices):
                    continue
                if r.value is None:
                    continue  # a tombstone: keep running the last good model
                decision = self.state.offer(key, r.value)
                sent_at = r.timestamp / 1000 if r.timestamp is not None and r.timestamp >= 0 else None
                headers = {k: v for k, v in (r.headers or [])}
                self.received.append(Received(decision, now, sent_at, r.partition, r.offset, headers))
                decisions.append(decision)
        return decisions

    def run(
        self,
        until: Callable[[], bool] | None = None,
        timeout_s: float | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        poll_ms: int = 200,
    ) -> list[Decision]:
        """Poll until ``until()`` is true or ``timeout_s`` passed (both ``None``: forever).

        Returns the decisions made during the run; ``on_decision`` sees each as it happens.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        decisions: list[Decision] = []
        while not (until is not None and until()):
            left_ms = poll_ms if deadline is None else int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            for decision in self.poll_once(min(poll_ms, left_ms)):
                decisions.append(decision)
                if on_decision is not None:
                    on_decision(decision)
        return decisions

    def current_version(self, device_id: str) -> int | None:
        """The running model version of ``device_id`` (``None`` before the first one)."""
        return self.state.version(device_id)

    def predict(self, device_id: str, x: np.ndarray) -> np.ndarray:
        """Local inference with the running model of ``device_id``."""
        return self.state.predict(device_id, x)

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


# -- command line ------------------------------------------------------------------------


def cmd_edge(args: argparse.Namespace) -> int:
    """Handler of ``metastream edge``: print every decision, then the running versions."""
    settings = Settings.load(args.settings, broker=args.broker)
    verifier = trusted_verifier(settings, args.trusted_key or ())
    with EdgeSubscriber(settings, args.device, verifier, follow_meta=args.follow_meta) as sub:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is the normal stop without --duration
            sub.run(timeout_s=args.duration, on_decision=lambda d: print(d, flush=True))
        versions = sub.state.versions()
        if args.follow_meta:
            versions[META_KEY] = sub.state.version(META_KEY)
    running = ", ".join(f"{d} {'-' if v is None else f'v{v}'}" for d, v in versions.items())
    print(f"running versions: {running}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the ``edge`` sub-command; returns its parser."""
    p = subparsers.add_parser("edge", help="follow, verify and hot-swap the models of some devices")
    p.add_argument("--settings", help="JSON settings file (else METASTREAM_* environment and defaults)")
    p.add_argument("--broker", help="kafka://host:port[,host:port]; overrides the settings")
    p.add_argument("--device", action="append", required=True, help="device id to follow; repeatable")
    p.add_argument(
        "--trusted-key", action="append", help="PEM public key to trust; repeatable (default: settings)"
    )
    p.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    p.add_argument("--follow-meta", action="store_true", help="also follow θ on the meta topic")
    p.set_defaults(func=cmd_edge)
    return p
