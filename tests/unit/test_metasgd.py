"""Meta-SGD: learned step sizes lower the query loss, stay bounded, and survive a checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from learners.config import LearnerConfig
from learners.metasgd import MAX_RATE_FACTOR, MetaSGD
from learners.nets import FunctionalNet, init_params, stack


def _tasks(seed: int, devices: int = 8, rows: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(devices, rows, 3, generator=gen)
    w = torch.tensor([2.0, -1.0, 0.5]) + 0.3 * torch.randn(devices, 3, generator=gen)
    y = (x * w.unsqueeze(1)).sum(-1) + 0.05 * torch.randn(devices, rows, generator=gen)
    return x, y, torch.ones(devices, rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_rate_step_lowers_the_query_loss(seed: int) -> None:
    # Prepare
    cfg = LearnerConfig(n_features=3, hidden=(8,), inner_steps=3, inner_lr=0.02)
    net, theta = FunctionalNet(cfg), init_params(cfg, seed=seed)
    opt = MetaSGD(theta, cfg.inner_lr, rate_lr=0.5)
    x, y, mask = _tasks(seed)
    start = stack(theta, x.shape[0])
    before = float(opt.query_loss(net, start, opt.log_rates, x, y, mask))

    # Execute: one meta-step of the step sizes (θ itself is left as it was).
    opt.directions(net, theta, x, y, mask)
    after = float(opt.query_loss(net, start, opt.log_rates, x, y, mask))

    # Assert
    assert after < before


def test_rates_become_per_parameter_and_stay_within_bounds() -> None:
    # Prepare
    cfg = LearnerConfig(n_features=3, hidden=(8,), inner_steps=2, inner_lr=0.05)
    net, theta = FunctionalNet(cfg), init_params(cfg, seed=3)
    opt = MetaSGD(theta, cfg.inner_lr, rate_lr=50.0)  # absurdly large: the bounds must hold
    x, y, mask = _tasks(seed=3)

    # Execute
    for _ in range(5):
        opt.directions(net, theta, x, y, mask)
    rates = torch.cat([v.flatten() for v in opt.rates().values()])

    # Assert
    assert rates.unique().numel() > 1
    assert float(rates.min()) >= cfg.inner_lr / MAX_RATE_FACTOR * (1 - 1e-6)
    assert float(rates.max()) <= cfg.inner_lr * MAX_RATE_FACTOR * (1 + 1e-6)


def test_learned_rates_adapt_better_than_the_fixed_rate_on_new_devices() -> None:
    # Prepare: meta-train the rates on one set of devices, judge on devices never seen.
    cfg = LearnerConfig(n_features=3, hidden=(8,), inner_steps=3, inner_lr=0.02)
    net, theta = FunctionalNet(cfg), init_params(cfg, seed=5)
    opt = MetaSGD(theta, cfg.inner_lr, rate_lr=0.5)
    fixed = MetaSGD(theta, cfg.inner_lr, rate_lr=0.0)
    for seed in range(10, 20):
        opt.directions(net, theta, *_tasks(seed))
    x, y, mask = _tasks(seed=99)

    # Execute
    learned = float(opt.query_loss(net, stack(theta, 8), opt.log_rates, x, y, mask))
    plain = float(fixed.query_loss(net, stack(theta, 8), fixed.log_rates, x, y, mask))

    # Assert
    assert learned < plain


def test_export_and_restore_round_trip() -> None:
    # Prepare
    cfg = LearnerConfig(n_features=3, hidden=(4,), inner_steps=1)
    theta = init_params(cfg)
    opt = MetaSGD(theta, cfg.inner_lr)
    opt.directions(FunctionalNet(cfg), theta, *_tasks(0))
    copy = MetaSGD(theta, cfg.inner_lr)

    # Execute
    copy.restore(opt.export(), opt.updates)

    # Assert
    assert copy.updates == 1
    for k in opt.log_rates:
        assert torch.equal(copy.log_rates[k], opt.log_rates[k])
    with pytest.raises(ValueError, match="do not fit"):
        copy.restore({}, 0)
    assert math.isclose(MetaSGD(theta, 0.1).rates()["0.bias"][0].item(), 0.1, rel_tol=1e-6)
