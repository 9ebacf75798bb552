"""The functional network core: the hand-written regression backward is autograd's, bit for bit."""

from __future__ import annotations

import pytest
import torch

from learners import LearnerConfig
from learners.nets import FunctionalNet, init_params, stack


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
