"""Poisoned federated updates: robust aggregation bounds what a few attackers can do to θ."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipeline.tools.cli import main
from pipeline.tools.csv_source import ReadingsTable
from pipeline.tools.poison import Fleet, PoisonSetup, run_poison

SMALL = PoisonSetup(honest=8, attackers=2, held_out=8, rounds=10, trim=0.2, seed=0)


@pytest.fixture(scope="module")
def result() -> dict[str, dict[str, float]]:
    out = run_poison(SMALL, aggregators=("mean", "trim"), attacks=("none", "sign_flip", "scaled"))
    return dict(out["error"]) | {"untrained": {"none": out["untrained"]}}


def test_federated_training_improves_theta_without_attack(result: dict[str, dict[str, float]]) -> None:
    assert result["mean"]["none"] < 0.8 * result["untrained"]["none"]


def test_plain_mean_is_ruined_by_two_attackers(result: dict[str, dict[str, float]]) -> None:
    clean = result["mean"]["none"]
    assert result["mean"]["sign_flip"] > 100 * clean
    assert result["mean"]["scaled"] > 100 * clean


def test_trimmed_mean_stays_within_ten_percent_of_no_attack(result: dict[str, dict[str, float]]) -> None:
    clean = result["mean"]["none"]
    assert result["trim"]["sign_flip"] <= 1.1 * clean
    assert result["trim"]["scaled"] <= 1.1 * clean
    assert result["trim"]["none"] <= 1.05 * clean  # trimming honest updates costs little


@pytest.fixture(scope="module")
def forged() -> dict[str, dict[str, float]]:
    out = run_poison(SMALL, aggregators=("mean", "adaptive", "adaptive+trim"), attacks=("none", "forged"))
    return dict(out["error"])


def test_issue_12_forgery_ruins_the_plain_mean_but_the_default_bounds_hold(
    forged: dict[str, dict[str, float]],
) -> None:
    clean = forged["mean"]["none"]
    assert forged["mean"]["forged"] > 1e6 * clean
    assert forged["adaptive"]["forged"] < 25 * clean  # bounded: two attackers of ten still hurt
    assert forged["adaptive+trim"]["forged"] <= 1.15 * clean
    assert forged["adaptive"]["none"] <= 1.01 * clean  # the default bounds cost honest devices nothing here


def test_secure_aggregation_refuses_a_round_with_an_inflated_claim_and_keeps_theta() -> None:
    # Prepare / Execute
    out = run_poison(SMALL, aggregators=("mean", "secagg", "capped"), attacks=("none", "inflated"))
    error = out["error"]
    # Assert: the sum shows the inflated total weight, so θ never moves; capping needs no refusal
    assert error["secagg"]["inflated"] == out["untrained"]
    assert error["secagg"]["none"] <= 1.01 * error["mean"]["none"]  # honest devices' own clip costs little
    assert error["capped"]["inflated"] <= 1.01 * error["capped"]["none"]


def test_the_experiment_is_seeded() -> None:
    setup = PoisonSetup(honest=3, attackers=1, held_out=2, rounds=2, trim=0.25, query=20)
    first = run_poison(setup, aggregators=("trim",), attacks=("sign_flip",))
    assert run_poison(setup, aggregators=("trim",), attacks=("sign_flip",)) == first


def test_poison_command_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["poison", "--honest", "3", "--attackers", "1", "--held-out", "2", "--rounds", "2", "--trim", "0.25"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "clip+trim" in out and "sign_flip" in out and "untrained θ" in out
    assert "adaptive+trim" in out and "forged" in out


def test_bad_setup_is_refused() -> None:
    with pytest.raises(ValueError, match="honest"):
        PoisonSetup(honest=0)


def test_a_real_table_gives_a_seeded_draw_of_its_long_enough_devices() -> None:
    # Prepare: six devices with 2 features; dev-5 has too few readings for 2 rounds of 16 + a query of 20
    setup = PoisonSetup(honest=3, attackers=0, held_out=1, rounds=2, query=20)
    setup = replace(setup, cfg=replace(setup.cfg, n_features=2))
    rng = np.random.default_rng(0)
    counts = {f"dev-{i}": 40 for i in range(5)} | {"dev-5": 10}
    ids = [d for d, n in counts.items() for _ in range(n)]
    table = ReadingsTable(
        ids, rng.normal(size=(len(ids), 2)), rng.normal(size=len(ids)), "regression", ["a", "b"]
    )
    # Execute
    first, again = Fleet(setup, table), Fleet(setup, table)
    # Assert
    assert len(first.devices) == 4 and "dev-5" not in first.devices
    assert first.devices == again.devices and first.held_out == again.held_out
    assert sorted(first.honest + first.held_out) == first.devices
    with pytest.raises(ValueError, match="6 devices with 36 readings each are needed; 5 have"):
        Fleet(replace(setup, honest=5), table)
    with pytest.raises(ValueError, match="regression data set"):
        Fleet(setup, replace(table, task="classification"))
