"""Second-order MAML: the meta-gradient through every inner step.

First-order MAML (:class:`learners.meta.FirstOrderMAML`) takes the query
gradient at the adapted weights as if adaptation did not depend on θ.
Full MAML differentiates through the k inner SGD steps as well, Hessian
terms included.  The per-device models are tiny, so ``torch.func`` can
afford it: each device adapts its own copy of θ, and the gradient of the
devices' summed query losses with respect to the stacked copies is every
device's own meta-gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import grad

from learners.nets import MAX_GRAD_NORM, FunctionalNet, Params, clip_grad, flatten_stacked, stack


def split_support_query(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Even rows support the adaptation, odd rows are its query (as in first-order MAML).

    Examples
    --------
    >>> s, q = split_support_query(torch.ones(1, 4))
    >>> s.tolist(), q.tolist()
    ([[1.0, 0.0, 1.0, 0.0]], [[0.0, 1.0, 0.0, 1.0]])
    """
    support = mask.clone()
    support[:, 1::2] = 0
    return support, mask - support


def query_loss_after_adaptation(
    net: FunctionalNet, x: Tensor, y: Tensor, support: Tensor, query: Tensor, steps: int, lr: float
) -> Callable[[Params], Tensor]:
    """The summed query loss of devices adapted from their stacked starting weights.

    The returned function is differentiable end to end (no inference mode,
    no hand-written backward), so its gradient is the full MAML meta-gradient.
    """
    readings = support.sum(1).clamp(min=1.0)

    def support_loss(phi: Params) -> Tensor:
        return net._mean_loss(net.stacked_forward(phi, x), y, support, readings).sum()

    inner = grad(support_loss)

    def loss(start: Params) -> Tensor:
        phi = start
        for _ in range(steps):
            step = clip_grad(inner(phi), MAX_GRAD_NORM, stacked=True)
            phi = {k: v - lr * step[k] for k, v in phi.items()}
        return net.masked_loss(phi, x, y, query).sum()

    return loss


def maml_meta_gradients(
    net: FunctionalNet,
    theta: Params,
    x: Tensor,
    y: Tensor,
    support: Tensor,
    query: Tensor,
    steps: int | None = None,
    lr: float | None = None,
) -> Params:
    """Per-device ``∂ L_query(adapt(θ, support)) / ∂θ``, stacked ``[D, …]``.

    Examples
    --------
    >>> from learners.config import LearnerConfig
    >>> from learners.nets import init_params
    >>> cfg = LearnerConfig(n_features=2, hidden=(4,), inner_steps=2)
    >>> x = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(0)); y = x.sum(-1)
    >>> s, q = split_support_query(torch.ones(3, 8))
    >>> g = maml_meta_gradients(FunctionalNet(cfg), init_params(cfg), x, y, s, q)
    >>> tuple(g["0.weight"].shape)
    (3, 4, 2)
    """
    cfg = net.cfg
    steps = cfg.inner_steps if steps is None else steps
    lr = cfg.inner_lr if lr is None else lr
    loss = query_loss_after_adaptation(net, x, y, support, query, steps, lr)
    with torch.enable_grad():
        return grad(loss)(stack(theta, x.shape[0]))


class SecondOrderMAML:
    """Δ_d = −k·α·∇_θ L_query(φ_d(θ)), the full MAML meta-gradient, Hessian terms included.

    Same interface and scaling as :class:`learners.meta.FirstOrderMAML`, so
    ``meta_lr`` means the same thing for every rule.

    Examples
    --------
    >>> from learners.config import LearnerConfig
    >>> from learners.nets import init_params
    >>> cfg = LearnerConfig(n_features=2, hidden=(4,), inner_steps=2)
    >>> x = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(0))
    >>> d = SecondOrderMAML().directions(FunctionalNet(cfg), init_params(cfg), x, x.sum(-1), torch.ones(3, 8))
    >>> tuple(d.shape)
    (3, 17)
    """

    name = "maml"

    def directions(self, net: FunctionalNet, theta: Params, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        support, query = split_support_query(mask)
        g = maml_meta_gradients(net, theta, x, y, support, query)
        scale = net.cfg.inner_lr * max(net.cfg.inner_steps, 1)
        return -scale * flatten_stacked(g).detach()


__all__ = ["SecondOrderMAML", "maml_meta_gradients", "query_loss_after_adaptation", "split_support_query"]
