"""Meta contributions: signed and attributed, bounded, and θ checked before it is published."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from connectors.contributions import ContributionGate, ContributionRefused, DeviceKeys
from connectors.settings import Settings
from connectors.signing import Signer, Verifier
from learners.bounds import MIN_HISTORY, ContributionBounds
from learners.buffers import DeviceBuffers
from learners.config import LearnerConfig
from learners.evaluation.synthetic import make_fleet_stream
from learners.federated import FederatedDevice
from learners.meta import MetaLearner
from learners.nets import FunctionalNet, flatten, init_params
from learners.theta_check import check_theta, sample_held_back
from pipeline.outgoing import to_records
from pipeline.worker_core import MetaAggregator, WorkerCore
from wire.models import META_KEY, DeltaHeader, decode_model, encode_deltas
from wire.readings import Reading, encode_readings

SETTINGS = Settings(n_features=2, micro_batch=50, learner={"adapt_after": 8, "meta_every": 100})


def deltas_of(rows: torch.Tensor, weights: list[float], source: str) -> bytes:
    return encode_deltas(rows, torch.tensor(weights), DeltaHeader(source, 0, rows.shape[1]))


def key_dir(tmp_path: Path, devices: list[str]) -> tuple[Path, dict[str, Signer]]:
    folder = tmp_path / "device-keys"
    folder.mkdir(exist_ok=True)
    signers = {d: Signer.generate() for d in devices}
    for d, s in signers.items():
        s.save(tmp_path / f"{d}.key", folder / f"{d}.pem")
    return folder, signers


def worker_messages(n_per_device: int = 60, seed: int = 7) -> list[bytes]:
    s = make_fleet_stream(n_devices=4, n_readings=4 * n_per_device, n_features=2, late_joiners=0.0, seed=seed)
    readings = [
        Reading(d, tuple(x), float(y)) for d, x, y in zip(s.device_ids, s.x.tolist(), s.y, strict=True)
    ]
    return [encode_readings(readings[i : i + 20]) for i in range(0, len(readings), 20)]


# -- the gate: who may contribute ---------------------------------------------------------------


def test_gate_accepts_workers_and_allowed_devices_for_themselves_only(tmp_path: Path) -> None:
    # Prepare
    worker = Signer.generate()
    folder, devices = key_dir(tmp_path, ["dev-1", "dev-2"])
    gate = ContributionGate([worker.public_key], DeviceKeys(folder), n_params=3)
    row = torch.ones(1, 3)
    # Execute
    ok_worker = gate.open(worker.seal(deltas_of(row, [1.0], "worker:w7")))
    ok_device = gate.open(devices["dev-1"].seal(deltas_of(row, [1.0], "edge:dev-1")))
    refusals = {}
    for name, value in {
        "unsigned": deltas_of(row, [1.0], "edge:dev-1"),
        "unknown_key": Signer.generate().seal(deltas_of(row, [1.0], "edge:dev-1")),
        "wrong_source": devices["dev-2"].seal(deltas_of(row, [1.0], "edge:dev-1")),
        "device_as_worker": devices["dev-1"].seal(deltas_of(row, [1.0], "worker:w7")),
        "bad_signature": worker.seal(deltas_of(row, [1.0], "worker:w7"))[:-1] + b"\x00",
        "malformed": worker.seal(b"not safetensors"),
        "wrong_shape": worker.seal(deltas_of(torch.ones(1, 4), [1.0], "worker:w7")),
    }.items():
        with pytest.raises(ContributionRefused) as info:
            gate.open(value)
        refusals[name] = info.value.reason
    # Assert
    assert (ok_worker.signer, ok_device.signer) == ("worker", "edge:dev-1")
    assert refusals == {
        "unsigned": "unsigned",
        "unknown_key": "unknown_key",
        "wrong_source": "wrong_source",
        "device_as_worker": "wrong_source",
        "bad_signature": "bad_signature",
        "malformed": "malformed",
        "wrong_shape": "wrong_shape",
    }
    assert dict(gate.refused) == {
        "unsigned": 1,
        "unknown_key": 1,
        "bad_signature": 1,
        "wrong_source": 2,
        "malformed": 1,
        "wrong_shape": 1,
    }


def test_without_device_keys_every_federated_contribution_is_refused(tmp_path: Path) -> None:
    _, devices = key_dir(tmp_path, ["dev-1"])
    gate = ContributionGate([Signer.generate().public_key], None, n_params=2)
    with pytest.raises(ContributionRefused, match="unknown_key"):
        gate.open(devices["dev-1"].seal(deltas_of(torch.ones(1, 2), [1.0], "edge:dev-1")))


def test_a_device_key_added_later_is_picked_up_without_restart(tmp_path: Path) -> None:
    # Prepare
    folder, _ = key_dir(tmp_path, ["dev-1"])
    keys = DeviceKeys(folder)
    gate = ContributionGate([Signer.generate().public_key], keys, n_params=2)
    late = Signer.generate()
    value = late.seal(deltas_of(torch.ones(1, 2), [1.0], "edge:dev-9"))
    with pytest.raises(ContributionRefused, match="unknown_key"):
        gate.open(value)
    # Execute
    late.save(tmp_path / "dev-9.key", folder / "dev-9.pem")
    # Assert
    assert gate.open(value).signer == "edge:dev-9"


def test_refusals_are_logged_at_most_once_per_reason_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    # Prepare
    now = [0.0]
    gate = ContributionGate([Signer.generate().public_key], None, n_params=2, clock=lambda: now[0])
    junk = deltas_of(torch.ones(1, 2), [1.0], "edge:x")
    # Execute
    with caplog.at_level(logging.WARNING, logger="connectors.contributions"):
        for t in (0.0, 1.0, 2.0, 61.0):
            now[0] = t
            with pytest.raises(ContributionRefused):
                gate.open(junk)
    # Assert
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "2 more refused" in messages[1]
    assert gate.refused["unsigned"] == 4


def test_bad_device_keys_setting_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such directory"):
        MetaAggregator(Settings(device_keys=str(tmp_path / "missing")), Signer.generate())
    (tmp_path / "dev-1.pem").write_text("not a key")
    with pytest.raises(ValueError):
        DeviceKeys(tmp_path)


# -- bounds: clipping and weight caps ------------------------------------------------------------


def test_adaptive_clip_follows_the_median_of_accepted_norms() -> None:
    # Prepare: history of honest rows of norm 1
    bounds = ContributionBounds(clip_multiple=3.0, clip_max=10.0, weight_multiple=4.0, weight_max=1000.0)
    honest = torch.zeros(MIN_HISTORY, 4)
    honest[:, 0] = 1.0
    before = bounds.bound(honest, torch.full((MIN_HISTORY,), 5.0))
    bounds.accept(before)
    # Execute: one huge row with a huge weight, among honest ones
    rows = torch.cat([torch.full((1, 4), 1e4), honest[:3]])
    after = bounds.bound(rows, torch.tensor([1e30, 5.0, 5.0, 5.0]))
    # Assert
    assert before.clip == 10.0 and before.clipped == 0  # no history yet: the fixed cap
    assert after.clip == pytest.approx(3.0)
    assert after.deltas[0].norm().item() == pytest.approx(3.0)
    assert after.deltas[1:].equal(honest[:3])  # honest rows untouched
    assert after.weights.tolist() == [20.0, 5.0, 5.0, 5.0]  # 1e30 buys 4 × the median weight
    assert (after.clipped, after.capped) == (1, 1)


def test_refused_rows_leave_no_trace_in_the_bounds() -> None:
    meta = MetaLearner.from_config({"w": torch.zeros(2)}, LearnerConfig(n_features=1))
    proposal = meta.propose(torch.full((MIN_HISTORY, 2), 1e4), torch.ones(MIN_HISTORY))
    assert meta.bounds.clip_limit() == 10.0 and len(meta.bounds.norm) == 0  # proposed, not committed
    meta.commit(proposal)
    assert len(meta.bounds.norm) == MIN_HISTORY and meta.bounds.clip_limit() == 10.0


def test_forged_contribution_moves_theta_at_most_meta_lr_times_clip_max() -> None:
    # Prepare: issue #12's numbers (deltas 1e4, weight 1e30) with the default config
    cfg = LearnerConfig(n_features=8)
    theta = init_params(cfg)
    meta = MetaLearner.from_config(theta, cfg)
    p = flatten(theta).numel()
    # Execute
    meta.step(torch.full((1, p), 1e4), torch.tensor([1e30]))
    # Assert
    moved = (flatten(meta.theta) - flatten(theta)).norm().item()
    assert moved == pytest.approx(cfg.meta_lr * cfg.clip_max, rel=1e-5)


def test_bounds_can_be_turned_off_and_fixed_clip_still_works() -> None:
    off = MetaLearner.from_config({"w": torch.zeros(2)}, LearnerConfig(n_features=1, clip_multiple=0.0))
    off.step(torch.tensor([[100.0, 0.0]]), torch.ones(1))
    fixed = MetaLearner.from_config({"w": torch.zeros(2)}, LearnerConfig(n_features=1, clip=1.0))
    fixed.step(torch.tensor([[100.0, 0.0]]), torch.ones(1))
    assert off.theta["w"].tolist() == pytest.approx([30.0, 0.0])
    assert fixed.theta["w"].tolist() == pytest.approx([0.3, 0.0])
    with pytest.raises(ValueError, match="clip_max"):
        LearnerConfig(n_features=1, clip_max=0.0)


# -- the θ check ---------------------------------------------------------------------------------


def held_back_of(cfg: LearnerConfig, seed: int = 0) -> tuple[DeviceBuffers, int]:
    rng = np.random.default_rng(seed)
    buf = DeviceBuffers(cfg.n_features, cfg.buffer_size)
    slots = np.repeat(np.arange(4), cfg.buffer_size)
    x = rng.normal(size=(len(slots), cfg.n_features)).astype(np.float32)
    buf.push(slots, x, x[:, 0] * (1 + slots))
    return buf, 4


def test_theta_check_refuses_non_finite_and_much_worse_and_passes_itself() -> None:
    # Prepare
    cfg = LearnerConfig(n_features=2)
    net, theta = FunctionalNet(cfg), init_params(cfg)
    buf, n = held_back_of(cfg)
    held = sample_held_back(buf, n, np.random.default_rng(0))
    assert held is not None and held.devices == 4 and held.readings == 4 * 8
    # Execute
    same = check_theta(net, theta, theta, held)
    worse = check_theta(net, theta, {k: v + 10.0 for k, v in theta.items()}, held)
    nan = check_theta(net, theta, {**theta, "0.bias": theta["0.bias"] * float("nan")}, held)
    unchecked = check_theta(net, theta, {k: v + 10.0 for k, v in theta.items()}, None)
    # Assert
    assert (same.accepted, same.reason, same.current_loss) == (True, "ok", same.candidate_loss)
    assert (worse.accepted, worse.reason) == (False, "worse")
    assert worse.candidate_loss > 10 * worse.current_loss
    assert (nan.accepted, nan.reason) == (False, "non_finite")
    assert (unchecked.accepted, unchecked.reason) == (True, "unchecked")


def test_held_back_sample_is_bounded_and_seeded() -> None:
    cfg = LearnerConfig(n_features=2)
    buf = DeviceBuffers(2, cfg.buffer_size)
    buf.push(np.repeat(np.arange(40), 10), np.zeros((400, 2), np.float32), np.zeros(400, np.float32))
    a = sample_held_back(buf, 40, np.random.default_rng(3), max_devices=5)
    b = sample_held_back(buf, 40, np.random.default_rng(3), max_devices=5)
    assert a is not None and b is not None and a.devices == 5
    assert a.x.shape == (5, cfg.buffer_size, 2) and torch.equal(a.query, b.query)


# -- the meta agent ------------------------------------------------------------------------------


def test_aggregator_refuses_issue_12_forgery_and_theta_stays() -> None:
    # Prepare
    signer = Signer.generate()
    agg = MetaAggregator(SETTINGS, signer)
    before = {k: v.clone() for k, v in agg.meta.theta.items()}
    n = agg.n_params
    # Execute
    out = agg.on_delta(deltas_of(torch.full((1, n), 1e4), [1e30], "edge:attacker"))
    # Assert
    assert out == [] and agg.version == 0 and agg.rejected == 1
    assert agg.gate.refused["unsigned"] == 1
    assert all(torch.equal(before[k], agg.meta.theta[k]) for k in before)


def test_aggregator_does_not_publish_a_worse_theta_and_says_why() -> None:
    # Prepare: a worker that learned a few devices; its aggregator draws held-back readings from it.
    # Clipping off, so that only the θ check stands between a wild signed update and the edges.
    settings = Settings(
        n_features=2, micro_batch=50, learner={"adapt_after": 8, "meta_every": 100, "clip_multiple": 0.0}
    )
    signer = Signer.generate()
    core = WorkerCore(settings, signer, clock=lambda: 5.0)
    for m in worker_messages():
        core.on_readings([(m, 0, 0)])
    agg = MetaAggregator(settings, signer, fleet=core.fleet, clock=lambda: 9.0)
    before = {k: v.clone() for k, v in agg.meta.theta.items()}
    n = agg.n_params
    # Execute: a signed (compromised worker) contribution of issue #12's size, then an honest one
    refused = to_records(
        settings, agg.on_delta(signer.seal(deltas_of(torch.full((1, n), 1e4), [1.0], "worker:bad")))
    )
    fine = to_records(
        settings, agg.on_delta(signer.seal(deltas_of(torch.full((1, n), 1e-3), [1.0], "worker:ok")))
    )
    # Assert
    (event,) = refused
    body = json.loads(event.value)
    assert event.topic == settings.topic_events and event.key == META_KEY.encode()
    assert body["type"] == "theta_refused" and body["reason"] == "worse" and body["ts"] == 9.0
    assert body["candidate_loss"] > 100 * body["current_loss"] and body["held_back"] > 0
    assert body["source"] == "worker:bad" and body["meta_version"] == 0
    assert agg.counts["theta_refused"] == 1 and agg.counts["theta_unchecked"] == 0
    assert [o.topic for o in fine] == [settings.topic_meta] and agg.version == 1
    moved = flatten(agg.meta.theta) - flatten(before)
    assert moved.abs().max().item() == pytest.approx(settings.learner_config().meta_lr * 1e-3, rel=1e-3)


def test_without_held_back_readings_theta_is_checked_for_finiteness_only() -> None:
    signer = Signer.generate()
    agg = MetaAggregator(SETTINGS, signer)
    n = agg.n_params
    out = to_records(
        SETTINGS, agg.on_delta(signer.seal(deltas_of(torch.full((1, n), 0.01), [1.0], "worker:w")))
    )
    assert [o.topic for o in out] == [SETTINGS.topic_meta]
    assert agg.counts["theta_unchecked"] == 1 and agg.last_check is not None
    assert agg.last_check.reason == "unchecked"


def test_worker_contributions_are_signed_and_move_theta() -> None:
    # Prepare
    signer = Signer.generate()
    core = WorkerCore(SETTINGS, signer)
    agg = MetaAggregator(SETTINGS, signer, fleet=core.fleet)
    # Execute
    sent = []
    for m in worker_messages():
        for o in to_records(SETTINGS, core.on_readings([(m, 0, 0)])):
            if o.topic == SETTINGS.topic_deltas:
                sent.append(o.value)
                for theta in to_records(SETTINGS, agg.on_delta(o.value)):
                    core.on_meta(theta.value)
    # Assert
    assert sent and all(Verifier([signer.public_key]).open(v) for v in sent)
    assert agg.rejected == 0 and agg.version == len(sent) - agg.counts["theta_refused"] >= 1
    assert core.fleet.meta_version == agg.version


# -- parameter order on the wire -----------------------------------------------------------------


def test_contribution_rows_use_the_architecture_order_whatever_order_theta_arrives_in() -> None:
    # Prepare: θ as a decoded payload gives it (safetensors keeps no order), reversed to be sure
    cfg = LearnerConfig(n_features=2, adapt_after=8, buffer_size=16)
    theta = init_params(cfg)
    shuffled = {k: theta[k] for k in reversed(list(theta))}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 2))
    a, b = FederatedDevice(cfg), FederatedDevice(cfg)
    a.observe(x, x[:, 0])
    b.observe(x, x[:, 0])
    meta = MetaLearner.from_config(theta, cfg)
    # Execute
    delta_a, _ = a.update(theta) or (torch.zeros(0), 0)
    delta_b, _ = b.update(shuffled) or (torch.zeros(0), 0)
    meta.adopt(shuffled, 1)
    # Assert
    assert torch.equal(delta_a, delta_b)
    assert list(meta.theta) == list(theta)


def test_worker_adopting_a_decoded_theta_keeps_the_wire_order() -> None:
    signer = Signer.generate()
    core = WorkerCore(SETTINGS, signer)
    agg = MetaAggregator(SETTINGS, signer)
    n = agg.n_params
    (theta_msg,) = to_records(
        SETTINGS, agg.on_delta(signer.seal(deltas_of(torch.full((1, n), 0.01), [1.0], "worker:w")))
    )
    decoded, _ = decode_model(Verifier([signer.public_key]).open(theta_msg.value))
    assert core.on_meta(theta_msg.value)
    assert list(core.fleet.theta) == list(init_params(SETTINGS.learner_config()))
    assert set(decoded) == set(core.fleet.theta)


def test_metrics_show_refusals_by_reason_and_refused_theta() -> None:
    # Prepare
    from prometheus_client.parser import text_string_to_metric_families

    from pipeline.metrics import MetricsReading, render

    signer = Signer.generate()
    agg = MetaAggregator(SETTINGS, signer)
    agg.on_delta(deltas_of(torch.full((1, agg.n_params), 1e4), [1e30], "edge:attacker"))
    reading = MetricsReading(
        "w1",
        "app",
        stats={"theta_refused": 2, **{k: v for k, v in agg.counts.items() if k != "theta_refused"}},
        contributions_rejected=dict(agg.gate.refused),
    )
    # Execute
    samples = [s for f in text_string_to_metric_families(render(reading).decode()) for s in f.samples]
    # Assert
    rejected = {
        s.labels["reason"]: s.value
        for s in samples
        if s.name == "metastream_meta_contributions_rejected_total"
    }
    assert rejected == {r: (1.0 if r == "unsigned" else 0.0) for r in rejected} and len(rejected) == 6
    assert next(s.value for s in samples if s.name == "metastream_theta_refused_total") == 2
