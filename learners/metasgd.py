"""Meta-SGD: a learned inner optimiser with one step size per parameter.

Plain adaptation takes k SGD steps from θ with one step size for every
weight.  Meta-SGD (Li et al., 2017) learns a step size α_i for each
parameter together with θ: the inner step is φ ← φ − α ⊙ ∇L_support(φ),
and both θ and α follow the gradient of the query loss after adaptation.
Step sizes are kept as log α, so they stay positive and a meta-step moves
them by a relative amount whatever their scale.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import grad

from learners.maml import split_support_query
from learners.nets import MAX_GRAD_NORM, FunctionalNet, Params, clip_grad, flatten_stacked, stack

MAX_RATE_FACTOR = 10.0
"""Learned step sizes stay within [inner_lr / factor, inner_lr · factor]: no meta-step blows up."""


def adapt_with_rates(
    net: FunctionalNet, start: Params, rates: Params, x: Tensor, y: Tensor, mask: Tensor, steps: int
) -> Params:
    """k steps ``φ ← φ − α ⊙ clip(∇L(φ))`` for each of ``D`` devices at once.

    ``start`` holds the devices' stacked starting weights ``[D, …]``;
    ``rates`` one step size per parameter (shaped like one model, shared by
    the devices).  Differentiable in both (the caller decides whether to
    track gradients).  ``x`` is ``[D, n, F]``.
    """
    readings = mask.sum(1).clamp(min=1.0)

    def loss(phi: Params) -> Tensor:
        return net._mean_loss(net.stacked_forward(phi, x), y, mask, readings).sum()

    gradient = grad(loss)
    phi = start
    for _ in range(steps):
        step = clip_grad(gradient(phi), MAX_GRAD_NORM, stacked=True)
        phi = {k: v - rates[k] * step[k] for k, v in phi.items()}
    return phi


class MetaSGD:
    """θ's meta-gradients and per-parameter step sizes, learned from devices' support/query splits.

    Parameters
    ----------
    theta
        The meta-initialisation, only for the shapes of the step sizes.
    inner_lr
        Every step size's starting value.
    rate_lr
        Meta step size of log α.

    Examples
    --------
    >>> from learners.config import LearnerConfig
    >>> from learners.nets import init_params
    >>> cfg = LearnerConfig(n_features=2, hidden=(4,), inner_steps=2, inner_lr=0.1)
    >>> net, theta = FunctionalNet(cfg), init_params(cfg)
    >>> opt = MetaSGD(theta, cfg.inner_lr, rate_lr=0.1)
    >>> x = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(0))
    >>> d = opt.directions(net, theta, x, x.sum(-1), torch.ones(3, 8))
    >>> tuple(d.shape), opt.updates, bool((opt.rates()["0.weight"] != 0.1).any())
    ((3, 17), 1, True)
    """

    name = "metasgd"

    def __init__(self, theta: Params, inner_lr: float, rate_lr: float = 0.05) -> None:
        if inner_lr <= 0 or rate_lr < 0:
            raise ValueError("inner_lr must be positive and rate_lr non-negative")
        self.inner_lr = inner_lr
        self.rate_lr = rate_lr
        self.log_rates: Params = {k: torch.full_like(v, math.log(inner_lr)) for k, v in theta.items()}
        self.updates = 0

    def rates(self) -> Params:
        """The current per-parameter step sizes α."""
        return {k: v.exp() for k, v in self.log_rates.items()}

    def adapt(self, net: FunctionalNet, theta: Params, x: Tensor, y: Tensor, mask: Tensor) -> Params:
        """Adapt each device from θ with the learned step sizes (no gradient tracking)."""
        with torch.no_grad():
            start = stack(theta, x.shape[0])
            return adapt_with_rates(net, start, self.rates(), x, y, mask, net.cfg.inner_steps)

    def query_loss(
        self, net: FunctionalNet, start: Params, log_rates: Params, x: Tensor, y: Tensor, mask: Tensor
    ) -> Tensor:
        """Summed query loss of devices adapted from stacked ``start`` on their support rows."""
        support, query = split_support_query(mask)
        rates = {k: v.exp() for k, v in log_rates.items()}
        phi = adapt_with_rates(net, start, rates, x, y, support, net.cfg.inner_steps)
        return net.masked_loss(phi, x, y, query).sum()

    def directions(self, net: FunctionalNet, theta: Params, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """θ's proposed changes ``[D, P]`` (scaled as for MAML), and one meta-step of the step sizes.

        Each device's θ-gradient is its own (θ is stacked per device); the
        step sizes are shared by the fleet and follow the devices' mean gradient.
        """
        n = x.shape[0]
        with torch.enable_grad():
            g_theta, g_rates = grad(
                lambda start, log_rates: self.query_loss(net, start, log_rates, x, y, mask), argnums=(0, 1)
            )(stack(theta, n), self.log_rates)
        low, high = math.log(self.inner_lr / MAX_RATE_FACTOR), math.log(self.inner_lr * MAX_RATE_FACTOR)
        self.log_rates = {
            k: (v - self.rate_lr * g_rates[k] / max(n, 1)).clamp(low, high).detach()
            for k, v in self.log_rates.items()
        }
        self.updates += 1
        scale = self.inner_lr * max(net.cfg.inner_steps, 1)
        return -scale * flatten_stacked(g_theta).detach()

    def export(self) -> dict[str, Tensor]:
        """State to checkpoint (``rate.<param>`` tensors)."""
        return {f"rate.{k}": v.clone() for k, v in self.log_rates.items()}

    def restore(self, tensors: dict[str, Tensor], updates: int) -> None:
        """Inverse of :meth:`export`; ``ValueError`` if a shape does not fit."""
        for k, v in self.log_rates.items():
            got = tensors.get(f"rate.{k}")
            if got is None or got.shape != v.shape:
                raise ValueError(f"step sizes do not fit: rate.{k}")
        self.log_rates = {k: tensors[f"rate.{k}"].to(v.dtype).clone() for k, v in self.log_rates.items()}
        self.updates = updates


__all__ = ["MAX_RATE_FACTOR", "MetaSGD", "adapt_with_rates"]
