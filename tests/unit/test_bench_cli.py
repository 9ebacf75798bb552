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
