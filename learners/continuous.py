"""Continuous meta-learning: θ follows the fleet's current per-device weights.

:class:`~learners.fleet.FleetLearner` moves θ once every ``meta_every``
readings, with a Reptile step on a sample of devices' buffers, so θ sees a
small share of the stream.  Here θ takes a Reptile step much more often,
every ``every`` readings, towards the weights the devices have *now*: each
device's weights were adapted from θ and have since learned from every one
of its readings, so Δ_d = w_d − θ carries all the data the pooled model
sees.  With stacked weights the step is one weighted mean over the devices
active since the last step (weighted by their readings since then), through
the same robust aggregation (clipping, trimming) as every meta-update.

The steps happen at fixed reading counts of the stream, never at a
micro-batch's end, so the same stream gives the same θ however it is cut.
"""

from __future__ import annotations

import numpy as np
import torch

from learners.config import LearnerConfig
from learners.fleet import FleetLearner
from learners.nets import flatten, flatten_stacked
from learners.theta_source import MetaLearnedTheta, RemoteTheta

CONTINUOUS_EVERY = 64
"""Readings between two continuous meta-steps (about one step per pooled-model chunk or two)."""


class ContinuousFleet(FleetLearner):
    """A :class:`FleetLearner` whose θ steps towards the fleet's weights every ``every`` readings.

    Parameters
    ----------
    cfg
        Model, learning and drift settings (``meta_lr`` is the step size).
    every
        Readings between two meta-steps.
    local_meta
        As for :class:`FleetLearner`: apply the steps here, or queue them in
        :attr:`contributions` for a meta agent.

    Examples
    --------
    >>> cfg = LearnerConfig(n_features=2, adapt_after=2, buffer_size=4)
    >>> fleet = ContinuousFleet(cfg, every=2)
    >>> r = fleet.learn_predict(["a", "b", "a", "b"], np.ones((4, 2)), np.array([1.0, 2.0, 1.5, 2.5]))
    >>> fleet.name, fleet.meta_version  # a step at readings 2 and 4
    ('continuous', 2)
    """

    def __init__(
        self,
        cfg: LearnerConfig,
        every: int = CONTINUOUS_EVERY,
        local_meta: bool = True,
        source: MetaLearnedTheta | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if source is None:
            source = MetaLearnedTheta(cfg) if local_meta else RemoteTheta(cfg)
        super().__init__(cfg, source)
        self.meta_source = source
        """The θ source the continuous steps go to (applied here, or queued for a meta agent)."""
        self.every = every
        self.name = "continuous"

    def _segment_ends(self, n: int) -> list[int]:
        start, stop = self.processed, self.processed + n
        ends = {n} | {p - start for p in range((start // self.every + 1) * self.every, stop, self.every)}
        ends |= {at - start for at, _, _ in self._theta_queue if start < at < stop}
        return sorted(ends) if n else []

    def _at_position(self) -> None:
        at = self.processed
        if at % self.every == 0:
            self._continuous_step()
        while self._theta_queue and self._theta_queue[0][0] <= at:
            _, version, theta = self._theta_queue.pop(0)
            self._adopt_now(theta, version)

    def _continuous_step(self) -> None:
        """θ ← θ + ε · aggregate(w_d − θ) over the devices that had readings since the last step."""
        n = len(self.devices)
        active = np.flatnonzero(self._since_meta[:n] > 0)
        if len(active) == 0:
            return
        idx = torch.from_numpy(active)
        current = flatten_stacked({k: v.index_select(0, idx) for k, v in self.params.items()})
        deltas = current - flatten(self.theta)
        weights = torch.from_numpy(self._since_meta[active]).float()
        self._since_meta[:] = 0
        self.meta_source.apply(deltas, weights)


__all__ = ["CONTINUOUS_EVERY", "ContinuousFleet"]
