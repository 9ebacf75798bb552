"""Pure learning core of metastream: torch + river + numpy, never Kafka or Faust.

The public entry points are :class:`~learners.config.LearnerConfig`,
:func:`~learners.strategies.make_strategy` and
:class:`~learners.evaluation.prequential.PrequentialEvaluator`.
"""

from learners.config import LearnerConfig

__all__ = ["LearnerConfig"]
