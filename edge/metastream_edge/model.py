"""Local inference from a decoded model payload, as an edge device runs it (numpy only)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from metastream_edge.codec import NORM_KEYS, Arrays, ModelHeader, decode_model
from metastream_edge.mlp import layer_names, point_predictions


class EdgeModel:
    """A verified, ready-to-run model of one device: weights, normalisation and header.

    Parameters
    ----------
    arrays : mapping of str to ndarray
        The payload's weights and its ``norm.*`` arrays (:class:`KeyError` if one is missing).
    header : ModelHeader
        What the payload says about itself.

    Examples
    --------
    >>> h = ModelHeader("d1", 1, 0, "regression", 1, 1, (2,))
    >>> arrays = {"0.weight": np.ones((2, 1), np.float32), "0.bias": np.zeros(2, np.float32),
    ...           "2.weight": np.ones((1, 2), np.float32), "2.bias": np.zeros(1, np.float32),
    ...           "norm.x_mean": np.zeros(1, np.float32), "norm.x_std": np.ones(1, np.float32),
    ...           "norm.y_mean": np.array([10.0], np.float32), "norm.y_std": np.array([2.0], np.float32)}
    >>> model = EdgeModel(arrays, h)
    >>> model.predict(np.array([[1.0], [-1.0]])).tolist()   # 2·relu(x)·y_std + y_mean
    [14.0, 10.0]
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], header: ModelHeader) -> None:
        self.header = header
        self.params: Arrays = {k: np.asarray(v, np.float32) for k, v in arrays.items() if k not in NORM_KEYS}
        self.x_mean, self.x_std, self.y_mean, self.y_std = (
            np.asarray(arrays[k], np.float64) for k in NORM_KEYS
        )
        # Transposed weights, in layer order, once: prediction is a few small matrix products.
        names = layer_names(self.params)
        self._layers = [
            (np.ascontiguousarray(self.params[f"{n}.weight"].T), self.params[f"{n}.bias"]) for n in names
        ]

    @classmethod
    def from_payload(cls, payload: bytes) -> EdgeModel:
        """Decode and verify (see :func:`metastream_edge.codec.decode_model`)."""
        return cls(*decode_model(payload))

    def norm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(x_mean, x_std, y_mean, y_std)`` the model was trained with."""
        return self.x_mean, self.x_std, self.y_mean, self.y_std

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions for raw readings ``[n, n_features]`` (class index for classification)."""
        h = ((np.atleast_2d(x) - self.x_mean) / self.x_std).astype(np.float32)
        last = len(self._layers) - 1
        for i, (w_t, b) in enumerate(self._layers):
            h = h @ w_t + b
            if i < last:
                np.maximum(h, 0.0, out=h)
        pred = point_predictions(self.header.task, h).astype(np.float64)
        if self.header.task == "regression":
            return pred * self.y_std[0] + self.y_mean[0]
        return pred
