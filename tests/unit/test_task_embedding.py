"""The task embedding: a new device of a two-cluster fleet lands in its own cluster."""

from __future__ import annotations

import numpy as np
import torch

from learners.task_embedding import TaskEmbedding, contrastive_loss, nearest

CENTRES = np.array([[2.0, -1.0, 0.5], [-1.5, 1.0, 2.0]])


def _device(rng: np.random.Generator, cluster: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One device of a cluster: the cluster's weights, its own small gain and offset, noise."""
    w = CENTRES[cluster] + 0.2 * rng.normal(size=3)
    x = rng.normal(size=(n, 3))
    y = np.tanh(x @ w) * (1 + 0.1 * rng.normal()) + 0.1 * rng.normal() + 0.1 * rng.normal(size=n)
    return x, y


def _windows(devices: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.tensor(np.stack([d[0] for d in devices]), dtype=torch.float32)
    y = torch.tensor(np.stack([d[1] for d in devices]), dtype=torch.float32)
    return x, y, torch.ones(y.shape)


def test_a_new_device_lands_in_its_own_cluster_in_at_least_95_percent_of_trials() -> None:
    # Prepare: 20 known devices (10 per cluster) whose 32 recent readings train the embedding.
    rng = np.random.default_rng(0)
    clusters = np.repeat([0, 1], 10)
    known = [_device(rng, int(c), 32) for c in clusters]
    emb = TaskEmbedding(n_features=3, seed=0)
    x, y, mask = _windows(known)
    for _ in range(200):
        emb.train_step(x, y, mask)
    known_points = emb.embed(x, y, mask)

    # Execute: 200 seeded trials, each a new device embedded from its first 16 readings.
    hits = 0
    trials = 200
    for trial in range(trials):
        trial_rng = np.random.default_rng(1000 + trial)
        cluster = int(trial_rng.integers(2))
        new = _windows([_device(trial_rng, cluster, 16)])
        hits += int(clusters[int(nearest(known_points, emb.embed(*new))[0])] == cluster)

    # Assert
    assert hits / trials >= 0.95


def test_training_brings_a_device_closer_to_itself_than_to_the_other_cluster() -> None:
    # Prepare
    rng = np.random.default_rng(1)
    devices = [_device(rng, i % 2, 32) for i in range(8)]
    x, y, mask = _windows(devices)
    emb = TaskEmbedding(n_features=3, seed=1)
    first, second = mask.clone(), mask.clone()
    first[:, 16:] = 0
    second[:, :16] = 0

    other = torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])  # a device of the other cluster

    def ratio() -> float:
        """Mean distance between a device's two halves over that to another cluster's device."""
        a, b = emb.embed(x, y, first), emb.embed(x, y, second)
        return float((a - b).norm(dim=1).mean() / (a - b[other]).norm(dim=1).mean())

    before = ratio()

    # Execute
    for _ in range(100):
        emb.train_step(x, y, mask)

    # Assert
    after = ratio()
    assert after < 0.5 * before
    assert after < 0.3


def test_contrastive_loss_ignores_dissimilar_pairs_beyond_the_margin() -> None:
    a = torch.zeros(2, 2)
    b = torch.tensor([[3.0, 4.0], [0.6, 0.8]])  # distances 5 and 1
    assert float(contrastive_loss(a, b, torch.zeros(2), margin=2.0)) == 0.5  # (0 + (2 - 1)²) / 2
