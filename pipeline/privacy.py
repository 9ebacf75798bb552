"""The privacy account of a stream that never ends: ε per device and for θ, and a budget that holds.

Every contribution a device makes (a locally noised update, or its share
of a centrally noised round) is one Gaussian mechanism with the policy's
noise multiplier (:mod:`metastream_edge.dp`).  The account composes them
with Rényi DP (``dp_accounting.rdp.RdpAccountant``, Google's maintained
library) and converts to ε at the policy's δ.  A device whose next
contribution would take it past the budget is refused from then on, and one
:class:`~wire.events.PrivacyBudgetExhausted` event says so.

θ is released after every round; under add/remove-one-device adjacency a
round a device sat out costs it nothing, so θ's ε with respect to any one
device is that device's ε, and the figure reported for θ is the largest
(:meth:`PrivacyLedger.theta_epsilon`).  With a finite budget it stays below
the budget however long the stream runs.

Wiring (the meta agent): :class:`PrivacyGate` is the hook.  In
``MetaAggregator.on_delta``, after decoding, call ``gate.screen(header.source)``;
when it says no, skip ``meta.step`` for that message (count it as refused);
either way send the typed events it returns.

Examples
--------
>>> ledger = PrivacyLedger(PrivacyPolicy(noise_multiplier=3.0, delta=1e-5, epsilon_budget=4.0))
>>> [ledger.admit("dev-1") for _ in range(8)]
[True, True, True, True, True, True, False, False]
>>> round(ledger.device_epsilon("dev-1"), 3), ledger.contributions("dev-1")
(3.752, 6)
>>> [e.device_id for e in ledger.drain_events()], ledger.drain_events()
(['dev-1'], [])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from connectors.settings import Settings
from wire.events import PrivacyBudgetExhausted


@dataclass(frozen=True)
class PrivacyPolicy:
    """How much noise each contribution carries, and how much privacy loss a device may spend.

    Parameters
    ----------
    noise_multiplier
        σ / sensitivity of each contribution's Gaussian noise.
    delta
        δ at which ε is reported (well below 1 / number of devices).
    epsilon_budget
        ε a device may spend over its lifetime; ``inf`` accounts without refusing.
    mode
        ``local`` (noise on the device) or ``central`` (noise on the aggregate);
        the account is the same, the README explains who must be trusted.
    """

    noise_multiplier: float
    delta: float = 1e-5
    epsilon_budget: float = math.inf
    mode: Literal["local", "central"] = "central"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ValueError(f"noise_multiplier must be > 0; got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must lie in (0, 1); got {self.delta}")
        if not self.epsilon_budget > 0:
            raise ValueError(f"epsilon_budget must be > 0; got {self.epsilon_budget}")
        if self.mode not in ("local", "central"):
            raise ValueError(f"mode must be 'local' or 'central'; got {self.mode!r}")


def gaussian_epsilon(
    noise_multiplier: float, count: int, delta: float, orders: Sequence[float] | None = None
) -> float:
    """ε at ``delta`` after ``count`` Gaussian mechanisms with ``noise_multiplier`` (RDP accounting).

    Examples
    --------
    >>> gaussian_epsilon(1.0, 0, 1e-5)
    0.0
    >>> round(gaussian_epsilon(3.0, 7, 1e-5), 3)
    4.095
    """
    if count < 0:
        raise ValueError(f"count must be >= 0; got {count}")
    if count == 0:
        return 0.0
    accountant = RdpAccountant(list(orders)) if orders is not None else RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), count)
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(epsilon: float, count: int, delta: float) -> float:
    """The noise multiplier whose ``count`` contributions spend exactly ``epsilon`` at ``delta``.

    Examples
    --------
    >>> z = noise_for_epsilon(4.0, 10, 1e-5)
    >>> round(gaussian_epsilon(z, 10, 1e-5), 4)
    4.0
    """
    return float(
        dp_accounting.calibrate_dp_mechanism(
            RdpAccountant,
            lambda z: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), count),
            epsilon,
            delta,
            tol=1e-6,
        )
    )


class PrivacyLedger:
    """Per-device privacy spend under one :class:`PrivacyPolicy`; admits or refuses contributions.

    Every device's contributions carry the same noise, so ε depends only on
    how many a device made: the ledger keeps one count per device and a
    cache of ε by count, so a fleet of any size costs one integer a device.
    """

    def __init__(self, policy: PrivacyPolicy) -> None:
        self.policy = policy
        self._counts: dict[str, int] = {}
        self._refused: set[str] = set()
        self._events: list[PrivacyBudgetExhausted] = []
        self._epsilon = lru_cache(maxsize=4096)(self._epsilon_uncached)

    def _epsilon_uncached(self, count: int) -> float:
        return gaussian_epsilon(self.policy.noise_multiplier, count, self.policy.delta)

    def epsilon(self, contributions: int) -> float:
        """ε at the policy's δ after ``contributions`` contributions."""
        return self._epsilon(contributions)

    def contributions(self, device_id: str) -> int:
        """Contributions of ``device_id`` admitted so far."""
        return self._counts.get(device_id, 0)

    def device_epsilon(self, device_id: str) -> float:
        """ε ``device_id`` has spent so far."""
        return self.epsilon(self.contributions(device_id))

    def theta_epsilon(self) -> float:
        """θ's ε with respect to any one device: the largest any device has spent."""
        return self.epsilon(max(self._counts.values(), default=0))

    def exhausted(self, device_id: str) -> bool:
        """Whether ``device_id`` has been refused for its budget."""
        return device_id in self._refused

    def device_epsilons(self) -> dict[str, float]:
        """ε every device that contributed has spent."""
        return {d: self.epsilon(n) for d, n in self._counts.items()}

    def exhausted_count(self) -> int:
        """Devices refused for their budget so far."""
        return len(self._refused)

    def admit(self, device_id: str) -> bool:
        """Record one contribution of ``device_id`` if it stays within budget; ``False`` refuses it.

        The first refusal of a device queues a :class:`~wire.events.PrivacyBudgetExhausted` event.
        """
        if device_id in self._refused:
            return False
        n = self.contributions(device_id)
        if self.epsilon(n + 1) > self.policy.epsilon_budget:
            self._refused.add(device_id)
            self._events.append(
                PrivacyBudgetExhausted(
                    device_id, n, self.epsilon(n), self.policy.epsilon_budget, self.policy.delta
                )
            )
            return False
        self._counts[device_id] = n + 1
        return True

    def drain_events(self) -> list[PrivacyBudgetExhausted]:
        """Events queued since the last call (each device's exhaustion once)."""
        out, self._events = self._events, []
        return out


EDGE_PREFIX = "edge:"
"""Source prefix of a federated device's contribution (``connectors.federated.FederatedEdgeClient``)."""


class PrivacyGate:
    """The meta agent's hook: whether a contribution counts, and the budget events to publish.

    Only federated devices' contributions (source ``edge:<device id>``) are
    DP releases of one device; a worker's contribution comes from readings
    the worker already holds and passes unscreened.

    Examples
    --------
    >>> gate = PrivacyGate(PrivacyLedger(PrivacyPolicy(3.0, epsilon_budget=1.5)))
    >>> gate.screen("edge:dev-9")
    (True, [])
    >>> ok, events = gate.screen("edge:dev-9")
    >>> ok, events[0].device_id, events[0].contributions
    (False, 'dev-9', 1)
    >>> gate.screen("worker-1")
    (True, [])
    """

    def __init__(self, ledger: PrivacyLedger) -> None:
        self.ledger = ledger

    def screen(self, source: str) -> tuple[bool, list[PrivacyBudgetExhausted]]:
        """``(admitted, events to send)`` for one contribution from ``source``."""
        if not source.startswith(EDGE_PREFIX):
            return True, []
        admitted = self.ledger.admit(source[len(EDGE_PREFIX) :])
        return admitted, self.ledger.drain_events()


def gate_from_settings(settings: Settings) -> PrivacyGate | None:
    """The meta agent's privacy gate for ``settings``, or ``None`` without a budget.

    Examples
    --------
    >>> gate_from_settings(Settings()) is None
    True
    >>> gate = gate_from_settings(Settings(dp_epsilon_budget=4.0, dp_noise_multiplier=2.0))
    >>> gate.ledger.policy.epsilon_budget, gate.ledger.policy.noise_multiplier
    (4.0, 2.0)
    """
    if settings.dp_epsilon_budget <= 0:
        return None
    policy = PrivacyPolicy(
        settings.dp_noise_multiplier, settings.dp_delta, settings.dp_epsilon_budget, mode="local"
    )
    return PrivacyGate(PrivacyLedger(policy))
