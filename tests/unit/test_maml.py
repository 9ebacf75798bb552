"""Second-order MAML: its meta-gradient against finite differences, and against first order."""

from __future__ import annotations

import torch

from learners.config import LearnerConfig
from learners.maml import (
    SecondOrderMAML,
    maml_meta_gradients,
    query_loss_after_adaptation,
    split_support_query,
)
from learners.meta import FirstOrderMAML
from learners.nets import FunctionalNet, init_params, stack


def _tasks(seed: int, devices: int = 3, rows: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(devices, rows, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(devices, 3, generator=gen, dtype=torch.float64)
    y = (x * w.unsqueeze(1)).sum(-1) + 0.1 * torch.randn(devices, rows, generator=gen, dtype=torch.float64)
    return x, y, torch.ones(devices, rows, dtype=torch.float64)


def test_meta_gradient_equals_central_finite_differences() -> None:
    # Prepare: float64 weights and data, a small step size so no inner gradient is clipped.
    cfg = LearnerConfig(n_features=3, hidden=(5,), inner_steps=3, inner_lr=0.05)
    net = FunctionalNet(cfg)
    theta = {k: v.double() for k, v in init_params(cfg, seed=4).items()}
    x, y, mask = _tasks(seed=5)
    support, query = split_support_query(mask)
    loss = query_loss_after_adaptation(net, x, y, support, query, cfg.inner_steps, cfg.inner_lr)
    gen = torch.Generator().manual_seed(6)
    start = stack(theta, x.shape[0])
    direction = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in start.items()}
    eps = 1e-6

    # Execute
    g = maml_meta_gradients(net, theta, x, y, support, query)
    plus = loss({k: v + eps * direction[k] for k, v in start.items()})
    minus = loss({k: v - eps * direction[k] for k, v in start.items()})

    # Assert: the directional derivative matches ⟨gradient, direction⟩.
    numeric = float((plus - minus) / (2 * eps))
    analytic = float(sum((g[k] * direction[k]).sum() for k in g))
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic))


def test_second_order_differs_from_first_order_and_keeps_its_scale() -> None:
    # Prepare
    cfg = LearnerConfig(n_features=3, hidden=(5,), inner_steps=3, inner_lr=0.1)
    net = FunctionalNet(cfg)
    theta = {k: v.double() for k, v in init_params(cfg, seed=1).items()}
    x, y, mask = _tasks(seed=2)

    # Execute
    second = SecondOrderMAML().directions(net, theta, x, y, mask)
    first = FirstOrderMAML().directions(net, theta, x, y, mask)

    # Assert: Hessian terms change the direction, but not its order of magnitude.
    cosine = torch.nn.functional.cosine_similarity(second, first, dim=1)
    assert not torch.allclose(second, first)
    assert bool((cosine > 0.5).all())


def test_with_no_inner_steps_it_is_the_query_gradient_at_theta() -> None:
    # Prepare
    cfg = LearnerConfig(n_features=3, hidden=(5,), inner_steps=0)
    net = FunctionalNet(cfg)
    theta = {k: v.double() for k, v in init_params(cfg, seed=3).items()}
    x, y, mask = _tasks(seed=3)
    support, query = split_support_query(mask)

    # Execute
    g = maml_meta_gradients(net, theta, x, y, support, query)
    plain = net.query_grad(stack(theta, x.shape[0]), x, y, query)

    # Assert
    for k in g:
        torch.testing.assert_close(g[k], plain[k])
