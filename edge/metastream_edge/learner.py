"""Learning on the device: predict-then-learn, drift detection, k-step adaptation from θ.

The same steps as the worker's fleet learner for one device, in numpy:
every batch of readings is predicted with the current weights φ, then φ
takes one clipped SGD step on the batch's mean loss; a Page-Hinkley test
watches the errors, and after a drift φ restarts from θ with ``k`` SGD steps
on the readings that came after it.  In federated mode
:meth:`OnDeviceLearner.contribution` adapts θ on the device's recent readings
and returns ``φ − θ`` with the number of readings behind it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from metastream_edge.codec import ModelHeader
from metastream_edge.drift import ErrorDriftDetector
from metastream_edge.mlp import Params, adapt, flatten, forward, online_step, point_predictions
from metastream_edge.model import EdgeModel
from metastream_edge.scaling import TaskScaler


@dataclass(frozen=True)
class EdgeConfig:
    """Model family and learning settings of one device (the worker's learner settings, same names).

    Examples
    --------
    >>> EdgeConfig(n_features=8).n_outputs, EdgeConfig(2, task="classification", n_classes=3).n_outputs
    (1, 3)
    >>> EdgeConfig(n_features=2, adapt_after=40)
    Traceback (most recent call last):
    ...
    ValueError: adapt_after must not exceed buffer_size
    """

    n_features: int
    task: str = "regression"
    n_classes: int = 2
    hidden: tuple[int, ...] = (32,)
    online_lr: float = 0.05
    inner_lr: float = 0.2
    inner_steps: int = 10
    buffer_size: int = 32
    adapt_after: int = 16
    cooldown: int = 100
    drift_warmup: int = 50
    drift_threshold: float = 20.0

    def __post_init__(self) -> None:
        if self.n_features < 1 or self.buffer_size < 1 or self.adapt_after < 1 or self.inner_steps < 0:
            raise ValueError("n_features, buffer_size and adapt_after must be >= 1, inner_steps >= 0")
        if self.task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', got {self.task!r}")
        if self.adapt_after > self.buffer_size:
            raise ValueError("adapt_after must not exceed buffer_size")

    @property
    def n_outputs(self) -> int:
        """Width of the model's output layer."""
        return 1 if self.task == "regression" else self.n_classes

    def fits(self, header: ModelHeader) -> bool:
        """Whether a received model has this architecture."""
        mine = ModelHeader("", 0, 0, self.task, self.n_features, self.n_outputs, tuple(self.hidden))
        return header.param_shapes() == mine.param_shapes() and header.task == self.task


class RecentReadings:
    """A ring buffer of the newest ``size`` standardised readings of one device.

    Examples
    --------
    >>> buf = RecentReadings(n_features=1, size=3)
    >>> buf.push(np.arange(5.0)[:, None], np.arange(5.0))
    >>> x, y, mask = buf.recent(4)
    >>> y.tolist(), mask.tolist()   # newest first, padded
    ([4.0, 3.0, 2.0, 0.0], [1.0, 1.0, 1.0, 0.0])
    """

    def __init__(self, n_features: int, size: int) -> None:
        self.size = size
        self.x = np.zeros((size, n_features), np.float32)
        self.y = np.zeros(size, np.float32)
        self.count = 0
        self.next = 0

    def push(self, x: np.ndarray, y: np.ndarray) -> None:
        """Append readings, oldest first (only the last ``size`` of a large batch are kept)."""
        for xi, yi in zip(x[-self.size :], y[-self.size :], strict=True):
            self.x[self.next], self.y[self.next] = xi, yi
            self.next = (self.next + 1) % self.size
            self.count = min(self.count + 1, self.size)

    def keep_newest(self, n: int) -> None:
        """Forget all but the ``n`` newest readings."""
        self.count = min(self.count, n)

    def recent(self, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The newest ``m`` readings, newest first, as ``(x, y, mask)`` padded with mask 0."""
        back = np.arange(m)
        idx = (self.next - 1 - back) % self.size
        mask = (back < self.count).astype(np.float32)
        return self.x[idx] * mask[:, None], self.y[idx] * mask, mask


@dataclass(frozen=True)
class LearnStep:
    """What one :meth:`OnDeviceLearner.learn` call did."""

    y_pred: np.ndarray
    """Predictions made before learning, in the target's units (class index for classification)."""
    drifted: bool
    adapted: bool


class OnDeviceLearner:
    """One device's model, learning online from its own readings.

    Parameters
    ----------
    cfg : EdgeConfig
        Model family and learning settings.
    theta : mapping, optional
        The meta-initialisation θ (weights) adaptations start from; φ starts
        as θ too.  Set or replace it later with :meth:`set_theta`.

    Examples
    --------
    >>> cfg = EdgeConfig(n_features=1, hidden=(8,), adapt_after=8, buffer_size=16, cooldown=20,
    ...                  drift_warmup=20)
    >>> rng = np.random.default_rng(0)
    >>> theta = {"0.weight": rng.normal(size=(8, 1)).astype(np.float32),
    ...          "0.bias": np.zeros(8, np.float32),
    ...          "2.weight": rng.normal(size=(1, 8)).astype(np.float32) / 4,
    ...          "2.bias": np.zeros(1, np.float32)}
    >>> device = OnDeviceLearner(cfg, theta)
    >>> x = rng.normal(size=(400, 1))
    >>> y = np.where(np.arange(400) < 200, 2.0, -2.0) * x[:, 0]   # the device's relation flips halfway
    >>> steps = [device.learn(x[i : i + 4], y[i : i + 4]) for i in range(0, 400, 4)]
    >>> device.n_drifts >= 1, device.n_adaptations >= 1
    (True, True)
    """

    def __init__(self, cfg: EdgeConfig, theta: Mapping[str, np.ndarray] | None = None) -> None:
        self.cfg = cfg
        self.scaler = TaskScaler(cfg.task, cfg.n_features)
        self.buffer = RecentReadings(cfg.n_features, cfg.buffer_size)
        self.detector = ErrorDriftDetector(cfg.drift_warmup, cfg.cooldown)
        assert self.detector.test is not None
        self.detector.test.threshold = cfg.drift_threshold
        self.theta: Params | None = None
        self.theta_version: int | None = None
        self.params: Params | None = None
        self.model_version: int | None = None
        self.pending = False
        self.new_readings = 0
        self.n_seen = 0
        self.n_drifts = 0
        self.n_adaptations = 0
        if theta is not None:
            self.set_theta(theta)

    # -- where the weights come from -----------------------------------------------------

    def set_theta(self, theta: Mapping[str, np.ndarray], version: int | None = None) -> None:
        """Take a new θ; φ starts from it if the device has no weights yet."""
        self.theta = {k: np.array(v, np.float32) for k, v in theta.items() if not k.startswith("norm.")}
        self.theta_version = version
        if self.params is None:
            self.params = {k: v.copy() for k, v in self.theta.items()}

    def use_model(self, model: EdgeModel) -> None:
        """Run a received model: its weights become φ and its normalisation is kept fixed."""
        self.params = {k: np.array(v, np.float32) for k, v in model.params.items()}
        self.model_version = model.header.model_version
        self.scaler = TaskScaler.from_norm(self.cfg.task, *model.norm())

    # -- inference and learning ------------------------------------------------------------

    def _weights(self) -> Params:
        if self.params is None:
            raise LookupError("no model yet: give the device θ (set_theta) or a model (use_model)")
        return self.params

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions for raw readings ``[n, n_features]`` (class index for classification)."""
        xs = self.scaler.x.transform(np.atleast_2d(x)).astype(np.float32)
        pred = point_predictions(self.cfg.task, forward(self._weights(), xs)).astype(np.float64)
        return self.scaler.inverse_y(pred)

    def observe(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keep new readings (standardised, in the buffer) without learning from them; returns them."""
        xs, ys = self.scaler.fit_transform(np.atleast_2d(x), np.atleast_1d(y))
        self.buffer.push(xs, ys)
        self.new_readings += len(ys)
        self.n_seen += len(ys)
        return xs, ys

    def online(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict-then-learn only: one SGD step per reading, in order, as the worker takes them.

        Each reading is predicted with the weights after the one before it, so
        how readings are grouped into calls changes nothing.  Returns the
        standardised inputs and targets and the predictions made before each
        step (standardised units).
        """
        weights = self._weights()  # before observing: no weights, nothing changes
        xs, ys = self.observe(x, y)
        outs = []
        for i in range(len(ys)):
            one = slice(i, i + 1)
            weights, out = online_step(self.cfg.task, weights, xs[one], ys[one], self.cfg.online_lr)
            outs.append(out)
        self.params = weights
        raw = np.concatenate(outs) if outs else np.zeros((0, 1), np.float32)
        return xs, ys, point_predictions(self.cfg.task, raw).astype(np.float64)

    def learn(self, x: np.ndarray, y: np.ndarray) -> LearnStep:
        """Predict-then-learn on a batch, watch the errors for drift, adapt from θ after one."""
        _, ys, pred = self.online(x, y)
        # The worker's error stream: absolute error, or 0/1 misclassification.
        errors = np.abs(ys - pred) if self.cfg.task == "regression" else (ys != pred).astype(np.float64)
        drifted = False
        for e in errors:
            drifted = self.detector.update(float(e)) or drifted
        if drifted:
            self.n_drifts += 1
            # Page-Hinkley gives no change point: adapt on readings that come after the alarm.
            self.buffer.keep_newest(0)
            self.pending = True
        adapted = False
        if self.pending and self.buffer.count >= self.cfg.adapt_after:
            start = self.theta if self.theta is not None else self._weights()
            xb, yb, mask = self.buffer.recent(self.cfg.adapt_after)
            self.params = adapt(self.cfg.task, start, xb, yb, mask, self.cfg.inner_steps, self.cfg.inner_lr)
            self.pending, adapted = False, True
            self.n_adaptations += 1
        return LearnStep(self.scaler.inverse_y(pred), drifted, adapted)

    def contribution(self, theta: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, int] | None:
        """Federated mode: φ ← k SGD steps from θ on the recent readings; ``(φ − θ, readings)``.

        ``None`` until ``adapt_after`` new readings arrived since the previous
        contribution.  φ becomes the device's weights.
        """
        base = self.theta if theta is None else {k: np.asarray(v, np.float32) for k, v in theta.items()}
        if base is None:
            raise LookupError("no θ yet: call set_theta() first")
        if self.new_readings < self.cfg.adapt_after:
            return None
        x, y, mask = self.buffer.recent(self.cfg.buffer_size)
        phi = adapt(self.cfg.task, base, x, y, mask, self.cfg.inner_steps, self.cfg.inner_lr)
        self.params = phi
        n, self.new_readings = self.new_readings, 0
        return flatten(phi) - flatten(base), n
