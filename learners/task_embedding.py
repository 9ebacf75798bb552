"""Metric-based meta-learning: an embedding of devices' tasks learned with a Siamese loss.

A device's task is what its readings say about ``x → y``.  A permutation-
invariant encoder (DeepSets: a shared MLP on every reading, a masked mean,
a linear head) maps a window of readings to a point on the unit sphere.
Two windows of one device should land close, windows of two devices at
least a margin apart (the contrastive loss of Hadsell, Chopra and LeCun,
2006).  Devices whose tasks cannot be told apart from their readings end
up close even though they were pushed apart: so a new device's first
readings find the known devices, and the initialisation, most like it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def contrastive_loss(a: Tensor, b: Tensor, same: Tensor, margin: float) -> Tensor:
    """Mean of ``d²`` for similar pairs and ``max(0, margin − d)²`` for dissimilar ones.

    Examples
    --------
    >>> a = torch.tensor([[0.0, 0.0], [0.0, 0.0]]); b = torch.tensor([[0.3, 0.4], [0.3, 0.4]])
    >>> contrastive_loss(a, b, torch.tensor([1.0, 0.0]), margin=1.0)  # (0.25 + 0.25) / 2
    tensor(0.2500)
    """
    d = (a - b).norm(dim=-1)
    return (same * d.pow(2) + (1 - same) * (margin - d).clamp(min=0).pow(2)).mean()


class TaskEncoder(nn.Module):
    """Windows of readings ``x [B, n, F]``, ``y [B, n]``, ``mask [B, n]`` → unit vectors ``[B, dim]``.

    Examples
    --------
    >>> enc = TaskEncoder(n_features=3, seed=0)
    >>> x = torch.randn(2, 5, 3); y = torch.randn(2, 5); mask = torch.ones(2, 5)
    >>> e = enc(x, y, mask)
    >>> tuple(e.shape), bool(torch.allclose(e.norm(dim=1), torch.ones(2)))
    ((2, 8), True)
    >>> turned = [4, 0, 1, 2, 3]  # the order of the readings does not matter
    >>> bool(torch.allclose(enc(x[:, turned], y[:, turned], mask), e, atol=1e-6))
    True
    """

    def __init__(self, n_features: int, width: int = 32, dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.reading = nn.Sequential(
                nn.Linear(n_features + 1, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
            )
            self.head = nn.Linear(width, dim)

    def forward(self, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        h = self.reading(torch.cat([x, y.unsqueeze(-1)], dim=-1))
        pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return nn.functional.normalize(self.head(pooled), dim=-1)


class TaskEmbedding:
    """A :class:`TaskEncoder` trained online on pairs of windows from the fleet's buffers.

    Parameters
    ----------
    n_features
        Features per reading.
    margin
        Distance the contrastive loss pushes windows of different devices apart to.
    lr
        Adam step size of each training step.
    seed
        Seeds the encoder's weights and the choice of pairs.

    Examples
    --------
    >>> emb = TaskEmbedding(n_features=2, seed=0)
    >>> x = torch.randn(6, 16, 2, generator=torch.Generator().manual_seed(0))
    >>> y = x[..., 0] * torch.arange(6.0).unsqueeze(1)
    >>> losses = [emb.train_step(x, y, torch.ones(6, 16)) for _ in range(30)]
    >>> losses[-1] < losses[0]
    True
    """

    def __init__(self, n_features: int, margin: float = 1.0, lr: float = 0.01, seed: int = 0) -> None:
        self.encoder = TaskEncoder(n_features, seed=seed)
        self.margin = margin
        self._opt = torch.optim.Adam(self.encoder.parameters(), lr=lr)
        self._rng = np.random.default_rng(seed)
        self.steps = 0

    def embed(self, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """Embeddings ``[B, dim]`` of windows (no gradient)."""
        with torch.no_grad():
            return self.encoder(x, y, mask)

    def train_step(self, x: Tensor, y: Tensor, mask: Tensor) -> float:
        """One Adam step on pairs drawn from ``D`` devices' windows ``[D, n, …]``; returns the loss.

        Each device's readings are split at random into two halves: the two
        halves are a similar pair; one half against a half of another device
        (a random derangement of the devices) is a dissimilar pair.
        """
        d, n = mask.shape
        if d < 2:
            return 0.0
        order = torch.from_numpy(np.argsort(self._rng.random((d, n)), axis=1))
        half = torch.zeros(d, n)
        half.scatter_(1, order[:, : n // 2], 1.0)
        first, second = mask * half, mask * (1 - half)
        shift = int(self._rng.integers(1, d))
        other = torch.roll(torch.arange(d), shift)
        self.encoder.train()
        a = self.encoder(x, y, first)
        b = self.encoder(x, y, second)
        same = torch.cat([torch.ones(d), torch.zeros(d)])
        loss = contrastive_loss(torch.cat([a, a]), torch.cat([b, b[other]]), same, self.margin)
        self._opt.zero_grad()
        loss.backward()
        self._opt.step()
        self.steps += 1
        return float(loss.detach())


def nearest(known: Tensor, query: Tensor) -> Tensor:
    """Index of the nearest row of ``known [K, dim]`` for each row of ``query [B, dim]``.

    Examples
    --------
    >>> nearest(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[0.9, 0.1], [0.2, 0.8]])).tolist()
    [1, 0]
    """
    return torch.cdist(query, known).argmin(dim=1)


__all__ = ["TaskEmbedding", "TaskEncoder", "contrastive_loss", "nearest"]
