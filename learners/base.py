"""What every fleet strategy looks like from the outside."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from learners.config import Task
from learners.guard import GuardCheck


@dataclass
class StepResult:
    """Outcome of one predict-then-learn micro-batch.

    Attributes
    ----------
    y_pred
        Prediction for each reading, made before learning from it (class
        index as a float for classification).
    drifted
        Devices whose drift was detected in this batch, in order.
    adapted
        Devices with a new model to publish: re-adapted from θ in this
        batch and kept (the regression guard accepted it), or given θ
        itself (a new device whose adaptations the guard kept refusing).
    meta_version
        Version of θ after the batch (0 for strategies without one).
    checks
        The regression guard's comparison for every adaptation it judged in
        this batch, accepted or not, in order.
    slots
        Each reading's device slot, for strategies that keep per-device
        state in slots (``None`` otherwise).
    drift_at
        Index in the batch of each reading at which a drift was accepted,
        ascending (for strategies that place events at readings).
    adapted_at
        Index in the batch of each reading after which a device got a new
        model, ascending (a device may adapt more than once in a batch).
    """

    y_pred: np.ndarray
    drifted: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    meta_version: int = 0
    checks: list[GuardCheck] = field(default_factory=list)
    slots: np.ndarray | None = None
    drift_at: list[int] = field(default_factory=list)
    adapted_at: list[int] = field(default_factory=list)

    @property
    def rejected(self) -> list[GuardCheck]:
        """Adaptations the guard refused: those devices kept their current model."""
        return [c for c in self.checks if not c.accepted]


Personalise = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
"""``(x_support [E, k, F], y_support [E, k], x_query [E, h, F]) → predictions [E, h]``."""


class Strategy(Protocol):
    """A learner for a whole fleet: predict-then-learn on mixed micro-batches.

    Everything a caller (replay, evaluation, k-shot) asks of a strategy is
    here, so no caller has to probe its type; :class:`StrategyBase` gives the
    members a strategy without them answers with.
    """

    name: str

    def learn_predict(self, device_ids: Sequence[str], x: np.ndarray, y: np.ndarray) -> StepResult:
        """Predict every reading of the batch, then learn from all of them."""
        ...

    @property
    def n_adaptations(self) -> int:
        """Adaptations from θ kept so far (0 for strategies that do not adapt)."""
        ...

    @property
    def meta_version(self) -> int:
        """Meta-updates θ has had (0 for strategies without one)."""
        ...

    @property
    def start_wins(self) -> dict[str, int]:
        """How often each candidate start won an adaptation (empty for strategies without a choice)."""
        ...

    def personaliser(self) -> Personalise:
        """How the trained strategy personalises a device it never saw, on ``k`` of its readings.

        Raises
        ------
        TypeError
            For a strategy that cannot personalise a new device.
        """
        ...


class StrategyBase:
    """Safe defaults for the :class:`Strategy` members a strategy does not have.

    Examples
    --------
    >>> class Mean(StrategyBase):
    ...     name = "mean"
    >>> Mean().n_adaptations, Mean().meta_version
    (0, 0)
    >>> Mean().personaliser()
    Traceback (most recent call last):
    ...
    TypeError: no k-shot personalisation for Mean
    """

    @property
    def n_adaptations(self) -> int:
        return 0

    @property
    def meta_version(self) -> int:
        return 0

    @property
    def start_wins(self) -> dict[str, int]:
        return {}

    def personaliser(self) -> Personalise:
        raise TypeError(f"no k-shot personalisation for {type(self).__name__}")


def reading_errors(task: Task, y: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Absolute error (regression) or 0/1 misclassification (classification).

    Examples
    --------
    >>> reading_errors("regression", np.array([1.0, 2.0]), np.array([1.5, 0.0]))
    array([0.5, 2. ])
    >>> reading_errors("classification", np.array([1.0, 2.0]), np.array([1.0, 0.0]))
    array([0., 1.])
    """
    if task == "regression":
        return np.abs(y - y_pred)
    return (y != y_pred).astype(np.float64)
