"""Every strategy by name, behind the one :class:`~learners.base.Strategy` interface."""

from __future__ import annotations

from learners.auto import AutoStrategy
from learners.base import Strategy
from learners.blended import BlendedStrategy
from learners.config import LearnerConfig
from learners.continuous import ContinuousFleet
from learners.fleet import FleetLearner
from learners.river_fleet import RiverFleet
from learners.shared_model import GlobalLearner

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
    "river-linear",
    "river-hat",
)
ALIASES = {"river": "river-linear"}


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
    """
    (name,) = resolve([name])
    if name == "global":
        return GlobalLearner(cfg)
    if name == "blend":
        return BlendedStrategy(cfg)
    if name == "blend-finetune":
        return BlendedStrategy(cfg, init="finetune")
    if name == "continuous":
        return ContinuousFleet(cfg)
    if name == "auto":
        return AutoStrategy(cfg)
    if name.startswith("river-"):
        return RiverFleet(cfg, kind="hat" if name == "river-hat" else "linear")
    return FleetLearner(cfg, init=name)  # type: ignore[arg-type]
