"""Regression guard: an adapted model is kept (and published) only if it does no worse."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from connectors.settings import Settings
from connectors.signing import Signer
from learners import LearnerConfig
from learners.fleet import GUARD_RETRIES, FleetLearner
from learners.guard import accept, split_holdout
from pipeline.outgoing import to_records
from pipeline.worker_core import WorkerCore
from wire.readings import Reading, encode_readings

# online_lr=0: predict-then-learn leaves the weights exactly as they are, so
# "the current weights stay bit-identical" can be checked with torch.equal.
CFG = LearnerConfig(n_features=2, adapt_after=16, buffer_size=16, online_lr=0.0, seed=0)


def concept(n: int, gain: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    return x, gain * x[:, 0] + 0.01 * rng.normal(size=n)


def snapshot(fleet: FleetLearner, device: str) -> dict[str, torch.Tensor]:
    return fleet.device_params(device)


def test_a_good_adaptation_is_accepted_and_replaces_the_weights() -> None:
    # Prepare: 16 readings of one concept, the 4 newest held back
    fleet = FleetLearner(CFG, init="scratch")
    x, y = concept(16, 3.0, 0)
    fleet.learn_predict(["a"] * 15, x[:15], y[:15])
    before = snapshot(fleet, "a")
    # Execute
    result = fleet.learn_predict(["a"], x[15:], y[15:])
    # Assert
    assert result.adapted == ["a"] and result.rejected == []
    (check,) = result.checks
    assert check.device_id == "a" and check.accepted and check.held_back == 4
    assert check.adapted_loss < 0.5 * check.current_loss
    after = snapshot(fleet, "a")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert fleet.n_adaptations == 1 and fleet.n_rejected == 0


def test_adaptation_on_another_concept_is_rejected_and_weights_stay_bit_identical() -> None:
    # Prepare: 12 readings of gain +3, then the 4 held-back newest of gain −3
    fleet = FleetLearner(CFG, init="scratch")
    xa, ya = concept(12, 3.0, 1)
    xb, yb = concept(4, -3.0, 2)
    x, y = np.concatenate([xa, xb]), np.concatenate([ya, yb])
    fleet.learn_predict(["a"] * 15, x[:15], y[:15])
    before = snapshot(fleet, "a")
    # Execute
    result = fleet.learn_predict(["a"], x[15:], y[15:])
    # Assert: φ fits +3 and is worse on the −3 readings than θ (the current model of a new device)
    assert result.adapted == []
    (check,) = result.rejected
    assert check.device_id == "a" and check.held_back == 4
    assert check.adapted_loss > check.current_loss
    after = snapshot(fleet, "a")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(after[k], fleet.theta[k]) for k in after)  # still θ: nothing was kept
    assert fleet.n_adaptations == 0 and fleet.n_rejected == 1


def test_a_diverged_adaptation_is_rejected() -> None:
    # Prepare: an absurd inner step size blows φ up
    cfg = LearnerConfig(n_features=2, adapt_after=16, buffer_size=16, online_lr=0.0, inner_lr=1e6)
    fleet = FleetLearner(cfg, init="scratch")
    x, y = concept(16, 3.0, 3)
    fleet.learn_predict(["a"] * 15, x[:15], y[:15])
    before = snapshot(fleet, "a")
    # Execute
    result = fleet.learn_predict(["a"], x[15:], y[15:])
    # Assert
    assert result.adapted == [] and [c.device_id for c in result.rejected] == ["a"]
    assert result.rejected[0].adapted_loss > 1e6 * result.rejected[0].current_loss
    assert all(torch.equal(before[k], fleet.device_params("a")[k]) for k in before)


def test_a_new_device_rejected_every_time_gets_theta_after_its_retries() -> None:
    # Prepare: every adaptation diverges; readings arrive one at a time
    cfg = LearnerConfig(n_features=2, adapt_after=16, buffer_size=16, online_lr=0.0, inner_lr=1e6)
    fleet = FleetLearner(cfg, init="scratch")
    x, y = concept(80, 3.0, 8)
    # Execute
    results = [fleet.learn_predict(["a"], x[i : i + 1], y[i : i + 1]) for i in range(80)]
    # Assert: judged at the 16th reading, then after every 4 new (held-back many) readings, 3 times;
    # the last refusal leaves a device without any model, so it gets θ, and is left alone after that
    assert [i for i, r in enumerate(results) if r.checks] == [15, 19, 23, 27]
    assert [i for i, r in enumerate(results) if r.adapted] == [27]
    assert GUARD_RETRIES == 3 and fleet.n_rejected == 4 and fleet.n_adaptations == 0
    slot = fleet.devices.slot("a")
    assert all(torch.equal(fleet.published[k][slot], v) for k, v in fleet.theta.items())


def test_a_device_with_a_model_keeps_it_when_its_retries_run_out() -> None:
    # Prepare: a first adaptation is kept; then every adaptation diverges
    fleet = FleetLearner(CFG, init="scratch")
    x, y = concept(96, 3.0, 9)
    first = fleet.learn_predict(["a"] * 16, x[:16], y[:16])
    published = {k: v.clone() for k, v in snapshot(fleet, "a").items()}
    fleet.net.cfg = dataclasses.replace(CFG, inner_lr=1e6)
    fleet._pending[fleet.devices.slot("a")] = True  # as a drift would
    # Execute
    results = [fleet.learn_predict(["a"], x[i : i + 1], y[i : i + 1]) for i in range(16, 96)]
    # Assert: judged at once (the buffer is full), then after every 4 new readings, 3 times; nothing published
    assert first.adapted == ["a"]
    assert [16 + i for i, r in enumerate(results) if r.checks] == [16, 20, 24, 28]
    assert not any(r.adapted for r in results) and fleet.n_rejected == 4
    assert all(torch.equal(fleet.published[k][fleet.devices.slot("a")], v) for k, v in published.items())


def test_devices_are_judged_together_but_each_on_its_own() -> None:
    # Prepare: in one batch, "good" has one concept, "bad" switches concept in its held-back readings
    fleet = FleetLearner(CFG, init="scratch")
    xg, yg = concept(16, 3.0, 4)
    xa, ya = concept(12, 3.0, 5)
    xb, yb = concept(4, -3.0, 6)
    ids = ["good"] * 16 + ["bad"] * 16
    x = np.concatenate([xg, xa, xb])
    y = np.concatenate([yg, ya, yb])
    # Execute
    result = fleet.learn_predict(ids, x, y)
    # Assert
    assert result.adapted == ["good"]
    assert [(c.device_id, c.accepted) for c in result.checks] == [("good", True), ("bad", False)]


def test_guard_off_keeps_every_adaptation() -> None:
    # Prepare
    cfg = LearnerConfig(n_features=2, adapt_after=16, buffer_size=16, online_lr=0.0, guard_holdout=0.0)
    fleet = FleetLearner(cfg, init="scratch")
    xa, ya = concept(12, 3.0, 1)
    xb, yb = concept(4, -3.0, 2)
    # Execute
    result = fleet.learn_predict(["a"] * 16, np.concatenate([xa, xb]), np.concatenate([ya, yb]))
    # Assert
    assert result.adapted == ["a"] and result.checks == []


def test_split_holdout_needs_enough_readings_on_both_sides() -> None:
    # Prepare: 8, 7 and 1 readings; hold back 25 %, at least 4
    mask = torch.tensor([[1.0] * 8, [1.0] * 7 + [0.0], [1.0] + [0.0] * 7])
    # Execute
    train, hold = split_holdout(mask, share=0.25, minimum=4)
    # Assert: only the first row can spare 4 and keep 4
    assert hold.sum(1).tolist() == [4.0, 0.0, 0.0]
    assert hold[0].tolist() == [1.0] * 4 + [0.0] * 4
    assert torch.equal(train + hold, mask)


def test_accept_allows_only_float_noise_above_the_current_loss() -> None:
    current = torch.tensor([2.0, 2.0, 2.0])
    adapted = torch.tensor([2.0 * (1 + 1e-7), 2.0 * (1 + 1e-3), 1.0])
    assert accept(current, adapted).tolist() == [True, False, True]


@pytest.mark.parametrize("bad", ["guard_holdout", "guard_min_holdout"])
def test_bad_guard_settings_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        LearnerConfig(n_features=2, **{bad: 1.0 if bad == "guard_holdout" else -1})  # type: ignore[arg-type]


def test_worker_publishes_no_model_for_a_rejected_adaptation_and_says_why() -> None:
    # Prepare: a worker whose adaptations diverge
    settings = Settings(n_features=2, learner={"adapt_after": 16, "buffer_size": 16, "inner_lr": 1e6})
    core = WorkerCore(settings, Signer.generate(), clock=lambda: 7.0)
    x, y = concept(16, 3.0, 7)
    message = encode_readings([Reading("d1", tuple(r), float(t)) for r, t in zip(x.tolist(), y, strict=True)])
    # Execute
    out = to_records(settings, core.on_readings([(message, 0, 0)]))
    # Assert
    assert [o for o in out if o.topic == settings.topic_models] == []
    events = [json.loads(o.value) for o in out if o.topic == settings.topic_events]
    (event,) = [e for e in events if e["type"] == "adaptation_rejected"]
    assert event["device_id"] == "d1" and event["cause"] == "new_device" and event["held_back"] == 4
    assert event["adapted_loss"] > event["current_loss"] > 0
    assert event["ts"] == 7.0 and event["model_version"] == 0
    stats = core.stats()
    assert stats["rejected"] == 1 and stats["published"] == 0 and stats["adaptations"] == 0


def test_the_guard_judges_against_the_published_model_not_the_online_weights() -> None:
    # Prepare: a first adaptation is published, then online learning moves the weights
    fleet = FleetLearner(
        LearnerConfig(n_features=2, adapt_after=16, buffer_size=16, online_lr=0.5), init="scratch"
    )
    x, y = concept(40, 3.0, 3)
    result = fleet.learn_predict(["a"] * 16, x[:16], y[:16])
    published = {k: v.clone() for k, v in snapshot(fleet, "a").items()}
    # Execute
    fleet.learn_predict(["a"] * 24, x[16:], y[16:])
    # Assert: the edge's model (the reference of the next judgement) is the one published
    slot = fleet.devices.slot("a")
    assert result.adapted == ["a"]
    assert all(torch.equal(fleet.published[k][slot], published[k]) for k in published)
    assert any(not torch.equal(fleet.params[k][slot], published[k]) for k in published)
