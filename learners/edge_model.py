"""Local inference from a decoded model payload, as an edge device runs it.

The model is :class:`metastream_edge.model.EdgeModel` (numpy, no torch): the
same code runs on devices and in the worker's tests.

Examples
--------
>>> import numpy as np
>>> from learners import LearnerConfig
>>> from learners.fleet import FleetLearner
>>> fleet = FleetLearner(LearnerConfig(n_features=2))
>>> x, y = np.array([[0.5, 1.0], [1.0, 2.0]]), np.array([1.0, 3.0])
>>> _ = fleet.learn_predict(["d1", "d1"], x, y)
>>> model = EdgeModel.from_payload(fleet.export("d1", model_version=1))
>>> model.header.device_id, model.header.model_version
('d1', 1)
>>> import torch
>>> xs = torch.tensor(fleet.scaler.x.transform(x), dtype=torch.float32)
>>> out = fleet.net.forward(fleet.device_params("d1"), xs)  # the worker's model, same moments
>>> expected = fleet.scaler.inverse_y(fleet.net.predict(out).numpy())
>>> bool(np.allclose(model.predict(x), expected, atol=1e-5))
True
"""

from metastream_edge.model import EdgeModel

__all__ = ["EdgeModel"]
