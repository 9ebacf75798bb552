"""Strategy ``clustered``: K meta-initialisations θ₁…θ_K, each device adapting from the nearest one.

:class:`ClusteredTheta` is a θ source (:mod:`learners.theta_source`) built on
the maths of :mod:`learners.clustered_inits`:

- a new or drifted device starts from the θ_k with the lowest loss on the
  readings it adapts on, and the source remembers which k each device used;
- every ``meta_every`` readings, each drawn device's Reptile direction goes
  to the θ_k it used (one :class:`~learners.meta.MetaLearner` per cluster,
  so K = 1 is exactly Reptile);
- a cluster splits in two when the adapted weights of its devices fall into
  two groups (:func:`~learners.clustered_inits.split_cluster`), up to
  ``max_k`` clusters; two θ's that came close merge again.

Everything happens at the fleet's fixed positions with seeded or
deterministic choices, so a run does not depend on how its stream is cut
into batches, and a checkpoint holds every θ_k and every device's k.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from learners.clustered_inits import merge_close, nearest_inits, split_cluster
from learners.config import LearnerConfig
from learners.meta import MetaLearner, Reptile
from learners.nets import FunctionalNet, Params, flatten, flatten_stacked, init_params, unflatten
from learners.theta_source import DrawTasks, ThetaSourceBase

MAX_CLUSTERS = 8
"""Default bound on K."""


class ClusteredTheta(ThetaSourceBase):
    """Several meta-learned initialisations; each device adapts from, and meta-updates, its nearest one.

    Parameters
    ----------
    cfg
        Model, step sizes and meta-update settings (as for Reptile).
    max_k
        At most this many θ's.
    window
        Adapted weights remembered per cluster (the newest of each drawn
        device) to decide a split.
    min_gain, min_size
        A split needs two groups that explain ``min_gain`` of the remembered
        weights' spread, with ``min_size`` devices each (adapted weights have many
        dimensions, so spread without groups is explained far less than in one).
    spread_fraction
        A cluster made by a split splits again only if its devices' weights
        spread at least this fraction as much (per device) as those of the
        cluster it came from: the variation inside one kind of device does
        not split it further.
    merge_fraction
        Two θ's closer than this fraction of their mean norm merge.

    Examples
    --------
    >>> src = ClusteredTheta(LearnerConfig(n_features=2, hidden=(4,)))
    >>> src.name, src.k, src.version, src.cadenced, src.adopts
    ('clustered', 1, 0, True, False)
    >>> src.adapted(["a", "b"], np.array([0, 0])); src.assignment
    {}
    """

    name = "clustered"

    def __init__(
        self,
        cfg: LearnerConfig,
        max_k: int = MAX_CLUSTERS,
        window: int = 16,
        min_gain: float = 0.7,
        min_size: int = 2,
        spread_fraction: float = 0.75,
        merge_fraction: float = 0.02,
    ) -> None:
        if max_k < 1:
            raise ValueError(f"max_k must be >= 1, got {max_k}")
        theta = init_params(cfg)
        super().__init__(theta)
        self.cfg = cfg
        self.max_k = max_k
        self.window = window
        self.min_gain = min_gain
        self.min_size = min_size
        self.spread_fraction = spread_fraction
        self.merge_fraction = merge_fraction
        self.parent_spread: list[float] = [0.0]
        """Per cluster: the per-device spread of the cluster it split from (0 for the first)."""
        self.rule = Reptile()
        self.metas: list[MetaLearner] = [MetaLearner.from_config(theta, cfg)]
        self.assignment: dict[str, int] = {}
        """The θ_k each device last adapted from (by device id)."""
        self.recent: list[dict[str, Tensor]] = [{}]
        """Per cluster: the newest adapted weights ``[P]`` of each recently drawn device, oldest first."""
        self._version = 0
        self._picks = torch.zeros(0, dtype=torch.long)
        self.splits = 0
        self.merges = 0

    # -- what the fleet sees ------------------------------------------------------------

    @property
    def k(self) -> int:
        """The number of initialisations."""
        return len(self.metas)

    @property
    def thetas(self) -> Params:
        """Every θ_k stacked ``[K, …]``."""
        return {name: torch.stack([m.theta[name] for m in self.metas]) for name in self.metas[0].theta}

    @property
    def theta(self) -> Params:
        # θ₁ is where a device starts before it has readings to choose by.
        return self.metas[0].theta

    @property
    def version(self) -> int:
        return self._version

    @property
    def cadenced(self) -> bool:
        return True

    def adapt(self, net: FunctionalNet, x: Tensor, y: Tensor, mask: Tensor) -> Params:
        """φ for each device, adapted from the θ_k with the lowest loss on its readings."""
        picks = (
            nearest_inits(net, self.thetas, x, y, mask)
            if self.k > 1
            else torch.zeros(x.shape[0], dtype=torch.long)
        )
        self._picks = picks
        if self.k == 1:
            return net.adapt(self.metas[0].theta, x, y, mask)
        out: Params = {}
        for c in torch.unique(picks).tolist():
            rows = torch.nonzero(picks == c).squeeze(1)
            phi = net.adapt(self.metas[c].theta, x[rows], y[rows], mask[rows])
            for name, v in phi.items():
                if name not in out:
                    out[name] = v.new_empty((x.shape[0], *v.shape[1:]))
                out[name][rows] = v
        return out

    def adapted(self, device_ids: Sequence[str], rows: np.ndarray) -> None:
        """Rows ``rows`` of the last :meth:`adapt` became the models of ``device_ids``: remember their θ_k."""
        for device, row in zip(device_ids, np.asarray(rows).tolist(), strict=True):
            if row < len(self._picks):
                self.assignment[device] = int(self._picks[row])

    def at_cadence(self, net: FunctionalNet, draw: DrawTasks) -> None:
        """A Reptile step per cluster with the drawn devices that used it; then split and merge."""
        tasks = draw()
        if tasks is None:
            return
        clusters = self._clusters_of(net, tasks.devices, tasks.x, tasks.y, tasks.mask)
        stepped = False
        for c in torch.unique(clusters).tolist():
            rows = torch.nonzero(clusters == c).squeeze(1)
            meta = self.metas[c]
            deltas = self.rule.directions(net, meta.theta, tasks.x[rows], tasks.y[rows], tasks.mask[rows])
            adapted = flatten(meta.theta) + deltas
            if tasks.devices:
                for r, row in enumerate(rows.tolist()):
                    self._remember(c, tasks.devices[row], adapted[r])
            meta.step(deltas, tasks.weights[rows])
            stepped = True
        if stepped:
            self._version += 1
        self._split()
        self._merge()

    def _clusters_of(
        self, net: FunctionalNet, devices: Sequence[str], x: Tensor, y: Tensor, mask: Tensor
    ) -> Tensor:
        """Each drawn device's θ_k: the one it adapted from, else the nearest on its readings."""
        out = torch.zeros(len(x), dtype=torch.long)
        if self.k > 1:
            out = nearest_inits(net, self.thetas, x, y, mask)
        known = [(i, self.assignment[d]) for i, d in enumerate(devices) if d in self.assignment]
        for i, c in known:
            out[i] = c
        return out

    def _remember(self, cluster: int, device: str, weights: Tensor) -> None:
        store = self.recent[cluster]
        store.pop(device, None)  # the newest weights of a device go last
        store[device] = weights.detach().clone()
        while len(store) > self.window:
            store.pop(next(iter(store)))

    # -- K grows and shrinks ---------------------------------------------------------

    def _split(self) -> None:
        """Split the first cluster whose remembered adapted weights fall into two groups (bounded K)."""
        for c in range(self.k):
            if self.k >= self.max_k:
                return
            store = self.recent[c]
            if len(store) < 2 * self.min_size:
                continue
            devices = list(store)
            weights = torch.stack(list(store.values()))
            spread = float(((weights - weights.mean(0)) ** 2).sum(1).mean())
            if spread < self.spread_fraction * self.parent_spread[c]:
                continue
            labels = split_cluster(weights, self.min_gain, self.min_size)
            if labels is None:
                continue
            like = self.metas[c].theta
            centres = [unflatten(weights[labels == j].mean(0), like) for j in (0, 1)]
            old = self.metas[c]
            self.metas[c] = self._meta_like(old, centres[0])
            self.metas.append(self._meta_like(old, centres[1]))
            new = self.k - 1
            for device, label in zip(devices, labels.tolist(), strict=True):
                self.assignment[device] = c if label == 0 else new
            # Both halves collect fresh weights from their own θ before they may split again.
            self.recent[c] = {}
            self.recent.append({})
            self.parent_spread[c] = spread
            self.parent_spread.append(spread)
            self.splits += 1
            return

    def _merge(self) -> None:
        """Merge θ's that came closer than ``merge_fraction`` of their mean norm."""
        if self.k == 1:
            return
        flat = torch.stack([flatten(m.theta) for m in self.metas])
        tolerance = self.merge_fraction * float(flat.norm(dim=1).mean())
        into = merge_close(flat, tolerance)
        keep = sorted(set(into.tolist()))
        if len(keep) == self.k:
            return
        renumber = {old: keep.index(int(into[old])) for old in range(self.k)}
        for c in keep:
            group = [i for i in range(self.k) if int(into[i]) == c]
            mean = flat[group].mean(0)
            self.metas[c] = self._meta_like(self.metas[c], unflatten(mean, self.metas[c].theta))
            for i in group[1:]:
                self.recent[c] |= self.recent[i]
        self.metas = [self.metas[c] for c in keep]
        self.recent = [self.recent[c] for c in keep]
        self.parent_spread = [self.parent_spread[c] for c in keep]
        self.assignment = {d: renumber[c] for d, c in self.assignment.items()}
        self.merges += len(into) - len(keep)

    def _meta_like(self, meta: MetaLearner, theta: Params) -> MetaLearner:
        out = MetaLearner.from_config({k: v.clone() for k, v in theta.items()}, self.cfg)
        out.bounds.restore(meta.bounds.state())
        return out

    # -- checkpoints ------------------------------------------------------------------

    def export_state(self) -> tuple[dict[str, Tensor], Any]:
        tensors = {f"clustered.{name}": v.clone() for name, v in self.thetas.items()}
        state = {
            "version": self._version,
            "assignment": dict(self.assignment),
            "bounds": [m.bounds.state() for m in self.metas],
            "recent": [list(store) for store in self.recent],
            "splits": self.splits,
            "merges": self.merges,
            "parent_spread": list(self.parent_spread),
        }
        for c, store in enumerate(self.recent):
            if store:
                tensors[f"clustered_recent.{c}"] = torch.stack(list(store.values()))
        return tensors, state

    def expected_shapes(self, tensors: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
        first = f"clustered.{next(iter(self.theta))}"
        k = int(tensors[first].shape[0]) if first in tensors else -1
        if not 1 <= k <= self.max_k:
            k = -1  # reported as a mismatch
        return {f"clustered.{name}": (k, *v.shape) for name, v in self.theta.items()}

    def import_state(
        self, theta: Params, version: int, tensors: dict[str, Tensor], state: Any, worker_wide: bool
    ) -> None:
        if not state:
            return
        names = list(self.theta)
        if not worker_wide:
            # A device's θ_k travels with it where this worker has that θ_k; else it is picked anew.
            self.assignment |= {d: int(c) for d, c in state["assignment"].items() if int(c) < self.k}
            return
        self.assignment = {d: int(c) for d, c in state["assignment"].items()}
        self.metas = []
        for c in range(int(tensors[f"clustered.{names[0]}"].shape[0])):
            meta = MetaLearner.from_config({n: tensors[f"clustered.{n}"][c].clone() for n in names}, self.cfg)
            meta.bounds.restore(state["bounds"][c])
            self.metas.append(meta)
        self.recent = []
        for c, devices in enumerate(state["recent"]):
            got = tensors.get(f"clustered_recent.{c}")
            self.recent.append({d: got[i].clone() for i, d in enumerate(devices)} if got is not None else {})
        self._version = int(state["version"])
        self.splits, self.merges = int(state["splits"]), int(state["merges"])
        self.parent_spread = [float(v) for v in state["parent_spread"]]


def flat_thetas(source: ClusteredTheta) -> Tensor:
    """``[K, P]``: every θ_k flattened (for reports and tests)."""
    return flatten_stacked(source.thetas)


__all__ = ["MAX_CLUSTERS", "ClusteredTheta", "flat_thetas"]
