"""``metastream evaluate`` end to end on a small generated CSV (and on the detectors)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pipeline.tools.evaluate import add_cli, main

KEYS = {
    "dataset",
    "split",
    "strategy",
    "n",
    "devices",
    "mae",
    "rmse",
    "drifts",
    "recovery_median",
    "recovery_measured",
    "kshot_metric",
    "kshot",
    "kshot_sem",
    "kshot_episodes",
    "kshot_devices",
    "kshot_online",
    "seconds",
}


def csv_args(path: Path, *more: str) -> list[str]:
    return [
        str(path),
        "--device-col",
        "device",
        "--target-col",
        "target",
        "--time-col",
        "time",
        "--ks",
        "5,10",
        "--horizon",
        "20",
        "--held-out",
        "0.25",
        "--meta-every",
        "200",
        *more,
    ]


def test_json_prints_one_object_per_strategy(fleet_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = main(
        csv_args(fleet_csv, "--strategy", "reptile", "--strategy", "global", "--strategy", "river", "--json")
    )
    # Assert
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert code == 0
    assert [r["strategy"] for r in rows] == ["reptile", "global", "river-linear"]
    for r in rows:
        assert set(r) >= KEYS
        assert r["devices"] == 6 and r["kshot_devices"] == 2
        assert set(r["kshot"]) == {"5", "10"} and all(v > 0 for v in r["kshot"].values())


def test_report_writes_page_figures_and_numbers(
    fleet_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    out = tmp_path / "report"
    strategies = ["--strategy", "reptile", "--strategy", "global", "--override", "global:online-lr=0.01"]
    code = main(csv_args(fleet_csv, *strategies, "--report", str(out)))
    # Assert
    assert code == 0
    assert "k5" in capsys.readouterr().out  # the text table
    assert {p.name for p in out.iterdir()} == {
        "index.html",
        "results.json",
        "rolling.png",
        "kshot.png",
        "recovery.png",
    }
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "reptile" in page
    results = json.loads((out / "results.json").read_text())
    assert [r["strategy"] for r in results["strategies"]] == ["reptile", "global"]
    assert results["split"] == "test" and len(results["held_out_devices"]) == 2
    assert results["overrides"] == {"global": {"online_lr": 0.01}}
    global_row = results["strategies"][1]
    assert global_row["overrides"] == {"online_lr": 0.01} and "kshot_minus_reptile" in global_row
    assert "paired over the same episodes" in page
    for png in ("rolling.png", "kshot.png", "recovery.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validation_split_never_holds_out_test_devices(fleet_csv: Path, tmp_path: Path) -> None:
    # Execute
    test_out, val_out = tmp_path / "test", tmp_path / "val"
    main(csv_args(fleet_csv, "--strategy", "global", "--report", str(test_out), "--json"))
    main(csv_args(fleet_csv, "--strategy", "global", "--report", str(val_out), "--json", "--validation"))
    # Assert: the validation run has neither the test devices nor their readings
    test = json.loads((test_out / "results.json").read_text())
    val = json.loads((val_out / "results.json").read_text())
    assert val["split"] == "validation" and val["devices"] == 6
    assert not set(val["held_out_devices"]) & set(test["held_out_devices"])


def test_detectors_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Execute
    code = main(["detectors", "--streams", "2", "--json", "--report", str(tmp_path)])
    # Assert
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert code == 0 and len(rows) == 3 * 2 * 2  # detector × mode × kind
    assert {"detector", "mode", "kind", "mean_delay", "false_alarms_per_1000", "missed"} <= set(rows[0])
    assert (tmp_path / "detectors.png").exists() and "Drift detectors" in (
        tmp_path / "index.html"
    ).read_text()


def test_missing_data_is_an_error_with_the_fetch_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    monkeypatch.setenv("METASTREAM_CACHE", str(tmp_path))
    # Execute
    code = main(["air"])
    # Assert
    assert code == 2 and "scripts/fetch_datasets.sh" in capsys.readouterr().err


def test_add_cli_registers_evaluate() -> None:
    # Prepare
    parser = argparse.ArgumentParser()
    # Execute
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "air", "--strategy", "reptile", "--inner-lr", "0.05", "--json"])
    # Assert
    assert (args.dataset, args.strategy, args.inner_lr, args.held_out, args.json) == (
        "air",
        ["reptile"],
        0.05,
        0.2,
        True,
    )


def test_seeds_score_the_same_episodes_and_compare_reptile(
    fleet_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    out = tmp_path / "report"
    strategies = ["--strategy", "reptile", "--strategy", "global"]
    code = main(csv_args(fleet_csv, *strategies, "--seeds", "0,1", "--json", "--report", str(out)))
    # Assert: 2 seeds × 2 strategies, then the comparison: 1 baseline × 2 ks
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert code == 0
    assert [(r["seed"], r["strategy"]) for r in lines[:4]] == [
        (0, "reptile"),
        (0, "global"),
        (1, "reptile"),
        (1, "global"),
    ]
    assert lines[0]["kshot"] != lines[2]["kshot"]  # the learner seed matters …
    assert lines[0]["kshot_episodes"] == lines[2]["kshot_episodes"]  # … the episodes do not change
    (comparison,) = (line["comparison"] for line in lines[4:] if "comparison" in line)
    (prequential,) = (p["prequential_comparison"] for p in lines[4:] if "prequential_comparison" in p)
    assert [(c["baseline"], c["k"], c["seeds"]) for c in prequential] == [("global", 0, 2)]
    assert prequential[0]["episodes"] == lines[0]["devices"]  # paired over the training devices
    assert [(c["baseline"], c["k"], c["seeds"]) for c in comparison] == [("global", 5, 2), ("global", 10, 2)]
    for c in comparison:
        assert c["ci_low"] <= c["mean_diff"] <= c["ci_high"]
        assert c["verdict"] in ("ahead", "tie", "behind")
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["split_seed"] == 0 and results["comparison"] == comparison
    assert [[r["seed"] for r in rows] for rows in results["per_seed"]] == [[0, 0], [1, 1]]
    assert "minus each baseline over seeds 0, 1" in (out / "index.html").read_text()
