"""``metastream tail events|deadletter|models``: one line per message of a topic.

A plain kafka-python consumer without a group (it commits nothing and
disturbs no worker).  ``--from-beginning`` reads what the topic still
holds; ``--device`` keeps one device's messages (repeatable); ``--json``
prints one JSON object per message for tools.  Models are not loaded
(no torch): their safetensors header says device, version and parent θ,
and the signature is checked against the trusted keys when there are any.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from connectors.settings import Settings
from connectors.signing import MAGIC, SignatureError, Verifier

KINDS = ("events", "deadletter", "models")
_ENVELOPE = len(MAGIC) + 8 + 64  # magic, key id, Ed25519 signature (see connectors.signing)


def topic_of(settings: Settings, kind: str) -> str:
    """The topic ``tail`` reads for ``kind``.

    Examples
    --------
    >>> topic_of(Settings(), "deadletter"), topic_of(Settings(), "models")
    ('metastream.deadletter', 'metastream.models')
    """
    return {
        "events": settings.topic_events,
        "deadletter": settings.topic_deadletter,
        "models": settings.topic_models,
    }[kind]


def model_header(payload: bytes) -> dict[str, Any]:
    """The fields of a model payload's safetensors header, without loading the tensors.

    Raises ``ValueError`` for anything that is not a safetensors payload.

    Examples
    --------
    >>> meta = {"device_id": '"d1"', "model_version": "3", "parent_meta_version": "7"}
    >>> head = json.dumps({"__metadata__": meta}).encode()
    >>> model_header(len(head).to_bytes(8, "little") + head)
    {'device_id': 'd1', 'model_version': 3, 'parent_meta_version': 7}
    """
    if len(payload) < 8:
        raise ValueError("payload too short")
    n = int.from_bytes(payload[:8], "little")
    if n > len(payload) - 8:
        raise ValueError("header longer than the payload")
    meta = json.loads(payload[8 : 8 + n]).get("__metadata__") or {}
    return {k: json.loads(v) for k, v in meta.items() if k != "sha256"}


def describe_model(key: str, value: bytes | None, verifier: Verifier | None) -> dict[str, Any]:
    """A models-topic message as a flat record: device, version, parent θ, signature status.

    Examples
    --------
    >>> from connectors.signing import Signer
    >>> meta = {"device_id": '"d1"', "model_version": "3", "parent_meta_version": "7"}
    >>> head = json.dumps({"__metadata__": meta}).encode()
    >>> payload = len(head).to_bytes(8, "little") + head
    >>> signer = Signer.generate()
    >>> describe_model("d1", signer.seal(payload), Verifier([signer.public_key]))
    {'device_id': 'd1', 'version': 3, 'parent_theta': 7, 'signature': 'ok'}
    >>> describe_model("d1", signer.seal(payload), Verifier([Signer.generate().public_key]))["signature"]
    'refused: signed by an unknown key'
    >>> describe_model("d1", None, None)
    {'device_id': 'd1', 'version': None, 'parent_theta': None, 'signature': 'tombstone'}
    """
    out: dict[str, Any] = {"device_id": key, "version": None, "parent_theta": None}
    if value is None:
        return {**out, "signature": "tombstone"}
    if verifier is None:
        status, payload = "not checked (no trusted key)", value[_ENVELOPE:]
    else:
        try:
            payload, status = verifier.open(value), "ok"
        except SignatureError as exc:
            payload, status = value[_ENVELOPE:], f"refused: {exc}"
    try:
        header = model_header(payload)
        out["version"] = header.get("model_version")
        out["parent_theta"] = header.get("parent_meta_version")
    except ValueError as exc:
        status = f"{status}; unreadable model: {exc}"
    return {**out, "signature": status}


def describe_deadletter(key: str, value: bytes | None) -> dict[str, Any]:
    """A dead letter as a flat record (the original is shortened to its first 60 bytes).

    Examples
    --------
    >>> letter = {"reason": "malformed_json", "detail": "Expecting value", "source_topic": "r",
    ...           "partition": 0, "offset": 12, "original_b64": base64.b64encode(b"{oops").decode()}
    >>> describe_deadletter("gw-1", json.dumps(letter).encode())["original"]
    '{oops'
    """
    try:
        letter = json.loads(value or b"")
        original = base64.b64decode(letter.get("original_b64", ""))
    except (ValueError, binascii.Error, AttributeError) as exc:
        return {"key": key, "reason": "unreadable dead letter", "detail": str(exc)}
    return {
        "key": key,
        "reason": letter.get("reason"),
        "detail": letter.get("detail"),
        "source": f"{letter.get('source_topic')}[{letter.get('partition')}]@{letter.get('offset')}",
        "original": original[:60].decode("utf-8", "replace"),
    }


def describe_event(key: str, value: bytes | None) -> dict[str, Any]:
    """An event as a flat record (its own JSON fields; ``raw`` when it is not JSON)."""
    try:
        event = json.loads(value or b"")
    except ValueError:
        return {"device_id": key, "raw": (value or b"")[:200].decode("utf-8", "replace")}
    return event if isinstance(event, dict) else {"device_id": key, "value": event}


def format_line(kind: str, record: Mapping[str, Any], as_json: bool) -> str:
    """One printed line for a described message.

    Examples
    --------
    >>> rec = {"device_id": "d1", "version": 3, "parent_theta": 7, "signature": "ok"}
    >>> format_line("models", rec, as_json=False)
    'd1 v3 parent θ v7 signature ok'
    >>> format_line("events", {"type": "drift", "device_id": "d1", "ts": 5.0, "meta_version": 2}, False)
    'drift d1 ts=5.0 meta_version=2'
    >>> format_line("deadletter", {"key": "k", "reason": "non_finite", "detail": "x[0]", "source": "r[0]@4",
    ...                            "original": "{}"}, False)
    'non_finite r[0]@4 key=k: x[0] | {}'
    >>> format_line("events", {"type": "drift", "device_id": "d1"}, as_json=True)
    '{"type": "drift", "device_id": "d1"}'
    """
    if as_json:
        return json.dumps(record, ensure_ascii=False)
    if kind == "models":
        version = "v?" if record["version"] is None else f"v{record['version']}"
        parent = "?" if record["parent_theta"] is None else f"v{record['parent_theta']}"
        return f"{record['device_id']} {version} parent θ {parent} signature {record['signature']}"
    if kind == "deadletter":
        return (
            f"{record['reason']} {record.get('source', '?')} key={record['key']}: "
            f"{record.get('detail', '')} | {record.get('original', '')}"
        )
    rest = " ".join(f"{k}={v}" for k, v in record.items() if k not in ("type", "device_id"))
    return " ".join(str(p) for p in (record.get("type", "?"), record.get("device_id", "?"), rest) if p != "")


def device_of(kind: str, key: str, record: Mapping[str, Any]) -> str:
    """The device a message is about (dead letters: their key, e.g. a device or gateway)."""
    return str(record.get("device_id", key)) if kind != "deadletter" else key


def run_tail(
    settings: Settings,
    kind: str,
    *,
    from_beginning: bool = False,
    devices: Sequence[str] = (),
    as_json: bool = False,
    verifier: Verifier | None = None,
    max_messages: int | None = None,
    idle_timeout_s: float | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Print the messages of ``kind``'s topic until Ctrl-C, ``max_messages`` or ``idle_timeout_s``.

    Returns the number of messages printed.
    """
    from kafka import TopicPartition

    from connectors.topic_reader import topic_reader

    topic = topic_of(settings, kind)
    consumer = topic_reader(settings, "tail")
    printed = 0
    wanted = set(devices)
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ValueError(f"topic {topic} does not exist (has a worker run with these settings?)")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        last = time.monotonic()
        while max_messages is None or printed < max_messages:
            batch = consumer.poll(timeout_ms=200)
            if not batch:
                if idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
                    break
                continue
            last = time.monotonic()
            for records in batch.values():
                for r in records:
                    key = r.key.decode("utf-8", "replace") if r.key is not None else ""
                    if kind == "models":
                        record = describe_model(key, r.value, verifier)
                    elif kind == "deadletter":
                        record = describe_deadletter(key, r.value)
                    else:
                        record = describe_event(key, r.value)
                    if wanted and device_of(kind, key, record) not in wanted:
                        continue
                    out(format_line(kind, record, as_json))
                    printed += 1
                    if max_messages is not None and printed >= max_messages:
                        return printed
    except KeyboardInterrupt:  # Ctrl-C is the normal way to stop
        pass
    finally:
        consumer.close()
    return printed


def cmd_tail(args: argparse.Namespace) -> int:
    """Handler of ``metastream tail``."""
    settings = Settings.load(args.settings, broker=args.broker)
    verifier = None
    keys = list(args.trusted_key or ()) or [p.strip() for p in settings.trusted_keys.split(",") if p.strip()]
    if args.kind == "models" and keys:
        verifier = Verifier.from_files(*keys)
    run_tail(
        settings,
        args.kind,
        from_beginning=args.from_beginning,
        devices=args.device or (),
        as_json=args.json,
        verifier=verifier,
        max_messages=args.max_messages,
        idle_timeout_s=args.idle_timeout,
        out=lambda line: print(line, flush=True),
    )
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``metastream tail``."""
    p = subparsers.add_parser("tail", help="print the events, dead letters or models of a deployment")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--settings", help="JSON settings file (else METASTREAM_* environment and defaults)")
    p.add_argument("--broker", help="kafka://host:port[,host:port]; overrides the settings")
    p.add_argument("--from-beginning", action="store_true", help="what the topic holds, then new messages")
    p.add_argument("--device", action="append", help="only this device's messages; repeatable")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.add_argument(
        "--trusted-key",
        action="append",
        help="models: PEM public key to check signatures with; repeatable (default: settings)",
    )
    p.add_argument("--max-messages", type=int, help="stop after this many messages")
    p.add_argument("--idle-timeout", type=float, metavar="S", help="stop after S seconds without messages")
    p.set_defaults(func=cmd_tail)
