"""The soak's verdicts on seeded sample series (no broker, no worker)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tools.soak import Sample, summarise

LIMITS = {"max_growth_pct": 10.0, "max_growth_mb": 64.0, "max_lag_slope": 0.02, "lag_noise_s": 3.0}
MESSAGE_RATE = 50.0  # 5,000 readings/s in messages of 100


def series(rss: np.ndarray, lag: np.ndarray) -> list[Sample]:
    return [Sample(5.0 * i, float(r), int(g), 0) for i, (r, g) in enumerate(zip(rss, lag, strict=True))]


def jitter(n: int, seed: int = 0) -> np.ndarray:
    """Lag as a keeping-up worker shows it: about one commit interval of input, jittering."""
    return np.random.default_rng(seed).integers(20, 80, size=n)


def test_a_steady_worker_passes() -> None:
    rss = 800 + np.random.default_rng(1).normal(0, 1, 60)

    out = summarise(series(rss, jitter(60)), 300, 60, MESSAGE_RATE, LIMITS)

    assert (out["memory_ok"], out["lag_ok"], out["ok"]) == (True, True, True)
    assert abs(out["rss_mb"]["slope_second_half_mb_per_min"]) < 1


def test_a_leak_fails_on_megabytes() -> None:
    # 1 MB per sample: 48 MB after warm-up on 800 MB is 6% (under 10%) but the MB bound is 40 here
    rss = 800 + np.arange(60.0)

    out = summarise(series(rss, jitter(60)), 300, 60, MESSAGE_RATE, {**LIMITS, "max_growth_mb": 40})

    assert out["rss_mb"]["growth_after_warmup"] == 47.0
    assert out["rss_mb"]["slope_second_half_mb_per_min"] == pytest.approx(12.0)
    assert (out["memory_ok"], out["lag_ok"], out["ok"]) == (False, True, False)


def test_a_worker_falling_behind_fails_on_lag() -> None:
    # 5 messages/s more in than out: 10% of the input rate, 750 messages over the second half
    lag = jitter(60) + 5 * 5.0 * np.arange(60)

    out = summarise(series(np.full(60, 800.0), lag), 300, 60, MESSAGE_RATE, LIMITS)

    assert out["lag_messages"]["slope_second_half_per_s"] == pytest.approx(5.0, abs=0.5)
    assert (out["lag_ok"], out["lag_messages"]["bounded"], out["ok"]) == (False, False, False)


def test_commit_jitter_in_a_short_run_is_not_growth() -> None:
    # 15 s run, 3 samples in the second half rising 23 → 42 messages: under 3 s of input (60)
    samples = [Sample(3.0 * i, 800.0, g, 0) for i, g in enumerate([60, 118, 172, 23, 30, 42])]

    out = summarise(samples, 15, 4, 20.0, LIMITS)

    assert out["lag_messages"]["slope_second_half_per_s"] > LIMITS["max_lag_slope"] * 20.0
    assert out["lag_ok"] is True
