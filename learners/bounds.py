"""Bounds on meta contributions: adaptive norm clipping and capped claimed weights.

Every contribution row is a proposed change Δ of θ with a claimed weight
``w`` (the readings behind it).  Before aggregation each row is bounded:

- ``‖Δ‖`` is clipped to ``clamp(clip_multiple · median(recent norms), MIN_CLIP, clip_max)``;
- ``w`` is capped at ``clamp(weight_multiple · median(recent weights), 1, weight_max)``.

"Recent" is a window of the last :data:`WINDOW` *accepted* rows, after
bounding, so a row never raises its own bound and rows that were refused
(or whose θ was refused) leave no trace.  Until :data:`MIN_HISTORY` rows
were accepted the bounds are the fixed caps ``clip_max`` and ``weight_max``.
Relative bounds follow the fleet and the data set without tuning (honest
norms differ by data set and shrink as θ converges); the fixed caps bound
what a majority of attackers could reach by ratcheting the medians up.

A fixed ``clip`` (the older setting) replaces the adaptive norm bound.
Everything here is pure tensor maths plus a small amount of state.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from learners.config import LearnerConfig

WINDOW = 256
"""Accepted rows whose norms and weights make up the running medians."""

MIN_HISTORY = 16
"""Accepted rows needed before the relative bounds replace the fixed caps."""

MIN_CLIP = 1e-3
"""The adaptive norm bound never falls below this (a run of zero deltas cannot silence the fleet)."""


class RunningBound:
    """``clamp(multiple · median(last accepted values), floor, cap)``; ``cap`` until there is history.

    Parameters
    ----------
    multiple
        Multiple of the running median; ``0`` or less turns the bound off (infinite).
    floor, cap
        The bound always lies between them.
    window, min_history
        How many accepted values are remembered, and how many are needed before
        the median is used.

    Examples
    --------
    >>> b = RunningBound(multiple=3.0, floor=0.1, cap=100.0, min_history=2)
    >>> b.limit()  # no history yet: the cap
    100.0
    >>> b.accept([1.0, 2.0, 4.0]); b.limit()  # 3 × median 2
    6.0
    >>> RunningBound(multiple=0.0, floor=0.1, cap=100.0).limit()
    inf
    """

    def __init__(
        self,
        multiple: float,
        floor: float,
        cap: float,
        window: int = WINDOW,
        min_history: int = MIN_HISTORY,
    ) -> None:
        self.multiple = multiple
        self.floor = floor
        self.cap = cap
        self.window = window
        self.min_history = min_history
        self._recent: deque[float] = deque(maxlen=window)

    def limit(self) -> float:
        """The current bound."""
        if self.multiple <= 0:
            return float("inf")
        if len(self._recent) < self.min_history:
            return self.cap
        median = float(torch.tensor(list(self._recent)).median())
        return min(max(self.multiple * median, self.floor), self.cap)

    def accept(self, values: list[float]) -> None:
        """Remember the (already bounded) values of accepted rows."""
        self._recent.extend(values)

    def __len__(self) -> int:
        return len(self._recent)

    def values(self) -> list[float]:
        """The remembered values, oldest first (for checkpoints)."""
        return list(self._recent)

    def restore(self, values: list[float]) -> None:
        """Replace the remembered values (from :meth:`values`)."""
        self._recent = deque((float(v) for v in values), maxlen=self.window)


@dataclass(frozen=True)
class Bounded:
    """One contribution after bounding, and what bounding did to it."""

    deltas: Tensor
    weights: Tensor
    norms: list[float]
    """L2 norm of each row after clipping."""
    clip: float
    weight_cap: float
    clipped: int
    """Rows whose norm was reduced."""
    capped: int
    """Rows whose claimed weight was reduced."""


class ContributionBounds:
    """Clips rows' norms and caps their weights relative to recently accepted rows.

    Parameters
    ----------
    clip
        A fixed L2 bound; ``None``: the adaptive one (see the module docs).
    clip_multiple, clip_max
        Adaptive norm bound: multiple of the running median, and its cap
        (also the bound until there is enough history).  ``clip_multiple=0``
        turns norm clipping off (unless ``clip`` is set).
    weight_multiple, weight_max
        Weight cap: multiple of the running median of accepted weights, and
        its fixed maximum.  ``weight_multiple=0`` turns it off.

    Examples
    --------
    >>> bounds = ContributionBounds(clip_multiple=3.0, clip_max=10.0, weight_multiple=4.0, weight_max=100.0)
    >>> b = bounds.bound(torch.tensor([[30.0, 40.0], [0.3, 0.4]]), torch.tensor([1e30, 2.0]))
    >>> b.deltas.norm(dim=1).tolist(), b.weights.tolist(), (b.clipped, b.capped)
    ([10.0, 0.5], [100.0, 2.0], (1, 1))
    >>> bounds.accept(b)
    """

    def __init__(
        self,
        clip: float | None = None,
        clip_multiple: float = 0.0,
        clip_max: float = float("inf"),
        weight_multiple: float = 0.0,
        weight_max: float = float("inf"),
    ) -> None:
        self.fixed_clip = clip
        self.norm = RunningBound(clip_multiple, MIN_CLIP, clip_max)
        self.weight = RunningBound(weight_multiple, 1.0, weight_max)

    @classmethod
    def from_config(cls, cfg: LearnerConfig) -> ContributionBounds:
        """The bounds a learner config asks for (on by default)."""
        return cls(cfg.clip, cfg.clip_multiple, cfg.clip_max, cfg.weight_multiple, cfg.weight_max)

    @classmethod
    def off(cls) -> ContributionBounds:
        """No clipping, no weight cap: the plain weighted mean."""
        return cls()

    def clip_limit(self) -> float:
        """The norm bound the next contribution gets."""
        return self.fixed_clip if self.fixed_clip is not None else self.norm.limit()

    def bound(self, deltas: Tensor, weights: Tensor) -> Bounded:
        """Clip ``deltas [n, P]`` and cap ``weights [n]`` (nothing is remembered yet)."""
        clip = self.clip_limit()
        norms = deltas.norm(dim=1)
        scale = (clip / norms.clamp(min=clip)) if clip != float("inf") else torch.ones_like(norms)
        cap = self.weight.limit()
        capped_w = weights.clamp(max=cap)
        return Bounded(
            deltas=deltas * scale.unsqueeze(1),
            weights=capped_w,
            norms=(norms * scale).tolist(),
            clip=clip,
            weight_cap=cap,
            clipped=int((norms > clip).sum()),
            capped=int((weights > cap).sum()),
        )

    def accept(self, bounded: Bounded) -> None:
        """The bounded rows were applied to θ: they join the running medians."""
        self.norm.accept(bounded.norms)
        self.weight.accept(bounded.weights.tolist())

    def state(self) -> dict[str, list[float]]:
        """The running history, JSON-able (a learner's checkpoint carries it)."""
        return {"norms": self.norm.values(), "weights": self.weight.values()}

    def restore(self, state: dict[str, list[float]]) -> None:
        """Continue from :meth:`state`, so a restored learner bounds exactly as the original would."""
        self.norm.restore(state["norms"])
        self.weight.restore(state["weights"])


__all__ = ["MIN_CLIP", "MIN_HISTORY", "WINDOW", "Bounded", "ContributionBounds", "RunningBound"]


def check_secure_sum(
    mean: np.ndarray, total_weight: float, n_survivors: int, clip: float | None, max_weight: float | None
) -> str | None:
    """Why a round's result cannot come from devices that kept the rules, or ``None`` if it can.

    The aggregator never sees one device's update, so it checks what the sum
    still shows: a weighted mean of updates clipped to ``clip`` has a norm of
    at most ``clip``, and weights capped at ``max_weight`` add up to at most
    ``n_survivors · max_weight``.  A longer mean or a larger total means that
    some device skipped its clip or inflated its claim; the round is refused
    as a whole (nobody can tell which device did it).

    Examples
    --------
    >>> check_secure_sum(np.array([0.6, 0.8]), 3.0, 3, clip=1.0, max_weight=1.0) is None
    True
    >>> check_secure_sum(np.array([6.0, 8.0]), 3.0, 3, clip=1.0, max_weight=1.0)
    'mean norm 10 > clip 1'
    >>> check_secure_sum(np.array([0.6, 0.8]), 30.0, 3, clip=1.0, max_weight=1.0)
    'total weight 30 > 3 survivors x 1'
    """
    # Fixed-point rounding in the protocol lengthens a mean by far less than this.
    slack = 1e-6
    norm = float(np.linalg.norm(mean))
    if clip is not None and not norm <= clip * (1 + slack) + slack:
        return f"mean norm {norm:.4g} > clip {clip:g}"
    if max_weight is not None and not total_weight <= n_survivors * max_weight * (1 + slack):
        return f"total weight {total_weight:.4g} > {n_survivors} survivors x {max_weight:g}"
    return None
