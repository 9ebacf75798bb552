"""The vectorised fleet learner: joining, predict-then-learn, adaptation, meta-updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learners import LearnerConfig
from learners.fleet import FleetLearner
from learners.nets import MAX_GRAD_NORM, FunctionalNet, clip_grad


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


def test_micro_batch_equals_per_device_steps() -> None:
    # Prepare: two devices, two readings each, in one mixed micro-batch
    cfg = LearnerConfig(n_features=2, adapt_after=16)
    fleet = FleetLearner(cfg, init="scratch")
    x, y = linear_task(4, 2.0, 1)
    ids = ["a", "b", "a", "b"]
    theta = {k: v.clone() for k, v in fleet.theta.items()}
    # Execute
    fleet.learn_predict(ids, x, y)
    # Assert: each device took one SGD step on the mean loss of its own readings
    net = FunctionalNet(cfg)
    xs = torch.tensor(fleet.scaler.x.transform(x), dtype=torch.float32)
    ys = torch.tensor((y - fleet.scaler.y.mean[0]) / fleet.scaler.y.std[0], dtype=torch.float32)
    for dev, rows in (("a", [0, 2]), ("b", [1, 3])):
        loss = lambda p, r=rows: net.sample_loss(net.forward(p, xs[r]), ys[r]).mean()  # noqa: E731
        g = clip_grad(torch.func.grad(loss)(theta), MAX_GRAD_NORM, stacked=False)
        expected = {k: theta[k] - cfg.online_lr * g[k] for k in theta}
        got = fleet.device_params(dev)
        for k in theta:
            assert torch.allclose(got[k], expected[k], atol=1e-6), (dev, k)


def test_predictions_are_made_before_learning() -> None:
    # Prepare
    fleet = FleetLearner(LearnerConfig(n_features=2), init="scratch")
    x, y = linear_task(2, 1.0, 2)
    # Execute
    first = fleet.learn_predict(["a", "a"], x, y).y_pred
    # Assert: both readings were predicted by the same (initial) model, which
    # maps equal inputs to equal outputs
    same = fleet.learn_predict(["z", "z"], np.repeat(x[:1], 2, axis=0), y[:2]).y_pred
    assert first.shape == (2,) and same[0] == same[1]


def test_new_device_adapts_once_it_has_enough_readings() -> None:
    # Prepare
    fleet = FleetLearner(LearnerConfig(n_features=2, adapt_after=8, buffer_size=16))
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
    assert result.adapted == [] and np.array_equal(result.slots, slots)
    assert np.array_equal(result.y_pred, online.scaler.inverse_y(pred))
    assert all(torch.equal(full.params[k], online.params[k]) for k in full.params)
