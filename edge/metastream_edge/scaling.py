"""Running standardisation of features and targets (Welford, batched), shared by worker and device."""

from __future__ import annotations

import numpy as np


class RunningScaler:
    """Mean and standard deviation per column, updated one micro-batch at a time.

    Examples
    --------
    >>> s = RunningScaler(2)
    >>> s.update(np.array([[1.0, 10.0], [3.0, 30.0]]))
    >>> s.mean, s.std
    (array([ 2., 20.]), array([ 1., 10.]))
    >>> s.transform(np.array([[2.0, 40.0]]))
    array([[0., 2.]])
    """

    def __init__(self, n_columns: int) -> None:
        self.count = 0
        self.mean = np.zeros(n_columns)
        self._m2 = np.zeros(n_columns)

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation; 1 where a column has not varied yet."""
        if self.count < 2:
            return np.ones_like(self.mean)
        std = np.sqrt(self._m2 / self.count)
        return np.where(std > 1e-12, std, 1.0)

    def update(self, batch: np.ndarray) -> None:
        """Merge a batch ``[n, n_columns]`` into the running moments (Chan et al.)."""
        n = batch.shape[0]
        if n == 0:
            return
        b_mean = batch.mean(0)
        b_m2 = ((batch - b_mean) ** 2).sum(0)
        total = self.count + n
        delta = b_mean - self.mean
        self.mean = self.mean + delta * n / total
        self._m2 = self._m2 + b_m2 + delta**2 * self.count * n / total
        self.count = total

    @classmethod
    def fixed(cls, mean: np.ndarray, std: np.ndarray) -> RunningScaler:
        """A scaler with the given moments (e.g. a received model's normalisation).

        Examples
        --------
        >>> s = RunningScaler.fixed(np.array([2.0]), np.array([4.0]))
        >>> s.mean.tolist(), s.std.tolist()
        ([2.0], [4.0])
        """
        out = cls(len(mean))
        out.restore(2, mean, np.square(np.asarray(std, np.float64)) * 2)
        return out

    def moments(self) -> tuple[int, np.ndarray, np.ndarray]:
        """``(count, mean, m2)``: everything :meth:`restore` needs."""
        return self.count, self.mean.copy(), self._m2.copy()

    def restore(self, count: int, mean: np.ndarray, m2: np.ndarray) -> None:
        """Take over moments from :meth:`moments` (e.g. read back from disk)."""
        self.count = int(count)
        self.mean = np.asarray(mean, np.float64).copy()
        self._m2 = np.asarray(m2, np.float64).copy()

    def transform(self, batch: np.ndarray) -> np.ndarray:
        """Standardise ``batch`` with the current moments."""
        return (batch - self.mean) / self.std

    def inverse(self, batch: np.ndarray) -> np.ndarray:
        """Undo :meth:`transform`."""
        return batch * self.std + self.mean


class TaskScaler:
    """Standardises features, and the target too for regression.

    Examples
    --------
    >>> ts = TaskScaler("regression", n_features=1)
    >>> xs, ys = ts.fit_transform(np.array([[0.0], [2.0]]), np.array([10.0, 30.0]))
    >>> xs.ravel().tolist(), ys.tolist(), ts.inverse_y(np.array([0.5])).tolist()
    ([-1.0, 1.0], [-1.0, 1.0], [25.0])
    """

    def __init__(self, task: str, n_features: int, frozen: bool = False) -> None:
        self.task = task
        self.frozen = frozen
        self.x = RunningScaler(n_features)
        self.y = RunningScaler(1)

    @classmethod
    def from_norm(
        cls, task: str, x_mean: np.ndarray, x_std: np.ndarray, y_mean: np.ndarray, y_std: np.ndarray
    ) -> TaskScaler:
        """A frozen scaler with a model's normalisation (its ``norm.*`` arrays): it never updates.

        Examples
        --------
        >>> ts = TaskScaler.from_norm("regression", np.zeros(1), np.ones(1), np.array([10.0]), np.ones(1) * 2)
        >>> ts.fit_transform(np.array([[1.0]]), np.array([14.0]))[1].tolist(), ts.y.mean.tolist()
        ([2.0], [10.0])
        """
        out = cls(task, len(x_mean), frozen=True)
        out.x = RunningScaler.fixed(np.asarray(x_mean, np.float64), np.asarray(x_std, np.float64))
        out.y = RunningScaler.fixed(np.asarray(y_mean, np.float64), np.asarray(y_std, np.float64))
        return out

    def fit_transform(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Update the moments with the batch (unless frozen), then standardise it (float32)."""
        if not self.frozen:
            self.x.update(x)
        xs = self.x.transform(x).astype(np.float32)
        if self.task != "regression":
            return xs, y.astype(np.float32)
        if not self.frozen:
            self.y.update(y[:, None])
        return xs, ((y - self.y.mean[0]) / self.y.std[0]).astype(np.float32)

    def inverse_y(self, pred: np.ndarray) -> np.ndarray:
        """Predictions back in the target's units (identity for classes)."""
        if self.task != "regression":
            return pred.astype(np.float64)
        return pred * self.y.std[0] + self.y.mean[0]
