"""``metastream replay`` and ``generate`` through the real command-line entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.tools.cli import main
from pipeline.tools.csv_source import load_readings_csv

KEYS = {"strategy", "n", "devices", "drifts", "recovery_median", "samples_per_s"}


@pytest.fixture
def fleet_csv(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.csv"
    assert main(["generate", "--out", str(path), "--devices", "8", "--readings", "1600", "--seed", "1"]) == 0
    return path


def test_replay_json_prints_one_object_per_strategy(
    fleet_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(
        [
            "replay",
            str(fleet_csv),
            "--device-col",
            "device",
            "--target-col",
            "target",
            "--time-col",
            "time",
            "--strategy",
            "reptile",
            "--strategy",
            "global",
            "--json",
        ]
    )
    # Assert
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    rows = [json.loads(line) for line in lines]
    assert [r["strategy"] for r in rows] == ["reptile", "global"]
    for r in rows:
        assert KEYS | {"mae"} <= set(r)
        assert r["n"] == 1600 and r["devices"] == 8


def test_replay_all_runs_every_strategy(fleet_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(
        [
            "replay",
            str(fleet_csv),
            "--device-col",
            "device",
            "--target-col",
            "target",
            "--strategy",
            "all",
            "--json",
        ]
    )
    names = [json.loads(line)["strategy"] for line in capsys.readouterr().out.strip().splitlines()]
    assert names == [
        "reptile",
        "fomaml",
        "scratch",
        "global",
        "finetune",
        "blend",
        "blend-finetune",
        "continuous",
        "auto",
        "clustered",
        "river-linear",
        "river-hat",
    ]


def test_bad_rows_are_reported_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: a missing value, a word, an infinity, an empty device id, and good rows
    path = tmp_path / "bad.csv"
    good = "\n".join(f"d{i % 2},{i},{i * 0.5},{i * 2.5}" for i in range(40))
    path.write_text("device,a,b,y\n" + good + "\nd1,,1,2\nd1,x,1,2\nd1,inf,1,2\n,1,2,3\n")
    # Execute
    code = main(["replay", str(path), "--device-col", "device", "--target-col", "y", "--json"])
    out, err = capsys.readouterr()
    # Assert
    assert code == 0
    assert json.loads(out)["n"] == 40
    assert "skipped 4 bad rows" in err
    for reason in ("missing value", "not a number: 'x'", "not a number: 'inf'", "empty device id"):
        assert reason in err


def test_classification_is_inferred_and_reports_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cls.csv"
    main(["generate", "--out", str(path), "--devices", "4", "--readings", "800", "--task", "classification"])
    capsys.readouterr()
    main(["replay", str(path), "--device-col", "device", "--target-col", "target", "--json"])
    row = json.loads(capsys.readouterr().out)
    assert "accuracy" in row and 0.0 <= row["accuracy"] <= 1.0


def test_string_labels_are_classes(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("device,a,label\nd1,1,walk\nd1,2,run\nd2,3,walk\n")
    table = load_readings_csv(path, "device", "label")
    assert table.task == "classification" and table.classes == ["run", "walk"]
    assert table.y.tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device-col", "nope", "--target-col", "target"], "--device-col 'nope' is not a column"),
        (
            ["--device-col", "device", "--target-col", "target", "--strategy", "maml"],
            "unknown strategy 'maml'",
        ),
    ],
)
def test_bad_arguments_are_clear_errors(
    fleet_csv: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["replay", str(fleet_csv), *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "/no/such.csv", "--device-col", "d", "--target-col", "y"]) == 2
    assert "No such file" in capsys.readouterr().err
