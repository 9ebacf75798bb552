"""How soon does a strategy detect the drifts of a synthetic fleet whose change points are known?

:func:`detection_delays` replays a :class:`~learners.evaluation.synthetic.FleetStream`
through a strategy and, for every drift of the truth, counts the device's
readings from the change to the end of the micro-batch in which the
strategy first reported a drift of that device (at or after the change,
and before the device's next change).  ``None``: never detected.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from learners.base import Strategy
from learners.evaluation.synthetic import FleetStream

WITHIN = 30


def detection_delays(
    strategy: Strategy, stream: FleetStream, batch_size: int, kind: str | None = "abrupt"
) -> list[int | None]:
    """Readings from each drift (of ``kind``, or all) to its first detection, in :attr:`drifts` order.

    Examples
    --------
    >>> from learners import LearnerConfig
    >>> from learners.strategies import make_strategy
    >>> from learners.evaluation.synthetic import make_fleet_stream
    >>> s = make_fleet_stream(n_devices=4, n_readings=2000, n_features=3, late_joiners=0.0,
    ...                       gradual_share=0.0, seed=2)
    >>> delays = detection_delays(make_strategy("reptile", LearnerConfig(n_features=3)), s, 32)
    >>> len(delays), all(d is None or d >= 0 for d in delays)
    (4, True)
    """
    seen: dict[str, int] = {}
    detected: dict[str, list[int]] = {}
    ids = stream.device_ids
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        for d in batch:
            seen[d] = seen.get(d, 0) + 1
        result = strategy.learn_predict(
            batch, stream.x[start : start + batch_size], stream.y[start : start + batch_size]
        )
        for d in result.drifted:
            detected.setdefault(d, []).append(seen[d])
    changes: dict[str, list[int]] = {}
    for p in stream.drifts:
        changes.setdefault(p.device_id, []).append(p.local_index)
    out: list[int | None] = []
    for p in stream.drifts:
        if kind is not None and p.kind != kind:
            continue
        later = [c for c in changes[p.device_id] if c > p.local_index]
        end = min(later) if later else np.inf
        # seen counts readings 1-based: reading number local_index is the (local_index + 1)-th
        hits = [n - (p.local_index + 1) for n in detected.get(p.device_id, []) if p.local_index < n <= end]
        out.append(min(hits) if hits else None)
    return out


def share_within(delays: Sequence[int | None], within: int = WITHIN) -> float:
    """Share of drifts detected within ``within`` readings of the change.

    Examples
    --------
    >>> share_within([0, 12, 31, None], within=30)
    0.5
    """
    if not delays:
        return float("nan")
    return sum(d is not None and d <= within for d in delays) / len(delays)
