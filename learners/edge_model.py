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
>>> bool(np.allclose(model.predict(x), fleet.learn_predict(["d1"] * 2, x, y).y_pred, atol=1e-5))
True
"""

from metastream_edge.model import EdgeModel

__all__ = ["EdgeModel"]
