"""Secure-aggregation messages as bytes (JSON; keys, shares and vectors in base64) for any transport.

Every message is a JSON object with ``"type"`` and ``"round_id"``; a
masked vector is its little-endian uint64 bytes.  :func:`decode` refuses
anything else with a :class:`~metastream_edge.secagg.ProtocolError`.

Examples
--------
>>> from metastream_edge.secagg import KeyAdvert
>>> advert = KeyAdvert("dev-1", b"m" * 32, b"e" * 32)
>>> decode(encode(advert, "r1")) == ("r1", advert)
True
>>> decode(b"{}")
Traceback (most recent call last):
...
metastream_edge.secagg.ProtocolError: not a secure-aggregation message: 'type'
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from metastream_edge.secagg import (
    AggregateResult,
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    ProtocolError,
    Roster,
    UnmaskRequest,
    UnmaskResponse,
)

Message = (
    KeyAdvert | Roster | list[EncryptedShare] | MaskedInput | UnmaskRequest | UnmaskResponse | AggregateResult
)


def _b(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _u(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _advert(a: KeyAdvert) -> dict[str, Any]:
    return {"device_id": a.device_id, "mask_key": _b(a.mask_key), "enc_key": _b(a.enc_key)}


def _share(s: EncryptedShare) -> dict[str, Any]:
    return {
        "sender": s.sender,
        "recipient": s.recipient,
        "nonce": _b(s.nonce),
        "ciphertext": _b(s.ciphertext),
    }


def encode(message: Message, round_id: str) -> bytes:
    """``message`` of round ``round_id`` as bytes (a list is one device's shares or inbox)."""
    body: dict[str, Any]
    if isinstance(message, KeyAdvert):
        body = {"type": "advert", **_advert(message)}
    elif isinstance(message, Roster):
        body = {"type": "roster", "adverts": [_advert(a) for a in message.adverts]}
    elif isinstance(message, list):
        body = {"type": "shares", "shares": [_share(s) for s in message]}
    elif isinstance(message, MaskedInput):
        vector = np.asarray(message.vector, dtype="<u8").tobytes()
        body = {"type": "masked", "device_id": message.device_id, "vector": _b(vector)}
    elif isinstance(message, UnmaskRequest):
        body = {
            "type": "unmask_request",
            "survivors": list(message.survivors),
            "dropped": list(message.dropped),
        }
    elif isinstance(message, UnmaskResponse):
        body = {
            "type": "unmask",
            "device_id": message.device_id,
            "seed_shares": {d: [i, _b(s)] for d, (i, s) in message.seed_shares.items()},
            "key_shares": {d: [i, _b(s)] for d, (i, s) in message.key_shares.items()},
        }
    else:
        body = {
            "type": "result",
            "mean": [float(v) for v in message.mean],
            "total_weight": message.total_weight,
            "survivors": list(message.survivors),
            "dropped": list(message.dropped),
        }
    return json.dumps({"round_id": round_id, **body}).encode()


def decode(raw: bytes) -> tuple[str, Message]:
    """``(round_id, message)`` from :func:`encode`'s bytes."""
    try:
        m = json.loads(raw)
        kind, round_id = m["type"], str(m["round_id"])
        out: Message
        if kind == "advert":
            out = KeyAdvert(m["device_id"], _u(m["mask_key"]), _u(m["enc_key"]))
        elif kind == "roster":
            adverts = tuple(
                KeyAdvert(a["device_id"], _u(a["mask_key"]), _u(a["enc_key"])) for a in m["adverts"]
            )
            out = Roster(round_id, adverts)
        elif kind == "shares":
            out = [
                EncryptedShare(s["sender"], s["recipient"], _u(s["nonce"]), _u(s["ciphertext"]))
                for s in m["shares"]
            ]
        elif kind == "masked":
            out = MaskedInput(m["device_id"], np.frombuffer(_u(m["vector"]), dtype="<u8").astype(np.uint64))
        elif kind == "unmask_request":
            out = UnmaskRequest(round_id, tuple(m["survivors"]), tuple(m["dropped"]))
        elif kind == "unmask":
            out = UnmaskResponse(
                m["device_id"],
                {d: (int(i), _u(s)) for d, (i, s) in m["seed_shares"].items()},
                {d: (int(i), _u(s)) for d, (i, s) in m["key_shares"].items()},
            )
        elif kind == "result":
            mean = np.asarray(m["mean"], dtype=np.float64)
            weight = float(m["total_weight"])
            out = AggregateResult(
                round_id, mean, weight, mean * weight, tuple(m["survivors"]), tuple(m["dropped"])
            )
        else:
            raise ProtocolError(f"unknown secure-aggregation message type {kind!r}")
        return round_id, out
    except ProtocolError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolError(f"not a secure-aggregation message: {exc}") from exc
