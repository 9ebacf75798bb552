"""Per-device blending of a personal model with the pooled one, so personalising never costs much.

On fleets of near-identical devices the pooled model is the best predictor
there is; on fleets of different devices, or after a drift, a device's own
model is.  Each device here weighs the two by their recent errors: weights
inversely proportional to each predictor's discounted mean squared error
(Bates and Granger's forecast combination), raised to a sharpness power,
and shrunk towards the pooled model while the device has few readings.
For classification, where class labels cannot be averaged, the device
follows whichever predictor has made fewer recent mistakes.

Every reading is predicted from the weights its device had after its
previous reading, so the result does not depend on how the stream is cut
into micro-batches.
"""

from __future__ import annotations

import numpy as np

from learners.config import Task


def ranks_within_devices(slots: np.ndarray) -> np.ndarray:
    """Each reading's position among its device's readings in this batch (0, 1, …, in order).

    Examples
    --------
    >>> ranks_within_devices(np.array([3, 1, 3, 3, 1])).tolist()
    [0, 0, 1, 2, 1]
    """
    order = np.argsort(slots, kind="stable")
    sorted_slots = slots[order]
    starts = np.flatnonzero(np.r_[True, sorted_slots[1:] != sorted_slots[:-1]])
    run = np.arange(len(slots)) - np.repeat(starts, np.diff(np.r_[starts, len(slots)]))
    ranks = np.empty(len(slots), dtype=np.int64)
    ranks[order] = run
    return ranks


class ErrorWeightedBlend:
    """Blend two predictors per device by their discounted recent errors.

    Parameters
    ----------
    task
        ``"regression"`` (weighted mean of the predictions) or
        ``"classification"`` (follow the predictor with fewer recent mistakes).
    discount
        Weight of a reading's error after one more reading of the same device.
    sharpness
        Power of the inverse-error weights: higher moves faster to the better predictor.
    prior_readings
        Evidence a device needs before its own model can take half the weight it earns.

    Examples
    --------
    >>> blend = ErrorWeightedBlend("regression")
    >>> slots = np.zeros(40, dtype=np.int64)
    >>> y = np.zeros(40); own = np.full(40, 0.1); pooled = np.full(40, 1.0)
    >>> pred = blend.combine(slots, own, pooled, y)
    >>> float(pred[0]), round(float(pred[-1]), 3)  # starts pooled, ends (almost) with its own model
    (1.0, 0.152)
    >>> round(float(blend.own_weight(np.array([0]))[0]), 3)
    0.943
    """

    def __init__(
        self, task: Task, discount: float = 0.95, sharpness: float = 1.0, prior_readings: float = 2.0
    ) -> None:
        if not 0.0 < discount < 1.0 or sharpness <= 0 or prior_readings < 0:
            raise ValueError("discount must be in (0, 1), sharpness positive, prior_readings non-negative")
        self.task = task
        self.discount = discount
        self.sharpness = sharpness
        self.prior_readings = prior_readings
        self._own = np.zeros(0)
        self._pooled = np.zeros(0)
        self._n = np.zeros(0)
        self._seen = np.zeros(0)

    def _ensure(self, n_slots: int) -> None:
        if n_slots > len(self._n):
            grow = max(n_slots, 2 * len(self._n)) - len(self._n)
            self._own, self._pooled, self._n, self._seen = (
                np.r_[a, np.zeros(grow)] for a in (self._own, self._pooled, self._n, self._seen)
            )

    def own_weight(self, slots: np.ndarray) -> np.ndarray:
        """The weight of each device's own model for its next reading (0 for a device not seen yet)."""
        self._ensure(int(slots.max(initial=-1)) + 1)
        own, pooled, n = self._own[slots], self._pooled[slots], self._n[slots]
        if self.task == "classification":
            return ((own < pooled) & (self._seen[slots] >= self.prior_readings)).astype(np.float64)
        # Discounted mean squared errors; a tiny floor keeps perfect predictors finite.
        floor = 1e-12 * (1.0 + own + pooled)
        inv_own = (n / (own + floor)) ** self.sharpness
        inv_pooled = (n / (pooled + floor)) ** self.sharpness
        earned = np.divide(inv_own, inv_own + inv_pooled, out=np.zeros_like(n), where=n > 0)
        seen = self._seen[slots]
        return earned * seen / (seen + self.prior_readings)

    def combine(self, slots: np.ndarray, own: np.ndarray, pooled: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Blended predictions of a batch, each from the weights before its reading; then learn the errors.

        ``slots`` are the readings' device slots in stream order; ``own`` and
        ``pooled`` the two predictors' predictions, ``y`` the truth.
        """
        self._ensure(int(slots.max(initial=-1)) + 1)
        out = np.empty(len(y), dtype=np.float64)
        ranks = ranks_within_devices(slots)
        for j in range(int(ranks.max(initial=-1)) + 1):
            at = np.flatnonzero(ranks == j)  # at most one reading per device
            s = slots[at]
            w = self.own_weight(s)
            if self.task == "classification":
                out[at] = np.where(w > 0.5, own[at], pooled[at])
                e_own, e_pooled = (own[at] != y[at]).astype(float), (pooled[at] != y[at]).astype(float)
            else:
                out[at] = w * own[at] + (1 - w) * pooled[at]
                e_own, e_pooled = (own[at] - y[at]) ** 2, (pooled[at] - y[at]) ** 2
            g = self.discount
            self._own[s] = g * self._own[s] + e_own
            self._pooled[s] = g * self._pooled[s] + e_pooled
            self._n[s] = g * self._n[s] + 1.0
            self._seen[s] += 1.0
        return out

    def _arrays(self) -> list[tuple[str, np.ndarray]]:
        return [("own", self._own), ("pooled", self._pooled), ("n", self._n), ("seen", self._seen)]

    def export(self, slots: np.ndarray) -> dict[str, list[float]]:
        """Per-device state of ``slots`` (JSON-able) for checkpoints."""
        self._ensure(int(slots.max(initial=-1)) + 1)
        return {k: a[slots].tolist() for k, a in self._arrays()}

    def restore(self, slots: np.ndarray, state: dict[str, list[float]]) -> None:
        """Inverse of :meth:`export`."""
        self._ensure(int(slots.max(initial=-1)) + 1)
        for k, a in self._arrays():
            a[slots] = np.asarray(state[k], dtype=np.float64)


__all__ = ["ErrorWeightedBlend", "ranks_within_devices"]
