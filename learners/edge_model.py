"""Local inference from a decoded model payload, as an edge device runs it."""

from __future__ import annotations

import numpy as np
import torch

from learners.codec import NORM_KEYS, ModelHeader, decode_model
from learners.nets import FunctionalNet


class EdgeModel:
    """A verified, ready-to-run model for one device.

    Examples
    --------
    >>> from learners import LearnerConfig
    >>> from learners.fleet import FleetLearner
    >>> fleet = FleetLearner(LearnerConfig(n_features=2))
    >>> x, y = np.array([[0.5, 1.0], [1.0, 2.0]]), np.array([1.0, 3.0])
    >>> _ = fleet.learn_predict(["d1", "d1"], x, y)
    >>> model = EdgeModel.from_payload(fleet.export("d1", model_version=1))
    >>> model.header.device_id, model.header.model_version
    ('d1', 1)
    >>> xs = torch.tensor(fleet.scaler.x.transform(x), dtype=torch.float32)
    >>> out = fleet.net.forward(fleet.device_params("d1"), xs)  # the worker's model, same moments
    >>> expected = fleet.scaler.inverse_y(fleet.net.predict(out).numpy())
    >>> bool(np.allclose(model.predict(x), expected, atol=1e-5))
    True
    """

    def __init__(self, tensors: dict[str, torch.Tensor], header: ModelHeader) -> None:
        self.header = header
        self.net = FunctionalNet(header.config())
        self.params = {k: v for k, v in tensors.items() if k not in NORM_KEYS}
        self.x_mean, self.x_std, self.y_mean, self.y_std = (tensors[k].double().numpy() for k in NORM_KEYS)

    @classmethod
    def from_payload(cls, payload: bytes) -> EdgeModel:
        """Decode and verify (see :func:`learners.codec.decode_model`)."""
        return cls(*decode_model(payload))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions for raw readings ``[n, n_features]`` (class index for classification)."""
        xs = torch.as_tensor((np.atleast_2d(x) - self.x_mean) / self.x_std, dtype=torch.float32)
        with torch.no_grad():
            pred = self.net.predict(self.net.forward(self.params, xs)).double().numpy()
        if self.header.task == "regression":
            return pred * self.y_std[0] + self.y_mean[0]
        return pred
