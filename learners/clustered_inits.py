"""Several meta-initialisations θ₁…θ_K (TSA-MAML / MUSE style): the pure maths, vectorised.

The building blocks of a clustered meta-learner, as functions over stacked
tensors (no strategy state here):

- :func:`nearest_inits`: which θ_k suits each device's first readings best
  (lowest loss on them); the plain "nearest θ_k" that other strategies
  (``auto``) can use as a candidate start;
- :func:`cluster_reptile_step`: each θ_k moves towards the adapted weights
  of the devices that started from it (a Reptile step per cluster);
- :func:`split_cluster`: a cluster splits in two when its devices' adapted
  weights disagree (a seeded 2-means explains most of their spread);
- :func:`merge_close`: two initialisations that came close merge, so K
  shrinks again.

With K = 1 and no splits this is plain Reptile.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from learners.nets import FunctionalNet, Params


def nearest_inits(net: FunctionalNet, thetas: Params, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Index ``[D]`` of the θ_k (stacked ``[K, …]``) with the lowest loss on each device's readings.

    ``x`` is ``[D, n, F]``, ``y`` and ``mask`` ``[D, n]`` (padded rows have
    mask 0).  Ties go to the lower k.

    Examples
    --------
    >>> from learners.config import LearnerConfig
    >>> from learners.nets import init_params, stack
    >>> net = FunctionalNet(LearnerConfig(n_features=2))
    >>> theta = init_params(LearnerConfig(n_features=2), seed=0)
    >>> out_bias = list(theta)[-1]   # the output layer's bias: shifted by 3
    >>> shifted = {k: v + 3.0 if k == out_bias else v for k, v in theta.items()}
    >>> thetas = {k: torch.stack([theta[k], shifted[k]]) for k in theta}
    >>> x = torch.randn(2, 8, 2, generator=torch.Generator().manual_seed(0))
    >>> y = torch.stack([net.forward(theta, x[0])[:, 0], net.forward(shifted, x[1])[:, 0]])
    >>> nearest_inits(net, thetas, x, y, torch.ones(2, 8)).tolist()
    [0, 1]
    """
    d = x.shape[0]
    k = next(iter(thetas.values())).shape[0]
    # Every (device, θ_k) pair as one stacked model: θ's repeated per device, data per θ.
    pairs = {name: v.repeat(d, *([1] * (v.dim() - 1))) for name, v in thetas.items()}
    xs = x.repeat_interleave(k, dim=0)
    ys = y.repeat_interleave(k, dim=0)
    ms = mask.repeat_interleave(k, dim=0)
    with torch.no_grad():
        loss = net.masked_loss(pairs, xs, ys, ms).reshape(d, k)
    return loss.argmin(dim=1)


def cluster_reptile_step(thetas: Tensor, assignment: Tensor, deltas: Tensor, lr: float) -> Tensor:
    """``θ_k + lr · mean(Δ_d for the devices d that started from θ_k)``; θ's without devices stay.

    ``thetas`` is ``[K, P]`` (flattened), ``assignment`` ``[D]`` cluster
    indices, ``deltas`` ``[D, P]`` (adapted weights minus the θ they started
    from).  The same devices give the same step in any order.

    Examples
    --------
    >>> th = torch.zeros(3, 2)
    >>> d = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0]])
    >>> cluster_reptile_step(th, torch.tensor([0, 0, 2]), d, lr=0.5).tolist()
    [[1.0, 0.5], [0.0, 0.0], [0.0, 2.0]]
    """
    k = thetas.shape[0]
    sums = torch.zeros_like(thetas).index_add_(0, assignment, deltas)
    counts = torch.bincount(assignment, minlength=k).to(thetas.dtype).clamp(min=1.0)
    return thetas + lr * sums / counts.unsqueeze(1)


def split_cluster(
    weights: Tensor, min_gain: float = 0.9, min_size: int = 2, iterations: int = 20
) -> Tensor | None:
    """Labels 0/1 ``[D]`` if two groups explain at least ``min_gain`` of the weights' spread, else ``None``.

    ``weights`` ``[D, P]`` are the adapted weights of one cluster's devices.
    A deterministic 2-means: it starts from the device farthest from the
    mean and the device farthest from that one.  A split needs at least
    ``min_size`` devices on each side.  Evenly spread weights are explained
    to 75% by two halves, so ``min_gain`` should stay well above that.

    Examples
    --------
    >>> w = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    >>> split_cluster(w).tolist()
    [0, 0, 1, 1]
    >>> split_cluster(torch.tensor([[0.0], [0.1], [0.2], [0.3]])) is None   # spread evenly: no split
    True
    """
    d = weights.shape[0]
    if d < 2 * min_size:
        return None
    total = ((weights - weights.mean(0)) ** 2).sum()
    if float(total) == 0.0:
        return None
    a = int(((weights - weights.mean(0)) ** 2).sum(1).argmax())
    b = int(((weights - weights[a]) ** 2).sum(1).argmax())
    centres = weights[[a, b]].clone()
    labels = torch.zeros(d, dtype=torch.long)
    for _ in range(iterations):
        labels = torch.cdist(weights, centres).argmin(dim=1)
        if labels.min() == labels.max():
            return None
        new = torch.stack([weights[labels == j].mean(0) for j in (0, 1)])
        if torch.equal(new, centres):
            break
        centres = new
    within = sum(((weights[labels == j] - centres[j]) ** 2).sum() for j in (0, 1))
    sizes = torch.bincount(labels, minlength=2)
    if int(sizes.min()) < min_size or float(within) > (1.0 - min_gain) * float(total):
        return None
    return labels


def merge_close(thetas: Tensor, tolerance: float) -> np.ndarray:
    """For each θ_k, the index of the θ it merges into (itself if none within ``tolerance``, L2).

    A θ merges into the lowest-numbered θ close to it, so a chain of close
    θ's ends in one.

    Examples
    --------
    >>> merge_close(torch.tensor([[0.0], [5.0], [0.05], [5.01]]), 0.1).tolist()
    [0, 1, 0, 1]
    """
    dist = torch.cdist(thetas, thetas).numpy()
    into = np.arange(len(thetas))
    for k in range(len(thetas)):
        close = np.flatnonzero(dist[k] <= tolerance)
        into[k] = into[int(close.min())]
    return into


__all__ = ["cluster_reptile_step", "merge_close", "nearest_inits", "split_cluster"]
