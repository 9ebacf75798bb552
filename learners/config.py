"""Learner settings shared by every strategy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["regression", "classification"]
DetectorName = Literal["adwin", "page_hinkley", "kswin"]


@dataclass(frozen=True)
class LearnerConfig:
    """Everything a fleet learner needs to know, with sensible defaults.

    Parameters
    ----------
    n_features
        Number of numeric input features per reading.
    task
        ``"regression"`` (one real target) or ``"classification"``.
    n_classes
        Number of classes, for classification only.
    hidden
        Hidden layer widths of the per-device MLP.
    online_lr
        SGD step size of the per-device predict-then-learn update.
    inner_lr, inner_steps
        Step size and number *k* of the SGD steps that adapt θ to a device.
    buffer_size
        Recent readings kept per device for adaptation and meta-updates.
    adapt_after
        Readings a new device collects before its first adaptation; also the
        number of most recent readings an adaptation after drift uses.
    meta_lr
        Outer step size ε of the meta-update.
    meta_every, meta_batch
        Readings processed between two meta-updates, and the most devices
        (drawn at random among those active since the last one) taking part.
    detector, cooldown
        River drift detector on each device's error stream, and the number of
        the device's readings during which a new alarm is ignored.
    guard_holdout, guard_min_holdout
        Regression guard (:mod:`learners.guard`): an adaptation holds back
        this share (at least ``guard_min_holdout``) of the device's newest
        readings, and its result replaces the device's current model only
        if it does no worse on them.  ``guard_holdout=0`` turns it off.
    clip, trim
        Robust aggregation: clip each device's update to this fixed L2 norm
        (``None``: the adaptive bound below), and drop this fraction of the
        lowest and highest values per coordinate.
    clip_multiple, clip_max
        Adaptive clipping (:mod:`learners.bounds`), on by default: each
        update's L2 norm is clipped to ``clip_multiple`` times the median
        norm of recently accepted updates, never above ``clip_max`` (the
        bound until there is enough history).  ``clip_multiple=0`` turns it off.
    weight_multiple, weight_max
        Each update's claimed weight (readings behind it) is capped at
        ``weight_multiple`` times the median of recently accepted weights,
        never above ``weight_max``.  ``weight_multiple=0`` turns it off.
    learn_slice
        Most readings the worker's core learns in one stacked step; a larger
        call is learned in slices of this size, which bounds a step's memory.
    seed
        Seeds weight initialisation and every other random choice.

    Examples
    --------
    >>> cfg = LearnerConfig(n_features=4)
    >>> cfg.task, cfg.hidden, cfg.inner_steps
    ('regression', (32,), 10)
    >>> LearnerConfig(n_features=0)
    Traceback (most recent call last):
    ...
    ValueError: n_features must be >= 1, got 0
    """

    n_features: int
    task: Task = "regression"
    n_classes: int = 2
    hidden: tuple[int, ...] = (32,)
    online_lr: float = 0.05
    inner_lr: float = 0.2
    inner_steps: int = 10
    buffer_size: int = 32
    adapt_after: int = 16
    meta_lr: float = 0.3
    meta_every: int = 500
    meta_batch: int = 32
    detector: DetectorName = "adwin"
    cooldown: int = 100
    guard_holdout: float = 0.25
    guard_min_holdout: int = 4
    clip: float | None = None
    trim: float = 0.0
    clip_multiple: float = 3.0
    clip_max: float = 10.0
    weight_multiple: float = 2.0
    weight_max: float = 1000.0
    learn_slice: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "n_features": (self.n_features, 1),
            "inner_steps": (self.inner_steps, 0),
            "buffer_size": (self.buffer_size, 1),
            "adapt_after": (self.adapt_after, 1),
            "meta_every": (self.meta_every, 1),
            "meta_batch": (self.meta_batch, 1),
            "cooldown": (self.cooldown, 0),
            "guard_min_holdout": (self.guard_min_holdout, 0),
            "learn_slice": (self.learn_slice, 1),
        }
        for name, (value, low) in checks.items():
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if self.task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', got {self.task!r}")
        if self.task == "classification" and self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2 for classification, got {self.n_classes}")
        if self.adapt_after > self.buffer_size:
            raise ValueError("adapt_after must not exceed buffer_size")
        if not 0.0 <= self.trim < 0.5:
            raise ValueError(f"trim must be in [0, 0.5), got {self.trim}")
        if not 0.0 <= self.guard_holdout < 1.0:
            raise ValueError(f"guard_holdout must be in [0, 1), got {self.guard_holdout}")
        if self.clip is not None and self.clip <= 0:
            raise ValueError(f"clip must be positive, got {self.clip}")
        for name in ("clip_multiple", "weight_multiple"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: off), got {getattr(self, name)}")
        for name in ("clip_max", "weight_max"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def n_outputs(self) -> int:
        """Width of the model's output layer."""
        return 1 if self.task == "regression" else self.n_classes
