"""The one place that reads or writes River detectors' private internals.

River offers no public way to save and restore a drift detector's learned
state without pickle, and its ADWIN wrapper costs as much per reading as the
compiled window inside it.  Everything that relies on River's internals for
that lives here, pinned by ``tests/unit/test_river_contract.py`` against the
River version bounded in ``pyproject.toml``: a River upgrade that changes
them fails that test, not a restore in production.
"""

from __future__ import annotations

from typing import Any

from river import base, drift

RIVER_SERIES = "0.26."
"""The River release series whose internals this module was written against."""


def fast_window(det: base.DriftDetector) -> Any | None:
    """ADWIN's compiled window (its ``update(x)`` returns whether it cut), else ``None``.

    Examples
    --------
    >>> window = fast_window(drift.ADWIN(clock=8))
    >>> window.update(0.5), window.get_width()
    (False, 1.0)
    >>> fast_window(drift.PageHinkley()) is None
    True
    """
    return det._helper if isinstance(det, drift.ADWIN) else None


def detector_state(det: base.DriftDetector) -> tuple[dict[str, Any], bytes]:
    """A detector's learned state: plain JSON values plus a binary blob (ADWIN's window).

    Its settings are not included: they come from how it was made
    (:func:`learners.drift.make_detector`).  ADWIN's window lives in River's
    Rust extension, whose own state encoding (plain bytes, not pickle) is the
    blob; PageHinkley and KSWIN are plain attributes (KSWIN with its random
    generator's state), and their blob is empty.

    Examples
    --------
    >>> det = drift.PageHinkley(mode="up")
    >>> for e in (0.1, 0.2, 0.3):
    ...     det.update(e)
    >>> state, blob = detector_state(det)
    >>> state["mean_n"], blob
    (3.0, b'')
    """
    state: dict[str, Any] = {"drift_detected": bool(det.drift_detected)}
    blob = b""
    if isinstance(det, drift.ADWIN):
        blob = bytes(det._helper.__getstate__())
    elif isinstance(det, drift.PageHinkley):
        state |= {
            "mean_n": det._x_mean.n,
            "mean": det._x_mean._mean,
            "sums": [det._sum_increase, det._sum_decrease, det._min_increase, det._max_decrease],
        }
    elif isinstance(det, drift.KSWIN):
        version, internal, gauss = det._rng.getstate()
        state |= {
            "n": det.n,
            "p_value": det.p_value,
            "window": list(det.window),
            "rng": [version, list(internal), gauss],
        }
    return state, blob


def load_detector_state(det: base.DriftDetector, state: dict[str, Any], blob: bytes) -> None:
    """Give a fresh detector (made with the same settings) the state :func:`detector_state` returned."""
    det._drift_detected = bool(state["drift_detected"])
    if isinstance(det, drift.ADWIN):
        det._helper.__setstate__(bytes(blob))
    elif isinstance(det, drift.PageHinkley):
        det._x_mean.n, det._x_mean._mean = float(state["mean_n"]), float(state["mean"])
        s = [float(v) for v in state["sums"]]
        det._sum_increase, det._sum_decrease, det._min_increase, det._max_decrease = s
    elif isinstance(det, drift.KSWIN):
        det.n, det.p_value = int(state["n"]), state["p_value"]
        det.window.clear()
        det.window.extend(float(v) for v in state["window"])
        version, internal, gauss = state["rng"]
        det._rng.setstate((int(version), tuple(int(v) for v in internal), gauss))
