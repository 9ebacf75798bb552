"""Strategy ``blend``: a per-device meta-learned model and the pooled model, blended per device."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from learners.base import Personalise, StepResult, StrategyBase
from learners.blend import ErrorWeightedBlend
from learners.config import LearnerConfig
from learners.fleet import FleetLearner, InitName
from learners.registry import DeviceIndex
from learners.shared_model import GlobalLearner
from learners.theta_source import ThetaSource


class BlendedStrategy(StrategyBase):
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

    def __init__(self, cfg: LearnerConfig, init: ThetaSource | InitName = "reptile") -> None:
        self.cfg = cfg
        self.personal = FleetLearner(cfg, init=init)
        theta = self.personal.name
        self.name = "blend" if theta == "reptile" else f"blend-{theta}"
        self.pooled = GlobalLearner(cfg)
        self.blend = ErrorWeightedBlend(cfg.task)
        self.devices = DeviceIndex()

    def learn_predict(self, device_ids: Sequence[str], x: np.ndarray, y: np.ndarray) -> StepResult:
        own = self.personal.learn_predict(device_ids, x, y)
        pooled = self.pooled.learn_predict(device_ids, x, y)
        return self._blended(device_ids, own, pooled.y_pred, y)

    def _blended(
        self, device_ids: Sequence[str], own: StepResult, pooled_pred: np.ndarray, y: np.ndarray
    ) -> StepResult:
        """``own``'s result with its predictions blended per device with ``pooled_pred``."""
        slots, _ = self.devices.slots_for(device_ids)
        pred = self.blend.combine(slots, own.y_pred, pooled_pred, np.asarray(y, dtype=np.float64))
        return StepResult(
            pred,
            drifted=own.drifted,
            adapted=own.adapted,
            meta_version=own.meta_version,
            checks=own.checks,
            slots=own.slots,
        )

    def pooled_personaliser(self) -> Personalise:
        """The pooled model's k-shot predictions (as ``global``'s)."""
        return self.pooled.personaliser()

    def personaliser(self) -> Personalise:
        """The two models' k-shot predictions, mixed by how each did on the support's newest readings.

        The personal model is adapted on the older support readings to be judged
        on the newest quarter (at least one), as the regression guard does.
        """
        own, pooled = self.personal.personaliser(), self.pooled_personaliser()
        task = self.cfg.task

        def run(xs: np.ndarray, ys: np.ndarray, xq: np.ndarray) -> np.ndarray:
            hold = max(1, xs.shape[1] // 4)
            judge = ErrorWeightedBlend(task)
            episodes = np.arange(len(xs))
            own_held = own(xs[:, :-hold], ys[:, :-hold], xs[:, -hold:])
            pooled_held = pooled(xs, ys, xs[:, -hold:])
            for j in range(hold):
                judge.combine(episodes, own_held[:, j], pooled_held[:, j], ys[:, -hold + j])
            w = judge.own_weight(episodes)[:, None]
            mine, theirs = own(xs, ys, xq), pooled(xs, ys, xq)
            if task == "classification":
                return np.where(w > 0.5, mine, theirs)
            return w * mine + (1 - w) * theirs

        return run


__all__ = ["BlendedStrategy"]
