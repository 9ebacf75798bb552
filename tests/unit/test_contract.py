"""One contract battery, run over every strategy."""

from __future__ import annotations

import numpy as np
import pytest

from learners import LearnerConfig
from learners.base import Strategy
from learners.evaluation.synthetic import make_fleet_stream
from learners.strategies import STRATEGIES, make_strategy


@pytest.fixture(params=STRATEGIES)
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_every_strategy_predicts_each_reading_once_and_is_deterministic(name: str, task: str) -> None:
    # Prepare
    s = make_fleet_stream(n_devices=6, n_readings=600, n_features=3, task=task, n_classes=3, seed=2)  # type: ignore[arg-type]
    cfg = LearnerConfig(n_features=3, task=task, n_classes=3, adapt_after=4, buffer_size=8, meta_every=100)  # type: ignore[arg-type]

    def run(strategy: Strategy) -> np.ndarray:
        preds = [
            strategy.learn_predict(s.device_ids[a : a + 50], s.x[a : a + 50], s.y[a : a + 50]).y_pred
            for a in range(0, 600, 50)
        ]
        return np.concatenate(preds)

    # Execute
    first, second = run(make_strategy(name, cfg)), run(make_strategy(name, cfg))
    # Assert
    assert first.shape == (600,)
    assert np.isfinite(first).all()
    assert np.array_equal(first, second)  # seeded: same stream, same predictions
    if task == "classification":
        assert set(np.unique(first)) <= {0.0, 1.0, 2.0}


def test_every_strategy_learns_a_simple_fleet(name: str) -> None:
    # Prepare: 4 devices, y = gain_d * x0 with a different gain per device
    rng = np.random.default_rng(0)
    ids = [f"d{i % 4}" for i in range(4000)]
    x = rng.normal(size=(4000, 2))
    gains = np.array([1.0, 2.0, 3.0, 4.0])
    y = gains[np.arange(4000) % 4] * x[:, 0]
    strategy = make_strategy(name, LearnerConfig(n_features=2))
    # Execute
    errs = [
        np.abs(
            strategy.learn_predict(ids[a : a + 40], x[a : a + 40], y[a : a + 40]).y_pred - y[a : a + 40]
        ).mean()
        for a in range(0, 4000, 40)
    ]
    # Assert: late error well below early error
    assert np.mean(errs[-10:]) < 0.6 * np.mean(errs[:3])
