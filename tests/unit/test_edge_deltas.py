"""A federated device's deltas: the worker's format, sealed with the device's key when it has one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from connectors.contributions import DeviceKeys
from connectors.settings import Settings
from connectors.signing import SignatureError, Signer, Verifier
from learners.nets import flatten, init_params
from metastream_edge.federated import contribution_payload
from metastream_edge.learner import EdgeConfig, OnDeviceLearner
from pipeline.worker_core import MetaAggregator
from wire.models import decode_deltas


def device_with_readings() -> OnDeviceLearner:
    settings = Settings(n_features=2)
    theta = {k: v.numpy() for k, v in init_params(settings.learner_config()).items()}
    device = OnDeviceLearner(EdgeConfig(n_features=2), theta)
    device.theta_version = 0
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 2))
    device.observe(x, 2 * x[:, 0] + 1)
    return device


def test_sealed_deltas_open_with_the_device_key_only() -> None:
    # Prepare
    key = Signer.generate()
    # Execute
    sealed = contribution_payload("dev-1", device_with_readings(), key)
    # Assert: the device's key opens it into the worker's deltas format; another key does not
    assert sealed is not None
    deltas, weights, header = decode_deltas(Verifier([key.public_key]).open(sealed))
    assert (tuple(deltas.shape), weights.tolist(), header.source) == ((1, 129), [40.0], "edge:dev-1")
    with pytest.raises(SignatureError, match="unknown key"):
        Verifier([Signer.generate().public_key]).open(sealed)


def test_the_meta_agent_moves_theta_by_the_devices_delta(tmp_path: Path) -> None:
    # Prepare: the agent's θ is the device's θ (v0); the device's key is on the agent's allow-list
    settings = Settings(n_features=2)
    key = Signer.generate()
    (tmp_path / "allowed").mkdir()
    key.save(tmp_path / "dev-1.key.pem", tmp_path / "allowed" / "dev-1.pem")
    agent = MetaAggregator(settings, Signer.generate(), device_keys=DeviceKeys(tmp_path / "allowed"))
    before = flatten(agent.meta.theta).clone()
    payload = contribution_payload("dev-1", device_with_readings(), key)
    assert payload is not None
    deltas, _, _ = decode_deltas(Verifier([key.public_key]).open(payload))
    # Execute
    agent.on_delta(payload)
    # Assert: θ moved by ε · (φ − θ), parameter for parameter (same order on both sides)
    expected = before + settings.learner_config().meta_lr * deltas[0]
    assert agent.version == 1
    assert torch.allclose(flatten(agent.meta.theta), expected, atol=1e-6)
