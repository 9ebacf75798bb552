"""Secure-aggregation rounds that move θ: who may take part, the round over Kafka, one meta step.

The meta agent picks the federated devices of a round, leaves out those
whose privacy budget is spent (a masked input cannot be taken out of a sum
afterwards, so the budget is checked before the round), runs the round's
aggregator side over Kafka (:class:`connectors.secagg_kafka.AggregatorRunner`)
and applies the unmasked weighted mean to θ as one contribution
(:meth:`pipeline.worker_core.MetaAggregator.on_secure_round`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from connectors.secagg_kafka import AggregatorRunner, SecAggTopics
from metastream_edge.secagg import AggregateResult, AggregatorRound, RoundConfig
from pipeline.privacy import EDGE_PREFIX
from pipeline.worker_core import MetaAggregator
from wire.messages import Message

log = logging.getLogger(__name__)


def shamir_threshold(n_devices: int) -> int:
    """Shares needed to rebuild a device's masks: more than half the round.

    With more than half, no minority of colluders (the aggregator included)
    can rebuild a live device's masks, and a round still completes when
    fewer than half of its devices vanish.

    Examples
    --------
    >>> [shamir_threshold(n) for n in (2, 3, 4, 10)]
    [2, 2, 3, 6]
    """
    if n_devices < 2:
        raise ValueError(f"a secure round needs at least 2 devices, got {n_devices}")
    return n_devices // 2 + 1


@dataclass(frozen=True)
class RoundOutcome:
    """What one round did: the devices it admitted and left out, its result, the messages to send."""

    admitted: tuple[str, ...]
    over_budget: tuple[str, ...]
    result: AggregateResult | None
    outgoing: list[Message]
    refused: str | None = None
    """Why θ did not take the result (:func:`learners.bounds.check_secure_sum`), if it did not."""


class SecureRounds:
    """Runs secure-aggregation rounds for a :class:`MetaAggregator` over Kafka.

    Parameters
    ----------
    aggregator
        The meta agent's aggregator; its settings give the broker, its
        ``privacy`` gate (if any) the budgets, its θ the vector length.
    topics
        The round topics (:func:`connectors.secagg_kafka.ensure_secagg_topics` makes them).
    phase_timeout_s
        How long each phase waits for devices before it closes without them.
    clock
        Monotonic seconds; it sets the phase deadlines.
    clip, max_weight
        The rules devices follow before masking (clip their update, cap
        their weight); ``None`` skips that check of the sum.
    """

    def __init__(
        self,
        aggregator: MetaAggregator,
        topics: SecAggTopics | None = None,
        phase_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        clip: float | None = None,
        max_weight: float | None = None,
    ) -> None:
        self.aggregator = aggregator
        self.clip = clip
        self.max_weight = max_weight
        self.topics = topics or SecAggTopics()
        self.phase_timeout_s = phase_timeout_s
        self.clock = clock

    def _screen(self, devices: Sequence[str]) -> tuple[list[str], list[str], list[Message]]:
        if self.aggregator.privacy is None:
            return list(devices), [], []
        admitted: list[str] = []
        over: list[str] = []
        events: list[Message] = []
        for device in devices:
            ok, budget_events = self.aggregator.privacy.screen(EDGE_PREFIX + device)
            (admitted if ok else over).append(device)
            events += budget_events
        if over:
            self.aggregator.counts["privacy_refused"] += len(over)
        return admitted, over, events

    def run(self, round_id: str, devices: Sequence[str]) -> RoundOutcome:
        """One round with ``devices`` (those within budget); θ moves if it completes."""
        admitted, over, events = self._screen(devices)
        if len(admitted) < 2:
            log.warning("secure round %s not run: %d device(s) within budget", round_id, len(admitted))
            return RoundOutcome(tuple(admitted), tuple(over), None, events)
        config = RoundConfig(
            round_id,
            n_params=self.aggregator.n_params,
            threshold=shamir_threshold(len(admitted)),
            phase_timeout_s=self.phase_timeout_s,
        )
        runner = AggregatorRunner(
            self.aggregator.settings, AggregatorRound(config, admitted, self.clock), self.topics
        )
        try:
            result = runner.run()
        finally:
            runner.close()
        if result is None:
            return RoundOutcome(tuple(admitted), tuple(over), None, events)
        return RoundOutcome(
            tuple(admitted), tuple(over), result, events + self.aggregator.on_secure_round(result)
        )
