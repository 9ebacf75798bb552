"""Run a table of readings through one strategy in micro-batches, offline."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from learners.base import Strategy
from learners.config import Task
from learners.evaluation.prequential import PrequentialEvaluator

Clock = Callable[[], float]


def default_batch_size(n_devices: int) -> int:
    """About one reading per device per micro-batch, between 32 and 1024.

    Examples
    --------
    >>> default_batch_size(5), default_batch_size(300), default_batch_size(10_000)
    (32, 300, 1024)
    """
    return int(min(1024, max(32, n_devices)))


def replay(
    strategy: Strategy,
    device_ids: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    task: Task,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    clock: Clock = time.perf_counter,
) -> dict[str, Any]:
    """Prequential run; returns the evaluator's summary plus counts and throughput.

    Examples
    --------
    >>> from learners import LearnerConfig
    >>> from learners.strategies import make_strategy
    >>> from learners.evaluation.synthetic import make_fleet_stream
    >>> s = make_fleet_stream(n_devices=5, n_readings=400, n_features=3)
    >>> ticks = iter(range(100))
    >>> out = replay(make_strategy("reptile", LearnerConfig(n_features=3)), s.device_ids,
    ...              s.x, s.y, "regression", batch_size=64, clock=lambda: float(next(ticks)))
    >>> out["strategy"], out["n"], out["devices"], out["samples_per_s"]
    ('reptile', 400, 5, 400.0)
    """
    evaluator = PrequentialEvaluator(task)
    started = clock()
    for start in range(0, len(y), batch_size):
        stop = min(start + batch_size, len(y))
        ids = device_ids[start:stop]
        result = strategy.learn_predict(ids, x[start:stop], y[start:stop])
        evaluator.update(ids, y[start:stop], result.y_pred, result.drifted)
        if progress is not None:
            progress(stop)
    seconds = clock() - started
    summary = {"strategy": strategy.name, **evaluator.summary()}
    summary["adaptations"] = strategy.n_adaptations
    summary["meta_version"] = strategy.meta_version
    if strategy.start_wins:
        summary["start_wins"] = strategy.start_wins
    summary["seconds"] = round(seconds, 3)
    summary["samples_per_s"] = round(len(y) / seconds, 1) if seconds > 0 else None
    return summary
