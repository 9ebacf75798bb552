"""The per-device blend: cut-invariant, and close to the better of its two predictors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from learners.blend import ErrorWeightedBlend, ranks_within_devices


def _stream(seed: int, own_noise: float, pooled_noise: float, n: int = 9000, devices: int = 30):
    rng = np.random.default_rng(seed)
    slots = rng.integers(0, devices, n)
    y = rng.normal(size=n)
    return slots, y + own_noise * rng.normal(size=n), y + pooled_noise * rng.normal(size=n), y


def _mse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((pred - y) ** 2))


@pytest.mark.parametrize(("own_noise", "pooled_noise"), [(0.3, 1.0), (1.0, 0.3), (0.5, 0.5)])
def test_the_blend_is_about_as_good_as_the_better_predictor(own_noise: float, pooled_noise: float) -> None:
    # Prepare
    slots, own, pooled, y = _stream(0, own_noise, pooled_noise)

    # Execute
    pred = ErrorWeightedBlend("regression").combine(slots, own, pooled, y)

    # Assert: within 5% of the better one's error (equal predictors: better than either).
    best = min(_mse(own, y), _mse(pooled, y))
    assert _mse(pred, y) <= 1.05 * best


def test_results_do_not_depend_on_how_the_stream_is_cut() -> None:
    # Prepare
    slots, own, pooled, y = _stream(1, 0.4, 0.8, n=600)
    whole = ErrorWeightedBlend("regression").combine(slots, own, pooled, y)
    cut = ErrorWeightedBlend("regression")
    bounds = [0, 1, 50, 51, 333, 600]

    # Execute
    parts = [cut.combine(slots[a:b], own[a:b], pooled[a:b], y[a:b]) for a, b in itertools.pairwise(bounds)]

    # Assert
    assert np.array_equal(np.concatenate(parts), whole)


def test_classification_follows_the_predictor_with_fewer_mistakes() -> None:
    # Prepare: device 0's own model is always right, the pooled one always wrong.
    slots = np.zeros(10, dtype=np.int64)
    y = np.ones(10)

    # Execute
    pred = ErrorWeightedBlend("classification").combine(slots, np.ones(10), np.zeros(10), y)

    # Assert: pooled until the device has prior_readings (2) readings, its own model after.
    assert pred.tolist() == [0.0] * 2 + [1.0] * 8


def test_export_restore_continues_exactly() -> None:
    # Prepare
    slots, own, pooled, y = _stream(2, 0.4, 0.8, n=200, devices=5)
    a = ErrorWeightedBlend("regression")
    a.combine(slots[:100], own[:100], pooled[:100], y[:100])
    ids = np.arange(5)
    b = ErrorWeightedBlend("regression")

    # Execute
    b.restore(ids, a.export(ids))

    # Assert
    rest = slice(100, 200)
    assert np.array_equal(
        a.combine(slots[rest], own[rest], pooled[rest], y[rest]),
        b.combine(slots[rest], own[rest], pooled[rest], y[rest]),
    )


def test_ranks_and_bad_settings() -> None:
    assert ranks_within_devices(np.array([], dtype=np.int64)).tolist() == []
    with pytest.raises(ValueError, match="discount"):
        ErrorWeightedBlend("regression", discount=1.0)
