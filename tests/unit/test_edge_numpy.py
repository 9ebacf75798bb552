"""The device's numpy model agrees with the worker's torch core: predictions, online steps, adaptation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learners import LearnerConfig
from learners.federated import FederatedDevice
from learners.fleet import FleetLearner
from learners.nets import FunctionalNet, init_params
from metastream_edge import mlp
from metastream_edge.learner import EdgeConfig, OnDeviceLearner
from metastream_edge.model import EdgeModel

TOL = 1e-5


def numpy_params(params: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in params.items()}


def edge_config(cfg: LearnerConfig) -> EdgeConfig:
    return EdgeConfig(
        n_features=cfg.n_features,
        task=cfg.task,
        n_classes=cfg.n_classes,
        hidden=cfg.hidden,
        online_lr=cfg.online_lr,
        inner_lr=cfg.inner_lr,
        inner_steps=cfg.inner_steps,
        buffer_size=cfg.buffer_size,
        adapt_after=cfg.adapt_after,
    )


def seeded_task(task: str, n: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)) * 3 + 1
    score = x @ rng.normal(size=n_features)
    if task == "regression":
        return x, 4 * score + 10 + rng.normal(size=n)
    return x, np.digitize(score, np.quantile(score, [1 / 3, 2 / 3])).astype(np.float64)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_exported_model_predicts_like_the_torch_forward_pass(task: str) -> None:
    # Prepare: a fleet that learnt from a seeded stream, and its exported model
    cfg = LearnerConfig(n_features=3, task=task, n_classes=3)  # type: ignore[arg-type]
    fleet = FleetLearner(cfg)
    x, y = seeded_task(task, 200, 3, seed=1)
    for i in range(0, 200, 20):
        fleet.learn_predict(["d"] * 20, x[i : i + 20], y[i : i + 20])
    model = EdgeModel.from_payload(fleet.export("d", 1))
    xq = seeded_task(task, 50, 3, seed=2)[0]
    # Execute
    numpy_pred = model.predict(xq)
    xs = torch.as_tensor(fleet.scaler.x.transform(xq), dtype=torch.float32)
    with torch.no_grad():
        out = fleet.net.forward(fleet.device_params("d"), xs)
    # Assert
    raw = numpy_params({"out": out})["out"]
    assert np.abs(mlp.forward(model.params, xs.numpy()) - raw).max() < TOL
    torch_pred = fleet.scaler.inverse_y(fleet.net.predict(out).double().numpy())
    if task == "regression":
        np.testing.assert_allclose(numpy_pred, torch_pred, atol=TOL * float(fleet.scaler.y.std[0]))
    else:
        assert numpy_pred.tolist() == torch_pred.tolist()


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_online_steps_match_the_cores_per_reading_steps(task: str) -> None:
    # Prepare: the same θ and the same standardised readings for one device on both sides
    cfg = LearnerConfig(n_features=4, task=task, n_classes=3, online_lr=0.1)  # type: ignore[arg-type]
    net = FunctionalNet(cfg)
    x, y = seeded_task(task, 240, 4, seed=3)
    xs = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    ys = (((y - y.mean()) / y.std()) if task == "regression" else y).astype(np.float32)
    torch_params = {k: v.unsqueeze(0) for k, v in init_params(cfg).items()}
    numpy_weights = numpy_params(init_params(cfg))
    # Execute: the core's step (one device, one reading per step, as FleetLearner takes them)
    worst_pred = 0.0
    for i in range(240):
        xi, yi = torch.from_numpy(xs[i : i + 1][None]), torch.from_numpy(ys[i : i + 1][None])
        step, out = net.online_step(torch_params, xi, yi, torch.ones(1, 1))
        torch_params = {k: v - cfg.online_lr * step[k] for k, v in torch_params.items()}
        numpy_weights, numpy_out = mlp.online_step(task, numpy_weights, xs[i : i + 1], ys[i : i + 1], 0.1)
        worst_pred = max(worst_pred, float(np.abs(numpy_out - out[0].numpy()).max()))
    # Assert: 240 steps later the weights still agree, and so did every output before its step
    expected = {k: v[0].numpy() for k, v in torch_params.items()}
    assert max(float(np.abs(numpy_weights[k] - expected[k]).max()) for k in expected) < TOL
    assert worst_pred < TOL


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_k_step_adaptation_matches_the_cores(task: str) -> None:
    # Prepare: θ, 32 seeded readings of which the last 6 are padding (mask 0)
    cfg = LearnerConfig(n_features=3, task=task, n_classes=3, inner_steps=5, inner_lr=0.3)  # type: ignore[arg-type]
    theta = init_params(cfg, seed=7)
    x, y = seeded_task(task, 32, 3, seed=4)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std() if task == "regression" else y
    mask = np.ones(32, np.float32)
    mask[26:] = 0
    xt, yt, mt = (torch.as_tensor(a, dtype=torch.float32)[None] for a in (x, y, mask))
    # Execute
    phi_torch = FunctionalNet(cfg).adapt(theta, xt, yt, mt)
    phi_numpy = mlp.adapt(task, numpy_params(theta), x, y, mask, steps=5, lr=0.3)
    # Assert
    expected = {k: v[0].numpy() for k, v in phi_torch.items()}
    assert max(float(np.abs(phi_numpy[k] - expected[k]).max()) for k in expected) < TOL
    moved = max(float(np.abs(expected[k] - theta[k].numpy()).max()) for k in expected)
    assert moved > 100 * TOL  # the adaptation did move the weights


def test_regression_gradient_matches_the_hand_written_backward() -> None:
    # Prepare
    cfg = LearnerConfig(n_features=5, hidden=(16, 8))
    theta = init_params(cfg, seed=2)
    x, y = seeded_task("regression", 12, 5, seed=5)
    mask = np.r_[np.ones(9), np.zeros(3)].astype(np.float32)
    net = FunctionalNet(cfg)
    xt, yt, mt = (torch.as_tensor(a, dtype=torch.float32)[None] for a in (x / 3, y / 10, mask))
    stacked = {k: v[None] for k, v in theta.items()}
    # Execute
    grad_torch, _ = net._gradient_of(xt, yt, mt)(stacked)
    grad_numpy, _ = mlp.gradient("regression", numpy_params(theta), x / 3, y / 10, mask)
    # Assert
    for k, v in grad_torch.items():
        np.testing.assert_allclose(grad_numpy[k], v[0].numpy(), atol=TOL, rtol=0)


def test_federated_contribution_matches_the_torch_device() -> None:
    # Prepare: the same local readings on the torch device and the numpy device
    cfg = LearnerConfig(n_features=2, adapt_after=8, buffer_size=16)
    theta = init_params(cfg, seed=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 2)) * 2 + 5
    y = 3 * x[:, 0] - x[:, 1]
    torch_device = FederatedDevice(cfg)
    numpy_device = OnDeviceLearner(edge_config(cfg), numpy_params(theta))
    torch_device.observe(x, y)
    numpy_device.observe(x, y)
    # Execute
    torch_update = torch_device.update(theta)
    numpy_update = numpy_device.contribution()
    # Assert: same φ − θ in the same (worker's) parameter order, same reading count
    assert torch_update is not None and numpy_update is not None
    assert numpy_update[1] == torch_update[1] == 20
    np.testing.assert_allclose(numpy_update[0], torch_update[0].numpy(), atol=TOL, rtol=0)
    assert numpy_device.contribution() is None  # nothing new since
    np.testing.assert_allclose(numpy_device.predict(x[:3]), torch_device.predict(x[:3]), atol=1e-4)


def test_a_decoded_theta_flattens_in_the_meta_agents_order() -> None:
    # Prepare: θ as the meta agent publishes it
    from learners.nets import flatten
    from wire.models import ModelHeader, decode_model, encode_model

    cfg = LearnerConfig(n_features=2)
    theta = init_params(cfg, seed=1)
    payload = encode_model(theta, ModelHeader("__meta__", 1, 0, "regression", 2, 1, cfg.hidden))
    # Execute: a device's φ − θ is flattened from the decoded θ
    decoded, _ = decode_model(payload)
    # Assert: same vector as the agent's own θ (safetensors sorts names; the order must not follow)
    assert list(decoded) == list(theta)
    assert torch.equal(flatten(decoded), flatten(theta))
