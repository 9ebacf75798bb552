"""Running standardisation of features and targets.

:class:`RunningScaler` and :class:`TaskScaler` (Welford, batched) are the
device package's (:mod:`metastream_edge.scaling`): one implementation for
workers and devices.  :class:`PrequentialScaler` is the fleet's: moments kept
as cumulative sums, so each reading is standardised the same way however the
stream is cut.
"""

from __future__ import annotations

import numpy as np

from metastream_edge.scaling import RunningScaler, TaskScaler


class CumulativeMoments:
    """Running mean and standard deviation whose value after each reading does not depend on batching.

    The state is the count and the running sums of ``x − K`` and
    ``(x − K)²`` in float64, with the shift ``K`` fixed to the first
    reading (shifted sums keep the variance accurate when the mean is far
    from 0).  The sums advance with ``np.cumsum``, which adds strictly left
    to right, so the moments seen by each reading are bit for bit the same
    however the stream is cut into batches.

    Examples
    --------
    >>> m = CumulativeMoments(1)
    >>> mean, std = m.advance(np.array([[1.0], [3.0], [5.0]]))
    >>> mean.ravel().tolist(), std.ravel().round(3).tolist()   # after each reading
    ([1.0, 2.0, 3.0], [1.0, 1.0, 1.633])
    >>> other = CumulativeMoments(1)
    >>> _ = other.advance(np.array([[1.0]])); _ = other.advance(np.array([[3.0], [5.0]]))
    >>> other.count, bool((other.mean == m.mean).all()), bool((other.std == m.std).all())
    (3, True, True)
    """

    def __init__(self, n_columns: int) -> None:
        self.count = 0
        self.shift = np.zeros(n_columns)
        self.s1 = np.zeros(n_columns)
        self.s2 = np.zeros(n_columns)

    def state_dict(self) -> tuple[int, dict[str, np.ndarray]]:
        """The reading count and copies of the running sums (``shift``, ``s1``, ``s2``)."""
        return self.count, {"shift": self.shift.copy(), "s1": self.s1.copy(), "s2": self.s2.copy()}

    def load_state_dict(self, count: int, sums: dict[str, np.ndarray]) -> None:
        """Take over :meth:`state_dict` output."""
        self.count = int(count)
        self.shift, self.s1, self.s2 = (np.asarray(sums[k], np.float64).copy() for k in ("shift", "s1", "s2"))

    @property
    def mean(self) -> np.ndarray:
        """Mean of every reading so far (0 before the first)."""
        return self.shift + self.s1 / max(self.count, 1)

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation; 1 where a column has not varied yet (as :class:`RunningScaler`)."""
        _, std = _moments(self.s1[None], self.s2[None], np.array([self.count]), self.shift)
        return std[0]

    def transform(self, batch: np.ndarray) -> np.ndarray:
        """Standardise ``batch`` with the current moments."""
        return (batch - self.mean) / self.std

    def inverse(self, batch: np.ndarray) -> np.ndarray:
        """Undo :meth:`transform`."""
        return batch * self.std + self.mean

    def advance(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Take in ``batch`` ``[n, columns]`` in order; return the mean and std after each row."""
        n = batch.shape[0]
        if n == 0:
            return np.zeros_like(batch, dtype=np.float64), np.ones_like(batch, dtype=np.float64)
        if self.count == 0:
            self.shift = batch[0].astype(np.float64).copy()
        d = batch - self.shift
        s1 = np.cumsum(np.concatenate([self.s1[None], d]), axis=0)[1:]
        s2 = np.cumsum(np.concatenate([self.s2[None], d * d]), axis=0)[1:]
        counts = self.count + np.arange(1, n + 1)
        self.count, self.s1, self.s2 = int(counts[-1]), s1[-1].copy(), s2[-1].copy()
        return _moments(s1, s2, counts, self.shift)


def _moments(
    s1: np.ndarray, s2: np.ndarray, counts: np.ndarray, shift: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std ``[n, columns]`` from shifted sums ``[n, columns]`` over ``counts[n]`` readings."""
    n = np.maximum(counts, 1)[:, None].astype(np.float64)
    m1 = s1 / n
    var = np.maximum(s2 / n - m1 * m1, 0.0)
    std = np.sqrt(var)
    std = np.where((std > 1e-12) & (counts[:, None] >= 2), std, 1.0)
    return shift + m1, std


class PrequentialScaler:
    """Standardisation that depends only on the stream, never on how it is cut into batches.

    Each reading's features and target are standardised with the moments of
    every reading up to and including it: that is what the device learns
    from and what its buffer keeps (a reading standardised only with the
    readings before it would be wild at the start of a stream: the first
    target taken as it is, the second with a spread of 1).  A prediction is
    turned back into the target's units with the moments of the readings
    *before* it, so it never uses the reading's own target.

    Attributes ``x`` and ``y`` (:class:`CumulativeMoments`) and
    :meth:`inverse_y` have the meaning they have on :class:`TaskScaler`:
    the moments of everything seen so far.

    Examples
    --------
    >>> ps = PrequentialScaler("regression", n_features=1)
    >>> x, y = np.array([[0.0], [2.0], [4.0]]), np.array([10.0, 30.0, 50.0])
    >>> xs, ys, y_mean, y_std = ps.fit_transform(x, y)
    >>> xs.ravel().tolist(), ys.astype(float).round(4).tolist()
    ([0.0, 1.0, 1.2247449159622192], [0.0, 1.0, 1.2247])
    >>> y_mean.tolist(), y_std.tolist()   # the moments before each reading
    ([0.0, 10.0, 20.0], [1.0, 1.0, 10.0])
    >>> ps.y.mean.tolist(), ps.y.count   # what inverse_y uses afterwards
    ([30.0], 3)
    """

    def __init__(self, task: str, n_features: int) -> None:
        self.task = task
        self.x = CumulativeMoments(n_features)
        self.y = CumulativeMoments(1)

    def fit_transform(
        self, x: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Standardised ``x`` and ``y`` (float32), and the target mean and std before each reading (float64).

        That mean and std turn a standardised prediction of the reading back
        into the target's units (mean 0 and std 1 for classes).
        """
        x_mean, x_std = self.x.advance(np.asarray(x, dtype=np.float64))
        xs = ((x - x_mean) / x_std).astype(np.float32)
        if self.task != "regression":
            ones = np.ones(len(y))
            return xs, y.astype(np.float32), np.zeros(len(y)), ones
        before = (self.y.count, self.y.s1.copy(), self.y.s2.copy())
        incl_mean, incl_std = self.y.advance(np.asarray(y, dtype=np.float64)[:, None])
        y_mean, y_std = self._before_each(y, *before)
        return xs, ((y - incl_mean[:, 0]) / incl_std[:, 0]).astype(np.float32), y_mean, y_std

    def _before_each(
        self, y: np.ndarray, count: int, s1: np.ndarray, s2: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Target moments of the readings before each of ``y``, from the state before the batch."""
        d = (np.asarray(y, dtype=np.float64) - self.y.shift[0])[:, None]
        c1 = np.cumsum(np.concatenate([s1[None], d[:-1]]), axis=0)
        c2 = np.cumsum(np.concatenate([s2[None], (d * d)[:-1]]), axis=0)
        counts = count + np.arange(len(y))
        mean, std = _moments(c1, c2, counts, self.y.shift)
        mean = np.where(counts == 0, 0.0, mean[:, 0])
        return mean, std[:, 0]

    def inverse_y(self, pred: np.ndarray) -> np.ndarray:
        """Predictions back in the target's units with the moments of everything so far."""
        if self.task != "regression":
            return pred.astype(np.float64)
        return pred * self.y.std[0] + self.y.mean[0]


__all__ = ["CumulativeMoments", "PrequentialScaler", "RunningScaler", "TaskScaler"]
