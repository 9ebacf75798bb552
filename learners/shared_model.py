"""One model for all devices: the ``global`` baseline, and the pooled init of ``finetune``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from learners.base import Personalise, StepResult, StrategyBase, reading_errors
from learners.config import LearnerConfig
from learners.drift import DriftMonitor
from learners.nets import FunctionalNet, Params, init_params, stack
from learners.registry import DeviceIndex
from learners.scaling import TaskScaler


class GlobalModel:
    """A single model trained by online SGD on every device's readings pooled.

    A micro-batch is cut into chunks of ``chunk`` readings and each chunk is
    one SGD step, so the pooled model takes about as many steps per reading
    as a per-device model does.
    """

    def __init__(self, cfg: LearnerConfig, chunk: int = 32) -> None:
        self.cfg = cfg
        self.chunk = chunk
        self.net = FunctionalNet(cfg)
        self.params = stack(init_params(cfg), 1)

    def learn_predict(self, x: Tensor, y: Tensor) -> Tensor:
        """Raw outputs for a standardised batch (each chunk before its step)."""
        outs = []
        for start in range(0, len(x), self.chunk):
            xc, yc = x[start : start + self.chunk], y[start : start + self.chunk]
            mask = torch.ones(1, len(xc))
            step, out = self.net.online_step(self.params, xc[None], yc[None], mask)
            self.params = {k: v - self.cfg.online_lr * step[k] for k, v in self.params.items()}
            outs.append(out[0])
        return torch.cat(outs)

    @property
    def theta(self) -> Params:
        """The pooled model as one (unstacked) set of parameters."""
        return {k: v[0] for k, v in self.params.items()}


class GlobalLearner(StrategyBase):
    """Strategy ``global``: one shared model, no per-device weights, no adaptation.

    Drifts are still detected per device, to be counted like everywhere else.

    Examples
    --------
    >>> learner = GlobalLearner(LearnerConfig(n_features=2))
    >>> result = learner.learn_predict(["a", "b"], np.ones((2, 2)), np.array([1.0, 2.0]))
    >>> result.y_pred.shape
    (2,)
    """

    name = "global"

    def __init__(self, cfg: LearnerConfig) -> None:
        self.cfg = cfg
        self.model = GlobalModel(cfg)
        self.scaler = TaskScaler(cfg.task, cfg.n_features)
        self.devices = DeviceIndex()
        self.monitor = DriftMonitor(cfg.detector, cfg.cooldown, cfg.seed)
        self.n_drifts = 0

    def learn_predict(self, device_ids: Sequence[str], x: np.ndarray, y: np.ndarray) -> StepResult:
        slots, _ = self.devices.slots_for(device_ids)
        xs, ys = self.scaler.fit_transform(x, y)
        out = self.model.learn_predict(torch.from_numpy(xs), torch.from_numpy(ys))
        pred = self.model.net.predict(out).numpy().astype(np.float64)
        drift_at = self.monitor.update(slots.tolist(), reading_errors(self.cfg.task, ys, pred).tolist())
        self.n_drifts += len(drift_at)
        drifted = list(dict.fromkeys(device_ids[i] for i in drift_at))
        return StepResult(self.scaler.inverse_y(pred), drifted=drifted)

    def personaliser(self) -> Personalise:
        """The shared model as it is: no per-device weights (the "no personalisation" reference)."""

        def run(xs: np.ndarray, ys: np.ndarray, xq: np.ndarray) -> np.ndarray:
            xq_t = torch.from_numpy(self.scaler.x.transform(xq).astype(np.float32))
            out = self.model.net.forward(self.model.theta, xq_t.reshape(-1, xq.shape[-1]))
            pred = self.model.net.predict(out).numpy().astype(np.float64).reshape(xq.shape[:2])
            return self.scaler.inverse_y(pred)

        return run
