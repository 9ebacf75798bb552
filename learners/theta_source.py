"""Where a fleet's θ comes from: the seam every meta-learning family plugs into.

A :class:`~learners.fleet.FleetLearner` keeps each device's weights; the
starting point θ that a new or drifted device adapts from is held by a
*θ source*.  The fleet asks the source for θ, lets it adapt devices from it,
tells it what the stream did (every reading it learned, every ``meta_every``
position), and hands it θ from the meta agent.  The source never sees a
device slot or a transport.

The families here:

- :class:`MetaLearnedTheta`: θ meta-learned online with a :class:`~learners.meta.MetaRule`
  (``reptile``: :class:`~learners.meta.Reptile`, ``fomaml``: :class:`~learners.meta.FirstOrderMAML`);
- :class:`RemoteTheta`: a worker's θ: the rule's proposed changes go to the meta agent
  (:meth:`ThetaSource.take_contributions`) and θ comes back from the meta topic;
- :class:`FrozenTheta`: a fixed random initialisation (``scratch``);
- :class:`PooledTheta`: one model trained on every reading pooled (``finetune``).

A new family subclasses :class:`ThetaSourceBase` (safe defaults for everything
it does not need) and overrides what it changes: several initialisations θ₁…θ_K
chosen by task similarity override :meth:`ThetaSource.adapt` (the device's own
readings pick θ_k); a learned inner optimiser (Meta-SGD's step sizes, an LSTM)
overrides :meth:`ThetaSource.adapt` and learns its state in
:meth:`ThetaSource.at_cadence`.  :data:`THETA_SOURCES` maps the strategy names
of the command line to sources.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from learners.config import LearnerConfig
from learners.meta import FirstOrderMAML, MetaLearner, MetaRule, Reptile
from learners.nets import FunctionalNet, Params, init_params
from learners.shared_model import GlobalModel

Contribution = tuple[Tensor, Tensor]
"""``(deltas [n, P], weights [n])``: proposed changes of θ for the meta agent."""


@dataclass(frozen=True)
class Tasks:
    """Recent readings of the devices drawn for a meta-update (see :meth:`ThetaSource.at_cadence`).

    ``x`` is ``[D, n, F]``, ``y`` and ``mask`` are ``[D, n]`` (mask 1: a real
    reading); ``weights`` ``[D]`` are the readings each device learned since
    the last meta-update; ``devices`` their ids, in row order (empty when
    unknown).
    """

    x: Tensor
    y: Tensor
    mask: Tensor
    weights: Tensor
    devices: tuple[str, ...] = ()


DrawTasks = Callable[[], Tasks | None]
"""Draws the devices for a meta-update (``None``: no device is ready); call it at most once."""


class ThetaSource(Protocol):
    """Where θ comes from, seen from a :class:`~learners.fleet.FleetLearner`."""

    name: str
    """The strategy name it stands for (``reptile``, ``scratch``, …)."""

    @property
    def theta(self) -> Params:
        """The θ new devices start from (checkpointed, published; do not modify in place)."""
        ...

    @property
    def version(self) -> int:
        """Meta-updates θ has had (0 when θ is not meta-learned)."""
        ...

    @property
    def cadenced(self) -> bool:
        """Whether θ (or what is proposed for it) changes every ``meta_every`` readings."""
        ...

    @property
    def adopts(self) -> bool:
        """Whether θ computed elsewhere (the meta agent) can replace this source's."""
        ...

    def adapt(self, net: FunctionalNet, x: Tensor, y: Tensor, mask: Tensor) -> Params:
        """φ for each of ``D`` devices from θ, on their readings (``[D, n, F]``, ``[D, n]``, ``[D, n]``)."""
        ...

    def adapted(self, device_ids: Sequence[str], rows: np.ndarray) -> None:
        """Rows ``rows`` of the last :meth:`adapt` call's output became the models of ``device_ids``."""
        ...

    def observe(self, xs: np.ndarray, ys: np.ndarray) -> None:
        """Every standardised reading the fleet learned, in stream order."""
        ...

    def at_cadence(self, net: FunctionalNet, draw: DrawTasks) -> None:
        """The stream reached a multiple of ``meta_every``: meta-update θ (or propose one)."""
        ...

    def adopt(self, theta: Params, version: int) -> bool:
        """Take θ from the meta agent if ``version`` is newer; ``ValueError`` unless :attr:`adopts`."""
        ...

    def take_contributions(self) -> list[Contribution]:
        """Proposed changes of θ queued for the meta agent, oldest first (emptied)."""
        ...

    def export_state(self) -> tuple[dict[str, Tensor], Any]:
        """Worker-wide state beyond ``theta.*``: tensors (named ``pooled.*`` …) and a JSON-able part."""
        ...

    def expected_shapes(self, tensors: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
        """Shapes :meth:`import_state` needs of the checkpoint's ``tensors`` (beyond ``theta.*``)."""
        ...

    def import_state(
        self, theta: Params, version: int, tensors: dict[str, Tensor], state: Any, worker_wide: bool
    ) -> None:
        """Restore from a checkpoint: θ if newer; worker-wide state only with ``worker_wide``."""
        ...


class ThetaSourceBase:
    """Safe defaults: a fixed θ, plain SGD adaptation, nothing learned from the stream.

    Examples
    --------
    >>> src = FrozenTheta(LearnerConfig(n_features=2, hidden=(4,)))
    >>> src.name, src.version, src.cadenced, src.adopts, src.take_contributions()
    ('scratch', 0, False, False, [])
    >>> src.adopt(src.theta, 1)
    Traceback (most recent call last):
    ...
    ValueError: strategy 'scratch' has no meta-learned θ to adopt
    """

    name = "base"

    def __init__(self, theta: Params) -> None:
        self._theta = theta

    @property
    def theta(self) -> Params:
        return self._theta

    @property
    def version(self) -> int:
        return 0

    @property
    def cadenced(self) -> bool:
        return False

    @property
    def adopts(self) -> bool:
        return False

    def adapt(self, net: FunctionalNet, x: Tensor, y: Tensor, mask: Tensor) -> Params:
        return net.adapt(self.theta, x, y, mask)

    def adapted(self, device_ids: Sequence[str], rows: np.ndarray) -> None:
        return None

    def observe(self, xs: np.ndarray, ys: np.ndarray) -> None:
        return None

    def at_cadence(self, net: FunctionalNet, draw: DrawTasks) -> None:
        return None

    def adopt(self, theta: Params, version: int) -> bool:
        raise ValueError(f"strategy {self.name!r} has no meta-learned θ to adopt")

    def take_contributions(self) -> list[Contribution]:
        return []

    def export_state(self) -> tuple[dict[str, Tensor], Any]:
        return {}, None

    def expected_shapes(self, tensors: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
        return {}

    def import_state(
        self, theta: Params, version: int, tensors: dict[str, Tensor], state: Any, worker_wide: bool
    ) -> None:
        return None


class FrozenTheta(ThetaSourceBase):
    """``scratch``: θ is a fixed random initialisation; no meta-learning."""

    name = "scratch"

    def __init__(self, cfg: LearnerConfig) -> None:
        super().__init__(init_params(cfg))


class MetaLearnedTheta(ThetaSourceBase):
    """θ meta-learned online with ``rule``, every ``meta_every`` readings, here.

    Parameters
    ----------
    cfg
        Step size, bounds and aggregation of the meta-updates.
    rule
        Proposes each drawn device's change of θ (default :class:`~learners.meta.Reptile`).

    Examples
    --------
    >>> src = MetaLearnedTheta(LearnerConfig(n_features=2, hidden=(4,)), FirstOrderMAML())
    >>> src.name, src.version, src.cadenced, src.adopts
    ('fomaml', 0, True, True)
    >>> src.adopt({k: v + 1 for k, v in src.theta.items()}, 3), src.version
    (True, 3)
    """

    def __init__(self, cfg: LearnerConfig, rule: MetaRule | None = None) -> None:
        theta = init_params(cfg)
        super().__init__(theta)
        self.rule: MetaRule = rule if rule is not None else Reptile()
        self.name = self.rule.name
        self.meta = MetaLearner.from_config(theta, cfg)

    @property
    def theta(self) -> Params:
        return self.meta.theta

    @property
    def version(self) -> int:
        return self.meta.version

    @property
    def cadenced(self) -> bool:
        return True

    @property
    def adopts(self) -> bool:
        return True

    def at_cadence(self, net: FunctionalNet, draw: DrawTasks) -> None:
        tasks = draw()
        if tasks is not None:
            self.apply(
                self.rule.directions(net, self.meta.theta, tasks.x, tasks.y, tasks.mask), tasks.weights
            )

    def apply(self, deltas: Tensor, weights: Tensor) -> None:
        """What becomes of the devices' proposed changes: here, one meta-update of θ."""
        self.meta.step(deltas, weights)

    def adopt(self, theta: Params, version: int) -> bool:
        return self.meta.adopt(theta, version)

    def export_state(self) -> tuple[dict[str, Tensor], Any]:
        return {}, self.meta.bounds.state()

    def import_state(
        self, theta: Params, version: int, tensors: dict[str, Tensor], state: Any, worker_wide: bool
    ) -> None:
        self.meta.adopt(theta, version)
        if worker_wide and state:  # absent in older checkpoints
            self.meta.bounds.restore(state)


class RemoteTheta(MetaLearnedTheta):
    """A worker's θ: the rule's proposals go to the meta agent, and θ comes back from the meta topic.

    Examples
    --------
    >>> src = RemoteTheta(LearnerConfig(n_features=2, hidden=(4,)))
    >>> src.apply(torch.ones(2, 3), torch.ones(2)); src.version
    0
    >>> [d.shape for d, _ in src.take_contributions()], src.take_contributions()
    ([torch.Size([2, 3])], [])
    """

    def __init__(self, cfg: LearnerConfig, rule: MetaRule | None = None) -> None:
        super().__init__(cfg, rule)
        self.contributions: list[Contribution] = []

    def apply(self, deltas: Tensor, weights: Tensor) -> None:
        self.contributions.append((deltas, weights))

    def take_contributions(self) -> list[Contribution]:
        out, self.contributions = self.contributions, []
        return out


class PooledStream:
    """A pooled model learning from every reading in whole chunks, and its part of a checkpoint.

    Chunks keep the model's steps at fixed positions of the stream however it
    is cut into batches; readings short of a chunk wait in ``pending_*``.
    The checkpoint tensors are ``pooled.<param>``, ``pooled.pending_x`` and
    ``pooled.pending_y``.

    Examples
    --------
    >>> pool = PooledStream(GlobalModel(LearnerConfig(n_features=2, hidden=(4,))), n_features=2)
    >>> out = pool.observe(np.ones((40, 2), np.float32), np.ones(40, np.float32))
    >>> out.shape, len(pool.pending_y), sorted(pool.export())[-2:]  # one chunk of 32 learned, 8 wait
    (torch.Size([32, 1]), 8, ['pooled.pending_x', 'pooled.pending_y'])
    """

    def __init__(self, model: GlobalModel, n_features: int) -> None:
        self.model = model
        self.pending_x = np.zeros((0, n_features), dtype=np.float32)
        self.pending_y = np.zeros(0, dtype=np.float32)

    def observe(self, xs: np.ndarray, ys: np.ndarray) -> Tensor | None:
        """Learn every whole chunk of the readings seen so far; keep the rest for the next call.

        Returns the model's outputs for the readings of the chunks it learned
        (the waiting ones first), each from before it learned that chunk.
        """
        chunk = self.model.chunk
        px = np.concatenate([self.pending_x, xs])
        py = np.concatenate([self.pending_y, ys])
        whole = len(py) - len(py) % chunk
        out = None
        if whole:
            out = self.model.learn_predict(torch.from_numpy(px[:whole]), torch.from_numpy(py[:whole]))
        self.pending_x, self.pending_y = px[whole:].copy(), py[whole:].copy()
        return out

    def export(self) -> dict[str, Tensor]:
        """The model's weights and the waiting readings, as checkpoint tensors."""
        tensors = {f"pooled.{k}": v.clone() for k, v in self.model.params.items()}
        tensors["pooled.pending_x"] = torch.from_numpy(self.pending_x.copy())
        tensors["pooled.pending_y"] = torch.from_numpy(self.pending_y.copy())
        return tensors

    def expected_shapes(self, tensors: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
        """The shapes :meth:`restore` needs; the number of waiting readings is the checkpoint's own."""
        shapes = {f"pooled.{k}": tuple(v.shape) for k, v in self.model.params.items()}
        pending = int(tensors["pooled.pending_y"].shape[0]) if "pooled.pending_y" in tensors else -1
        shapes["pooled.pending_y"] = (pending,)
        shapes["pooled.pending_x"] = (pending, self.pending_x.shape[1])
        return shapes

    def restore(self, tensors: dict[str, Tensor]) -> None:
        """The inverse of :meth:`export`."""
        self.model.params = {k: tensors[f"pooled.{k}"].clone() for k in self.model.params}
        self.pending_x = tensors["pooled.pending_x"].numpy().astype(np.float32).copy()
        self.pending_y = tensors["pooled.pending_y"].numpy().astype(np.float32).copy()


class PooledTheta(ThetaSourceBase):
    """``finetune``: θ is a model trained on every reading pooled, as of the last ``meta_every`` position.

    The pooled model steps on whole chunks of readings (:class:`PooledStream`),
    so its steps fall at fixed positions of the stream however it is cut.

    Examples
    --------
    >>> src = PooledTheta(LearnerConfig(n_features=2, hidden=(4,)))
    >>> src.observe(np.ones((40, 2), np.float32), np.ones(40, np.float32))
    >>> src.name, src.cadenced, len(src.pool.pending_y)  # one chunk of 32 learned, 8 wait
    ('finetune', True, 8)
    """

    name = "finetune"

    def __init__(self, cfg: LearnerConfig) -> None:
        self.pool = PooledStream(GlobalModel(cfg), cfg.n_features)
        super().__init__({k: v.clone() for k, v in self.pool.model.theta.items()})

    @property
    def cadenced(self) -> bool:
        return True

    def observe(self, xs: np.ndarray, ys: np.ndarray) -> None:
        self.pool.observe(xs, ys)

    def at_cadence(self, net: FunctionalNet, draw: DrawTasks) -> None:
        self._theta = {k: v.clone() for k, v in self.pool.model.theta.items()}

    def export_state(self) -> tuple[dict[str, Tensor], Any]:
        return self.pool.export(), None

    def expected_shapes(self, tensors: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
        return self.pool.expected_shapes(tensors)

    def import_state(
        self, theta: Params, version: int, tensors: dict[str, Tensor], state: Any, worker_wide: bool
    ) -> None:
        if worker_wide:
            self.pool.restore(tensors)
            self._theta = {k: v.clone() for k, v in theta.items()}


META_RULES: dict[str, Callable[[], MetaRule]] = {"reptile": Reptile, "fomaml": FirstOrderMAML}
"""The meta-update rules by strategy name."""

THETA_SOURCES: dict[str, Callable[[LearnerConfig], ThetaSource]] = {
    "reptile": lambda cfg: MetaLearnedTheta(cfg, Reptile()),
    "fomaml": lambda cfg: MetaLearnedTheta(cfg, FirstOrderMAML()),
    "scratch": FrozenTheta,
    "finetune": PooledTheta,
}
"""The one table from a strategy name to the θ source of its :class:`~learners.fleet.FleetLearner`."""


def theta_source(name: str, cfg: LearnerConfig, remote: bool = False) -> ThetaSource:
    """The θ source a strategy name stands for; ``remote``: a meta-learned θ comes from the meta agent.

    Examples
    --------
    >>> cfg = LearnerConfig(n_features=2, hidden=(4,))
    >>> type(theta_source("fomaml", cfg)).__name__, type(theta_source("reptile", cfg, remote=True)).__name__
    ('MetaLearnedTheta', 'RemoteTheta')
    >>> theta_source("maml", cfg)
    Traceback (most recent call last):
    ...
    ValueError: unknown init 'maml'; choose one of reptile, fomaml, scratch, finetune
    """
    if name not in THETA_SOURCES:
        raise ValueError(f"unknown init {name!r}; choose one of {', '.join(THETA_SOURCES)}")
    if remote and name in META_RULES:
        return RemoteTheta(cfg, META_RULES[name]())
    return THETA_SOURCES[name](cfg)


__all__ = [
    "META_RULES",
    "THETA_SOURCES",
    "Contribution",
    "DrawTasks",
    "FrozenTheta",
    "MetaLearnedTheta",
    "PooledTheta",
    "RemoteTheta",
    "Tasks",
    "ThetaSource",
    "ThetaSourceBase",
    "theta_source",
]
