"""A pooled model that needs no learning-rate tuning: Adam on chunks of the pooled stream.

:class:`~learners.shared_model.GlobalModel` takes one plain SGD step per
chunk of ``chunk`` readings at ``online_lr``, a rate chosen for per-device
models that step on every reading; the pooled model then takes many times
fewer steps than the readings it sees and stays under-trained on long
streams.  Adam's per-parameter step sizes adapt to the gradients' scale,
so one default serves data sets of any size.
"""

from __future__ import annotations

import torch

from learners.config import LearnerConfig
from learners.shared_model import GlobalModel

ADAM_LR = 0.01
"""Adam's step size for the pooled model (inputs and targets are standardised)."""


class AdamGlobalModel(GlobalModel):
    """:class:`GlobalModel` stepping with Adam (β = 0.9, 0.999) instead of plain SGD.

    Examples
    --------
    >>> model = AdamGlobalModel(LearnerConfig(n_features=2), chunk=4)
    >>> x = torch.randn(64, 2); y = x.sum(1)
    >>> first = ((model.learn_predict(x, y)[:4, 0] - y[:4]) ** 2).mean()
    >>> last = ((model.learn_predict(x, y)[-4:, 0] - y[-4:]) ** 2).mean()
    >>> bool(last < first)
    True
    """

    def __init__(self, cfg: LearnerConfig, chunk: int = 32, lr: float = ADAM_LR) -> None:
        super().__init__(cfg, chunk)
        self.lr = lr
        self.betas = (0.9, 0.999)
        self.eps = 1e-8
        self._m = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self._v = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self._t = 0

    def learn_predict(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        outs = []
        b1, b2 = self.betas
        for start in range(0, len(x), self.chunk):
            xc, yc = x[start : start + self.chunk], y[start : start + self.chunk]
            step, out = self.net.online_step(self.params, xc[None], yc[None], torch.ones(1, len(xc)))
            self._t += 1
            c1, c2 = 1 - b1**self._t, 1 - b2**self._t
            for k, g in step.items():
                self._m[k] = b1 * self._m[k] + (1 - b1) * g
                self._v[k] = b2 * self._v[k] + (1 - b2) * g * g
                move = (self._m[k] / c1) / ((self._v[k] / c2).sqrt() + self.eps)
                self.params[k] = self.params[k] - self.lr * move
            outs.append(out[0])
        return torch.cat(outs)

    def export_state(self) -> tuple[dict[str, torch.Tensor], int]:
        """Adam's moments (tensors by name) and step count, for checkpoints."""
        tensors = {f"m.{k}": v.clone() for k, v in self._m.items()}
        return tensors | {f"v.{k}": v.clone() for k, v in self._v.items()}, self._t

    def restore_state(self, tensors: dict[str, torch.Tensor], t: int) -> None:
        """Inverse of :meth:`export_state`."""
        self._m = {k: tensors[f"m.{k}"].clone() for k in self._m}
        self._v = {k: tensors[f"v.{k}"].clone() for k in self._v}
        self._t = int(t)


__all__ = ["ADAM_LR", "AdamGlobalModel"]
