"""k-shot evaluation on held-out devices: isolation, disjoint readings, one value per k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

import learners.evaluation.kshot as kshot
from learners import LearnerConfig
from learners.base import StepResult, StrategyBase
from learners.evaluation.kshot import make_episodes, run_held_out, split_devices
from learners.evaluation.synthetic import make_fleet_stream
from learners.fleet import FleetLearner
from learners.strategies import make_strategy

CFG = LearnerConfig(n_features=3, meta_every=100, adapt_after=8, buffer_size=16)


@pytest.fixture(scope="module")
def stream():  # type: ignore[no-untyped-def]
    return make_fleet_stream(n_devices=8, n_readings=2400, n_features=3, late_joiners=0.5, seed=3)


def test_held_out_devices_never_influence_theta(stream) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the same split, once with the held-out rows in the table and once without them
    held = ["dev-0002", "dev-0006"]
    keep = np.array([d not in held for d in stream.device_ids])
    without = ([d for d, k in zip(stream.device_ids, keep, strict=True) if k], stream.x[keep], stream.y[keep])
    with_rows = make_strategy("reptile", CFG)
    without_rows = make_strategy("reptile", CFG)
    # Execute
    run_a = run_held_out(with_rows, stream.device_ids, stream.x, stream.y, "regression", held, 32, ks=(5, 10))
    run_b = run_held_out(without_rows, *without, "regression", held, 32, ks=(5, 10))
    # Assert: θ moved, and is bit-identical; so are the scaler and the prequential errors
    assert isinstance(with_rows, FleetLearner) and isinstance(without_rows, FleetLearner)
    assert with_rows.meta_version == without_rows.meta_version > 10
    for name, value in with_rows.theta.items():
        assert torch.equal(value, without_rows.theta[name])
    assert np.array_equal(with_rows.scaler.x.mean, without_rows.scaler.x.mean)
    assert np.array_equal(run_a.errors, run_b.errors)
    assert held[0] not in with_rows.devices and held[1] not in with_rows.devices
    assert run_a.curve.episodes == 2 and run_b.curve.episodes == 0


def test_support_and_query_are_disjoint_and_in_time_order() -> None:
    # Prepare: x holds each reading's table index, so the personaliser sees which rows it gets
    ids = ["a", "b"] * 300
    x = np.arange(600.0)[:, None]
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def spy(xs: np.ndarray, ys: np.ndarray, xq: np.ndarray) -> np.ndarray:
        seen.append((xs[..., 0].astype(int), xq[..., 0].astype(int)))
        return np.zeros(xq.shape[:2])

    # Execute
    curve = kshot.kshot_curve(spy, ids, x, np.zeros(600), "regression", ks=(5, 20), horizon=30, episodes=3)
    # Assert: per episode, the support is the device's next k readings and the query the `horizon` after
    assert curve.episodes == 6 and len(seen) == 2
    for (support, query), k in zip(seen, (5, 20), strict=True):
        assert support.shape == (6, k) and query.shape == (6, 30)
        for s, q in zip(support, query, strict=True):
            assert not set(s) & set(q)
            device_rows = np.concatenate([s, q])
            assert len({r % 2 for r in device_rows}) == 1  # one device
            assert np.all(np.diff(device_rows) == 2)  # consecutive readings of that device


def test_shuffled_episodes_are_disjoint_random_samples() -> None:
    # Execute
    eps = make_episodes(["a"] * 300, ks=(5, 50), horizon=100, episodes=2, shuffle_seed=7)
    # Assert
    assert len(eps) == 2
    for e in eps:
        assert len(set(e.rows.tolist())) == 150  # support ∪ query without repeats
        assert not np.all(np.diff(e.rows) > 0)  # not in time order


def test_curve_has_one_value_per_k(stream) -> None:  # type: ignore[no-untyped-def]
    # Execute
    _, held = split_devices(stream.device_ids, 0.25, seed=1, min_readings=150)
    run = run_held_out(
        make_strategy("global", CFG),
        stream.device_ids,
        stream.x,
        stream.y,
        "regression",
        held,
        32,
        ks=(20, 5, 10),
        horizon=100,
        episodes=2,
    )
    # Assert
    assert run.curve.ks == [5, 10, 20]
    assert len(run.curve.error) == len(run.curve.sem) == 3
    assert set(run.summary["kshot"]) == {"5", "10", "20"}
    assert run.summary["kshot_episodes"] == 4 and run.summary["kshot_devices"] == 2
    assert run.online is not None and set(run.summary["kshot_online"]) == {"5", "10", "20"}
    assert all(np.isfinite(run.curve.error))


class Counting(StrategyBase):
    """A strategy that remembers the largest table index (feature 0) it has learned from."""

    name = "counting"

    def __init__(self) -> None:
        self.latest = -1.0

    def learn_predict(self, device_ids: Sequence[str], x: np.ndarray, y: np.ndarray) -> StepResult:
        self.latest = max(self.latest, float(x[:, 0].max()))
        return StepResult(np.zeros(len(y)))


def test_online_kshot_uses_only_the_state_before_the_episode(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: every personalisation checks that the strategy has not learned from later readings
    strategy = Counting()
    checked: list[int] = []

    def check(xs: np.ndarray, ys: np.ndarray, xq: np.ndarray) -> np.ndarray:
        if strategy.latest < x[-1, 0]:  # online: mid-stream (the end-of-stream curve sees everything)
            assert np.all(xs[:, 0, 0] > strategy.latest)
            checked.append(len(xs))
        return np.zeros(xq.shape[:2])

    monkeypatch.setattr(kshot, "personaliser", lambda s: check)
    ids = [f"d{i % 5}" for i in range(5000)]
    x = np.arange(5000.0)[:, None]
    # Execute
    run = run_held_out(
        strategy, ids, x, np.zeros(5000), "regression", ["d3"], 20, ks=(5,), horizon=20, episodes=8
    )
    # Assert: the first episode falls in the warm-up; the others are scored online, before they begin
    assert run.online is not None and run.online.episodes == 7 and run.curve.episodes == 8
    assert sum(checked) == 7


def test_split_is_seeded_and_respects_min_readings() -> None:
    # Prepare: device "short" has too few readings to be scored
    ids = [f"d{i}" for i in range(9)] * 20 + ["short"]
    # Execute
    splits = {tuple(split_devices(ids, 0.3, seed=s, min_readings=10)[1]) for s in range(20)}
    # Assert
    assert all(len(h) == 3 and "short" not in h for h in splits)
    assert len(splits) > 5
    assert split_devices(ids, 0.3, seed=4) == split_devices(ids, 0.3, seed=4)
    with pytest.raises(ValueError, match="cannot hold out"):
        split_devices(ids, 0.5, min_readings=100)
