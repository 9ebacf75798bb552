"""Every message the worker core and the meta agent return, and the one place it becomes bytes.

Besides events (:mod:`wire.events`) and dead letters
(:class:`wire.readings.DeadLetter`), the core returns signed payloads with
what goes beside them: a device's model (:class:`ModelUpdate`), a worker's
meta contribution (:class:`Contribution`) and a θ version
(:class:`ThetaVersion`).  :func:`record` gives a message's key, value and
headers, byte for byte as consumers read them; the runtime picks the topic.
"""

from __future__ import annotations

from dataclasses import dataclass

from metastream_edge.codec import META_KEY
from wire.events import Event, encode_event, event_key
from wire.readings import DeadLetter

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class ModelUpdate:
    """A new signed model version of one device, for the compacted models topic.

    ``payload`` is the sealed model (:func:`wire.models.encode_model`);
    ``detected_at`` is when its cause (a drift, or the device's first
    reading) was seen, ``published_at`` when the model was ready.
    """

    device_id: str
    model_version: int
    cause: str
    detected_at: float
    published_at: float
    payload: bytes


@dataclass(frozen=True)
class Contribution:
    """A worker's signed meta contribution (:func:`wire.models.encode_deltas`), keyed by the worker."""

    worker_id: str
    payload: bytes


@dataclass(frozen=True)
class ThetaVersion:
    """A signed θ version for the compacted meta topic (a model payload of device :data:`META_KEY`)."""

    version: int
    payload: bytes


Message = Event | DeadLetter | ModelUpdate | Contribution | ThetaVersion
"""What the worker core and the meta agent return."""


def record(message: Message) -> tuple[bytes | None, bytes, Headers]:
    """``(key, value, headers)`` of ``message`` on its topic: the one encoding of every message.

    Examples
    --------
    >>> from wire.events import Drift
    >>> record(Drift("d1", 2.0, 0))
    (b'd1', b'{"v":1,"type":"drift","device_id":"d1","ts":2.0,"meta_version":0}', [])
    >>> record(ModelUpdate("d1", 3, "drift", 1.5, 2.0, b"sealed"))
    (b'd1', b'sealed', [('model_version', b'3'), ('cause', b'drift'), ('detected_at', b'1.5'), \
('published_at', b'2.0')])
    >>> record(ThetaVersion(4, b"sealed"))
    (b'__meta__', b'sealed', [('meta_version', b'4')])
    """
    if isinstance(message, ModelUpdate):
        headers = [
            ("model_version", str(message.model_version).encode()),
            ("cause", message.cause.encode()),
            ("detected_at", repr(message.detected_at).encode()),
            ("published_at", repr(message.published_at).encode()),
        ]
        return message.device_id.encode(), message.payload, headers
    if isinstance(message, Contribution):
        return message.worker_id.encode(), message.payload, []
    if isinstance(message, ThetaVersion):
        return META_KEY.encode(), message.payload, [("meta_version", str(message.version).encode())]
    if isinstance(message, DeadLetter):
        key = message.device_id.encode() if message.device_id is not None else None
        return key, message.encode(), [("reason", message.reason.encode())]
    return event_key(message), encode_event(message), []
