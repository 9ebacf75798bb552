"""Strategy ``blend``: a per-device meta-learned model and the pooled model, blended per device."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from learners.base import StepResult
from learners.blend import ErrorWeightedBlend
from learners.config import LearnerConfig
from learners.fleet import FleetLearner, InitName
from learners.registry import DeviceIndex
from learners.shared_model import GlobalLearner


class BlendedStrategy:
    """A :class:`FleetLearner` and a :class:`GlobalLearner` side by side; each reading's
    prediction mixes the two by the device's recent errors (:class:`ErrorWeightedBlend`).

    Drifts, adaptations and θ are the personal learner's; the pooled model
    learns from every reading, as ``global`` does.

    Examples
    --------
    >>> learner = BlendedStrategy(LearnerConfig(n_features=2, adapt_after=2, buffer_size=4))
    >>> r = learner.learn_predict(["a", "b", "a"], np.ones((3, 2)), np.array([1.0, 2.0, 1.5]))
    >>> learner.name, r.y_pred.shape, r.adapted
    ('blend', (3,), ['a'])
    """

    def __init__(self, cfg: LearnerConfig, init: InitName = "reptile") -> None:
        self.cfg = cfg
        self.name = "blend" if init == "reptile" else f"blend-{init}"
        self.personal = FleetLearner(cfg, init=init)
        self.pooled = GlobalLearner(cfg)
        self.blend = ErrorWeightedBlend(cfg.task)
        self.devices = DeviceIndex()

    def learn_predict(self, device_ids: Sequence[str], x: np.ndarray, y: np.ndarray) -> StepResult:
        own = self.personal.learn_predict(device_ids, x, y)
        pooled = self.pooled.learn_predict(device_ids, x, y)
        slots, _ = self.devices.slots_for(device_ids)
        pred = self.blend.combine(slots, own.y_pred, pooled.y_pred, np.asarray(y, dtype=np.float64))
        return StepResult(
            pred,
            drifted=own.drifted,
            adapted=own.adapted,
            meta_version=own.meta_version,
            checks=own.checks,
            slots=own.slots,
        )


__all__ = ["BlendedStrategy"]
