"""Device swaps: a device's stream continues with another's readings; recovery is measured per strategy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from learners.evaluation.device_swap import Swap, apply_swaps, plan_swaps, recovery, swap_recoveries
from pipeline.tools.evaluate import main as evaluate


def test_swapped_device_continues_with_the_donors_readings() -> None:
    # Prepare: a has 6 readings, b has 4, interleaved; a swaps to b at its reading 2
    ids = ["a", "b", "a", "b", "a", "b", "a", "b", "a", "a"]
    y = np.arange(10.0)
    x = np.arange(10.0)[:, None] * 10
    # Execute
    t = apply_swaps(ids, x, y, [Swap("a", "b", 2)])
    # Assert: a's readings 2, 3 are b's readings 2, 3; a's 4, 5 are dropped (b has none left); b unchanged
    assert t.keep.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert t.y[t.keep].tolist() == [0.0, 1.0, 2.0, 3.0, 5.0, 5.0, 7.0, 7.0]
    assert t.x[t.keep, 0].tolist() == [0.0, 10.0, 20.0, 30.0, 50.0, 50.0, 70.0, 70.0]
    assert y.tolist() == list(range(10))  # the input is not modified


def test_recovery_counts_readings_until_the_error_is_back() -> None:
    # Prepare: error 1 before the swap, 4 for 25 readings, then 1 again
    errors = np.r_[np.ones(60), np.full(25, 4.0), np.ones(40)]
    # Execute
    fast = recovery(errors, 60, window=10, baseline=50, tolerance=1.5)
    never = recovery(errors[:80], 60, window=10, baseline=50, tolerance=1.5)
    # Assert: the mean of the last 10 is <= 1.5 once at most 1 of them is 4 (after 34 readings)
    assert fast == (34, True)
    assert never == (20, False)


def test_plans_are_seeded_and_keep_margins() -> None:
    # Prepare
    ids = [f"d{i}" for i in range(6)] * 300
    # Execute
    a = plan_swaps(ids, [f"d{i}" for i in range(6)], 3, seed=4)
    b = plan_swaps(ids, [f"d{i}" for i in range(6)], 3, seed=4)
    # Assert
    assert a == b and len({s.device for s in a}) == 3
    assert all(s.device != s.donor and 70 <= s.at <= 230 for s in a)
    with pytest.raises(ValueError, match="cannot swap 2 devices"):
        plan_swaps(ids[:600], ["d0", "d1"], 2)


def test_swap_recoveries_follow_each_swapped_device() -> None:
    # Prepare: a's error jumps at its reading 60; c never swaps
    ids = ["a", "c"] * 120
    errors = np.ones(240)
    errors[120:140:2] = 9.0  # a's readings 60..69
    # Execute
    out = swap_recoveries(ids, errors, [Swap("a", "c", 60)])
    # Assert: after a's 10 bad readings, 10 good ones bring the mean of the last 10 back to 1
    assert out == [(20, True)]


def test_evaluate_reports_swap_recovery_per_strategy(
    fleet_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    args = [str(fleet_csv), "--device-col", "device", "--target-col", "target", "--time-col", "time"]
    args += ["--ks", "5", "--horizon", "20", "--held-out", "0.25", "--swaps", "2", "--json"]
    code = evaluate([*args, "--strategy", "reptile", "--strategy", "finetune"])
    # Assert
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert code == 0 and [r["strategy"] for r in rows] == ["reptile", "finetune"]
    for r in rows:
        assert r["swaps"] == 2 and 0 <= r["swap_recovered"] <= 2
        assert r["swap_recovery_median"] >= 1
