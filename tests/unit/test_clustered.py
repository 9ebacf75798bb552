"""Strategy ``clustered``: K meta-initialisations that grow with the kinds of devices; cuts, checkpoints."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest
import torch

from learners.clustered import ClusteredTheta
from learners.config import LearnerConfig
from learners.evaluation.synthetic import FleetStream, make_fleet_stream
from learners.fleet import FleetLearner
from learners.strategies import make_strategy

CFG = LearnerConfig(n_features=3, hidden=(16,), meta_every=250, meta_batch=8)


@cache
def two_kinds(n_readings: int = 8000) -> FleetStream:
    """16 devices of two kinds (even ids kind 0, odd ids kind 1), no drift, all present from the start."""
    return make_fleet_stream(
        n_devices=16,
        n_readings=n_readings,
        n_features=3,
        drifts_per_device=0,
        late_joiners=0.0,
        seed=0,
        clusters=2,
    )


@dataclass
class Run:
    pred: np.ndarray
    adaptations: list[int]
    fleet: FleetLearner
    source: ClusteredTheta


def run(cuts: list[int], n: int = 4000, checkpoint_after: int | None = None) -> Run:
    """The first ``n`` readings in batches of ``cuts`` (rest in one); restored after ``checkpoint_after``."""
    s = two_kinds()
    source = ClusteredTheta(CFG)
    fleet = FleetLearner(CFG, source)
    preds: list[np.ndarray] = []
    adaptations: list[int] = []
    starts = np.cumsum([0, *cuts]).tolist()
    bounds = [a for a in starts if a < n] + [n]
    for b, (a, z) in enumerate(itertools.pairwise(bounds)):
        r = fleet.learn_predict(s.device_ids[a:z], s.x[a:z], s.y[a:z])
        preds.append(r.y_pred)
        adaptations += [a + i for i in r.adapted_at]
        if b == checkpoint_after:
            tensors, info = fleet.export_devices(fleet.devices.ids)
            source = ClusteredTheta(CFG)
            fleet = FleetLearner(CFG, source)
            fleet.import_devices(tensors, info, worker_wide=True)
    return Run(np.concatenate(preds), adaptations, fleet, source)


@cache
def reference() -> Run:
    return run([1] * 4000)


def assert_same(got: Run, want: Run) -> None:
    assert np.array_equal(got.pred, want.pred)
    assert got.adaptations == want.adaptations
    a, b = got.source, want.source
    assert (a.k, a.version, a.splits, a.merges) == (b.k, b.version, b.splits, b.merges)
    assert a.assignment == b.assignment
    for name, v in b.thetas.items():
        assert torch.equal(a.thetas[name], v), name
    for k, v in want.fleet.params.items():
        assert torch.equal(got.fleet.params[k], v), k


@pytest.mark.slow
def test_on_a_two_kind_fleet_k_grows_to_two_and_each_kind_has_its_own_theta() -> None:
    # Prepare
    s = two_kinds()
    source = ClusteredTheta(CFG)
    fleet = FleetLearner(CFG, source)
    # Execute
    for a in range(0, len(s.y), 400):
        fleet.learn_predict(s.device_ids[a : a + 400], s.x[a : a + 400], s.y[a : a + 400])
    # Assert: one split, no merge; every device of a kind uses the same θ_k, the two kinds different ones
    assert (source.k, source.splits, source.merges) == (2, 1, 0)
    kind = {d: int(s.kinds[int(d.removeprefix("dev-")), 0]) for d in fleet.devices.ids}
    assert sorted(source.assignment) == sorted(kind)
    used = {k: {source.assignment[d] for d in kind if kind[d] == k} for k in (0, 1)}
    assert len(used[0]) == 1 and len(used[1]) == 1 and used[0] != used[1]


@pytest.mark.slow
def test_the_reference_run_splits_before_the_checkpoints_below() -> None:
    # The comparisons below mean something only if K grew and devices were assigned by then.
    ref = reference()
    assert ref.source.k == 2 and len(ref.source.assignment) == 16 and ref.source.version >= 10


@pytest.mark.slow
@pytest.mark.parametrize("cuts", [[4000], [37, 500, 3, 1200, 250, 999], [250] * 16, [7] * 600])
def test_any_cut_gives_the_same_clusters_and_predictions(cuts: list[int]) -> None:
    assert_same(run(cuts), reference())


@pytest.mark.slow
@pytest.mark.parametrize("cuts", [[1900, 2100], [37, 500, 3, 1200, 250, 999]])
def test_a_restored_checkpoint_continues_as_if_never_stopped(cuts: list[int]) -> None:
    assert_same(run(cuts, checkpoint_after=len(cuts) // 2), reference())


def test_a_checkpoint_carries_every_theta_and_each_devices_cluster() -> None:
    # Prepare: a source with two θ's and three devices assigned
    source = ClusteredTheta(CFG)
    fleet = FleetLearner(CFG, source)
    s = two_kinds()
    fleet.learn_predict(s.device_ids[:300], s.x[:300], s.y[:300])
    first = source.metas[0]
    source.metas = [first, source._meta_like(first, {k: v + 1.0 for k, v in first.theta.items()})]
    source.recent, source.parent_spread = [{}, {}], [0.0, 0.0]
    source.assignment = {"dev-0000": 1, "dev-0001": 0, "dev-0002": 1}
    # Execute
    tensors, info = fleet.export_devices(fleet.devices.ids)
    fresh_source = ClusteredTheta(CFG)
    fresh = FleetLearner(CFG, fresh_source)
    fresh.import_devices(tensors, info, worker_wide=True)
    # Assert
    assert fresh_source.k == 2 and fresh_source.assignment == source.assignment
    assert all(torch.equal(fresh_source.thetas[k], v) for k, v in source.thetas.items())
    bad = dict(tensors)
    bad[f"clustered.{next(iter(source.theta))}"] = torch.zeros(9, 1)
    with pytest.raises(ValueError, match="checkpoint does not fit this learner: clustered"):
        FleetLearner(CFG, ClusteredTheta(CFG)).import_devices(bad, info, worker_wide=True)


def test_with_one_theta_it_is_reptile() -> None:
    # Prepare
    s = two_kinds()
    clustered = FleetLearner(CFG, ClusteredTheta(CFG, max_k=1))
    reptile = FleetLearner(CFG, "reptile")
    # Execute
    a = clustered.learn_predict(s.device_ids[:2000], s.x[:2000], s.y[:2000])
    b = reptile.learn_predict(s.device_ids[:2000], s.x[:2000], s.y[:2000])
    # Assert
    assert clustered.meta_version == reptile.meta_version > 0
    assert np.array_equal(a.y_pred, b.y_pred)
    assert all(torch.equal(clustered.theta[k], reptile.theta[k]) for k in reptile.theta)


def test_the_strategy_is_registered_by_name() -> None:
    strategy = make_strategy("clustered", CFG)
    assert isinstance(strategy, FleetLearner) and strategy.name == "clustered"
    assert isinstance(strategy.source, ClusteredTheta)
