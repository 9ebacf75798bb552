"""The same stream gives the same learning however it is cut into micro-batches, or checkpointed.

Everything is compared bit for bit: per-reading steps, the cumulative scaler
and the per-reading detectors compute every device's numbers with the same
float operations whatever the cut (see :meth:`FleetLearner.learn_predict`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from learners import LearnerConfig
from learners.evaluation.synthetic import FleetStream, make_fleet_stream
from learners.fleet import FleetLearner, InitName
from learners.meta import MetaLearner

N = 1800
CFG = LearnerConfig(
    n_features=3,
    hidden=(8,),
    inner_steps=4,
    adapt_after=8,
    buffer_size=16,
    meta_every=150,
    meta_batch=3,
    cooldown=40,
)


@cache
def stream() -> FleetStream:
    return make_fleet_stream(
        n_devices=6, n_readings=N, n_features=3, gradual_share=0.0, late_joiners=0.5, noise=0.05, seed=11
    )


@dataclass
class Run:
    pred: np.ndarray
    drifts: list[tuple[int, str]]
    adaptations: list[tuple[int, str]]
    fleet: FleetLearner


def run(init: InitName, cuts: list[int], checkpoint_after: int | None = None) -> Run:
    """Feed the stream in batches of ``cuts`` (the rest in one).

    After batch ``checkpoint_after`` the state goes into a fresh learner.
    """
    s = stream()
    fleet = FleetLearner(CFG, init=init)
    preds: list[np.ndarray] = []
    drifts: list[tuple[int, str]] = []
    adaptations: list[tuple[int, str]] = []
    starts = np.cumsum([0, *cuts]).tolist()
    bounds = [a for a in starts if a < N] + [N]
    for b, (a, z) in enumerate(itertools.pairwise(bounds)):
        r = fleet.learn_predict(s.device_ids[a:z], s.x[a:z], s.y[a:z])
        preds.append(r.y_pred)
        drifts += [(a + i, s.device_ids[a + i]) for i in r.drift_at]
        adaptations += [(a + i, s.device_ids[a + i]) for i in r.adapted_at]
        if b == checkpoint_after:
            tensors, info = fleet.export_devices(fleet.devices.ids)
            fleet = FleetLearner(CFG, init=init)
            fleet.import_devices(tensors, info, worker_wide=True)
    return Run(np.concatenate(preds), drifts, adaptations, fleet)


@cache
def reference(init: InitName) -> Run:
    return run(init, [1] * N)  # one reading at a time: the prequential definition itself


def assert_same(got: Run, want: Run) -> None:
    assert np.array_equal(got.pred, want.pred)
    assert got.drifts == want.drifts
    assert got.adaptations == want.adaptations
    a, b = got.fleet, want.fleet
    assert a.devices.ids == b.devices.ids and a.processed == b.processed
    assert a.meta_version == b.meta_version
    for k in b.params:
        assert torch.equal(a.params[k], b.params[k]), k
        assert torch.equal(a.published[k], b.published[k]), k
        assert torch.equal(a.theta[k], b.theta[k]), k


@pytest.mark.slow
def test_the_reference_stream_drifts_adapts_and_meta_learns() -> None:
    # The comparisons below mean something only if all of it happens.
    ref = reference("reptile")
    assert len(ref.drifts) >= 3 and len(ref.adaptations) >= 8 and ref.fleet.meta_version >= 10


cut_sizes = st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=30)


@pytest.mark.slow
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=cut_sizes, init=st.sampled_from(["reptile", "finetune"]))
def test_any_cut_gives_the_same_results(cuts: list[int], init: InitName) -> None:
    assert_same(run(init, cuts), reference(init))


@pytest.mark.slow
@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=cut_sizes, init=st.sampled_from(["reptile", "finetune"]))
def test_a_restored_checkpoint_continues_as_if_never_stopped(cuts: list[int], init: InitName) -> None:
    assert_same(run(init, cuts, checkpoint_after=len(cuts) // 2), reference(init))


def test_backlog_cuts_and_live_cuts_agree() -> None:
    # A worker catching up (large batches, then small) and a live one (small batches throughout).
    backlog = run("reptile", [600, 1000, 100], checkpoint_after=0)
    live = run("reptile", [20] * (N // 20))
    assert_same(backlog, live)


def test_a_replay_given_the_theta_log_reproduces_a_worker_run() -> None:
    # Prepare: a "worker" (θ from a meta agent, adopted between its batches) and the agent itself
    s = stream()
    worker = FleetLearner(CFG, init="reptile", local_meta=False)
    agent = MetaLearner(worker.theta, CFG.meta_lr)
    versions: dict[int, dict[str, torch.Tensor]] = {}
    worker_pred: list[np.ndarray] = []
    for a in range(0, N, 250):
        worker_pred.append(
            worker.learn_predict(s.device_ids[a : a + 250], s.x[a : a + 250], s.y[a : a + 250]).y_pred
        )
        for deltas, weights in worker.take_contributions():
            agent.step(deltas, weights)
        versions[agent.version] = agent.theta
        worker.adopt_theta(agent.theta, agent.version)
    # Execute: a replay in other batches, told where each θ version took effect
    replay = FleetLearner(CFG, init="reptile", local_meta=False)
    for position, version in worker.theta_log:
        replay.adopt_theta(versions[version], version, at=position)
    replay_pred = [
        replay.learn_predict(s.device_ids[a : a + 97], s.x[a : a + 97], s.y[a : a + 97]).y_pred
        for a in range(0, N, 97)
    ]
    # Assert
    assert len(worker.theta_log) >= 5 and replay.theta_log == worker.theta_log
    assert np.array_equal(np.concatenate(replay_pred), np.concatenate(worker_pred))
    assert all(torch.equal(replay.params[k], worker.params[k]) for k in worker.params)


def test_theta_cannot_take_effect_in_the_past() -> None:
    fleet = FleetLearner(CFG)
    s = stream()
    fleet.learn_predict(s.device_ids[:10], s.x[:10], s.y[:10])
    with pytest.raises(ValueError, match="cannot take effect at reading 5: the stream is at 10"):
        fleet.adopt_theta(fleet.theta, 3, at=5)
