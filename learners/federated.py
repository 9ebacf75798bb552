"""The device side of federated mode: raw readings stay here, only φ − θ leaves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from learners.buffers import DeviceBuffers
from learners.config import LearnerConfig
from learners.nets import FunctionalNet, Params, flatten, flatten_stacked, init_params
from learners.scaling import TaskScaler


class FederatedDevice:
    """Adapts θ locally on the device's own recent readings and reports the change.

    Standardisation uses the device's own running moments (no raw data or
    statistics leave the device).  :meth:`update` returns ``(φ − θ, n)``,
    the proposed change of θ and the number of readings behind it, which
    the meta agent aggregates exactly like workers' contributions.

    Examples
    --------
    >>> from learners.nets import init_params
    >>> cfg = LearnerConfig(n_features=2, adapt_after=8, buffer_size=16)
    >>> device = FederatedDevice(cfg)
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(20, 2)); y = 3 * x[:, 0]
    >>> device.observe(x, y)
    >>> theta = init_params(cfg)
    >>> delta, n = device.update(theta)
    >>> tuple(delta.shape), n, device.update(theta)  # nothing new since the last update
    ((129,), 20, None)
    """

    def __init__(self, cfg: LearnerConfig) -> None:
        self.cfg = cfg
        self.net = FunctionalNet(cfg)
        self.scaler = TaskScaler(cfg.task, cfg.n_features)
        self.buffer = DeviceBuffers(cfg.n_features, cfg.buffer_size, capacity=1)
        self.phi: Params | None = None
        self._new = 0
        # Deltas are flattened in the architecture's parameter order (the wire format's), not in
        # the order of a decoded θ payload, which is arbitrary.
        self._order = list(init_params(cfg))

    def observe(self, x: np.ndarray, y: np.ndarray) -> None:
        """Keep new local readings (they never leave the device)."""
        xs, ys = self.scaler.fit_transform(np.atleast_2d(x), np.atleast_1d(y))
        self.buffer.push(np.zeros(len(ys), dtype=np.int64), xs, ys)
        self._new += len(ys)

    def update(self, theta: Params) -> tuple[Tensor, int] | None:
        """φ ← k SGD steps from θ on local data; returns ``(φ − θ, readings)`` or ``None``.

        ``None`` until at least ``adapt_after`` new readings arrived since the
        previous update.
        """
        if self._new < self.cfg.adapt_after:
            return None
        theta = self.canonical(theta)
        x, y, mask = self._local_data()
        phi = self.net.adapt(theta, x, y, mask)
        n = self._took({k: v[0] for k, v in phi.items()})
        return flatten_stacked(phi)[0] - flatten(theta), n

    def canonical(self, theta: Params) -> Params:
        """``theta`` in the architecture's parameter order (:func:`learners.nets.init_params`)."""
        return {k: theta[k] for k in self._order}

    def _local_data(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.buffer.recent(np.zeros(1, dtype=np.int64), self.cfg.buffer_size)

    def _took(self, phi: Params) -> int:
        """Keep ``phi`` (one model, unstacked) as φ; returns the readings behind it."""
        self.phi = phi
        n, self._new = self._new, 0
        return n

    def predict(self, x: np.ndarray, theta: Params | None = None) -> np.ndarray:
        """Local inference with φ (or ``theta`` before the first update)."""
        params = self.phi if self.phi is not None else theta
        if params is None:
            raise LookupError("no model yet: call update() with θ first")
        xs = torch.as_tensor(self.scaler.x.transform(np.atleast_2d(x)), dtype=torch.float32)
        with torch.no_grad():
            pred = self.net.predict(self.net.forward(params, xs)).double().numpy()
        return self.scaler.inverse_y(pred)


def update_all(devices: Sequence[FederatedDevice], theta: Params) -> list[tuple[Tensor, int] | None]:
    """:meth:`FederatedDevice.update` of many simulated devices with one batched adaptation.

    For simulations and experiments (one process plays many devices): the
    same result per device as calling ``update`` on each, but every device
    that is due adapts in one stacked ``k``-step loop.

    Examples
    --------
    >>> from learners.nets import init_params
    >>> cfg = LearnerConfig(n_features=2, adapt_after=4, buffer_size=8)
    >>> devices = [FederatedDevice(cfg) for _ in range(3)]
    >>> rng = np.random.default_rng(0)
    >>> for i, d in enumerate(devices):
    ...     d.observe(rng.normal(size=(4 + i, 2)), rng.normal(size=4 + i))
    >>> out = update_all(devices, init_params(cfg))
    >>> [n for _, n in out]
    [4, 5, 6]
    """
    due = [i for i, d in enumerate(devices) if d._new >= d.cfg.adapt_after]
    out: list[tuple[Tensor, int] | None] = [None] * len(devices)
    if not due:
        return out
    theta = devices[due[0]].canonical(theta)
    data = [devices[i]._local_data() for i in due]
    x, y, mask = (torch.cat(parts) for parts in zip(*data, strict=True))
    phi = devices[due[0]].net.adapt(theta, x, y, mask)
    deltas = flatten_stacked(phi) - flatten(theta)
    for row, i in enumerate(due):
        n = devices[i]._took({k: v[row] for k, v in phi.items()})
        out[i] = deltas[row], n
    return out
