"""θ sanity check: a new θ is published only if it is finite and no worse on held-back readings.

The meta agent runs inside a worker, which holds its devices' recent
readings.  Before a new θ goes out, :func:`check_theta` scores the current
and the candidate θ the way θ is used: adapt ``k`` steps on a device's older
buffered readings (support), then the mean loss on its newest ones (query),
for a small seeded sample of devices (:func:`sample_held_back`).  The
candidate is refused if it is non-finite, or if its k-shot loss exceeds the
current one by more than ``tolerance`` (relative).  Honest meta-updates are
small steps, so on the same readings their loss moves little; a poisoned θ
fails by orders of magnitude.

Without held-back readings (a federated-only deployment, or a worker that
has not seen enough readings yet) only finiteness is checked; the check
says so (``reason="unchecked"``).  The readings are in the worker's
standardised units, like θ's own training data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from learners.buffers import DeviceBuffers
from learners.guard import split_holdout
from learners.nets import FunctionalNet, Params

TOLERANCE = 0.2
"""Relative slack: a candidate up to this much worse than the current θ still passes."""

MAX_DEVICES = 16
"""Devices sampled per check: bounds its cost (two k-step adaptations of this many devices)."""


@dataclass(frozen=True)
class HeldBack:
    """Padded readings ``[D, n, …]`` of a few devices, newest first, split into support and query."""

    x: Tensor
    y: Tensor
    support: Tensor
    query: Tensor

    @property
    def devices(self) -> int:
        """Devices in the sample."""
        return int(self.x.shape[0])

    @property
    def readings(self) -> int:
        """Query readings the losses are measured on."""
        return int(self.query.sum())


@dataclass(frozen=True)
class ThetaCheck:
    """The verdict on one candidate θ.

    ``reason`` is ``"ok"``, ``"unchecked"`` (finite, but no held-back
    readings to compare on), ``"non_finite"`` or ``"worse"``.  Losses are
    mean k-shot losses (NaN when not measured).
    """

    accepted: bool
    reason: str
    current_loss: float
    candidate_loss: float
    devices: int = 0
    readings: int = 0


def sample_held_back(
    buffers: DeviceBuffers,
    n_slots: int,
    rng: np.random.Generator,
    max_devices: int = MAX_DEVICES,
    min_query: int = 4,
    query_share: float = 0.25,
) -> HeldBack | None:
    """The newest buffered readings of up to ``max_devices`` random devices, or ``None``.

    A device takes part if it has at least ``2 · min_query`` readings; its
    newest ``max(min_query, query_share · n)`` are the query, the rest the
    support.

    Examples
    --------
    >>> buf = DeviceBuffers(n_features=1, size=8)
    >>> buf.push(np.array([0] * 8 + [1] * 3), np.zeros((11, 1)), np.arange(11.0))
    >>> held = sample_held_back(buf, 2, np.random.default_rng(0), min_query=2)
    >>> held.devices, held.readings, held.query[0].tolist()  # device 1 has too few readings
    (1, 2, [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    >>> sample_held_back(DeviceBuffers(1, 8), 0, np.random.default_rng(0)) is None
    True
    """
    eligible = np.flatnonzero(buffers.count[:n_slots] >= 2 * min_query)
    if len(eligible) == 0:
        return None
    if len(eligible) > max_devices:
        eligible = np.sort(rng.choice(eligible, max_devices, replace=False))
    x, y, mask = buffers.recent(eligible, buffers.size)
    support, query = split_holdout(mask, query_share, min_query)
    return HeldBack(x.clone(), y.clone(), support, query)


def kshot_loss(net: FunctionalNet, theta: Params, held: HeldBack) -> float:
    """Mean over devices of the query loss after adapting ``theta`` on each device's support."""
    phi = net.adapt(theta, held.x, held.y, held.support)
    with torch.no_grad():
        return float(net.masked_loss(phi, held.x, held.y, held.query).mean())


def is_finite(theta: Params) -> bool:
    """Every parameter finite."""
    return all(bool(torch.isfinite(v).all()) for v in theta.values())


def check_theta(
    net: FunctionalNet,
    current: Params,
    candidate: Params,
    held: HeldBack | None,
    tolerance: float = TOLERANCE,
) -> ThetaCheck:
    """Whether ``candidate`` may replace ``current`` (see the module docs).

    Examples
    --------
    >>> from learners.config import LearnerConfig
    >>> from learners.nets import init_params
    >>> cfg = LearnerConfig(n_features=1, hidden=(4,), inner_steps=2)
    >>> net, theta = FunctionalNet(cfg), init_params(cfg)
    >>> buf = DeviceBuffers(n_features=1, size=8)
    >>> buf.push(np.zeros(8, dtype=np.int64), np.linspace(-1, 1, 8)[:, None], np.linspace(-1, 1, 8))
    >>> held = sample_held_back(buf, 1, np.random.default_rng(0))
    >>> check_theta(net, theta, theta, held).reason
    'ok'
    >>> wild = {k: v * 1e4 for k, v in theta.items()}
    >>> check_theta(net, theta, wild, held).reason
    'worse'
    >>> check_theta(net, theta, {k: v * float("nan") for k, v in theta.items()}, held).reason
    'non_finite'
    >>> check_theta(net, theta, wild, None).reason
    'unchecked'
    """
    nan = float("nan")
    if not is_finite(candidate):
        return ThetaCheck(False, "non_finite", nan, nan)
    if held is None or held.readings == 0:
        return ThetaCheck(True, "unchecked", nan, nan)
    before = kshot_loss(net, current, held)
    after = kshot_loss(net, candidate, held)
    size = {"devices": held.devices, "readings": held.readings}
    if not math.isfinite(after):
        return ThetaCheck(False, "non_finite", before, after, **size)
    if math.isfinite(before) and after > before * (1.0 + tolerance) + 1e-12:
        return ThetaCheck(False, "worse", before, after, **size)
    return ThetaCheck(True, "ok", before, after, **size)


__all__ = [
    "MAX_DEVICES",
    "TOLERANCE",
    "HeldBack",
    "ThetaCheck",
    "check_theta",
    "kshot_loss",
    "sample_held_back",
]
