"""Pure learning core of metastream: torch + river + numpy, never Kafka or Faust.

The public entry points are :class:`~learners.config.LearnerConfig`,
:func:`~learners.strategies.make_strategy` and
:class:`~learners.fleet.FleetLearner`; the evaluation harness above the core is
:mod:`learners.evaluation`.
"""

from learners.config import LearnerConfig

__all__ = ["LearnerConfig"]
