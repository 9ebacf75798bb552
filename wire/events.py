"""The events a worker reports, as typed values, and their JSON on the events topic.

The worker core returns these dataclasses; the app encodes each one once,
when it sends it (:func:`encode_event`), and the dashboard reads the values
themselves.  On the wire an event is one JSON object: the schema version,
its ``type``, then its fields in the order the dataclass declares them::

    {"v":1,"type":"drift","device_id":"dev-7","ts":1732540000.5,"meta_version":3}

Edge devices and tools read exactly these bytes, so a field's name, order
and meaning never change; a new field goes last, and :func:`decode_event`
ignores fields it does not know.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from metastream_edge.codec import META_KEY

SCHEMA_VERSION = 1
"""The ``"v"`` of every event (the same as the readings')."""


class EventError(ValueError):
    """Bytes that are not an event of a known type and schema version."""


@dataclass(frozen=True)
class Drift:
    """The drift detector fired for a device (its adaptation follows)."""

    kind: ClassVar[str] = "drift"
    device_id: str
    ts: float
    meta_version: int


@dataclass(frozen=True)
class Adapted:
    """A device got a new model version, adapted from θ; ``cause`` is ``drift`` or ``new_device``."""

    kind: ClassVar[str] = "adapted"
    device_id: str
    model_version: int
    cause: str
    ts: float
    meta_version: int


@dataclass(frozen=True)
class AdaptationResult:
    """A device's smoothed error before an adaptation and ``readings`` readings after it."""

    kind: ClassVar[str] = "adaptation_result"
    device_id: str
    model_version: int
    error_before: float
    error_after: float
    readings: int


@dataclass(frozen=True)
class AdaptationRejected:
    """The regression guard refused an adaptation: the device keeps ``model_version``, nothing is published.

    A non-finite loss is written as ``null`` (and read back as NaN).
    """

    kind: ClassVar[str] = "adaptation_rejected"
    nullable: ClassVar[tuple[str, ...]] = ("current_loss", "adapted_loss")
    device_id: str
    cause: str
    current_loss: float
    adapted_loss: float
    held_back: int
    model_version: int
    ts: float
    meta_version: int


@dataclass(frozen=True)
class Evicted:
    """Idle devices moved out of the worker's memory to its store (worker-wide: no device key)."""

    kind: ClassVar[str] = "evicted"
    devices: int
    resident: int
    stored: int
    max_devices: int
    ts: float


@dataclass(frozen=True)
class ThetaRefused:
    """The meta agent did not publish a new θ: ``reason`` says why, the losses what it compared.

    A non-finite loss is written as ``null`` (and read back as NaN).
    """

    kind: ClassVar[str] = "theta_refused"
    nullable: ClassVar[tuple[str, ...]] = ("current_loss", "candidate_loss")
    reason: str
    current_loss: float
    candidate_loss: float
    devices: int
    held_back: int
    source: str
    meta_version: int
    ts: float


@dataclass(frozen=True)
class PrivacyBudgetExhausted:
    """A federated device's next contribution would pass its ε budget, so it contributes no more."""

    kind: ClassVar[str] = "privacy_budget_exhausted"
    device_id: str
    contributions: int
    epsilon: float
    budget: float
    delta: float


Event = (
    Drift | Adapted | AdaptationResult | AdaptationRejected | Evicted | ThetaRefused | PrivacyBudgetExhausted
)
"""Every event the worker core and the meta agent report."""

EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        Drift,
        Adapted,
        AdaptationResult,
        AdaptationRejected,
        Evicted,
        ThetaRefused,
        PrivacyBudgetExhausted,
    )
}
"""Event class by its wire ``type``."""


def event_key(event: Event) -> bytes | None:
    """The message key of ``event``: its device, θ's key for θ events, none for worker-wide ones.

    Examples
    --------
    >>> event_key(Drift("d1", 5.0, 0)), event_key(Evicted(3, 10, 3, 10, 5.0))
    (b'd1', None)
    """
    if isinstance(event, ThetaRefused):
        return META_KEY.encode()
    if isinstance(event, Evicted):
        return None
    return event.device_id.encode()


def encode_event(event: Event) -> bytes:
    """The event as JSON bytes: ``{"v": 1, "type": kind, ...fields in declaration order}``.

    Examples
    --------
    >>> encode_event(Drift("d1", ts=12.5, meta_version=3))
    b'{"v":1,"type":"drift","device_id":"d1","ts":12.5,"meta_version":3}'
    >>> encode_event(Evicted(devices=2, resident=8, stored=2, max_devices=8, ts=1.0))
    b'{"v":1,"type":"evicted","devices":2,"resident":8,"stored":2,"max_devices":8,"ts":1.0}'
    >>> b'"candidate_loss":null' in encode_event(ThetaRefused("worse", 0.5, float("inf"), 4, 40, "w", 7, 1.0))
    True
    """
    nullable = getattr(event, "nullable", ())
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "type": event.kind}
    for f in fields(event):
        value = getattr(event, f.name)
        if f.name in nullable and not math.isfinite(value):
            value = None  # strict JSON has no NaN or infinity
        body[f.name] = value
    return json.dumps(body, separators=(",", ":")).encode()


def decode_event(raw: bytes) -> Event:
    """Parse :func:`encode_event` output (for tools and tests); :class:`EventError` if it is not one.

    Examples
    --------
    >>> decode_event(b'{"v":1,"type":"drift","device_id":"d1","ts":12.5,"meta_version":3,"later":1}')
    Drift(device_id='d1', ts=12.5, meta_version=3)
    >>> decode_event(b'{"v":1,"type":"party"}')
    Traceback (most recent call last):
    ...
    wire.events.EventError: unknown event type 'party'
    """
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise EventError(f"not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise EventError(f"an event is a JSON object, got {type(body).__name__}")
    if body.get("v") != SCHEMA_VERSION:
        raise EventError(f"v={body.get('v')!r}, expected {SCHEMA_VERSION}")
    cls = EVENT_TYPES.get(body.get("type"))  # type: ignore[arg-type]  # a missing type finds nothing
    if cls is None:
        raise EventError(f"unknown event type {body.get('type')!r}")
    nullable = getattr(cls, "nullable", ())
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in body:
            raise EventError(f"{cls.kind} event without {f.name!r}")
        value = body[f.name]
        values[f.name] = math.nan if value is None and f.name in nullable else value
    return cls(**values)
