"""Meta-update maths: the Reptile formula and robust aggregation."""

from __future__ import annotations

import pytest
import torch

from learners.aggregate import aggregate, clip_rows, reptile_update, trimmed_mean, weighted_mean
from learners.meta import MetaLearner


def test_reptile_update_equals_its_formula() -> None:
    # Prepare
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(50, generator=g, dtype=torch.float64)
    phis = torch.randn(7, 50, generator=g, dtype=torch.float64)
    w = torch.randint(1, 100, (7,), generator=g).double()
    eps = 0.3
    # Execute
    got = reptile_update(theta, phis, w, meta_lr=eps)
    # Assert: θ + ε Σ w_d (φ_d − θ) / Σ w_d, term by term
    expected = theta.clone()
    for d in range(7):
        expected += eps * w[d] * (phis[d] - theta) / w.sum()
    assert torch.allclose(got, expected, atol=1e-12)


def test_meta_learner_step_matches_reptile_update() -> None:
    # Prepare
    theta = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]])}
    phis = torch.tensor([[2.0, 2.0, 5.0], [1.0, 0.0, 3.0]])
    w = torch.tensor([3.0, 1.0])
    meta = MetaLearner(theta, meta_lr=0.5)
    # Execute
    meta.step(phis - torch.tensor([1.0, 2.0, 3.0]), w)
    # Assert
    expected = reptile_update(torch.tensor([1.0, 2.0, 3.0]), phis, w, 0.5)
    assert torch.equal(torch.cat([meta.theta["a"], meta.theta["b"].flatten()]), expected)
    assert meta.version == 1


def test_clipping_bounds_one_outliers_pull() -> None:
    # Prepare: nine honest devices near 0, one wild device at 1e6
    g = torch.Generator().manual_seed(1)
    honest = 0.01 * torch.randn(9, 20, generator=g)
    wild = torch.full((1, 20), 1e6)
    deltas, w = torch.cat([honest, wild]), torch.ones(10)
    clip = 0.1
    # Execute
    with_attack = aggregate(deltas, w, clip=clip)
    without = aggregate(honest, torch.ones(9), clip=clip)
    # Assert: the outlier moves the mean by at most clip * w_d / Σw (plus the
    # honest mean's own reweighting), never by its raw size
    assert (with_attack - without).norm() <= clip * 1 / 10 + without.norm() / 10 + 1e-6
    assert aggregate(deltas, w).norm() > 1e4  # without clipping it would drag θ away


def test_trimmed_mean_ignores_extremes_per_coordinate() -> None:
    # Prepare
    deltas = torch.tensor([[1.0, -5.0], [2.0, 0.0], [3.0, 1.0], [1e9, -1e9]])
    # Execute
    got = trimmed_mean(deltas, torch.ones(4), trim=0.25)
    # Assert: per coordinate the lowest and highest value are dropped
    assert torch.allclose(got, torch.tensor([2.5, -2.5]))


def test_clip_rows_keeps_small_rows_and_direction() -> None:
    rows = torch.tensor([[30.0, 40.0], [0.1, 0.0]])
    clipped = clip_rows(rows, 5.0)
    assert torch.allclose(clipped, torch.tensor([[3.0, 4.0], [0.1, 0.0]]))


@pytest.mark.parametrize(
    ("deltas", "weights", "message"),
    [
        (torch.zeros(0, 3), torch.zeros(0), "zero updates"),
        (torch.zeros(2, 3), torch.tensor([1.0, -1.0]), "non-negative"),
        (torch.zeros(2, 3), torch.ones(3), "expected deltas"),
    ],
)
def test_bad_aggregation_input_is_a_clear_error(
    deltas: torch.Tensor, weights: torch.Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        weighted_mean(deltas, weights)
