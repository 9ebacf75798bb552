"""The device's state on disk: atomic saves survive crashes; corrupt files are refused clearly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from metastream_edge import persist
from metastream_edge.learner import EdgeConfig, OnDeviceLearner
from metastream_edge.persist import StateError, load_state, save_state

CFG = EdgeConfig(n_features=3, hidden=(8,), adapt_after=8, buffer_size=16, drift_warmup=20, cooldown=10)


def stream(seed: int, n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    return x, x @ np.array([1.0, -2.0, 0.5]) + 3


def trained(seed: int = 0) -> OnDeviceLearner:
    rng = np.random.default_rng(99)
    theta = {
        "0.weight": rng.normal(size=(8, 3)).astype(np.float32) / 2,
        "0.bias": np.zeros(8, np.float32),
        "2.weight": rng.normal(size=(1, 8)).astype(np.float32) / 3,
        "2.bias": np.zeros(1, np.float32),
    }
    learner = OnDeviceLearner(CFG, theta)
    learner.theta_version = 4
    x, y = stream(seed)
    for i in range(0, len(y), 6):
        learner.learn(x[i : i + 6], y[i : i + 6])
    return learner


def test_a_restored_device_continues_exactly_where_it_stopped(tmp_path: Path) -> None:
    # Prepare
    learner = trained()
    save_state(learner, tmp_path / "state")
    # Execute
    restored = load_state(tmp_path / "state")
    assert restored is not None
    x, y = stream(seed=1, n=60)
    steps = [(a.learn(x[i : i + 6], y[i : i + 6]), b.learn(x[i : i + 6], y[i : i + 6]))
             for i in range(0, 60, 6) for a, b in [(learner, restored)]]  # fmt: skip
    # Assert: same predictions, same weights, same counters, every bit
    assert all(np.array_equal(a.y_pred, b.y_pred) for a, b in steps)
    assert learner.params is not None and restored.params is not None
    assert all(np.array_equal(learner.params[k], restored.params[k]) for k in learner.params)
    assert (restored.theta_version, restored.n_seen, restored.detector) == (
        4,
        learner.n_seen,
        learner.detector,
    )


def test_no_state_yet_is_none(tmp_path: Path) -> None:
    assert load_state(tmp_path / "state") is None


def test_a_temp_file_left_by_a_cut_save_is_ignored_and_removed(tmp_path: Path) -> None:
    # Prepare: a good state, then a save that died half-way through writing its temp file
    learner = trained()
    save_state(learner, tmp_path / "state")
    (tmp_path / "state.tmp").write_bytes(persist.encode_state(trained(seed=5))[:100])
    # Execute
    restored = load_state(tmp_path / "state")
    # Assert: the previous complete state, and the debris is gone
    assert restored is not None and restored.n_seen == learner.n_seen
    assert restored.params is not None and learner.params is not None
    assert np.array_equal(restored.params["0.weight"], learner.params["0.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def test_a_crash_before_the_rename_keeps_the_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a saved state; the next save's rename never happens (power cut)
    first = trained(seed=0)
    save_state(first, tmp_path / "state")
    before = (tmp_path / "state").read_bytes()

    def cut(src: object, dst: object) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "replace", cut)
    # Execute
    with pytest.raises(OSError, match="power cut"):
        save_state(trained(seed=3), tmp_path / "state")
    monkeypatch.undo()
    # Assert
    assert (tmp_path / "state").read_bytes() == before
    restored = load_state(tmp_path / "state")
    assert restored is not None and restored.n_seen == first.n_seen


def test_a_truncated_state_is_refused(tmp_path: Path) -> None:
    # Prepare
    save_state(trained(), tmp_path / "state")
    payload = (tmp_path / "state").read_bytes()
    (tmp_path / "state").write_bytes(payload[: len(payload) - 40])
    # Execute / Assert
    with pytest.raises(StateError, match=r"state: corrupt state: .*move it away"):
        load_state(tmp_path / "state")


def test_a_flipped_bit_is_refused(tmp_path: Path) -> None:
    # Prepare: one bit of the weights changed on disk
    save_state(trained(), tmp_path / "state")
    payload = bytearray((tmp_path / "state").read_bytes())
    payload[-3] ^= 0x04
    (tmp_path / "state").write_bytes(bytes(payload))
    # Execute / Assert
    with pytest.raises(StateError, match="sha256 mismatch"):
        load_state(tmp_path / "state")


def test_a_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").write_bytes(b"\x00" * 64)
    with pytest.raises(StateError, match="corrupt state"):
        load_state(tmp_path / "state")
