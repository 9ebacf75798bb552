"""The versioned wire schema shared by producers, workers and edge clients.

Plain JSON for readings and dead letters (events are :mod:`wire.events`);
model payloads are the signed safetensors envelopes of :mod:`wire.models`
and :mod:`connectors.signing`.  Nothing here needs Faust, so the edge client
can use it as is.

A reading message is either one reading::

    {"v": 1, "device_id": "dev-7", "ts": 1732540000.5, "x": [0.1, 2.0], "y": 3.2}

or a gateway batch of several::

    {"v": 1, "readings": [{"device_id": "dev-7", "x": [...], "y": ...}, ...]}
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 1_000_000
MAX_DEVICE_ID = 128
MAX_ABS_VALUE = 1e9
MAX_INT_DIGITS = 4300
"""Longest integer literal the decoder converts (CPython's default limit for ``int(str)``).

A longer one is refused as ``number_too_large`` whatever the interpreter's
``PYTHONINTMAXSTRDIGITS`` says: converting it costs time quadratic in its length.
"""
MAX_DETAIL = 200
MAX_DEAD_LETTER_BYTES = 2 * 1024 * 1024
"""Largest dead letter the worker sends; the dead-letter topic and the worker's producer accept it.

A record as large as a broker with default settings delivers (~1 MiB) still
fits whole once base64-encoded; anything larger has its original cut (see
:meth:`DeadLetter.of`), so one huge record can never stop the worker.
"""


@dataclass(frozen=True)
class Reading:
    """One sensor reading of one device.

    Examples
    --------
    >>> r = Reading("greenhouse-7", (21.5, 0.43), 18.2, ts=1732540000.5)
    >>> r.to_json()
    {'device_id': 'greenhouse-7', 'x': [21.5, 0.43], 'y': 18.2, 'ts': 1732540000.5}
    >>> decode_readings(encode_readings([r]))[0] == [r]
    True
    """

    device_id: str
    x: tuple[float, ...]
    y: float
    ts: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The reading as a JSON-ready dict (inside a gateway batch)."""
        out: dict[str, Any] = {"device_id": self.device_id, "x": list(self.x), "y": self.y}
        if self.ts is not None:
            out["ts"] = self.ts
        return out


@dataclass(frozen=True)
class Rejected:
    """Input that was refused: a machine-readable reason, the original bytes and, if known, its device.

    ``device_id`` is the device the refused record names, when one can be
    parsed from it (``None`` otherwise); dead letters are keyed by it.

    Examples
    --------
    >>> decode_readings(b'{"v":1,"device_id":"","x":[1.0],"y":2.0}')[1]
    [Rejected(reason='bad_device_id', detail='device_id must be a non-empty string of <= 128 chars', \
original=b'{"v":1,"device_id":"","x":[1.0],"y":2.0}', device_id=None)]
    >>> decode_readings(b'{"v":1,"device_id":"d7","x":[1.0],"y":"2"}')[1][0].device_id
    'd7'
    """

    reason: str
    detail: str
    original: bytes
    device_id: str | None = None


def encode_readings(readings: Sequence[Reading]) -> bytes:
    """One reading, or a gateway batch when there are several.

    Examples
    --------
    >>> encode_readings([Reading("d1", (1.0, 2.0), 3.0)])
    b'{"v":1,"device_id":"d1","x":[1.0,2.0],"y":3.0}'
    >>> decode_readings(encode_readings([Reading("a", (1.0,), 2.0), Reading("b", (3.0,), 4.0)]))[0]
    [Reading(device_id='a', x=(1.0,), y=2.0, ts=None), Reading(device_id='b', x=(3.0,), y=4.0, ts=None)]
    """
    if len(readings) == 1:
        body: dict[str, Any] = {"v": SCHEMA_VERSION, **readings[0].to_json()}
    else:
        body = {"v": SCHEMA_VERSION, "readings": [r.to_json() for r in readings]}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def decode_readings(
    raw: bytes | None, n_features: int | None = None, max_abs: float = MAX_ABS_VALUE
) -> tuple[list[Reading], list[Rejected]]:
    """Validate a reading message; never raises, whatever the bytes.

    ``max_abs`` bounds the magnitude of every feature and target
    (``out_of_range`` beyond it).  A message without ``"v"`` or with another
    version than :data:`SCHEMA_VERSION` is ``unknown_schema_version``.

    Every bad reading becomes a :class:`Rejected` with one of the reasons
    ``oversized``, ``malformed_json``, ``not_an_object``,
    ``unknown_schema_version``, ``bad_device_id``, ``bad_features``,
    ``wrong_feature_count``, ``non_finite``, ``out_of_range``,
    ``number_too_large`` (an integer literal of more than
    :data:`MAX_INT_DIGITS` digits), ``bad_target``, ``bad_timestamp`` or
    ``undecodable`` (any other failure to read it).  In a gateway batch the
    good readings still pass.

    Examples
    --------
    >>> ok, bad = decode_readings(b'{"v":1,"device_id":"d1","x":[1,NaN],"y":1}')
    >>> ok, bad[0].reason
    ([], 'non_finite')
    >>> decode_readings(b'{"v":1,"device_id":"d1","x":[1,2],"y":1}', n_features=3)[1][0].detail
    'expected 3 features, got 2'
    >>> decode_readings(b'{"v":1,"device_id":"d1","x":[1,2]')[1][0].reason
    'malformed_json'
    >>> decode_readings(b'{"v":1,"device_id":"d1","x":[1,2e3],"y":1}', max_abs=1000.0)[1][0].detail
    'a value exceeds 1000 in magnitude'
    >>> bad = decode_readings(b'{"v":1,"device_id":"d1","x":[1],"y":' + b"9" * 5000 + b'}')[1][0]
    >>> bad.reason, bad.detail, bad.device_id
    ('number_too_large', 'an integer of 5000 digits (at most 4300)', 'd1')
    """
    raw = raw or b""
    try:
        return _decode(raw, n_features, max_abs)
    except Exception as exc:  # a gap in the checks below must cost one record, never the worker
        return [], [Rejected("undecodable", _short(f"{type(exc).__name__}: {exc}"), raw)]


def _decode(raw: bytes, n_features: int | None, max_abs: float) -> tuple[list[Reading], list[Rejected]]:
    if len(raw) > MAX_MESSAGE_BYTES:
        return [], [
            Rejected("oversized", f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}", raw, device_named_in(raw))
        ]
    try:
        body = _loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return [], [Rejected("malformed_json", _short(str(exc)), raw, device_named_in(raw))]
    if not isinstance(body, dict):
        return [], [Rejected("not_an_object", f"got {type(body).__name__}", raw)]
    device = _device_of(body)
    if body.get("v") != SCHEMA_VERSION:
        detail = _short(f"v={body.get('v')!r}, expected {SCHEMA_VERSION}")
        return [], [Rejected("unknown_schema_version", detail, raw, device)]
    items = body.get("readings")
    if items is None:
        items, whole = [body], True
    elif isinstance(items, list):
        whole = False
    else:
        return [], [Rejected("not_an_object", "readings must be a list", raw, device)]
    good: list[Reading] = []
    bad: list[Rejected] = []
    for item in items:
        try:
            reading, problem = _reading(item, n_features, max_abs)
        except Exception as exc:  # as in decode_readings, but the rest of the batch goes on
            reading, problem = None, ("undecodable", _short(f"{type(exc).__name__}: {exc}"))
        if reading is not None:
            good.append(reading)
        else:
            original = raw if whole else _dumps(item, raw)
            bad.append(Rejected(problem[0], problem[1], original, _device_of(item)))
    return good, bad


class _BigInt:
    """Stands for an integer literal too long to convert; only ever a reason to refuse."""

    def __init__(self, digits: str) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<integer of {len(self.digits.lstrip('-'))} digits>"


def _int(digits: str) -> int | _BigInt:
    return int(digits) if len(digits.lstrip("-")) <= MAX_INT_DIGITS else _BigInt(digits)


def _loads(raw: bytes) -> Any:
    """``json.loads``, with over-long integers kept as :class:`_BigInt` so the reading is refused alone."""
    try:
        return json.loads(raw)  # the fast path: C-level int parsing
    except json.JSONDecodeError:
        raise
    except ValueError as exc:
        if "integer string conversion" not in str(exc):
            raise
    return json.loads(raw, parse_int=_int)


def _short(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def _device_of(item: Any) -> str | None:
    """The refused record's device id, if it names a plausible one."""
    if not isinstance(item, dict):
        return None
    device = item.get("device_id")
    if isinstance(device, str) and device.strip() and len(device) <= MAX_DEVICE_ID and _encodable(device):
        return device
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


_DEVICE_FIELD = re.compile(rb'"device_id"\s*:\s*"([^"\\]{1,%d})"' % MAX_DEVICE_ID)


def device_named_in(raw: bytes) -> str | None:
    """The one device id a record names, read without parsing it (it may not parse); ``None`` if not one.

    For dead letters of records that could not be read as JSON; a gateway
    batch naming several devices gets none.

    Examples
    --------
    >>> device_named_in(b'{"v":1,"device_id":"d-3","x":[1,2'), device_named_in(b'{"device_id":1}')
    ('d-3', None)
    """
    found = set(_DEVICE_FIELD.findall(raw[:65536]))
    if len(found) != 1:
        return None
    try:
        device = found.pop().decode()
    except UnicodeDecodeError:
        return None
    return device if device.strip() else None


def _too_large(values: list[Any]) -> tuple[str, str] | None:
    """The ``number_too_large`` problem if ``values`` hold an over-long integer."""
    for v in values:
        if type(v) is _BigInt:
            return (
                "number_too_large",
                f"an integer of {len(v.digits.lstrip('-'))} digits (at most {MAX_INT_DIGITS})",
            )
    return None


def _reading(item: Any, n_features: int | None, max_abs: float) -> tuple[Reading | None, tuple[str, str]]:
    if not isinstance(item, dict):
        return None, ("not_an_object", f"reading is {type(item).__name__}")
    device = item.get("device_id")
    if not isinstance(device, str) or not device.strip() or len(device) > MAX_DEVICE_ID:
        return None, ("bad_device_id", f"device_id must be a non-empty string of <= {MAX_DEVICE_ID} chars")
    if not (
        device.isascii() or _encodable(device)
    ):  # a lone surrogate (legal in JSON) would fail later as a message key
        return None, ("bad_device_id", "device_id must be valid unicode (no lone surrogates)")
    x = item.get("x")
    y: Any = item.get("y")
    ts = item.get("ts")
    # type() rather than isinstance(): JSON numbers are exactly int or float, and bool must not pass.
    # An over-long integer (_BigInt) fails these checks too; only then is it looked for (no cost when valid).
    if type(x) is not list or not x or any(type(v) not in _NUMBER_TYPES for v in x):
        return None, _too_large(x if type(x) is list else []) or (
            "bad_features",
            "x must be a non-empty list of numbers",
        )
    if n_features is not None and len(x) != n_features:
        return None, ("wrong_feature_count", f"expected {n_features} features, got {len(x)}")
    if type(y) not in _NUMBER_TYPES:
        return None, _too_large([y]) or ("bad_target", "y must be a number")
    if ts is not None:
        try:
            ts = float(ts) if type(ts) in _NUMBER_TYPES else math.nan
        except OverflowError:  # an integer too large for a float
            ts = math.nan
        if not math.isfinite(ts):
            return None, _too_large([item.get("ts")]) or ("bad_timestamp", "ts must be a finite number")
    values = [*x, y]
    try:
        # One sum finds NaN/inf in any value (fast path for the common, valid reading).
        ok = math.isfinite(sum(values)) and min(values) >= -max_abs and max(values) <= max_abs
    except OverflowError:  # an integer too large for a float
        return None, ("out_of_range", f"a value exceeds {max_abs:g} in magnitude")
    if not ok:
        if not all(math.isfinite(v) for v in values):
            return None, ("non_finite", "NaN or infinity in x or y")
        return None, ("out_of_range", f"a value exceeds {max_abs:g} in magnitude")
    return Reading(device, tuple(map(float, x)), float(y), ts), ("", "")


_NUMBER_TYPES = (int, float)


def _dumps(item: Any, raw: bytes) -> bytes:
    """One reading of a gateway batch as JSON; the whole message if it cannot be re-encoded."""
    try:
        return json.dumps(item, separators=(",", ":")).encode()
    except (TypeError, ValueError):  # e.g. it holds an integer too long to write back
        return raw


@dataclass(frozen=True)
class DeadLetter:
    """What lands on the dead-letter topic for each refused input.

    ``truncated`` is true only when the original was too large to carry
    whole (see :meth:`of`); ``detail`` then gives its size and sha256.
    ``device_id`` is the device the refused record names, if any (the
    letter's key is the same); fields added later are ignored by older readers
    of :meth:`decode`, and missing ones take their defaults.

    Examples
    --------
    >>> letter = DeadLetter.of(Rejected("bad_target", "y must be a number", b"{}", "d7"), "readings", 0, 9)
    >>> letter.device_id, DeadLetter.decode(letter.encode()) == letter
    ('d7', True)
    >>> DeadLetter.decode(b'{"reason":"r","detail":"","original_b64":"","later_field":1}').reason
    'r'
    """

    reason: str
    detail: str
    original_b64: str
    source_topic: str = ""
    partition: int = -1
    offset: int = -1
    v: int = SCHEMA_VERSION
    truncated: bool = False
    device_id: str | None = None

    @classmethod
    def of(
        cls,
        rejected: Rejected,
        topic: str = "",
        partition: int = -1,
        offset: int = -1,
        max_bytes: int = MAX_DEAD_LETTER_BYTES,
    ) -> DeadLetter:
        """Wrap a rejection with where it came from, in at most ``max_bytes`` once encoded.

        An original too large for that keeps only its first bytes (the
        reason and the rest of the letter are what tools act on).

        Examples
        --------
        >>> letter = DeadLetter.of(Rejected("oversized", "big", b"x" * 5000), max_bytes=2000)
        >>> len(letter.encode()) <= 2000, letter.truncated, letter.detail.split(",")[0]
        (True, True, 'big; original cut to 1257 of 5000 bytes')
        >>> letter.original == b"x" * 1257
        True
        """
        raw = rejected.original
        b64 = base64.b64encode(raw).decode()
        device = rejected.device_id
        letter = cls(rejected.reason, rejected.detail, b64, topic, partition, offset, device_id=device)
        size = len(letter.encode())
        if size <= max_bytes:
            return letter
        # base64 makes 3 bytes 4 characters; leave room for the longer detail.
        keep = max(0, (max_bytes - (size - len(letter.original_b64)) - 200) // 4 * 3)
        detail = (
            f"{rejected.detail}; original cut to {keep} of {len(raw)} bytes, "
            f"sha256 {hashlib.sha256(raw).hexdigest()}"
        )
        b64 = base64.b64encode(raw[:keep]).decode()
        return cls(rejected.reason, detail, b64, topic, partition, offset, truncated=True, device_id=device)

    def encode(self) -> bytes:
        """JSON bytes (without ``device_id`` when there is none: the format as it was before it)."""
        body = asdict(self)
        if body["device_id"] is None:
            del body["device_id"]
        return json.dumps(body, separators=(",", ":")).encode()

    @property
    def original(self) -> bytes:
        """The refused bytes, exactly as received."""
        return base64.b64decode(self.original_b64)

    @classmethod
    def decode(cls, raw: bytes) -> DeadLetter:
        """Parse a dead letter (for tools and tests)."""
        body = json.loads(raw)
        return cls(**{f.name: body[f.name] for f in dataclass_fields(cls) if f.name in body})
