"""Several meta-initialisations: nearest θ_k from first readings, per-cluster Reptile, split, merge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learners.clustered_inits import cluster_reptile_step, merge_close, nearest_inits, split_cluster
from learners.config import LearnerConfig
from learners.evaluation.synthetic import make_fleet_stream
from learners.nets import FunctionalNet, init_params


def _kind_readings(
    seed: int, devices: int = 24, per_device: int = 40
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x [D, n, F]``, ``y [D, n]``: each device's first readings (first concept); and its kind."""
    s = make_fleet_stream(
        n_devices=devices, n_readings=devices * 200, n_features=3, late_joiners=0.0, seed=seed, clusters=2
    )
    ids = np.array(s.device_ids)
    rows = np.stack([np.flatnonzero(ids == f"dev-{d:04d}")[:per_device] for d in range(devices)])
    return s.x[rows], s.y[rows], s.kinds[:, 0]


@pytest.mark.slow
def test_a_new_device_finds_the_initialisation_of_its_kind() -> None:
    # Prepare: θ_k fitted on the pooled first readings of the kind-k devices of a training fleet
    cfg = LearnerConfig(n_features=3)
    net = FunctionalNet(cfg)
    hits, trials = 0, 0
    for seed in range(10):
        x, y, kinds = _kind_readings(seed)
        train, new = np.arange(16), np.arange(16, 24)
        thetas = []
        for k in (0, 1):
            mine = train[kinds[train] == k]
            xk = torch.tensor(x[mine].reshape(1, -1, 3), dtype=torch.float32)
            yk = torch.tensor(y[mine].reshape(1, -1), dtype=torch.float32)
            phi = net.adapt(init_params(cfg, seed=seed), xk, yk, torch.ones_like(yk), steps=300, lr=0.05)
            thetas.append({name: v[0] for name, v in phi.items()})
        stacked = {name: torch.stack([t[name] for t in thetas]) for name in thetas[0]}
        # Execute: each new device, from its first 10 readings only
        xs = torch.tensor(x[new, :10], dtype=torch.float32)
        ys = torch.tensor(y[new, :10], dtype=torch.float32)
        picked = nearest_inits(net, stacked, xs, ys, torch.ones_like(ys)).numpy()
        hits += int((picked == kinds[new]).sum())
        trials += len(new)
    # Assert
    assert hits >= 0.95 * trials


def test_cluster_step_is_reptile_per_cluster_and_order_free() -> None:
    # Prepare
    g = torch.Generator().manual_seed(0)
    thetas, deltas = torch.randn(3, 5, generator=g), torch.randn(6, 5, generator=g)
    assignment = torch.tensor([2, 0, 2, 0, 0, 2])
    order = torch.tensor([5, 3, 1, 0, 4, 2])
    # Execute
    step = cluster_reptile_step(thetas, assignment, deltas, lr=0.1)
    shuffled = cluster_reptile_step(thetas, assignment[order], deltas[order], lr=0.1)
    single = cluster_reptile_step(thetas[:1], torch.zeros(6, dtype=torch.long), deltas, lr=0.1)
    # Assert: cluster 1 has no device and stays; K = 1 is the plain Reptile mean step
    assert torch.allclose(step, shuffled, atol=1e-7)
    assert torch.equal(step[1], thetas[1])
    assert torch.allclose(step[0], thetas[0] + 0.1 * deltas[[1, 3, 4]].mean(0), atol=1e-7)
    assert torch.allclose(single[0], thetas[0] + 0.1 * deltas.mean(0), atol=1e-7)


def test_split_when_adapted_weights_disagree_and_merge_when_close() -> None:
    # Prepare: adapted weights of 8 devices from two kinds, and of 8 devices of one kind
    g = torch.Generator().manual_seed(1)
    two = torch.cat([torch.randn(4, 10, generator=g) * 0.1, 3.0 + torch.randn(4, 10, generator=g) * 0.1])
    one = torch.randn(8, 10, generator=g)
    # Execute
    labels = split_cluster(two[[0, 4, 1, 5, 2, 6, 3, 7]])
    # Assert
    assert labels is not None and labels.tolist() in ([0, 1] * 4, [1, 0] * 4)
    assert split_cluster(one) is None
    assert split_cluster(two[:3]) is None  # too few devices for two sides of two
    assert merge_close(
        torch.stack([two[:4].mean(0), two[4:].mean(0), two[:4].mean(0) + 0.01]), 0.5
    ).tolist() == [0, 1, 0]
