"""Every strategy by name, behind the one :class:`~learners.base.Strategy` interface."""

from __future__ import annotations

from collections.abc import Callable

from learners.auto import AutoStrategy
from learners.base import Strategy
from learners.blended import BlendedStrategy
from learners.clustered import ClusteredTheta
from learners.config import LearnerConfig
from learners.continuous import ContinuousFleet
from learners.fleet import FleetLearner
from learners.river_fleet import RiverFleet
from learners.shared_model import GlobalLearner
from learners.theta_source import THETA_SOURCES, ThetaSource

STRATEGIES = (
    "reptile",
    "fomaml",
    "scratch",
    "global",
    "finetune",
    "blend",
    "blend-finetune",
    "continuous",
    "auto",
    "clustered",
    "river-linear",
    "river-hat",
)
ALIASES = {"river": "river-linear"}


def _fleet(make: Callable[[LearnerConfig], ThetaSource]) -> Callable[[LearnerConfig], Strategy]:
    return lambda cfg: FleetLearner(cfg, make(cfg))


BUILDERS: dict[str, Callable[[LearnerConfig], Strategy]] = {
    # reptile, fomaml, scratch, finetune: a FleetLearner with the θ source of that name.
    **{name: _fleet(make) for name, make in THETA_SOURCES.items()},
    "global": GlobalLearner,
    "blend": BlendedStrategy,
    "blend-finetune": lambda cfg: BlendedStrategy(cfg, init="finetune"),
    "continuous": ContinuousFleet,
    "auto": AutoStrategy,
    "clustered": lambda cfg: FleetLearner(cfg, ClusteredTheta(cfg)),
    "river-linear": lambda cfg: RiverFleet(cfg, kind="linear"),
    "river-hat": lambda cfg: RiverFleet(cfg, kind="hat"),
}
"""The one table from a strategy name (as on the command line) to the strategy it builds."""


def resolve(names: list[str]) -> list[str]:
    """Expand ``all`` and aliases, drop repeats, reject unknown names.

    Examples
    --------
    >>> resolve(["reptile", "river", "reptile"])
    ['reptile', 'river-linear']
    >>> resolve(["all"]) == list(STRATEGIES)
    True
    >>> resolve(["maml"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown strategy 'maml'; choose from reptile, fomaml, scratch, ..., all
    """
    out: list[str] = []
    for name in names:
        expanded = list(STRATEGIES) if name == "all" else [ALIASES.get(name, name)]
        for n in expanded:
            if n not in STRATEGIES:
                choices = ", ".join([*STRATEGIES, *ALIASES, "all"])
                raise ValueError(f"unknown strategy {name!r}; choose from {choices}")
            if n not in out:
                out.append(n)
    return out


def make_strategy(name: str, cfg: LearnerConfig) -> Strategy:
    """Build one strategy by its (resolved) name.

    Examples
    --------
    >>> make_strategy("reptile", LearnerConfig(n_features=3)).name
    'reptile'
    >>> sorted(BUILDERS) == sorted(STRATEGIES)
    True
    """
    (name,) = resolve([name])
    return BUILDERS[name](cfg)
