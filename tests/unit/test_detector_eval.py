"""Drift-detector evaluation: scoring rules and exact numbers on seeded streams."""

from __future__ import annotations

import numpy as np
import pytest

from learners.evaluation.detector_eval import (
    DetectionScore,
    ErrorStream,
    evaluate_detectors,
    make_error_streams,
    monitor_alarms,
    raw_alarms,
    score_alarms,
)


def step_stream(seed: int, at: int = 500, n: int = 1000) -> np.ndarray:
    """A noisy absolute-error stream whose mean triples at ``at``."""
    rng = np.random.default_rng(seed)
    return np.abs(rng.normal(0.0, 1.0, n)) * np.where(np.arange(n) < at, 1.0, 3.0)


def test_clean_step_stream_gives_exact_delay_false_alarms_and_misses() -> None:
    # Prepare
    values = step_stream(seed=0)
    # Execute
    scores = {
        name: score_alarms(raw_alarms(name, values), [(500, 500)], len(values))
        for name in ("adwin", "page_hinkley")
    }
    # Assert: exact for this seed
    assert scores["adwin"].delays == [19] and scores["adwin"].false_alarms == 0
    assert scores["page_hinkley"].delays == [25] and scores["page_hinkley"].false_alarms == 0
    assert all(s.detected == 1 and s.drifts == 1 for s in scores.values())


def test_flat_stream_has_no_drift_to_find_and_counts_false_alarms() -> None:
    # Execute
    score = score_alarms([100, 400, 900], [], 1000)
    # Assert
    assert (score.drifts, score.detected, score.false_alarms) == (0, 0, 3)
    assert score.as_dict()["false_alarms_per_1000"] == 3.0
    assert score.as_dict()["missed_ratio"] is None


def test_scoring_windows() -> None:
    # Prepare: an abrupt drift at 100 and a gradual one over [500, 600]; max delay 250
    drifts = [(100, 100), (500, 600)]
    # Execute
    early = score_alarms([99], drifts, 2000)  # just before the drift: a false alarm, drift missed
    repeated = score_alarms([130, 140, 350], drifts, 2000)  # first alarm counts; the others are inside
    late = score_alarms([351, 850, 851], drifts, 2000)  # past 100+250 is false; 850 = 600+250 still in
    # Assert
    assert (early.detected, early.false_alarms, early.delays) == (0, 1, [])
    assert (repeated.detected, repeated.false_alarms, repeated.delays, repeated.alarms) == (1, 0, [30], 3)
    assert (late.detected, late.false_alarms, late.delays) == (1, 2, [350])


def test_scores_add_up() -> None:
    # Prepare
    total = DetectionScore(delays=[])
    # Execute
    total.add(score_alarms([120], [(100, 100)], 1000))
    total.add(score_alarms([], [(100, 100)], 1000))
    d = total.as_dict()
    # Assert
    assert (d["drifts"], d["detected"], d["missed"], d["missed_ratio"], d["mean_delay"]) == (
        2,
        1,
        1,
        0.5,
        20.0,
    )


def test_streams_are_seeded_and_drift_upwards() -> None:
    # Execute
    a = make_error_streams(n_streams=20, seed=5)
    b = make_error_streams(n_streams=20, seed=5)
    # Assert
    assert all(np.array_equal(x.values, y.values) and x.drifts == y.drifts for x, y in zip(a, b, strict=True))
    for s in a:
        ((start, end),) = s.drifts
        assert 250 <= start < 500 and (end == start or 99 <= end - start <= 200)
        assert s.values[end + 1 :].mean() > s.values[:start].mean()
    assert {s.kind for s in a} == {"regression", "classification"}


def test_monitor_finds_the_step_among_a_steady_fleet() -> None:
    # Prepare: seven stable devices and one whose error triples at 400
    rng = np.random.default_rng(0)
    flat = [np.abs(rng.normal(0, 1, 800)) for _ in range(7)]
    # Execute
    alarms = monitor_alarms("adwin", [step_stream(1, at=400, n=800), *flat])
    # Assert
    assert score_alarms(alarms[0], [(400, 400)], 800).delays == [15]
    assert sum(len(a) for a in alarms[1:]) == 0


def test_evaluate_detectors_exact_numbers_for_a_seed() -> None:
    # Prepare
    streams = make_error_streams(n_streams=12, seed=2)
    # Execute
    rows = evaluate_detectors(streams, detectors=["adwin", "page_hinkley"], clock=lambda: 0.0)
    # Assert
    got = {
        (r["detector"], r["mode"], r["kind"]): (r["missed"], r["mean_delay"], r["false_alarms"]) for r in rows
    }
    assert got == {
        ("adwin", "raw", "regression"): (0, 72.33, 0),
        ("adwin", "raw", "classification"): (0, 194.67, 0),
        ("adwin", "monitor", "regression"): (0, 76.33, 0),
        ("adwin", "monitor", "classification"): (0, 140.0, 0),
        ("page_hinkley", "raw", "regression"): (0, 63.67, 4),
        ("page_hinkley", "raw", "classification"): (1, 275.0, 1),
        ("page_hinkley", "monitor", "regression"): (0, 74.83, 0),
        ("page_hinkley", "monitor", "classification"): (0, 104.67, 5),
    }
    assert all(r["drifts"] == 6 and r["us_per_reading"] == 0.0 for r in rows)


def test_kswin_runs_through_both_modes() -> None:
    # Prepare: KSWIN is slow (a KS test per reading), so two short streams
    streams = [ErrorStream(step_stream(s, at=300, n=600), ((300, 300),), "regression") for s in (3, 4)]
    # Execute
    rows = evaluate_detectors(streams, detectors=["kswin"])
    # Assert
    assert [(r["mode"], r["drifts"]) for r in rows] == [("raw", 2), ("monitor", 2)]
    assert all(r["detected"] == 2 for r in rows)


def test_lockstep_mode_and_unknown_mode() -> None:
    # Prepare
    streams = make_error_streams(n_streams=6, seed=3)
    # Execute
    rows = evaluate_detectors(streams, detectors=["adwin"], modes=["monitor-lockstep"])
    # Assert
    assert [(r["mode"], r["drifts"]) for r in rows] == [("monitor-lockstep", 3), ("monitor-lockstep", 3)]
    with pytest.raises(ValueError, match="unknown mode"):
        evaluate_detectors(streams, detectors=["adwin"], modes=["sideways"])
