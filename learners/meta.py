"""Meta-update rules (Reptile, first-order MAML) and the meta-learner holding θ.

A rule turns a batch of devices' recent data into one proposed change of θ
per device; :class:`MetaLearner` aggregates those changes robustly.  The
same aggregation serves federated mode, where devices send φ − θ themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from learners.aggregate import aggregate
from learners.bounds import Bounded, ContributionBounds
from learners.config import LearnerConfig
from learners.nets import FunctionalNet, Params, flatten, flatten_stacked, unflatten


class MetaRule(Protocol):
    """Proposes a change of θ for each of ``D`` devices from their data."""

    name: str

    def directions(self, net: FunctionalNet, theta: Params, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """``[D, P]`` proposed changes; ``x`` is ``[D, n, F]``, ``mask`` marks real rows."""
        ...


class Reptile:
    """Δ_d = φ_d − θ, where φ_d is k SGD steps from θ on the device's data."""

    name = "reptile"

    def directions(self, net: FunctionalNet, theta: Params, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        phi = net.adapt(theta, x, y, mask)
        return flatten_stacked(phi) - flatten(theta)


class FirstOrderMAML:
    """Δ_d = −k·α·∇L_query(φ_d), with φ_d adapted on the support half.

    Rows alternate between support (even) and query (odd).  Scaling by the
    inner step size α and step count k makes ``meta_lr`` mean the same
    thing as for :class:`Reptile`.
    """

    name = "fomaml"

    def directions(self, net: FunctionalNet, theta: Params, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        support = mask.clone()
        support[:, 1::2] = 0
        query = mask - support
        phi = net.adapt(theta, x, y, support)
        g = net.query_grad(phi, x, y, query)
        scale = net.cfg.inner_lr * max(net.cfg.inner_steps, 1)
        return -scale * flatten_stacked(g)


@dataclass(frozen=True)
class Proposal:
    """θ as it would be after one meta-update, not applied yet (see :meth:`MetaLearner.propose`)."""

    theta: Params
    bounded: Bounded
    """The contribution after clipping and weight capping."""


class MetaLearner:
    """Holds θ and its version; applies aggregated device updates to it.

    Parameters
    ----------
    theta
        Initial meta-parameters.
    meta_lr
        Outer step size ε.
    clip, trim
        Robust aggregation settings, see :func:`learners.aggregate.aggregate`;
        ``clip`` is a fixed L2 bound per update.
    bounds
        Per-update norm clipping and weight capping
        (:class:`learners.bounds.ContributionBounds`); default: only the
        fixed ``clip``, if any.  :meth:`from_config` gives the adaptive
        bounds of the config.

    Examples
    --------
    >>> import torch
    >>> meta = MetaLearner({"w": torch.zeros(2)}, meta_lr=0.5)
    >>> meta.step(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([1.0, 1.0]))
    >>> meta.theta["w"], meta.version
    (tensor([0.5000, 0.5000]), 1)
    >>> proposal = meta.propose(torch.tensor([[2.0, 2.0]]), torch.tensor([1.0]))
    >>> proposal.theta["w"], meta.version  # nothing applied until commit()
    (tensor([1.5000, 1.5000]), 1)
    >>> meta.commit(proposal); meta.version
    2
    """

    def __init__(
        self,
        theta: Params,
        meta_lr: float,
        clip: float | None = None,
        trim: float = 0.0,
        bounds: ContributionBounds | None = None,
    ) -> None:
        self.meta_lr = meta_lr
        self.clip = clip
        self.trim = trim
        self.bounds = bounds if bounds is not None else ContributionBounds(clip=clip)
        self._theta = {k: v.detach().clone() for k, v in theta.items()}
        self._version = 0

    @classmethod
    def from_config(cls, theta: Params, cfg: LearnerConfig) -> MetaLearner:
        """A meta-learner with the config's step size, trimming and (adaptive) bounds."""
        return cls(theta, cfg.meta_lr, cfg.clip, cfg.trim, ContributionBounds.from_config(cfg))

    @property
    def theta(self) -> Params:
        """Current meta-parameters (do not modify in place)."""
        return self._theta

    @property
    def version(self) -> int:
        """Number of meta-updates applied so far."""
        return self._version

    def propose(self, deltas: Tensor, weights: Tensor) -> Proposal:
        """θ + ε · aggregate(bounded Δ, bounded w), without applying it; ``deltas`` is ``[n, P]``."""
        bounded = self.bounds.bound(deltas, weights.to(deltas.dtype))
        change = self.meta_lr * aggregate(bounded.deltas, bounded.weights, None, self.trim)
        new = flatten(self._theta) + change
        return Proposal({k: v.clone() for k, v in unflatten(new, self._theta).items()}, bounded)

    def commit(self, proposal: Proposal) -> None:
        """Apply a proposal: θ ← its θ, version + 1; its rows join the running bounds."""
        self._theta = proposal.theta
        self._version += 1
        self.bounds.accept(proposal.bounded)

    def step(self, deltas: Tensor, weights: Tensor) -> None:
        """θ ← θ + ε · aggregate(Δ, w): :meth:`propose` then :meth:`commit`."""
        self.commit(self.propose(deltas, weights))

    def adopt(self, theta: Params, version: int) -> bool:
        """Take θ computed elsewhere (the meta agent) if it is newer than ours.

        θ keeps this learner's parameter order whatever the order of ``theta``
        (a decoded payload's is arbitrary): contributions are flattened in it,
        and every sender and the meta agent must agree (see
        :mod:`connectors.contributions`).
        """
        if version <= self._version:
            return False
        if set(theta) != set(self._theta):
            raise ValueError(f"θ has parameters {sorted(theta)}, expected {sorted(self._theta)}")
        self._theta = {k: theta[k].detach().clone() for k in self._theta}
        self._version = version
        return True


def rule_by_name(name: str) -> MetaRule:
    """``"reptile"`` or ``"fomaml"``."""
    rules: dict[str, MetaRule] = {"reptile": Reptile(), "fomaml": FirstOrderMAML()}
    if name not in rules:
        raise ValueError(f"unknown meta rule {name!r}; choose one of {', '.join(rules)}")
    return rules[name]


__all__ = ["FirstOrderMAML", "MetaLearner", "MetaRule", "Proposal", "Reptile", "rule_by_name"]
