"""``metastream tail``: how models, events and dead letters are described and printed."""

from __future__ import annotations

import json

from connectors.signing import Signer, Verifier
from learners.config import LearnerConfig
from learners.nets import init_params
from pipeline.tools.tail import describe_deadletter, describe_event, describe_model, format_line
from wire.models import ModelHeader, encode_model
from wire.readings import DeadLetter, Rejected


def model_payload(device: str, version: int, parent: int) -> bytes:
    cfg = LearnerConfig(n_features=2, hidden=(4,))
    return encode_model(init_params(cfg), ModelHeader(device, version, parent, "regression", 2, 1, (4,)))


def test_a_signed_model_is_described_without_loading_it() -> None:
    # Prepare
    worker, stranger = Signer.generate(), Signer.generate()
    sealed = worker.seal(model_payload("dev-7", 4, 9))

    # Execute
    trusted = describe_model("dev-7", sealed, Verifier([worker.public_key]))
    untrusted = describe_model("dev-7", sealed, Verifier([stranger.public_key]))
    unchecked = describe_model("dev-7", sealed, None)
    altered = describe_model("dev-7", sealed[:-1] + bytes([sealed[-1] ^ 1]), Verifier([worker.public_key]))

    # Assert
    assert format_line("models", trusted, as_json=False) == "dev-7 v4 parent θ v9 signature ok"
    assert untrusted == {**trusted, "signature": "refused: signed by an unknown key"}
    assert unchecked["signature"] == "not checked (no trusted key)" and unchecked["version"] == 4
    assert altered["signature"] == "refused: bad signature: payload or signature altered"
    assert json.loads(format_line("models", trusted, as_json=True)) == {
        "device_id": "dev-7",
        "version": 4,
        "parent_theta": 9,
        "signature": "ok",
    }


def test_a_dead_letter_line_names_reason_source_and_original() -> None:
    # Prepare
    letter = DeadLetter.of(Rejected("non_finite", "x[1] is NaN", b'{"x":[1,NaN]}'), "readings", 2, 41)
    value = letter.encode()

    # Execute
    line = format_line("deadletter", describe_deadletter("gw-3", value), as_json=False)
    broken = describe_deadletter("gw-3", b"not json")

    # Assert
    assert line == 'non_finite readings[2]@41 key=gw-3: x[1] is NaN | {"x":[1,NaN]}'
    assert broken["reason"] == "unreadable dead letter"


def test_an_event_line_starts_with_its_type_and_device() -> None:
    # Prepare
    value = json.dumps({"type": "adapted", "device_id": "d1", "model_version": 2, "cause": "drift"}).encode()

    # Execute
    line = format_line("events", describe_event("d1", value), as_json=False)
    raw = format_line("events", describe_event("d1", b"\xff garbage"), as_json=False)

    # Assert
    assert line == "adapted d1 model_version=2 cause=drift"
    assert raw == "? d1 raw=\ufffd garbage"
