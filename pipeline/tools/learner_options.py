"""Learner settings on the command line, and table cells: what ``replay`` and ``evaluate`` share."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from learners.config import LearnerConfig


def add_learner_args(p: argparse.ArgumentParser) -> None:
    """Add the flags of every :class:`LearnerConfig` field a user may set (``--inner-steps`` …)."""
    g = p.add_argument_group("learner settings (defaults from LearnerConfig)")
    g.add_argument("--hidden", type=lambda s: tuple(int(v) for v in s.split(",")), help="e.g. 32 or 64,32")
    for name, typ in (
        ("online-lr", float),
        ("inner-lr", float),
        ("inner-steps", int),
        ("buffer-size", int),
        ("adapt-after", int),
        ("meta-lr", float),
        ("meta-every", int),
        ("meta-batch", int),
        ("cooldown", int),
        ("guard-holdout", float),
        ("guard-min-holdout", int),
        ("clip", float),
        ("trim", float),
        ("seed", int),
    ):
        g.add_argument(f"--{name}", type=typ)
    g.add_argument("--detector", choices=["adwin", "page_hinkley", "kswin"])


def learner_config(args: argparse.Namespace, **fixed: Any) -> LearnerConfig:
    """A :class:`LearnerConfig` from the CLI flags that were given, plus ``fixed``."""
    given = {
        f.name: getattr(args, f.name)
        for f in fields(LearnerConfig)
        if getattr(args, f.name, None) is not None
    }
    return LearnerConfig(**{**given, **fixed})


def format_value(v: Any) -> str:
    """A table cell: ``-`` for none, floats to four significant digits (thousands grouped)."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)
