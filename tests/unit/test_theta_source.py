"""θ sources: a FleetLearner takes its θ from an object, and a new family plugs in by overriding a method."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from learners.config import LearnerConfig
from learners.evaluation.synthetic import make_fleet_stream
from learners.fleet import FleetLearner
from learners.meta import FirstOrderMAML
from learners.nets import FunctionalNet, Params
from learners.strategies import STRATEGIES, make_strategy
from learners.theta_source import FrozenTheta, MetaLearnedTheta, RemoteTheta

CFG = LearnerConfig(n_features=3, adapt_after=8, buffer_size=16, meta_every=64, guard_holdout=0.0)


def run(fleet: FleetLearner, batch: int = 50) -> None:
    s = make_fleet_stream(n_devices=6, n_readings=600, n_features=3, seed=3)
    for i in range(0, len(s.y), batch):
        fleet.learn_predict(s.device_ids[i : i + batch], s.x[i : i + batch], s.y[i : i + batch])


class NoStepTheta(FrozenTheta):
    """A family whose adaptation keeps θ as it is (zero inner steps)."""

    name = "no-step"

    def adapt(self, net: FunctionalNet, x: Tensor, y: Tensor, mask: Tensor) -> Params:
        return {k: v.expand(len(x), *v.shape).clone() for k, v in self.theta.items()}


def test_a_new_family_changes_how_devices_adapt_by_overriding_adapt() -> None:
    # Prepare
    fleet = FleetLearner(CFG, NoStepTheta(CFG))
    # Execute
    run(fleet)
    # Assert: every device adapted at least once, and each published model is θ itself
    assert fleet.name == "no-step" and fleet.n_adaptations >= 6
    for d in fleet.devices.ids:
        slot = fleet.devices.slot(d)
        assert all(torch.equal(fleet.published[k][slot], v) for k, v in fleet.theta.items())


def test_a_source_object_and_its_name_give_the_same_run() -> None:
    # Prepare
    by_name, by_object = (
        FleetLearner(CFG, "fomaml"),
        FleetLearner(CFG, MetaLearnedTheta(CFG, FirstOrderMAML())),
    )
    # Execute
    run(by_name)
    run(by_object)
    # Assert
    assert by_name.meta_version == by_object.meta_version > 0
    assert all(torch.equal(by_name.theta[k], by_object.theta[k]) for k in by_name.theta)


def test_remote_theta_queues_contributions_and_takes_theta_from_the_meta_agent() -> None:
    # Prepare
    local, remote = FleetLearner(CFG, "reptile"), FleetLearner(CFG, RemoteTheta(CFG))
    theta0 = {k: v.clone() for k, v in remote.theta.items()}
    # Execute
    run(local)
    run(remote)
    queued = remote.take_contributions()
    adopted = remote.adopt_theta(local.theta, local.meta_version)
    # Assert: one proposal per meta-update the local fleet applied; θ moved only when adopted
    assert len(queued) == local.meta_version > 0 and remote.take_contributions() == []
    assert adopted and remote.meta_version == local.meta_version
    assert any(not torch.equal(theta0[k], remote.theta[k]) for k in theta0)
    assert FleetLearner(CFG, "scratch").take_contributions() == []


def test_every_strategy_answers_the_whole_interface() -> None:
    # Prepare
    cfg = LearnerConfig(n_features=3)
    x = np.random.default_rng(0).normal(size=(2, 5, 3))
    # Execute
    answers = {}
    for name in STRATEGIES:
        strategy = make_strategy(name, cfg)
        pred = strategy.personaliser()(x, np.zeros((2, 5)), x)
        answers[name] = (strategy.n_adaptations, strategy.meta_version, pred.shape)
    # Assert
    assert answers == {name: (0, 0, (2, 5)) for name in STRATEGIES}
