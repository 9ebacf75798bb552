"""The paired comparison's statistics (learners.evaluation.compare): interval, verdict, sign and checks."""

from __future__ import annotations

import numpy as np
import pytest

from learners.evaluation.compare import bootstrap_interval, compare, verdict


def test_interval_of_one_seed_has_the_width_of_the_mean_s_standard_error() -> None:
    # Prepare: 1 seed, 400 episodes of N(0.3, 1): the mean's s.e. is 0.05
    diffs = np.random.default_rng(3).normal(0.3, 1.0, size=(1, 400))
    sem = diffs.std(ddof=1) / np.sqrt(diffs.size)
    # Execute
    low, high = bootstrap_interval(diffs, seed=0)
    # Assert: half-width ≈ 1.96 s.e. (within 10%), centred on the mean (within 0.1 s.e.)
    assert (high - low) / 2 == pytest.approx(1.96 * sem, rel=0.10)
    assert (low + high) / 2 == pytest.approx(diffs.mean(), abs=0.1 * sem)


def test_interval_is_seeded_and_reproducible() -> None:
    # Prepare
    diffs = np.random.default_rng(1).normal(size=(5, 20))
    # Execute
    a, b, c = (bootstrap_interval(diffs, seed=s) for s in (0, 0, 1))
    # Assert
    assert a == b and a != c


def test_seed_to_seed_spread_widens_the_interval() -> None:
    # Prepare: the same episodes; in the second matrix the seeds disagree by ±0.5 on every episode
    episodes = np.random.default_rng(2).normal(0.0, 0.1, size=50)
    same = np.tile(episodes, (4, 1))
    spread = same + np.array([[-0.5], [0.5], [-0.5], [0.5]])
    # Execute
    narrow, wide = bootstrap_interval(same), bootstrap_interval(spread)
    # Assert: the episode-only interval is about ±0.028; the seeds add about ±0.5 (4 seeds)
    assert narrow[1] - narrow[0] < 0.08
    assert wide[1] - wide[0] > 0.6


def test_bad_input_is_refused() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval(np.zeros(5))
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(np.zeros((1, 5)), level=1.0)


def test_verdict_needs_the_whole_interval_on_one_side_of_zero() -> None:
    # Execute / Assert
    assert [verdict(lo, hi) for lo, hi in ((-2, -1e-9), (-1, 0.0), (0.0, 1), (1e-9, 2))] == [
        "ahead",
        "tie",
        "tie",
        "behind",
    ]


def test_compare_is_reference_minus_baseline_per_k() -> None:
    # Prepare: 3 seeds × 30 episodes × 2 ks; the baseline is 0.2 worse at k=5, 0.001 better at k=10
    rng = np.random.default_rng(0)
    ref = [rng.normal(1.0, 0.05, size=(30, 2)) for _ in range(3)]
    base = [e + np.array([0.2, -0.001]) + rng.normal(0.0, 0.05, size=(30, 2)) for e in ref]
    # Execute
    rows = compare({"reptile": ref, "finetune": base}, ks=[5, 10])
    # Assert
    (k5, k10) = rows
    assert (k5["baseline"], k5["k"], k5["verdict"]) == ("finetune", 5, "ahead")
    assert (k5["seeds"], k5["episodes"]) == (3, 30)
    assert k5["mean_diff"] == pytest.approx(-0.2, abs=0.02)
    assert k5["ci_low"] < k5["mean_diff"] < k5["ci_high"] < 0
    assert k10["verdict"] == "tie" and k10["ci_low"] < 0 < k10["ci_high"]
    expected = np.mean([(r - b)[:, 0].mean() for r, b in zip(ref, base, strict=True)])
    assert k5["mean_diff"] == round(float(expected), 6)


def test_compare_refuses_unpaired_scores() -> None:
    # Prepare
    ref = [np.zeros((10, 1))]
    # Execute / Assert
    with pytest.raises(ValueError, match="same seeds and episodes"):
        compare({"reptile": ref, "global": [np.zeros((9, 1))]}, ks=[5])
    with pytest.raises(ValueError, match="same seeds and episodes"):
        compare({"reptile": ref, "global": [np.zeros((10, 1))] * 2}, ks=[5])
    with pytest.raises(ValueError, match="reference"):
        compare({"global": ref}, ks=[5])
