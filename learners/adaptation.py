"""Each device's smoothed error before and after an adaptation (the worker's adaptation metric)."""

from __future__ import annotations

import numpy as np


class AdaptationTracker:
    """Each device's smoothed error, captured before and ``after`` readings past an adaptation.

    Examples
    --------
    >>> t = AdaptationTracker(after=2, alpha=0.5)
    >>> t.update(np.array([0, 0]), np.array([4.0, 4.0]))
    >>> t.adapted(0, "dev-0 v1")
    >>> t.update(np.array([0, 0]), np.array([0.0, 0.0]))
    >>> t.finished()
    [('dev-0 v1', 4.0, 1.0)]
    """

    def __init__(self, after: int = 30, alpha: float = 0.1) -> None:
        self.after = after
        self.alpha = alpha
        self._ema = np.zeros(0)
        self._seen = np.zeros(0, dtype=np.int64)
        self._open: list[tuple[int, str, float, int]] = []  # slot, tag, before, seen at adaptation

    def update(self, slots: np.ndarray, errors: np.ndarray) -> None:
        """Fold one batch of per-reading errors into each device's moving average."""
        n = int(slots.max()) + 1 if len(slots) else 0
        if n > len(self._ema):
            grow = n - len(self._ema)
            self._ema = np.concatenate([self._ema, np.full(grow, np.nan)])
            self._seen = np.concatenate([self._seen, np.zeros(grow, np.int64)])
        counts = np.bincount(slots, minlength=len(self._ema))
        sums = np.bincount(slots, weights=errors, minlength=len(self._ema))
        hit = counts > 0
        mean = sums[hit] / counts[hit]
        keep = (1 - self.alpha) ** counts[hit]
        old = np.where(np.isnan(self._ema[hit]), mean, self._ema[hit])
        self._ema[hit] = keep * old + (1 - keep) * mean
        self._seen += counts

    def smoothed(self) -> np.ndarray:
        """Each slot's current smoothed error (NaN before its first reading); a copy."""
        return self._ema.copy()

    def adapted(self, slot: int, tag: str) -> None:
        """Remember the device's current error as its before-adaptation level."""
        self._open.append((slot, tag, float(self._ema[slot]), int(self._seen[slot])))

    def retain(self, keep: np.ndarray) -> None:
        """Keep only slots ``keep`` (ascending), renumbered 0, 1, …; adaptations of the others are dropped."""
        kept = np.asarray([s for s in keep if s < len(self._ema)], dtype=np.int64)
        new_of = {int(old): new for new, old in enumerate(keep)}
        self._ema, self._seen = self._ema[kept], self._seen[kept]
        self._open = [(new_of[s], t, b, a) for s, t, b, a in self._open if s in new_of]

    def finished(self) -> list[tuple[str, float, float]]:
        """``(tag, before, after)`` of adaptations that have ``after`` readings since."""
        done, still_open = [], []
        for slot, tag, before, at in self._open:
            if self._seen[slot] - at >= self.after:
                done.append((tag, before, float(self._ema[slot])))
            else:
                still_open.append((slot, tag, before, at))
        self._open = still_open
        return done
