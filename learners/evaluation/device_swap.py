"""Device swaps: drift on real data with a known change point, and how long a strategy takes to recover.

A *swap* makes device ``a``'s stream continue, from its reading number
``at`` on, with the readings of another device ``b`` (b's own readings
number ``at``, ``at + 1``, … ; b keeps its own stream too).  The change
point is known exactly, and the new concept is real data.  A's readings
past the end of b's are dropped, so a is never swapped back.

*Recovery* of a swap: the number ``i`` of a's readings after the swap
until the mean prequential error of a's last ``min(i, window)`` readings is
back within ``tolerance`` × a's mean error over the ``baseline`` readings
before the swap (1: the first reading after the swap was already fine).
A swap whose error never comes back before a's stream ends is
*censored*: its recovery is the number of readings a had left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WINDOW = 10
BASELINE = 50
TOLERANCE = 1.5


@dataclass(frozen=True)
class Swap:
    """Device ``device`` continues with ``donor``'s readings from its own reading number ``at`` on."""

    device: str
    donor: str
    at: int


@dataclass
class SwappedTable:
    """Readings after the swaps: ``keep`` selects the rows of the original table that remain."""

    x: np.ndarray
    y: np.ndarray
    keep: np.ndarray
    swaps: list[Swap]


def plan_swaps(
    device_ids: Sequence[str],
    candidates: Sequence[str],
    n_swaps: int,
    seed: int = 0,
    margin: int = BASELINE + 2 * WINDOW,
) -> list[Swap]:
    """``n_swaps`` seeded swaps among ``candidates`` (distinct swapped devices, donors among candidates).

    A swap point leaves at least ``margin`` readings before it and after it
    (in both devices), drawn uniformly in the middle 60% of the device's
    readings.

    Examples
    --------
    >>> ids = ["a", "b", "c"] * 400
    >>> plan_swaps(ids, ["a", "b", "c"], 2, seed=0) == plan_swaps(ids, ["a", "b", "c"], 2, seed=0)
    True
    >>> [s.device != s.donor and 80 <= s.at <= 320 for s in plan_swaps(ids, ["a", "b", "c"], 2)]
    [True, True]
    """
    if n_swaps < 1:
        return []
    counts: dict[str, int] = {}
    for d in device_ids:
        counts[d] = counts.get(d, 0) + 1
    pool = [d for d in candidates if counts.get(d, 0) >= 2 * margin]
    if len(pool) < 2 or n_swaps > len(pool):
        raise ValueError(f"cannot swap {n_swaps} devices: {len(pool)} have >= {2 * margin} readings")
    rng = np.random.default_rng(seed)
    swapped = rng.choice(len(pool), n_swaps, replace=False)
    out = []
    for i in swapped.tolist():
        a = pool[i]
        donors = [d for d in pool if d != a]
        b = donors[int(rng.integers(len(donors)))]
        n = min(counts[a], counts[b])
        lo, hi = max(margin, int(0.2 * n)), min(n - margin, int(0.8 * n))
        out.append(Swap(a, b, int(rng.integers(lo, max(hi, lo) + 1))))
    return out


def apply_swaps(
    device_ids: Sequence[str], x: np.ndarray, y: np.ndarray, swaps: Sequence[Swap]
) -> SwappedTable:
    """The table with every swap applied (readings keep their place in the stream).

    Examples
    --------
    >>> ids = ["a", "b"] * 4
    >>> t = apply_swaps(ids, np.arange(8.0)[:, None], np.arange(8.0), [Swap("a", "b", 2)])
    >>> t.y.tolist(), t.keep.tolist()
    ([0.0, 1.0, 2.0, 3.0, 5.0, 5.0, 7.0, 7.0], [0, 1, 2, 3, 4, 5, 6, 7])
    """
    ids = np.asarray(device_ids)
    x, y = x.copy(), y.copy()
    keep = np.ones(len(ids), dtype=bool)
    originals = {d: np.flatnonzero(ids == d) for d in {s.device for s in swaps} | {s.donor for s in swaps}}
    for s in swaps:
        rows_a, rows_b = originals[s.device], originals[s.donor]
        m = min(len(rows_a), len(rows_b)) - s.at
        if m <= 0:
            raise ValueError(f"swap {s}: {s.device} or {s.donor} has no readings past {s.at}")
        x[rows_a[s.at : s.at + m]] = x[rows_b[s.at : s.at + m]]
        y[rows_a[s.at : s.at + m]] = y[rows_b[s.at : s.at + m]]
        keep[rows_a[s.at + m :]] = False
    return SwappedTable(x, y, np.flatnonzero(keep), list(swaps))


def recovery(
    errors: np.ndarray,
    at: int,
    window: int = WINDOW,
    baseline: int = BASELINE,
    tolerance: float = TOLERANCE,
) -> tuple[int, bool]:
    """``(readings to recover, recovered)`` of one device's prequential ``errors`` swapped at ``at``.

    Examples
    --------
    >>> e = np.r_[np.ones(50), np.full(20, 5.0), np.ones(30)]
    >>> recovery(e, 50, window=10, baseline=50)   # the last 10 of the first 29 average 1.4
    (29, True)
    >>> recovery(np.r_[np.ones(50), 1.2, np.full(9, 5.0)], 50)   # fine at once
    (1, True)
    >>> recovery(np.r_[np.ones(50), np.full(30, 5.0)], 50)
    (30, False)
    """
    level = tolerance * float(np.mean(errors[max(0, at - baseline) : at]))
    after = errors[at:]
    # mean of the last min(i, window) readings after the swap, for i = 1, 2, …
    sums = np.cumsum(np.r_[0.0, after])
    i = np.arange(1, len(after) + 1)
    lo = np.maximum(i - window, 0)
    ok = np.flatnonzero((sums[i] - sums[lo]) / (i - lo) <= level)
    if ok.size == 0:
        return len(after), False
    return int(ok[0] + 1), True


def swap_recoveries(
    device_ids: Sequence[str], errors: np.ndarray, swaps: Sequence[Swap], **kwargs: float
) -> list[tuple[int, bool]]:
    """:func:`recovery` of every swap, from the stream's ``device_ids`` and per-reading ``errors``."""
    ids = np.asarray(device_ids)
    return [recovery(errors[ids == s.device], s.at, **kwargs) for s in swaps]  # type: ignore[arg-type]


def summarise_recoveries(results: Sequence[tuple[int, bool]]) -> dict[str, float | int | None]:
    """Median readings to recover (censored swaps count what they had left), and how many recovered.

    Examples
    --------
    >>> summarise_recoveries([(10, True), (30, True), (400, False)])
    {'swaps': 3, 'swap_recovery_median': 30.0, 'swap_recovered': 2}
    """
    if not results:
        return {"swaps": 0, "swap_recovery_median": None, "swap_recovered": 0}
    return {
        "swaps": len(results),
        "swap_recovery_median": float(np.median([r for r, _ in results])),
        "swap_recovered": sum(ok for _, ok in results),
    }
