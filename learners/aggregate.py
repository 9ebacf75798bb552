"""Aggregation maths for meta-updates: pure functions over ``[n, P]`` tensors.

Each row is one device's proposed change to θ; ``weights`` are its sample
counts.  Nothing here knows about devices, models or transport.
"""

from __future__ import annotations

from torch import Tensor


def weighted_mean(deltas: Tensor, weights: Tensor) -> Tensor:
    """Σ w_d Δ_d / Σ w_d.

    Examples
    --------
    >>> weighted_mean(torch.tensor([[1.0, 0.0], [3.0, 4.0]]), torch.tensor([1.0, 3.0]))
    tensor([2.5000, 3.0000])
    """
    _check(deltas, weights)
    return (weights.unsqueeze(1) * deltas).sum(0) / weights.sum()


def clip_rows(deltas: Tensor, max_norm: float) -> Tensor:
    """Scale each row down to an L2 norm of at most ``max_norm``.

    Examples
    --------
    >>> clip_rows(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 1.0)
    tensor([[0.6000, 0.8000],
            [0.3000, 0.4000]])
    """
    norms = deltas.norm(dim=1, keepdim=True)
    return deltas * (max_norm / norms.clamp(min=max_norm))


def trimmed_mean(deltas: Tensor, weights: Tensor, trim: float) -> Tensor:
    """Coordinate-wise weighted mean after dropping the ``trim`` fraction at each end.

    With ``n`` rows, ``floor(trim * n)`` of the lowest and of the highest
    values of every coordinate are dropped before averaging, so up to that
    many arbitrary rows cannot move the result outside the range of the rest.

    Examples
    --------
    >>> d = torch.tensor([[1.0], [2.0], [3.0], [1000.0]])
    >>> trimmed_mean(d, torch.ones(4), 0.25)
    tensor([2.5000])
    """
    _check(deltas, weights)
    n = deltas.shape[0]
    k = int(trim * n)
    if k == 0:
        return weighted_mean(deltas, weights)
    order = deltas.argsort(dim=0)
    kept = order[k : n - k]
    values = deltas.gather(0, kept)
    w = weights[kept]
    return (w * values).sum(0) / w.sum(0)


def aggregate(deltas: Tensor, weights: Tensor, clip: float | None = None, trim: float = 0.0) -> Tensor:
    """Robust weighted mean: optional per-row clipping, then an optional trimmed mean."""
    if clip is not None:
        deltas = clip_rows(deltas, clip)
    return trimmed_mean(deltas, weights, trim)


def reptile_update(
    theta: Tensor,
    phis: Tensor,
    weights: Tensor,
    meta_lr: float,
    clip: float | None = None,
    trim: float = 0.0,
) -> Tensor:
    """θ ← θ + ε · Σ w_d (φ_d − θ) / Σ w_d  (with optional robust aggregation).

    Examples
    --------
    >>> theta = torch.zeros(2)
    >>> phis = torch.tensor([[1.0, 1.0], [4.0, -2.0]])
    >>> reptile_update(theta, phis, torch.tensor([2.0, 1.0]), meta_lr=0.5)
    tensor([1., 0.])
    """
    return theta + meta_lr * aggregate(phis - theta, weights, clip, trim)


def _check(deltas: Tensor, weights: Tensor) -> None:
    if deltas.dim() != 2 or weights.shape != (deltas.shape[0],):
        raise ValueError(
            f"expected deltas [n, P] and weights [n], got {tuple(deltas.shape)} and {tuple(weights.shape)}"
        )
    if deltas.shape[0] == 0:
        raise ValueError("cannot aggregate zero updates")
    if bool((weights < 0).any()) or float(weights.sum()) <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
