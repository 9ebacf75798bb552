"""Continuous meta-learning and the ``auto`` strategy: choice of start, cut invariance, checkpoints."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from learners import LearnerConfig
from learners.auto import AUTO_EVERY, AutoFleet, AutoStrategy, pick_candidates
from learners.continuous import ContinuousFleet
from learners.evaluation.synthetic import make_fleet_stream
from learners.fleet import FleetLearner
from learners.nets import flatten, flatten_stacked
from learners.strategies import make_strategy

CFG = LearnerConfig(
    n_features=3, hidden=(8,), inner_steps=4, adapt_after=8, buffer_size=16, meta_batch=3, cooldown=40
)


def identical_fleet(
    n_old: int, n_new: int, warm: int, n: int, seed: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Devices that all follow one function; ``n_old`` speak from the start, ``n_new`` join after ``warm``."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=3)
    x = rng.normal(size=(n, 3))
    y = 2.0 * np.tanh(x @ w) + 0.1 * rng.normal(size=n)
    ids = [f"old-{i}" for i in rng.integers(0, n_old, warm)]
    ids += [f"new-{i}" for i in rng.integers(0, n_new, n - warm)]
    return ids, x, y


def feed(learner: FleetLearner, ids: list[str], x: np.ndarray, y: np.ndarray, cuts: list[int]) -> np.ndarray:
    bounds = [b for b in np.cumsum([0, *cuts]).tolist() if b < len(y)] + [len(y)]
    return np.concatenate(
        [learner.learn_predict(ids[a:z], x[a:z], y[a:z]).y_pred for a, z in itertools.pairwise(bounds)]
    )


def test_auto_picks_the_pooled_start_on_a_fleet_of_identical_devices() -> None:
    # Prepare: a fleet warmed up on a few devices, then new devices of the same kind join
    picks = []
    for seed in range(3):
        ids, x, y = identical_fleet(n_old=4, n_new=12, warm=1500, n=2100, seed=seed)
        fleet = AutoFleet(LearnerConfig(n_features=3, hidden=(8,), seed=seed))
        feed(fleet, ids[:1500], x[:1500], y[:1500], [100] * 15)
        before = dict(fleet.wins)
        # Execute: the new devices adapt
        feed(fleet, ids[1500:], x[1500:], y[1500:], [100] * 6)
        picks.append({k: fleet.wins[k] - before[k] for k in fleet.wins})
    # Assert: on every seed the pooled model won most of the new devices' adaptations
    for got in picks:
        assert sum(got.values()) >= 12
        assert got["pooled"] > got["finetune"] + got["meta"], picks


def test_another_candidate_wins_only_where_it_is_clearly_better() -> None:
    hold = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    first = torch.tensor([[1.0, 1.0, 1.0, 9.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    better = torch.tensor([[0.2, 0.3, 0.1, 9.0], [0.9, 1.2, 0.8, 1.1], [0.0, 0.0, 0.0, 0.0]])
    best = torch.tensor([[0.1, 0.2, 0.0, 9.0], [float("nan")] * 4, [0.0, 0.0, 0.0, 0.0]])
    # Row 0: both clearly better, the lowest wins; row 1: noise or diverged; row 2: nothing held back.
    assert pick_candidates(torch.stack([first, better, best]), hold).tolist() == [2, 0, 0]
    diverged = torch.full((3, 4), float("inf"))
    assert pick_candidates(torch.stack([diverged, better, first]), hold).tolist() == [1, 1, 0]


def test_continuous_theta_steps_every_few_readings_towards_the_fleets_weights() -> None:
    # Prepare
    s = make_fleet_stream(n_devices=6, n_readings=640, n_features=3, late_joiners=0.0, seed=3)
    fleet = ContinuousFleet(CFG, every=64)
    # Execute
    feed(fleet, s.device_ids, s.x, s.y, [100] * 6)
    before = flatten(fleet.theta).clone()
    mean_weights = flatten_stacked(fleet.params)[: len(fleet.devices)].mean(0)
    feed(fleet, s.device_ids[:64], s.x[:64], s.y[:64], [64])
    # Assert: one step per 64 readings, each moving θ closer to the devices' weights
    assert fleet.meta_version == 11
    after = flatten(fleet.theta)
    assert torch.dist(after, mean_weights) < torch.dist(before, mean_weights)


def test_auto_and_continuous_give_the_same_results_however_the_stream_is_cut() -> None:
    s = make_fleet_stream(n_devices=6, n_readings=900, n_features=3, gradual_share=0.0, noise=0.05, seed=11)
    ids = s.device_ids
    for make in (lambda: ContinuousFleet(CFG, every=50), lambda: AutoFleet(CFG, every=50)):
        # Prepare: one reading at a time is the prequential definition itself
        ref = make()
        want = feed(ref, ids, s.x, s.y, [1] * len(ids))
        # Execute: other cuts, and a checkpoint restored into a fresh learner halfway
        cut = make()
        got = feed(cut, ids, s.x, s.y, [7, 130, 3, 333, 64, 1, 250])
        first = make()
        a = feed(first, ids[:437], s.x[:437], s.y[:437], [37, 400])
        tensors, info = first.export_devices(first.devices.ids)
        restored = make()
        restored.import_devices(tensors, info, worker_wide=True)
        b = feed(restored, ids[437:], s.x[437:], s.y[437:], [99] * 5)
        # Assert
        assert ref.n_adaptations >= 5 and ref.meta_version >= 15
        for other, pred in ((cut, got), (restored, np.concatenate([a, b]))):
            assert np.array_equal(pred, want)
            assert other.meta_version == ref.meta_version
            for k in ref.params:
                assert torch.equal(other.params[k], ref.params[k]), k
                assert torch.equal(other.theta[k], ref.theta[k]), k
        if isinstance(ref, AutoFleet):
            assert isinstance(restored, AutoFleet) and restored.wins == ref.wins


def test_auto_is_selectable_and_reports_its_scores() -> None:
    s = make_fleet_stream(n_devices=4, n_readings=400, n_features=3, seed=1)
    auto = make_strategy("auto", CFG)
    assert isinstance(auto, AutoStrategy)
    auto.learn_predict(s.device_ids, s.x, s.y)
    assert auto.name == "auto" and set(auto.start_wins) == {"pooled", "finetune", "meta"}
    assert auto.n_adaptations >= 4 and auto.meta_version == 400 // AUTO_EVERY


def test_auto_blends_with_the_fleets_one_pooled_model_the_same_however_the_stream_is_cut() -> None:
    # Prepare: a stream of 6 devices; one reading at a time is the prequential definition itself
    s = make_fleet_stream(n_devices=6, n_readings=700, n_features=3, gradual_share=0.0, noise=0.05, seed=5)
    ids = s.device_ids
    ref = AutoStrategy(CFG, every=50)
    want = np.concatenate(
        [ref.learn_predict(ids[i : i + 1], s.x[i : i + 1], s.y[i : i + 1]).y_pred for i in range(700)]
    )
    # Execute: other cuts (the pooled model steps on chunks of 32, which these cuts split)
    cut = AutoStrategy(CFG, every=50)
    bounds = [0, 7, 130, 133, 466, 530, 531, 700]
    got = np.concatenate(
        [cut.learn_predict(ids[a:z], s.x[a:z], s.y[a:z]).y_pred for a, z in itertools.pairwise(bounds)]
    )
    # Assert: the same blended predictions, and no pooled model besides the fleet's
    assert np.array_equal(got, want)
    assert not hasattr(cut, "pooled")
    assert len(cut.personal.pooled_pred) == 700 - 531 and np.isfinite(cut.personal.pooled_pred).all()


def test_starts_stacked_on_the_device_axis_adapt_as_each_start_alone() -> None:
    # Prepare: two different starts and three devices' readings
    net = AutoFleet(CFG).net
    rng = torch.Generator().manual_seed(0)
    a = {k: torch.randn(v.shape, generator=rng) for k, v in net.template.named_parameters()}
    b = {k: torch.randn(v.shape, generator=rng) for k, v in net.template.named_parameters()}
    x, y, mask = torch.randn(3, 8, 3, generator=rng), torch.randn(3, 8, generator=rng), torch.ones(3, 8)
    # Execute: both starts in one call, each start on all three devices
    both = net.adapt(
        {k: torch.stack([a[k]] * 3 + [b[k]] * 3) for k in a},
        x.repeat(2, 1, 1),
        y.repeat(2, 1),
        mask.repeat(2, 1),
    )
    alone = [net.adapt(a, x, y, mask), net.adapt(b, x, y, mask)]
    # Assert
    for k in a:
        torch.testing.assert_close(both[k], torch.cat([alone[0][k], alone[1][k]]), rtol=0, atol=1e-6)
