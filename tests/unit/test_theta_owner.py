"""One owner for θ: each θ message is verified and decoded once, and the fleet and the aggregator agree."""

from __future__ import annotations

import pytest
import torch

from connectors.settings import Settings
from connectors.signing import Signer, Verifier
from learners import nets, theta_source
from learners.config import LearnerConfig
from learners.nets import Params
from pipeline import worker_core
from pipeline.meta_follower import _adopt
from pipeline.state import PipelineState
from pipeline.worker_core import MetaAggregator, WorkerCore
from wire.models import DeltaHeader, encode_deltas

SETTINGS = Settings(n_features=2)


class CountingVerifier(Verifier):
    """The real verifier, counting the messages it opens."""

    opened = 0

    def open(self, envelope: bytes) -> bytes:
        self.opened += 1
        return super().open(envelope)


def test_one_theta_message_is_opened_once_and_feeds_fleet_and_aggregator() -> None:
    # Prepare: a worker state whose core and app share one counting verifier, and θ version 1
    signer = Signer.generate()
    verifier = CountingVerifier([signer.public_key])
    core = WorkerCore(SETTINGS, signer, trusted=verifier)
    state = PipelineState(SETTINGS, core, MetaAggregator(SETTINGS, signer), verifier, "w", None)
    publisher = MetaAggregator(SETTINGS, signer)
    n = publisher.n_params
    (theta,) = publisher.on_delta(
        signer.seal(encode_deltas(torch.ones(1, n) / n, torch.ones(1), DeltaHeader("worker:x", 0, n)))
    )

    # Execute
    _adopt(state, theta.payload)

    # Assert
    assert verifier.opened == 1
    assert core.theta.version == core.fleet.meta_version == state.aggregator.version == 1
    for k, v in publisher.meta.theta.items():
        assert torch.equal(core.fleet.theta[k], v)
        assert torch.equal(state.aggregator.meta.theta[k], v)
    assert state.theta_seen == 1


def test_theta_zero_is_built_once_for_the_worker_and_its_aggregator(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: count every θ₀ built, wherever it is built
    built: list[int] = []

    def counting_init(cfg: LearnerConfig) -> Params:
        built.append(1)
        return nets.init_params(cfg)

    for module in (theta_source, worker_core):
        monkeypatch.setattr(module, "init_params", counting_init)

    # Execute
    core = WorkerCore(SETTINGS, Signer.generate())
    agg = MetaAggregator(SETTINGS, Signer.generate(), fleet=core.fleet)

    # Assert
    assert len(built) == 1
    assert all(core.theta.theta[k] is core.fleet.theta[k] for k in core.fleet.theta)
    assert all(torch.equal(agg.meta.theta[k], core.fleet.theta[k]) for k in core.fleet.theta)
