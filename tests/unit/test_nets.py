"""The functional network core: the hand-written regression backward is autograd's, bit for bit."""

from __future__ import annotations

import pytest
import torch

from learners import LearnerConfig
from learners.nets import MAX_GRAD_NORM, FunctionalNet, clip_grad, init_params, stack


def autograd_grad(
    net: FunctionalNet, stacked: dict[str, torch.Tensor], x, y, mask
) -> dict[str, torch.Tensor]:
    leaves = {k: v.detach().requires_grad_(True) for k, v in stacked.items()}
    loss = net.masked_loss(leaves, x, y, mask).sum()
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))


@pytest.mark.parametrize("hidden", [(32,), (16, 8)])
@pytest.mark.parametrize(("devices", "readings"), [(8, 16), (3, 1), (50, 6), (4, 20)])
def test_regression_gradient_is_autograds_exactly(
    hidden: tuple[int, ...], devices: int, readings: int
) -> None:
    # Prepare: perturbed weights, targets off the model, some padding and one empty device
    gen = torch.Generator().manual_seed(devices * readings)
    cfg = LearnerConfig(n_features=8, hidden=hidden)
    net = FunctionalNet(cfg)
    stacked = {
        k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in stack(init_params(cfg), devices).items()
    }
    x = torch.randn(devices, readings, 8, generator=gen)
    y = 3 * torch.randn(devices, readings, generator=gen)
    mask = (torch.rand(devices, readings, generator=gen) > 0.3).float()
    mask[0] = 0.0
    # Execute
    by_hand = net._grad(stacked, x, y, mask)
    expected = autograd_grad(net, stacked, x, y, mask)
    # Assert: equal, not merely close (adaptations must not change by a bit)
    assert list(by_hand) == list(expected)
    for k in expected:
        assert torch.equal(by_hand[k], expected[k]), k


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_online_step_is_torch_func_grad_exactly(task: str) -> None:
    # Prepare: 50 devices with 1 to 6 readings each (padded), as a micro-batch of a worker has them
    gen = torch.Generator().manual_seed(7)
    cfg = LearnerConfig(n_features=8, task=task, n_classes=3)  # type: ignore[arg-type]
    net = FunctionalNet(cfg)
    stacked = {
        k: v + 0.3 * torch.randn(v.shape, generator=gen) for k, v in stack(init_params(cfg), 50).items()
    }
    x = torch.randn(50, 6, 8, generator=gen)
    y = (
        3 * torch.randn(50, 6, generator=gen)
        if task == "regression"
        else torch.randint(0, 3, (50, 6), generator=gen).float()
    )
    mask = (torch.arange(6) < torch.randint(1, 7, (50, 1), generator=gen)).float()

    def total(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return net.masked_loss(p, x, y, mask).sum(), net.stacked_forward(p, x)

    # Execute
    step, out = net.online_step(stacked, x, y, mask)
    expected, expected_out = torch.func.grad(total, has_aux=True)(stacked)
    # Assert: the step is the clipped torch.func gradient, bit for bit, and the outputs are the forward pass
    assert torch.equal(out, expected_out)
    for k, v in clip_grad(expected, MAX_GRAD_NORM, stacked=True).items():
        assert torch.equal(step[k], v), k
