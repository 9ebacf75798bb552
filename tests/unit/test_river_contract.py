"""Contract test of the River internals ``learners/river_adapter.py`` relies on.

A River release that renames or reshapes them fails here, not in a restore in production;
``pyproject.toml`` bounds River to the series these tests were written against.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import river
from river import drift

from learners.drift import DETECTORS, make_detector
from learners.river_adapter import RIVER_SERIES, detector_state, fast_window, load_detector_state


def _errors(seed: int) -> list[float]:
    """Seeded errors that rise halfway: every detector kind alarms on them."""
    rng = np.random.default_rng(seed)
    low, high = rng.normal(0.2, 0.05, 600), rng.normal(0.9, 0.05, 600)
    return [float(e) for e in np.abs(np.concatenate([low, high]))]


def test_river_is_the_release_series_the_adapter_was_written_against() -> None:
    assert river.__version__.startswith(RIVER_SERIES), river.__version__


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("cut", [1, 300, 590])
def test_a_restored_detector_continues_exactly_like_the_original(name: str, cut: int) -> None:
    # Prepare: one detector sees the whole stream; its state at `cut` goes through JSON into a fresh one
    errors = _errors(seed=7)
    original = make_detector(name, seed=3)
    for e in errors[:cut]:
        original.update(e)
    state, blob = detector_state(original)
    restored = make_detector(name, seed=3)

    # Execute
    load_detector_state(restored, json.loads(json.dumps(state)), blob)
    flags = []
    for e in errors[cut:]:
        original.update(e)
        restored.update(e)
        flags.append((original.drift_detected, restored.drift_detected))

    # Assert: the same alarms at the same readings (there are some), and the same state at the end
    assert [a for a, _ in flags] == [b for _, b in flags]
    assert any(a for a, _ in flags)
    assert detector_state(original) == detector_state(restored)


def test_the_adwin_fast_window_is_the_one_the_detector_reports_on() -> None:
    # Prepare
    errors = _errors(seed=1)
    through_wrapper, direct = make_detector("adwin"), make_detector("adwin")
    window = fast_window(direct)
    assert window is not None

    # Execute: up to the first cut (the wrapper starts a new window after one, as the monitor does)
    wrapper_cuts, window_cuts = [], []
    for e in errors:
        through_wrapper.update(e)
        wrapper_cuts.append(through_wrapper.drift_detected)
        window_cuts.append(bool(window.update(e)))
        if window_cuts[-1] or wrapper_cuts[-1]:
            break

    # Assert: the same cut, and the wrapper's public width/estimation read the window we updated
    assert wrapper_cuts == window_cuts and window_cuts[-1] and len(window_cuts) > 600
    assert isinstance(direct, drift.ADWIN)
    assert (direct.width, direct.estimation) == (through_wrapper.width, through_wrapper.estimation)
    assert fast_window(make_detector("kswin")) is None
