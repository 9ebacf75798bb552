"""Per-device drift detection on seeded streams with known change points."""

from __future__ import annotations

import random

import numpy as np
import pytest

from learners.drift import DriftMonitor, make_detector


def step_stream(before: float, after: float, n: int = 1000, at: int = 500, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [abs(rng.gauss(before if t < at else after, 0.1)) for t in range(n)]


@pytest.mark.parametrize(("detector", "max_delay"), [("adwin", 40), ("page_hinkley", 60), ("kswin", 60)])
def test_upward_drift_is_detected_within_bounded_delay(detector: str, max_delay: int) -> None:
    # Prepare
    errors = step_stream(0.2, 1.0)
    monitor = DriftMonitor(detector, cooldown=1000)  # type: ignore[arg-type]
    # Execute
    drifts = [t for t, e in enumerate(errors) if monitor.update([0], [e])]
    # Assert: exactly one drift, after the change and within the bound
    assert len(drifts) == 1
    assert 500 <= drifts[0] < 500 + max_delay


def test_falling_error_is_not_a_drift() -> None:
    # Prepare: the model gets better at t=500
    errors = step_stream(1.0, 0.2)
    monitor = DriftMonitor("adwin")
    # Execute
    drifts = [t for t, e in enumerate(errors) if monitor.update([0], [e])]
    # Assert
    assert drifts == []


def test_cooldown_turns_one_drift_into_one_alarm() -> None:
    # Prepare: a second, smaller rise soon after the first
    rng = random.Random(3)
    errors = [abs(rng.gauss(0.2 if t < 500 else 1.0 if t < 560 else 2.0, 0.1)) for t in range(900)]
    # Execute
    with_cooldown = DriftMonitor("adwin", cooldown=200)
    without = DriftMonitor("adwin", cooldown=0)
    a = [t for t, e in enumerate(errors) if with_cooldown.update([0], [e])]
    b = [t for t, e in enumerate(errors) if without.update([0], [e])]
    # Assert
    assert len(a) == 1
    assert len(b) >= 2


def test_devices_are_watched_independently_and_bad_errors_are_ignored() -> None:
    # Prepare: device 1 drifts, device 0 does not; device 0 also sends NaN
    e0, e1 = step_stream(0.2, 0.2, seed=1), step_stream(0.2, 1.0, seed=2)
    monitor = DriftMonitor("adwin")
    hits: list[int] = []
    # Execute
    for t in range(1000):
        errors = [float("nan") if t % 100 == 0 else e0[t], e1[t]]
        hits += [[0, 1][i] for i in monitor.update([0, 1], errors)]
    # Assert
    assert hits == [1]
    assert monitor.seen(0) == 990 and monitor.seen(1) == 1000


def test_adwin_monitor_alarms_where_rivers_own_adwin_does() -> None:
    # Prepare: only rising steps, so every ADWIN alarm is an upward one; one
    # batch, so every error is divided by the same scale.
    errors = [
        e for level, seed in ((0.2, 1), (1.0, 2), (3.0, 3)) for e in step_stream(level, level, 400, 0, seed)
    ]
    monitor = DriftMonitor("adwin", cooldown=0)
    # Execute
    drifts = monitor.update([0] * len(errors), errors)
    # Assert: the monitor's direct use of ADWIN's window changes nothing
    reference = make_detector("adwin")
    expected = []
    for t, e in enumerate(errors):
        reference.update(e / monitor.scale(0))
        if reference.drift_detected:
            expected.append(t)
    assert len(expected) >= 2
    assert drifts == expected


def test_a_drift_that_hits_every_device_at_once_is_detected_on_each() -> None:
    # Prepare: 20 devices whose error rises by half at the same time (a season)
    streams = [step_stream(0.2, 0.3, seed=s) for s in range(20)]
    monitor = DriftMonitor("adwin", cooldown=1000)
    # Execute: one reading of every device per micro-batch
    drifts = [(t, d) for t in range(1000) for d in monitor.update(list(range(20)), [s[t] for s in streams])]
    # Assert: each device's own error scale keeps the shared rise visible (a
    # fleet-wide scale rises with it: it found 1 of these 20 drifts); seed 0
    # gives delays of 27 to 115 readings
    assert sorted(d for _, d in drifts) == list(range(20))
    assert all(500 <= t < 650 for t, _ in drifts)


def test_a_replaced_model_gets_its_error_scale_measured_afresh() -> None:
    # Prepare: a device whose old model erred ~1.0, in a fleet erring ~0.5 overall
    monitor = DriftMonitor("adwin")
    monitor.update([0] * 50 + [1] * 50, [1.0] * 50 + [0.0] * 50)
    old = monitor.scale(0)
    # Execute: its model is replaced, and the new one errs ~0.2
    monitor.restart_scale(np.array([0]))
    fallback = monitor.scale(0)
    monitor.update([0] * 10, [0.2] * 10)
    # Assert
    assert old == pytest.approx(1.0)
    assert fallback == pytest.approx(0.5)  # the fleet's, until the device has its own again
    assert monitor.scale(0) == pytest.approx(0.2)
