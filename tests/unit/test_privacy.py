"""Differential privacy: the noise (metastream_edge.dp) and the account (pipeline.privacy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from connectors.settings import Settings
from connectors.signing import Signer
from metastream_edge.dp import capped_weights, central_privatise, clip_to_norm, local_privatise
from pipeline.metrics import MetricsReading, render
from pipeline.privacy import (
    PrivacyLedger,
    PrivacyPolicy,
    gate_from_settings,
    gaussian_epsilon,
    noise_for_epsilon,
)
from pipeline.worker_core import MetaAggregator
from wire.events import PrivacyBudgetExhausted, encode_event


def test_epsilon_of_a_gaussian_matches_the_library_reference() -> None:
    # Prepare: dp_accounting's own test (rdp_privacy_accountant_test.test_compute_epsilon_delta_gaussian):
    # noise multiplier 4.530877117 gives exactly (1, 1e-6)-DP over a fine grid of orders.
    orders = [0.001 * i for i in range(1000, 100000)]

    # Execute
    eps = gaussian_epsilon(4.530877117, 1, 1e-6, orders=orders)

    # Assert
    assert eps == pytest.approx(1.0, abs=1e-6)


def test_k_contributions_cost_what_one_with_sqrt_k_less_noise_costs() -> None:
    # Gaussian RDP is α/(2z²): k compositions at z equal one mechanism at z/√k.
    for z, k in [(2.0, 4), (5.0, 25), (1.3, 9)]:
        one = gaussian_epsilon(z / math.sqrt(k), 1, 1e-5)
        assert gaussian_epsilon(z, k, 1e-5) == pytest.approx(one, rel=1e-9)


def test_noise_for_epsilon_spends_the_target_exactly() -> None:
    for eps in (1.0, 4.0, 8.0):
        z = noise_for_epsilon(eps, 20, 1e-5)
        assert gaussian_epsilon(z, 20, 1e-5) == pytest.approx(eps, abs=1e-4)


def test_a_device_over_budget_stops_contributing_and_one_event_says_so() -> None:
    # Prepare: a budget of ε = 2 at δ = 1e-5 with z = 3 (ε after 1, 2, 3 contributions: 1.386, 2.029, ...).
    ledger = PrivacyLedger(PrivacyPolicy(noise_multiplier=3.0, delta=1e-5, epsilon_budget=2.0))

    # Execute: dev-a tries five times, dev-b once.
    a = [ledger.admit("dev-a") for _ in range(5)]
    b = ledger.admit("dev-b")
    events = ledger.drain_events()

    # Assert: dev-a made one contribution; its second would cost 2.029 > 2.
    assert a == [True, False, False, False, False] and b is True
    assert ledger.contributions("dev-a") == 1 and ledger.exhausted("dev-a") and not ledger.exhausted("dev-b")
    assert len(events) == 1
    event = events[0]
    assert event == PrivacyBudgetExhausted("dev-a", 1, pytest.approx(1.386, abs=1e-3), 2.0, 1e-5)  # type: ignore[arg-type]
    assert json.loads(encode_event(event))["type"] == "privacy_budget_exhausted"
    assert ledger.theta_epsilon() == ledger.device_epsilon("dev-a") <= 2.0
    assert ledger.drain_events() == []


def test_an_unbounded_budget_accounts_without_refusing() -> None:
    ledger = PrivacyLedger(PrivacyPolicy(noise_multiplier=3.0))
    assert all(ledger.admit("d") for _ in range(50))
    assert ledger.device_epsilon("d") == pytest.approx(gaussian_epsilon(3.0, 50, 1e-5))


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="noise_multiplier must be > 0"):
        PrivacyPolicy(noise_multiplier=0.0)
    with pytest.raises(ValueError, match="delta must lie in"):
        PrivacyPolicy(noise_multiplier=1.0, delta=1.0)


def test_local_noise_has_the_stated_deviation_around_the_clipped_update() -> None:
    # Prepare: an update of norm 10 clipped to 1; z = 0.5 → σ = z · 2 · clip = 1.
    rng = np.random.default_rng(7)
    update = np.full(10_000, 0.1)

    # Execute
    out = local_privatise(update, clip=1.0, noise_multiplier=0.5, rng=rng)

    # Assert: the noise is what remains after the clipped update (0.01 each); its std is 1
    # within 3% (the std of a sample std of 10,000 normals is 0.7%).
    noise = out - clip_to_norm(update, 1.0)
    assert np.linalg.norm(clip_to_norm(update, 1.0)) == pytest.approx(1.0, abs=1e-12)
    assert np.std(noise) == pytest.approx(1.0, rel=0.03)
    assert abs(np.mean(noise)) < 0.03


def test_central_noise_goes_on_the_clipped_weighted_sum() -> None:
    # Prepare: three updates, one far beyond the clip; weights capped from sample counts.
    updates = np.array([[3.0, 4.0], [0.3, 0.4], [-0.6, 0.0]])
    weights = capped_weights(np.array([200, 50, 100]), weight_cap=100.0)

    # Execute: without noise, and with z = 2 on a seeded stream.
    exact, total = central_privatise(updates, weights, 1.0, 0.0, np.random.default_rng(0))
    noisy, _ = central_privatise(updates, weights, 1.0, 2.0, np.random.default_rng(0))

    # Assert
    np.testing.assert_allclose(exact, [0.6 + 0.15 - 0.6, 0.8 + 0.2], atol=1e-12)
    assert total == 2.5
    np.testing.assert_allclose(noisy - exact, np.random.default_rng(0).normal(0.0, 2.0, 2), atol=1e-12)
    with pytest.raises(ValueError, match=r"weights must lie in \[0, 1\]"):
        central_privatise(updates, np.array([1.0, 2.0, 1.0]), 1.0, 1.0, np.random.default_rng(0))


def test_noise_on_a_secure_sum_matches_central_noise_on_the_same_updates() -> None:
    # Prepare: devices clip and cap before masking; the aggregator sees only the sum.
    from metastream_edge.dp import noise_on_sum

    updates = np.array([[3.0, 4.0], [0.3, 0.4]])
    weights = np.array([1.0, 0.5])
    clipped_sum = (weights[:, None] * np.stack([clip_to_norm(u, 1.0) for u in updates])).sum(axis=0)

    # Execute
    on_sum = noise_on_sum(clipped_sum, 1.0, 1.5, np.random.default_rng(3))
    central, _ = central_privatise(updates, weights, 1.0, 1.5, np.random.default_rng(3))

    # Assert: the same release either way.
    np.testing.assert_allclose(on_sum, central, rtol=0, atol=1e-12)


def test_a_budget_setting_gates_the_meta_agent_and_shows_on_metrics() -> None:
    # Prepare: a budget of one contribution per device (z = 3, ε after one ≈ 1.386 ≤ 1.5)
    settings = Settings(n_features=2, dp_epsilon_budget=1.5, dp_noise_multiplier=3.0)
    aggregator = MetaAggregator(settings, Signer.generate(), privacy=gate_from_settings(settings))
    assert aggregator.privacy is not None
    # Execute
    first = aggregator.privacy.screen("edge:dev-1")
    second = aggregator.privacy.screen("edge:dev-1")
    stats = aggregator.privacy_stats()
    spent = aggregator.device_epsilons()
    text = render(MetricsReading("w", "app", stats=stats, device_epsilon=spent)).decode()
    # Assert
    assert first == (True, []) and second[0] is False
    assert stats == {
        "privacy_theta_epsilon": pytest.approx(1.386, abs=1e-3),
        "privacy_devices_exhausted": 1.0,
    }
    assert "metastream_privacy_devices_exhausted 1.0" in text
    assert spent == {"dev-1": pytest.approx(1.386, abs=1e-3)}
    assert 'metastream_privacy_device_epsilon{device="dev-1"} 1.38' in text
    assert MetaAggregator(Settings(n_features=2), Signer.generate()).privacy_stats() == {}
    with pytest.raises(ValueError, match="dp_epsilon_budget needs dp_noise_multiplier"):
        Settings(dp_epsilon_budget=1.0)
