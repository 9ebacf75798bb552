"""The vectorised fleet learner: joining, predict-then-learn, adaptation, meta-updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learners import LearnerConfig
from learners.fleet import FleetLearner
from learners.nets import MAX_GRAD_NORM, FunctionalNet, clip_grad
from learners.scaling import PrequentialScaler


def linear_task(n: int, gain: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    return x, gain * x[:, 0] + 0.01 * rng.normal(size=n)


def test_a_new_device_starts_from_theta() -> None:
    # Prepare
    fleet = FleetLearner(LearnerConfig(n_features=2), init="reptile")
    x, y = linear_task(4, 1.0, 0)
    fleet.learn_predict(["a"] * 4, x, y)
    # Execute
    fleet.learn_predict(["b"], x[:1], y[:1])
    # Assert: b took exactly one SGD step from θ, so it is close to θ but not equal
    b, theta = fleet.device_params("b"), fleet.theta
    diff = max(float((b[k] - theta[k]).abs().max()) for k in theta)
    assert 0 < diff < 0.1


def test_each_reading_is_one_sgd_step_in_its_devices_order() -> None:
    # Prepare: two devices, two readings each, in one mixed micro-batch
    cfg = LearnerConfig(n_features=2, adapt_after=16)
    fleet = FleetLearner(cfg, init="scratch")
    x, y = linear_task(4, 2.0, 1)
    ids = ["a", "b", "a", "b"]
    theta = {k: v.clone() for k, v in fleet.theta.items()}
    xs, ys, _, _ = PrequentialScaler("regression", 2).fit_transform(x, y)
    # Execute
    fleet.learn_predict(ids, x, y)
    # Assert: each device took one SGD step per reading, on that reading alone, in order
    net = FunctionalNet(cfg)
    xt, yt = torch.from_numpy(xs), torch.from_numpy(ys)
    for dev, rows in (("a", [0, 2]), ("b", [1, 3])):
        expected = theta
        for r in rows:
            loss = lambda p, r=r: net.sample_loss(net.forward(p, xt[r : r + 1]), yt[r : r + 1]).mean()  # noqa: E731
            g = clip_grad(torch.func.grad(loss)(expected), MAX_GRAD_NORM, stacked=False)
            expected = {k: expected[k] - cfg.online_lr * g[k] for k in theta}
        got = fleet.device_params(dev)
        for k in theta:
            assert torch.allclose(got[k], expected[k], atol=1e-6), (dev, k)


def test_each_reading_is_predicted_before_it_is_learned() -> None:
    # Prepare: the same two readings of one device, in one batch and in two
    cfg = LearnerConfig(n_features=2)
    together, apart = FleetLearner(cfg, init="scratch"), FleetLearner(cfg, init="scratch")
    x, y = linear_task(2, 1.0, 2)
    x = np.repeat(x[:1], 2, axis=0)
    # Execute
    both = together.learn_predict(["z", "z"], x, y).y_pred
    first = apart.learn_predict(["z"], x[:1], y[:1]).y_pred
    second = apart.learn_predict(["z"], x[1:], y[1:]).y_pred
    # Assert: the second reading (same input) was predicted after learning the first
    assert both.tolist() == [first[0], second[0]] and both[0] != both[1]


def test_new_device_adapts_once_it_has_enough_readings() -> None:
    # Prepare: no regression guard (its judgement on 8 readings has its own tests)
    fleet = FleetLearner(LearnerConfig(n_features=2, adapt_after=8, buffer_size=16, guard_holdout=0.0))
    x, y = linear_task(20, 1.0, 3)
    # Execute
    adapted = [fleet.learn_predict(["a"], x[i : i + 1], y[i : i + 1]).adapted for i in range(20)]
    # Assert: adaptation exactly at the 8th reading, and only once
    assert [i for i, a in enumerate(adapted) if a] == [7]
    assert fleet.n_adaptations == 1


def test_meta_updates_happen_every_meta_every_readings() -> None:
    # Prepare
    fleet = FleetLearner(LearnerConfig(n_features=2, adapt_after=4, buffer_size=8, meta_every=50))
    x, y = linear_task(400, 1.0, 4)
    ids = [f"d{i % 5}" for i in range(400)]
    theta0 = {k: v.clone() for k, v in fleet.theta.items()}
    # Execute
    versions = [
        fleet.learn_predict(ids[a : a + 25], x[a : a + 25], y[a : a + 25]).meta_version
        for a in range(0, 400, 25)
    ]
    # Assert
    assert versions == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8]
    assert any(not torch.equal(theta0[k], fleet.theta[k]) for k in theta0)


def test_drift_triggers_adaptation_from_theta() -> None:
    # Prepare: a device learns gain +2, then its gain flips to -2
    fleet = FleetLearner(LearnerConfig(n_features=2, cooldown=100))
    xa, ya = linear_task(600, 2.0, 5)
    xb, yb = linear_task(400, -2.0, 6)
    x, y = np.vstack([xa, xb]), np.concatenate([ya, yb])
    # Execute
    events = [fleet.learn_predict(["d"], x[i : i + 1], y[i : i + 1]) for i in range(1000)]
    # Assert: one drift, detected soon after the flip, and an adaptation follows it
    drifts = [i for i, e in enumerate(events) if e.drifted]
    adaptations = [i for i, e in enumerate(events) if e.adapted]
    assert len(drifts) == 1 and 600 <= drifts[0] < 650
    assert any(drifts[0] <= a < drifts[0] + 20 for a in adaptations)


def test_fleet_grows_past_its_initial_capacity() -> None:
    # Prepare
    fleet = FleetLearner(LearnerConfig(n_features=2))
    ids = [f"d{i}" for i in range(200)]
    x, y = linear_task(200, 1.0, 7)
    # Execute
    out = fleet.learn_predict(ids, x, y)
    # Assert
    assert len(fleet.devices) == 200 and out.y_pred.shape == (200,)
    assert np.isfinite(out.y_pred).all()


def test_unknown_init_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown init 'maml'"):
        FleetLearner(LearnerConfig(n_features=2), init="maml")  # type: ignore[arg-type]


def test_learn_online_is_the_predict_then_learn_part_of_learn_predict() -> None:
    # Prepare: two identical fleets; 10 readings of 5 devices, too few for any adaptation
    cfg = LearnerConfig(n_features=3, adapt_after=8, buffer_size=8)
    full, online = FleetLearner(cfg), FleetLearner(cfg)
    rng = np.random.default_rng(3)
    ids = [f"d{i % 5}" for i in range(10)]
    x, y = rng.normal(size=(10, 3)), rng.normal(size=10)
    # Execute
    result = full.learn_predict(ids, x, y)
    slots, _, _, _, pred = online.learn_online(ids, x, y)
    # Assert: the same predictions and the same learned weights
    _, _, y_mean, y_std = PrequentialScaler("regression", 3).fit_transform(x, y)
    assert result.adapted == [] and np.array_equal(result.slots, slots)
    assert np.array_equal(result.y_pred, pred * y_std + y_mean)
    assert all(torch.equal(full.params[k], online.params[k]) for k in full.params)
