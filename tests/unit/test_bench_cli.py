"""``metastream bench`` (core part) through the real command-line entry point, on a tiny fleet."""

from __future__ import annotations

import json

import pytest

from pipeline.tools.cli import main


def test_bench_reports_every_row_as_medians_of_its_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = main(
        [
            "bench",
            "--devices",
            "20",
            "--readings",
            "2000",
            "--loop-readings",
            "100",
            "--repeat",
            "2",
            "--scale-devices",
            "0",
            "--meta-deltas",
            "0",
            "--json",
        ]
    )
    # Assert
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [r["bench"] for r in rows] == [
        "one-sample-at-a-time torch loop",
        "vectorised: online SGD + drift + adaptation",
        "vectorised: the same + meta-update every 500 readings",
        "vectorised: online SGD only (the loop's work)",
        "river StandardScaler|LinearRegression per device",
    ]
    assert rows[0]["x_vs_torch_loop"] == 1.0 and rows[0]["x_vs_torch_loop_range"] == [1.0, 1.0]
    for r in rows:
        low, high = r["x_vs_torch_loop_range"]
        assert r["repeats"] == 2 and r["readings_per_s"] > 0
        assert low <= r["x_vs_torch_loop"] <= high


def test_bench_scale_rows_give_rate_and_memory_per_fleet_size(capsys: pytest.CaptureFixture[str]) -> None:
    # Execute: the fleet-size rows (each in its own process) and the meta aggregator's, core rows tiny
    code = main(
        [
            "bench",
            "--devices",
            "20",
            "--readings",
            "1000",
            "--loop-readings",
            "50",
            "--repeat",
            "1",
            "--scale-devices",
            "300,600",
            "--meta-deltas",
            "4",
            "--json",
        ]
    )
    # Assert: after the core rows, one row per fleet size, then the aggregator with and without its θ check
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()][5:]
    assert code == 0
    assert [r["bench"] for r in rows] == [
        "vectorised full work, 300 devices",
        "vectorised full work, 600 devices",
        "meta aggregator: one-device contributions, θ checked on held-back readings",
        "meta aggregator: one-device contributions, finiteness check only",
    ]
    assert [(r["devices"], r["readings"]) for r in rows[:2]] == [(300, 1200), (600, 2400)]
    assert all(
        r["readings_per_s"] > 0 and r["peak_rss_mb"] >= r["rss_before_learner_mb"] > 0 for r in rows[:2]
    )
    assert [(r["deltas"], r["versions"], r["refused"]) for r in rows[2:]] == [(4, 4, 0), (4, 4, 0)]
    assert all(r["deltas_per_s"] > 0 for r in rows[2:])
