"""EdgeState: which model updates an edge device accepts, and that refusals keep the last good model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from connectors.edge import META_KEY, EdgeState
from connectors.signing import Signer, Verifier
from learners import LearnerConfig
from learners.fleet import FleetLearner
from learners.nets import init_params
from wire.models import ModelHeader, encode_model

X = np.array([[0.5, 1.0], [1.0, 2.0]])


def fleet(hidden: tuple[int, ...] = (32,), *devices: str) -> FleetLearner:
    """A fleet that has seen a couple of readings of each device (export needs that)."""
    learner = FleetLearner(LearnerConfig(n_features=2, hidden=hidden))
    for d in devices or ("dev-1", "dev-2"):
        learner.learn_predict([d, d], X, np.array([1.0, 3.0]))
    return learner


@pytest.fixture
def signer() -> Signer:
    return Signer.generate()


@pytest.fixture
def state(signer: Signer) -> EdgeState:
    return EdgeState(Verifier([signer.public_key]), ["dev-1"])


def test_first_and_newer_versions_are_hot_swapped(signer: Signer, state: EdgeState) -> None:
    # Prepare
    learner = fleet()
    # Execute
    first = state.offer("dev-1", signer.seal(learner.export("dev-1", 1)))
    running_v1 = state.model("dev-1")
    second = state.offer("dev-1", signer.seal(learner.export("dev-1", 2)))
    # Assert
    assert (first.accepted, first.reason, second.accepted) == (True, "accepted", True)
    assert state.version("dev-1") == 2
    assert state.model("dev-1") is not running_v1
    assert state.counts["accepted"] == 2
    assert str(second) == "dev-1 v2 accepted"


def test_predicts_like_the_fleet(signer: Signer, state: EdgeState) -> None:
    # Prepare
    learner = fleet()
    state.offer("dev-1", signer.seal(learner.export("dev-1", 1)))
    # Execute
    pred = state.predict("dev-1", X)
    # Assert
    # The worker's own model under the moments it exported (learn_predict uses each reading's own).
    xs = torch.tensor(learner.scaler.x.transform(X), dtype=torch.float32)
    out = learner.net.forward(learner.device_params("dev-1"), xs)
    expected = learner.scaler.inverse_y(learner.net.predict(out).numpy())
    np.testing.assert_allclose(pred, expected, atol=1e-5)


def test_predict_before_any_model_raises_lookup_error(state: EdgeState) -> None:
    with pytest.raises(LookupError, match="dev-1"):
        state.predict("dev-1", X)


def tampered_envelope(signer: Signer, payload: bytes) -> bytes:
    envelope = bytearray(signer.seal(payload))
    envelope[-1] ^= 0x01
    return bytes(envelope)


def altered_then_signed(signer: Signer, payload: bytes) -> bytes:
    """A payload altered before signing (a bug upstream): the signature is fine, the sha256 is not."""
    return signer.seal(payload.replace(b"dev-1", b"dev-9"))


@pytest.mark.parametrize(
    ("make_envelope", "reason"),
    [
        (lambda s, p: p, "unsigned"),
        (lambda s, p: Signer.generate().seal(p), "unknown_key"),
        (tampered_envelope, "bad_signature"),
        (altered_then_signed, "bad_payload"),
        (lambda s, p: s.seal(b"not a model"), "bad_payload"),
    ],
    ids=["unsigned", "wrong-key", "tampered-envelope", "altered-payload", "garbage-payload"],
)
def test_bad_envelopes_are_refused_and_the_last_good_model_keeps_running(
    signer: Signer, state: EdgeState, make_envelope: object, reason: str
) -> None:
    # Prepare
    learner = fleet()
    state.offer("dev-1", signer.seal(learner.export("dev-1", 1)))
    running = state.model("dev-1")
    # Execute
    decision = state.offer("dev-1", make_envelope(signer, learner.export("dev-1", 5)))  # type: ignore[operator]
    # Assert
    assert (decision.accepted, decision.reason) == (False, reason)
    assert state.model("dev-1") is running and state.version("dev-1") == 1
    assert state.log[-1] == decision and state.counts[reason] == 1


@pytest.mark.parametrize("version", [1, 2], ids=["replayed", "older"])
def test_replayed_or_older_versions_are_stale(signer: Signer, state: EdgeState, version: int) -> None:
    # Prepare
    learner = fleet()
    old = signer.seal(learner.export("dev-1", version))
    state.offer("dev-1", signer.seal(learner.export("dev-1", 2)))
    # Execute
    decision = state.offer("dev-1", old)
    # Assert
    assert (decision.reason, decision.version) == ("stale_version", version)
    assert str(decision) == f"dev-1 v{version} refused stale_version"
    assert state.version("dev-1") == 2


def test_other_architecture_is_a_shape_mismatch(signer: Signer, state: EdgeState) -> None:
    # Prepare
    state.offer("dev-1", signer.seal(fleet((32,)).export("dev-1", 1)))
    # Execute
    decision = state.offer("dev-1", signer.seal(fleet((8,)).export("dev-1", 2)))
    # Assert
    assert decision.reason == "shape_mismatch"
    assert state.model("dev-1") is not None and state.model("dev-1").header.hidden == (32,)  # type: ignore[union-attr]


def test_genuine_model_of_another_device_under_this_key_is_refused(signer: Signer, state: EdgeState) -> None:
    # Prepare
    other = signer.seal(fleet().export("dev-2", 7))
    # Execute
    decision = state.offer("dev-1", other)
    # Assert
    assert (decision.reason, decision.version) == ("wrong_device", 7)
    assert str(decision) == "dev-1 v7 refused wrong_device (a model of dev-2)"
    assert state.model("dev-1") is None


def test_devices_not_subscribed_are_refused(signer: Signer, state: EdgeState) -> None:
    decision = state.offer("dev-2", signer.seal(fleet().export("dev-2", 1)))
    assert decision.reason == "not_subscribed"
    assert state.versions() == {"dev-1": None}


def test_theta_versions_under_the_meta_key(signer: Signer, state: EdgeState) -> None:
    # Prepare: θ as the meta agent publishes it (device id "__meta__", no normalisation tensors)
    cfg = LearnerConfig(n_features=2)

    def theta(version: int) -> bytes:
        header = ModelHeader(META_KEY, version, version - 1, "regression", 2, 1, cfg.hidden)
        return signer.seal(encode_model(init_params(cfg), header))

    # Execute
    decisions = [state.offer(META_KEY, theta(v)) for v in (1, 3, 2)]
    # Assert
    assert [d.reason for d in decisions] == ["accepted", "accepted", "stale_version"]
    assert state.version(META_KEY) == 3
    assert state.theta is not None and state.theta[1].model_version == 3
