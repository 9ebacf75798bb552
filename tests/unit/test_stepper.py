"""The fast per-reading step and the fast adaptation compute the generic code's bits exactly."""

from __future__ import annotations

import pytest
import torch

from learners import LearnerConfig
from learners.nets import MAX_GRAD_NORM, FunctionalNet, Params, clip_grad, init_params, stack
from learners.stepper import FlatLayout, ReadingStepper

# (32,): the default, multiplied by torch's own loop; (64, 32) and (128,): BLAS, which depends on layout.
HIDDEN = [(32,), (8,), (16, 8), (64, 32), (128,)]


def perturbed(cfg: LearnerConfig, n: int, gen: torch.Generator, spread: float = 0.3) -> Params:
    return {
        k: v + spread * torch.randn(v.shape, generator=gen) for k, v in stack(init_params(cfg), n).items()
    }


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("task", ["regression", "classification"])
def test_reading_steps_are_reading_step_then_sgd_bit_for_bit(hidden: tuple[int, ...], task: str) -> None:
    # Prepare: 40 models stepped on shrinking prefixes (positions j of a segment); big targets clip
    gen = torch.Generator().manual_seed(len(hidden) * 100 + hidden[0])
    cfg = LearnerConfig(n_features=8, hidden=hidden, task=task, n_classes=3)  # type: ignore[arg-type]
    net = FunctionalNet(cfg)
    expected = perturbed(cfg, 40, gen)
    layout = FlatLayout(expected)
    stepper = ReadingStepper(net, layout.gather(expected, torch.arange(40)), layout)
    lr = 0.05
    for u in (40, 23, 7, 1):
        x = torch.randn(u, 8, generator=gen)
        y = (
            30 * torch.randn(u, generator=gen)
            if task == "regression"
            else torch.randint(0, 3, (u,), generator=gen).float()
        )
        sub = {k: v[:u] for k, v in expected.items()}
        step, out = net.reading_step(sub, x, y)
        for k, v in sub.items():
            v -= lr * step[k]
        # Execute
        pred = stepper.step(u, x, y, lr)
        # Assert: same predictions, and every weight the same bits (rows past u untouched)
        assert torch.equal(pred, net.predict(out))
        for k, v in stepper.params.items():
            assert torch.equal(v, expected[k]), (u, k)


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("lr", [0.2, 5.0])
def test_regression_adaptation_is_the_generic_loop_bit_for_bit(hidden: tuple[int, ...], lr: float) -> None:
    # Prepare: padded buffers of 12 devices; lr 5.0 makes the gradient clip on most steps
    gen = torch.Generator().manual_seed(hidden[0] + int(lr * 10))
    cfg = LearnerConfig(n_features=8, hidden=hidden)
    net = FunctionalNet(cfg)
    theta = {k: v[0] for k, v in perturbed(cfg, 1, gen).items()}
    x = torch.randn(12, 16, 8, generator=gen)
    y = 3 * torch.randn(12, 16, generator=gen)
    mask = (torch.rand(12, 16, generator=gen) > 0.3).float()
    mask[0] = 0.0
    phi = stack(theta, 12)
    gradient = net._gradient_of(x, y, mask)
    for _ in range(cfg.inner_steps):
        step = clip_grad(gradient(phi)[0], MAX_GRAD_NORM, stacked=True)
        phi = {k: v - lr * step[k] for k, v in phi.items()}
    # Execute
    adapted = net.adapt(theta, x, y, mask, lr=lr)
    # Assert
    assert list(adapted) == list(phi)
    for k, v in phi.items():
        assert torch.equal(adapted[k], v), k
