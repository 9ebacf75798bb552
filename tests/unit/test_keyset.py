"""Root-signed key sets on the edge: rotation, revocation, and what is refused."""

from __future__ import annotations

import numpy as np
import pytest

from metastream_edge.codec import ModelHeader, encode_model
from metastream_edge.keyset import KEYSET_KEY, KeySet, seal_keyset
from metastream_edge.signing import Signer, Verifier, key_id
from metastream_edge.state import EdgeState


def model(device: str, version: int) -> bytes:
    """An unsigned model payload of ``device`` at ``version`` (2 features, one hidden layer)."""
    header = ModelHeader(device, version, 0, "regression", 2, 1, (4,))
    arrays = {k: np.full(s, 0.1, np.float32) for k, s in header.param_shapes().items()}
    arrays |= {
        "norm.x_mean": np.zeros(2, np.float32),
        "norm.x_std": np.ones(2, np.float32),
        "norm.y_mean": np.zeros(1, np.float32),
        "norm.y_std": np.ones(1, np.float32),
    }
    return encode_model(arrays, header)


@pytest.fixture
def keys() -> dict[str, Signer]:
    return {name: Signer.generate() for name in ("root", "old", "new")}


@pytest.fixture
def state(keys: dict[str, Signer]) -> EdgeState:
    """An edge installed with the old worker key and the root key."""
    return EdgeState(Verifier([keys["old"].public_key]), ["d1"], root=Verifier([keys["root"].public_key]))


def keyset(keys: dict[str, Signer], version: int, trusted: list[str], revoked: tuple[str, ...] = ()) -> bytes:
    ks = KeySet(
        version,
        tuple(keys[n].public_key for n in trusted),
        tuple(key_id(keys[n].public_key) for n in revoked),
    )
    return seal_keyset(keys["root"], ks)


def test_a_model_signed_by_a_rotated_in_key_is_accepted(keys: dict[str, Signer], state: EdgeState) -> None:
    # Prepare: the new key's model arrives before the key set that trusts it
    early = state.offer("d1", keys["new"].seal(model("d1", 1)))
    # Execute
    decisions = state.offer_all(KEYSET_KEY, keyset(keys, 1, ["old", "new"]))
    later = state.offer("d1", keys["new"].seal(model("d1", 2)))
    # Assert
    assert (early.accepted, early.reason) == (False, "unknown_key")
    assert [str(d) for d in decisions] == ["__keyset__ v1 accepted", "d1 v1 accepted"]
    assert later.accepted and state.version("d1") == 2
    assert state.keysets is not None and state.keysets.version == 1


def test_a_revoked_keys_models_are_refused_for_good(keys: dict[str, Signer], state: EdgeState) -> None:
    # Prepare
    state.offer("d1", keys["old"].seal(model("d1", 1)))
    # Execute: rotate to the new key and revoke the old one; then try to trust the old one again
    rotated = state.offer(KEYSET_KEY, keyset(keys, 2, ["new"], revoked=("old",)))
    refused = state.offer("d1", keys["old"].seal(model("d1", 2)))
    again = state.offer(KEYSET_KEY, keyset(keys, 3, ["old", "new"]))
    still = state.offer("d1", keys["old"].seal(model("d1", 3)))
    accepted = state.offer("d1", keys["new"].seal(model("d1", 4)))
    # Assert
    assert rotated.accepted and again.accepted
    assert (refused.reason, still.reason) == ("revoked_key", "revoked_key")
    assert accepted.accepted and state.version("d1") == 4  # the last good model kept running until then


def test_a_key_set_not_signed_by_the_root_is_refused(keys: dict[str, Signer], state: EdgeState) -> None:
    # Prepare: a holder of the (trusted) worker key tries to trust a key of its own
    rogue = Signer.generate()
    forged = seal_keyset(keys["old"], KeySet(1, (rogue.public_key,), (key_id(keys["old"].public_key),)))
    # Execute
    decision = state.offer(KEYSET_KEY, forged)
    rogue_model = state.offer("d1", rogue.seal(model("d1", 1)))
    old_model = state.offer("d1", keys["old"].seal(model("d1", 2)))
    # Assert
    assert (decision.accepted, decision.reason) == (False, "not_root_signed")
    assert rogue_model.reason == "unknown_key"
    assert old_model.accepted  # nothing changed
    assert state.keysets is not None and state.keysets.version == 0


def test_stale_unreadable_and_rootless_key_sets_are_refused(
    keys: dict[str, Signer], state: EdgeState
) -> None:
    # Prepare
    state.offer(KEYSET_KEY, keyset(keys, 5, ["old"]))
    rootless = EdgeState(Verifier([keys["old"].public_key]), ["d1"])
    # Execute
    stale = state.offer(KEYSET_KEY, keyset(keys, 5, ["new"]))
    model_as_keyset = state.offer(KEYSET_KEY, keys["root"].seal(model("d1", 1)))
    all_revoked = state.offer(KEYSET_KEY, keyset(keys, 6, ["old"], revoked=("old",)))
    no_root = rootless.offer(KEYSET_KEY, keyset(keys, 1, ["new"]))
    # Assert
    assert [(d.reason, d.version) for d in (stale, model_as_keyset, all_revoked, no_root)] == [
        ("stale_version", 5),
        ("bad_keyset", None),
        ("bad_keyset", 6),
        ("no_root_key", None),
    ]
    assert state.keysets is not None and state.keysets.version == 5
    assert state.offer("d1", keys["old"].seal(model("d1", 1))).accepted
