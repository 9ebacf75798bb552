"""On-device learning: one drift after a change, noticed soon, and the adaptation from θ pays off."""

from __future__ import annotations

import numpy as np

from metastream_edge.learner import EdgeConfig, OnDeviceLearner

CFG = EdgeConfig(n_features=2, hidden=(16,), adapt_after=16, buffer_size=32, cooldown=100, drift_warmup=50)


def theta(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "0.weight": rng.normal(size=(16, 2)).astype(np.float32) / 2,
        "0.bias": np.zeros(16, np.float32),
        "2.weight": rng.normal(size=(1, 16)).astype(np.float32) / 4,
        "2.bias": np.zeros(1, np.float32),
    }


def test_one_drift_after_the_change_and_an_adaptation_that_lowers_the_error() -> None:
    # Prepare: 800 readings whose relation flips sign at reading 400, in batches of 4
    rng = np.random.default_rng(8)
    x = rng.normal(size=(800, 2))
    y = np.where(np.arange(800) < 400, 1.0, -1.0) * (2 * x[:, 0] - x[:, 1]) + 0.05 * rng.normal(size=800)
    device = OnDeviceLearner(CFG, theta(1))
    # Execute
    steps = [device.learn(x[i : i + 4], y[i : i + 4]) for i in range(0, 800, 4)]
    # Assert: no alarm before the flip, one soon after it, then one adaptation on post-flip readings
    drift_batches = [i for i, s in enumerate(steps) if s.drifted]
    adapt_batches = [i for i, s in enumerate(steps) if s.adapted]
    assert len(drift_batches) == 1 and 100 <= drift_batches[0] <= 105
    assert adapt_batches == [drift_batches[0] + 4]  # 16 fresh readings later
    errors = [float(np.abs(s.y_pred - y[4 * i : 4 * i + 4]).mean()) for i, s in enumerate(steps)]
    after_adapt = adapt_batches[0] + 1
    assert np.mean(errors[after_adapt : after_adapt + 10]) < 0.5 * np.mean(errors[100 : adapt_batches[0]])
    assert (device.n_drifts, device.n_adaptations, device.n_seen) == (1, 1, 800)
