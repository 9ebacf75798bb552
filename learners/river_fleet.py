"""River's own per-device learners as a baseline strategy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from river import base, linear_model, preprocessing, tree

from learners.base import Personalise, StepResult, StrategyBase, reading_errors
from learners.config import LearnerConfig
from learners.drift import DriftMonitor
from learners.registry import DeviceIndex
from learners.scaling import TaskScaler

RiverKind = Literal["linear", "hat"]


def river_model(kind: RiverKind, cfg: LearnerConfig, seed: int) -> base.Estimator:
    """A fresh per-device River pipeline: a linear model or a Hoeffding adaptive tree.

    Examples
    --------
    >>> list(river_model("linear", LearnerConfig(n_features=2), 0).steps)
    ['StandardScaler', 'LinearRegression']
    """
    regression = cfg.task == "regression"
    if kind == "linear":
        model = linear_model.LinearRegression() if regression else linear_model.SoftmaxRegression()
        return preprocessing.StandardScaler() | model
    if kind == "hat":
        if regression:
            return preprocessing.StandardScaler() | tree.HoeffdingAdaptiveTreeRegressor(seed=seed)
        return tree.HoeffdingAdaptiveTreeClassifier(seed=seed)
    raise ValueError(f"unknown River model {kind!r}; choose 'linear' or 'hat'")


class RiverFleet(StrategyBase):
    """Strategy ``river-linear`` / ``river-hat``: one River model per device.

    Readings are handled one at a time (River's ``predict_one`` then
    ``learn_one``); drifts are detected on the same normalised error stream as
    the torch strategies, for counting only; the model adapts by itself.

    Examples
    --------
    >>> fleet = RiverFleet(LearnerConfig(n_features=1), kind="linear")
    >>> r = fleet.learn_predict(["a", "b", "a"], np.ones((3, 1)), np.array([2.0, 4.0, 2.0]))
    >>> fleet.name, fleet.devices.ids, r.y_pred.shape
    ('river-linear', ['a', 'b'], (3,))
    """

    def __init__(self, cfg: LearnerConfig, kind: RiverKind = "linear") -> None:
        self.cfg = cfg
        self.kind = kind
        self.name = f"river-{kind}"
        self._factory: Callable[[int], base.Estimator] = lambda s: river_model(kind, cfg, s)
        self._factory(0)  # fail early on a bad kind
        self.devices = DeviceIndex()
        self.models: list[base.Estimator] = []
        self.scaler = TaskScaler(cfg.task, cfg.n_features)
        self.monitor = DriftMonitor(cfg.detector, cfg.cooldown, cfg.seed)
        self.n_drifts = 0

    def learn_predict(self, device_ids: Sequence[str], x: np.ndarray, y: np.ndarray) -> StepResult:
        slots, new = self.devices.slots_for(device_ids)
        for s in new:
            self.models.append(self._factory(self.cfg.seed + s))
        regression = self.cfg.task == "regression"
        pred = np.empty(len(slots))
        for i, (s, row, target) in enumerate(zip(slots.tolist(), x.tolist(), y.tolist(), strict=True)):
            model = self.models[s]
            features = dict(enumerate(row))
            p = model.predict_one(features)
            pred[i] = 0.0 if p is None else p
            model.learn_one(features, target if regression else int(target))
        self.scaler.fit_transform(x, y)
        scale = self.scaler.y.std[0] if regression else 1.0
        errors = reading_errors(self.cfg.task, y, pred) / scale
        drift_at = self.monitor.update(slots.tolist(), errors.tolist())
        self.n_drifts += len(drift_at)
        return StepResult(pred, drifted=list(dict.fromkeys(device_ids[i] for i in drift_at)))

    def personaliser(self) -> Personalise:
        """A fresh River model per device, one pass over its ``k`` readings."""
        regression = self.cfg.task == "regression"

        def run(xs: np.ndarray, ys: np.ndarray, xq: np.ndarray) -> np.ndarray:
            pred = np.zeros(xq.shape[:2])
            for e in range(len(xs)):
                model: Any = river_model(self.kind, self.cfg, self.cfg.seed + e)
                for row, target in zip(xs[e].tolist(), ys[e].tolist(), strict=True):
                    model.learn_one(dict(enumerate(row)), target if regression else int(target))
                for j, row in enumerate(xq[e].tolist()):
                    p = model.predict_one(dict(enumerate(row)))
                    pred[e, j] = 0.0 if p is None else p
            return pred

        return run
