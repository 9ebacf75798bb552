"""A seeded synthetic fleet: related device tasks with drift at known points.

Every device computes ``g · f(x) + o + v·x`` (regression) from a shared
non-linear ``f`` with its own gain ``g``, offset ``o`` and small linear term
``v``; classification thresholds that score into classes.  At a drift
point a device's gain changes sign and it draws a new size, offset and
``v``: at once (abrupt) or by mixing old and new over a window (gradual).
Devices join over time.

With ``clusters=K`` the fleet is made of K kinds of devices: each kind has
its own non-linear ``f_c``, gain and offset (offsets spread evenly over
``[-2, 2]``), and a device's own gain, offset and ``v`` vary a little
around its kind's.  A drift moves a device to another kind (abruptly or
gradually), so the new concept is one the fleet already knows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from learners.config import Task


@dataclass(frozen=True)
class DriftPoint:
    """A device's concept change: where it starts in the device's own readings."""

    device_id: str
    local_index: int
    kind: str  # "abrupt" or "gradual"
    width: int


@dataclass
class FleetStream:
    """Readings in arrival order, plus the truth about drifts.

    Examples
    --------
    >>> s = make_fleet_stream(n_devices=3, n_readings=600, n_features=2, late_joiners=0.0, seed=1)
    >>> len(s), s.x.shape, s.feature_names()
    (600, (600, 2), ['x0', 'x1'])
    >>> sorted({d.device_id for d in s.drifts})
    ['dev-0000', 'dev-0001', 'dev-0002']
    """

    device_ids: list[str]
    x: np.ndarray
    y: np.ndarray
    time: np.ndarray
    task: Task
    drifts: list[DriftPoint] = field(default_factory=list)
    kinds: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    """``[devices, drifts + 1]``: each device's kind in each concept (empty without ``clusters``)."""

    def __len__(self) -> int:
        return len(self.device_ids)

    def feature_names(self) -> list[str]:
        """``x0 … x{F-1}``."""
        return [f"x{j}" for j in range(self.x.shape[1])]


def make_fleet_stream(
    n_devices: int = 50,
    n_readings: int = 50_000,
    n_features: int = 8,
    task: Task = "regression",
    n_classes: int = 3,
    drifts_per_device: int = 1,
    gradual_share: float = 0.5,
    gradual_width: int = 100,
    late_joiners: float = 0.6,
    noise: float = 0.1,
    seed: int = 0,
    clusters: int = 0,
) -> FleetStream:
    """Generate a fleet stream; identical for identical arguments.

    ``clusters=K`` (K >= 1) makes a fleet of K kinds of devices (see the
    module docstring); 0 keeps one kind with widely spread gains and offsets.

    Examples
    --------
    >>> s = make_fleet_stream(n_devices=4, n_readings=200, n_features=3, seed=1)
    >>> len(s), s.x.shape, len(set(s.device_ids))
    (200, (200, 3), 4)
    >>> [d.device_id for d in s.drifts]
    ['dev-0000', 'dev-0001', 'dev-0002', 'dev-0003']
    >>> bool((make_fleet_stream(n_devices=4, n_readings=200, n_features=3, seed=1).y == s.y).all())
    True
    >>> c = make_fleet_stream(n_devices=6, n_readings=600, n_features=3, seed=1, clusters=3)
    >>> c.kinds.tolist()   # kind in the first and the second concept: a drift changes the kind
    [[0, 1], [1, 0], [2, 1], [0, 2], [1, 0], [2, 0]]
    """
    if n_devices < 1 or n_readings < n_devices:
        raise ValueError("need n_devices >= 1 and n_readings >= n_devices")
    if clusters < 0:
        raise ValueError(f"clusters must be >= 0, got {clusters}")
    rng = np.random.default_rng(seed)
    hidden = 16
    u = rng.normal(size=(n_features, hidden)) / np.sqrt(n_features)
    b = rng.normal(size=hidden)
    a = rng.normal(size=hidden) / np.sqrt(hidden)

    def shared(x: np.ndarray) -> np.ndarray:
        return 2.0 * np.tanh(x @ u + b) @ a

    # Who speaks when: devices join over time, then speak at random.
    dev = _speakers(rng, n_devices, n_readings, late_joiners)
    steps = np.arange(n_readings)
    local = _cumcount(dev)
    totals = np.bincount(dev, minlength=n_devices)

    # Concept = (gain, offset, linear term).  Gains have either sign; a drift
    # flips the sign of the gain and redraws its size and the offset, so the
    # old model is wrong everywhere but the shared shape f still helps.
    n_concepts = drifts_per_device + 1
    concepts = _concepts(rng, n_devices, n_concepts, n_features)
    ids = [f"dev-{d:04d}" for d in range(n_devices)]
    regime, drifts = _drift_regimes(
        rng, dev, local, totals, ids, drifts_per_device, gradual_share, gradual_width
    )

    x = rng.normal(size=(n_readings, n_features))
    kinds = np.zeros((0, 0), dtype=np.int64)
    if clusters:
        concepts, kinds, kind_f = _clustered_concepts(n_devices, n_concepts, n_features, clusters, seed)
        shape = np.stack([f(x) for f in kind_f], axis=1)[steps, kinds[dev, regime]]
    else:
        shape = shared(x)
    c = concepts[dev, regime]
    score = c[:, 0] * shape + c[:, 1] + (c[:, 2:] * x).sum(1)
    if task == "regression":
        y = score + noise * rng.normal(size=n_readings)
    else:
        edges = np.linspace(-1.0, 1.0, n_classes - 1) if n_classes > 2 else np.zeros(1)
        y = np.digitize(score + noise * rng.normal(size=n_readings), edges).astype(np.float64)
    return FleetStream([ids[d] for d in dev], x, y, steps.astype(np.float64), task, drifts, kinds)


def _speakers(rng: np.random.Generator, n_devices: int, n_readings: int, late_joiners: float) -> np.ndarray:
    """The device index of every reading: devices join over time, then speak at random."""
    n_early = max(1, round(n_devices * (1 - late_joiners)))
    join = np.concatenate(
        [np.zeros(n_early), np.sort(rng.uniform(0, 0.5, n_devices - n_early)) * n_readings]
    ).astype(np.int64)
    n_joined = np.searchsorted(join, np.arange(n_readings), side="right")
    dev = np.minimum((rng.random(n_readings) * n_joined).astype(np.int64), n_joined - 1)
    dev[join] = np.arange(n_devices)  # a device's first reading is at its join step
    return dev


def _concepts(rng: np.random.Generator, n_devices: int, n_concepts: int, n_features: int) -> np.ndarray:
    """``[device, concept]`` → (gain, offset, linear term); each concept flips the gain's sign."""
    concepts = np.empty((n_devices, n_concepts, 2 + n_features))
    sign = rng.choice([-1.0, 1.0], n_devices)
    for k in range(n_concepts):
        concepts[:, k, 0] = sign * rng.uniform(0.5, 2.0, n_devices)
        concepts[:, k, 1] = rng.uniform(-2.0, 2.0, n_devices)
        sign = -sign
    concepts[:, :, 2:] = rng.normal(0, 0.1, (n_devices, n_concepts, n_features))
    return concepts


def _drift_regimes(
    rng: np.random.Generator,
    dev: np.ndarray,
    local: np.ndarray,
    totals: np.ndarray,
    ids: list[str],
    drifts_per_device: int,
    gradual_share: float,
    gradual_width: int,
) -> tuple[np.ndarray, list[DriftPoint]]:
    """The concept index of every reading, and each device's drift points (abrupt or gradual)."""
    regime = np.zeros(len(dev), dtype=np.int64)
    drifts: list[DriftPoint] = []
    for d in range(len(ids)):
        starts = np.sort(rng.uniform(0.3, 0.9, drifts_per_device)) * totals[d]
        mine = dev == d
        for k, start in enumerate(starts.astype(np.int64), start=1):
            gradual = rng.random() < gradual_share
            width = gradual_width if gradual else 1
            p_new = np.clip((local[mine] - start + 1) / width, 0, 1)
            switched = rng.random(mine.sum()) < p_new
            regime[np.flatnonzero(mine)[switched]] = k
            drifts.append(DriftPoint(ids[d], int(start), "gradual" if gradual else "abrupt", width))
    return regime, drifts


def _clustered_concepts(
    n_devices: int, n_concepts: int, n_features: int, clusters: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[Callable[[np.ndarray], np.ndarray]]]:
    """Concepts ``[devices, concepts, 2 + F]``, kinds ``[devices, concepts]`` and each kind's ``f_c``.

    Drawn from their own stream (``[seed, 1]``) so that a fleet without
    clusters stays what it was.
    """
    rng = np.random.default_rng([seed, 1])
    hidden = 16

    def network(u: np.ndarray, b: np.ndarray, a: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: np.asarray(2.0 * np.tanh(x @ u + b) @ a)

    kind_f = []
    for _ in range(clusters):
        u = rng.normal(size=(n_features, hidden)) / np.sqrt(n_features)
        b = rng.normal(size=hidden)
        a = rng.normal(size=hidden) / np.sqrt(hidden)
        kind_f.append(network(u, b, a))
    gain = rng.choice([-1.0, 1.0], clusters) * rng.uniform(0.5, 2.0, clusters)
    offset = rng.permutation(np.linspace(-2.0, 2.0, clusters)) if clusters > 1 else np.zeros(1)
    kinds = np.zeros((n_devices, n_concepts), dtype=np.int64)
    kinds[:, 0] = np.arange(n_devices) % clusters
    for k in range(1, n_concepts):
        step = rng.integers(1, clusters, n_devices) if clusters > 1 else np.zeros(n_devices, dtype=np.int64)
        kinds[:, k] = (kinds[:, k - 1] + step) % clusters
    concepts = np.empty((n_devices, n_concepts, 2 + n_features))
    concepts[:, :, 0] = gain[kinds] * (1.0 + 0.1 * rng.normal(size=kinds.shape))
    concepts[:, :, 1] = offset[kinds] + 0.1 * rng.normal(size=kinds.shape)
    concepts[:, :, 2:] = rng.normal(0, 0.05, (n_devices, n_concepts, n_features))
    return concepts, kinds, kind_f


def _cumcount(groups: np.ndarray) -> np.ndarray:
    """Position of each element within its group, in order of appearance."""
    order = np.argsort(groups, kind="stable")
    _, first, counts = np.unique(groups[order], return_index=True, return_counts=True)
    out = np.empty_like(groups)
    out[order] = np.arange(len(groups)) - np.repeat(first, counts)
    return out
