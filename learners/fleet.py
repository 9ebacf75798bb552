"""Per-device models stacked in one tensor, learning from a shared θ.

This is the heart of metastream: predict-then-learn on micro-batches that
mix many devices, per-device drift detection, k-step adaptation from θ on
drift or for a new device, and periodic meta-updates of θ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from learners.base import StepResult, reading_errors
from learners.buffers import DeviceBuffers
from learners.codec import ModelHeader, encode_model
from learners.config import LearnerConfig
from learners.drift import DriftMonitor
from learners.grouping import DeviceGroups
from learners.guard import GuardCheck, accept, split_holdout
from learners.meta import MetaLearner, MetaRule, rule_by_name
from learners.nets import FunctionalNet, Params, init_params, stack
from learners.registry import DeviceIndex
from learners.scaling import TaskScaler
from learners.shared_model import GlobalModel

GUARD_RETRIES = 3
"""Rejected adaptations of one device in a row that are retried a few readings later."""

InitName = Literal["reptile", "fomaml", "scratch", "finetune"]
INITS: tuple[InitName, ...] = ("reptile", "fomaml", "scratch", "finetune")


class FleetLearner:
    """Stacked per-device MLPs whose starting point θ comes from ``init``.

    Parameters
    ----------
    cfg
        Model, learning and drift settings.
    init
        Where θ (the weights a new or drifted device restarts from) comes from:

        - ``"reptile"``: meta-learned online with Reptile,
        - ``"fomaml"``: meta-learned online with first-order MAML,
        - ``"scratch"``: a fixed random initialisation (no meta-learning),
        - ``"finetune"``: a global model trained on all devices' data pooled.
    local_meta
        Apply meta-updates to θ here (offline replay, a single worker).  With
        ``False`` the devices' proposed changes of θ are queued in
        :attr:`contributions` for a meta agent, and θ comes back through
        :meth:`adopt_theta`.

    Examples
    --------
    >>> cfg = LearnerConfig(n_features=2, adapt_after=2, buffer_size=4)
    >>> fleet = FleetLearner(cfg, init="reptile")
    >>> r = fleet.learn_predict(["a", "b", "a"], np.ones((3, 2)), np.array([1.0, 2.0, 1.5]))
    >>> r.y_pred.shape, r.adapted, fleet.devices.ids
    ((3,), ['a'], ['a', 'b'])
    """

    def __init__(self, cfg: LearnerConfig, init: InitName = "reptile", local_meta: bool = True) -> None:
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        self.cfg = cfg
        self.init = init
        self.local_meta = local_meta
        self.contributions: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.name: str = init
        self.net = FunctionalNet(cfg)
        theta = init_params(cfg)
        self._rule: MetaRule | None = None
        self._meta: MetaLearner | None = None
        self._pooled: GlobalModel | None = None
        self._frozen = theta
        if init in ("reptile", "fomaml"):
            self._rule = rule_by_name(init)
            self._meta = MetaLearner.from_config(theta, cfg)
        elif init == "finetune":
            self._pooled = GlobalModel(cfg)
        self.devices = DeviceIndex()
        self.params: Params = stack(theta, 64)
        self.published: Params = stack(theta, 64)
        """Each device's weights as last adapted, i.e. the model its edge runs."""
        self.buffers = DeviceBuffers(cfg.n_features, cfg.buffer_size)
        self.scaler = TaskScaler(cfg.task, cfg.n_features)
        self.monitor = DriftMonitor(cfg.detector, cfg.cooldown, cfg.seed)
        self._pending = np.zeros(64, dtype=bool)
        self._has_model = np.zeros(64, dtype=bool)
        self._retries = np.zeros(64, dtype=np.int64)
        self._since_meta = np.zeros(64, dtype=np.int64)
        self._rng = np.random.default_rng(cfg.seed)
        self.processed = 0
        self.n_drifts = 0
        self.n_adaptations = 0
        self.n_rejected = 0
        self._checks: list[GuardCheck] = []

    # -- θ -----------------------------------------------------------------------

    @property
    def theta(self) -> Params:
        """The current initialisation new and drifted devices start from."""
        if self._meta is not None:
            return self._meta.theta
        if self._pooled is not None:
            return self._pooled.theta
        return self._frozen

    @property
    def meta_version(self) -> int:
        """Number of meta-updates θ has had (0 when θ is not meta-learned)."""
        return self._meta.version if self._meta is not None else 0

    def adopt_theta(self, theta: Params, version: int) -> bool:
        """Use θ from the meta agent if it is newer than the current one."""
        if self._meta is None:
            raise ValueError(f"strategy {self.init!r} has no meta-learned θ to adopt")
        return self._meta.adopt(theta, version)

    def take_contributions(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Queued ``(deltas [n, P], weights [n])`` for the meta agent, oldest first."""
        out, self.contributions = self.contributions, []
        return out

    def device_params(self, device_id: str) -> Params:
        """A copy of one device's current weights."""
        slot = self.devices.slot(device_id)
        return {k: v[slot].clone() for k, v in self.params.items()}

    def export(self, device_id: str, model_version: int) -> bytes:
        """One device's model (weights + normalisation) as a codec payload."""
        tensors = self.device_params(device_id)
        sx, sy = self.scaler.x, self.scaler.y
        for name, value in (("x_mean", sx.mean), ("x_std", sx.std), ("y_mean", sy.mean), ("y_std", sy.std)):
            tensors[f"norm.{name}"] = torch.as_tensor(value, dtype=torch.float32)
        header = ModelHeader(
            device_id=device_id,
            model_version=model_version,
            parent_meta_version=self.meta_version,
            task=self.cfg.task,
            n_features=self.cfg.n_features,
            n_outputs=self.cfg.n_outputs,
            hidden=tuple(self.cfg.hidden),
        )
        return encode_model(tensors, header)

    # -- the micro-batch loop -------------------------------------------------------

    def learn_predict(self, device_ids: Sequence[str], x: np.ndarray, y: np.ndarray) -> StepResult:
        """Predict every reading with its device's current model, then learn.

        Each device takes one SGD step on the mean loss of its readings in the
        batch (:meth:`learn_online`); then the drift monitor sees the errors,
        drifted and new devices adapt from θ, and θ gets its meta-updates.
        """
        slots, groups, xs, ys, pred = self.learn_online(device_ids, x, y)
        self.buffers.push(slots, xs, ys, groups)
        drift_at = self.monitor.update(slots, reading_errors(self.cfg.task, ys, pred), groups)
        self.n_drifts += len(drift_at)
        drifted = list(dict.fromkeys(device_ids[i] for i in drift_at))
        if drifted:
            # Adapt only on readings after the change point: ADWIN estimates
            # where it was; with other detectors, wait for fresh readings.
            drift_slots = np.array([self.devices.slot(d) for d in drifted], dtype=np.int64)
            fresh = np.array([self.monitor.fresh.get(int(s), 0) for s in drift_slots])
            self.buffers.keep_newest(drift_slots, fresh)
            self._pending[drift_slots] = True
        n = len(self.devices)
        ready = np.flatnonzero(self._pending[:n] & (self.buffers.count[:n] >= self.cfg.adapt_after))
        self._checks = []
        adapted = self._adapt(ready)

        self._since_meta[groups.slots] += groups.counts
        before = self.processed // self.cfg.meta_every
        self.processed += len(slots)
        if self._meta is not None and self.processed // self.cfg.meta_every > before:
            self._meta_step()
        return StepResult(
            self.scaler.inverse_y(pred),
            drifted=drifted,
            adapted=[self.devices.ids[s] for s in adapted],
            meta_version=self.meta_version,
            checks=self._checks,
            slots=slots,
        )

    def learn_online(
        self, device_ids: Sequence[str], x: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, DeviceGroups, np.ndarray, np.ndarray, np.ndarray]:
        """Predict-then-learn only: one SGD step per device, no drift detection or adaptation.

        All devices of the batch step together: their weights are gathered,
        their readings padded per device, and one ``torch.func.grad`` call
        gives every device its own gradient.  Returns each reading's slot,
        the batch's device grouping, the standardised inputs and targets, and
        the predictions made before the step (standardised units).
        """
        slots, new = self.devices.slots_for(device_ids)
        if new:
            self._add_devices(new)
        xs, ys = self.scaler.fit_transform(x, y)
        groups = DeviceGroups.of(slots)
        uniq = torch.from_numpy(groups.slots)
        sub = {k: v.index_select(0, uniq) for k, v in self.params.items()}
        xp, yp, mask = (torch.from_numpy(a) for a in (groups.pad(xs), groups.pad(ys), groups.mask()))
        step, out = self.net.online_step(sub, xp, yp, mask)
        for k, v in self.params.items():
            v[uniq] = sub[k] - self.cfg.online_lr * step[k]
        if self._pooled is not None:
            self._pooled.learn_predict(torch.from_numpy(xs), torch.from_numpy(ys))
        pred = groups.unpad(self.net.predict(out).numpy()).astype(np.float64)
        return slots, groups, xs, ys, pred

    # -- internals ------------------------------------------------------------------

    def _add_devices(self, slots: list[int]) -> None:
        needed = slots[-1] + 1
        capacity = len(self._pending)
        if needed > capacity:
            new_cap = max(needed, 2 * capacity)
            grow = new_cap - capacity
            self.params, self.published = (
                {k: torch.cat([v, v.new_zeros((grow, *v.shape[1:]))]) for k, v in p.items()}
                for p in (self.params, self.published)
            )
            self._pending = np.concatenate([self._pending, np.zeros(grow, bool)])
            self._has_model = np.concatenate([self._has_model, np.zeros(grow, bool)])
            self._retries = np.concatenate([self._retries, np.zeros(grow, np.int64)])
            self._since_meta = np.concatenate([self._since_meta, np.zeros(grow, np.int64)])
        self.buffers.ensure(needed)
        idx = torch.tensor(slots)
        for k, v in self.theta.items():
            self.params[k][idx] = v
        self._pending[slots] = True

    def _adapt(self, slots: np.ndarray) -> np.ndarray:
        """φ_d ← k SGD steps from θ on each device's newest ``adapt_after`` readings.

        The regression guard holds back the newest of those readings, scores
        φ_d and the device's current model on them (θ for a device that has
        no adapted model yet), and keeps φ_d only where it does no worse;
        a kept φ_d is then refitted on all the readings, held-back ones
        included.  Returns the slots with a new model to publish: φ_d where it
        was kept, θ for a new device whose retries ran out.  The others keep
        their weights untouched and are retried a few readings later (see
        :meth:`_retry`).
        """
        if len(slots) == 0:
            return slots
        x, y, mask = self.buffers.recent(slots, self.cfg.adapt_after)
        train, hold = split_holdout(mask, self.cfg.guard_holdout, self.cfg.guard_min_holdout)
        n_hold = hold.sum(1)
        guarded = n_hold > 0
        keep = torch.ones(len(slots), dtype=torch.bool)
        if bool(guarded.any()):
            # One batched call adapts each device twice: without its held-back
            # readings (to be judged on them) and with them (what a kept device gets).
            both = self.net.adapt(self.theta, torch.cat([x, x]), torch.cat([y, y]), torch.cat([train, mask]))
            judged = {k: v[: len(slots)] for k, v in both.items()}
            phi = {k: v[len(slots) :] for k, v in both.items()}
            keep = self._judge(slots, judged, x, y, hold) | ~guarded
        else:
            phi = self.net.adapt(self.theta, x, y, mask)
        kept = slots[keep.numpy()]
        idx = torch.from_numpy(kept)
        for k, v in self.params.items():
            v[idx] = self.published[k][idx] = phi[k][keep]
        self._pending[slots] = False
        self.n_adaptations += len(kept)
        self.n_rejected += len(slots) - len(kept)
        fallback = self._retry(slots[~keep.numpy()], n_hold[~keep].numpy())
        if len(fallback):
            # θ won every judgement of a device the edge has no model for: θ is its model.
            back = torch.from_numpy(fallback)
            for k, v in self.params.items():
                v[back] = self.published[k][back] = self.theta[k]
        kept = np.sort(np.concatenate([kept, fallback]))
        self.monitor.restart_scale(kept)
        self._has_model[kept] = True
        self._retries[kept] = 0
        return kept

    def _judge(self, slots: np.ndarray, judged: Params, x: Tensor, y: Tensor, hold: Tensor) -> Tensor:
        """Where ``judged`` does no worse on each device's held-back readings than the model its edge runs.

        That is the device's last adapted model, not its online-updated
        weights: the guard keeps regressions from reaching the edge.  A
        device without an adapted model yet is judged against θ itself.
        """
        idx = torch.from_numpy(slots)
        has_model = torch.from_numpy(self._has_model[slots])
        current = {
            k: torch.where(has_model.view(-1, *([1] * (v.dim() - 1))), v[idx], self.theta[k])
            for k, v in self.published.items()
        }
        before = self.net.masked_loss(current, x, y, hold)
        after = self.net.masked_loss(judged, x, y, hold)
        keep = accept(before, after)
        n_hold = hold.sum(1)
        for i in np.flatnonzero((n_hold > 0).numpy()):
            self._checks.append(
                GuardCheck(
                    self.devices.ids[int(slots[i])],
                    float(before[i]),
                    float(after[i]),
                    int(n_hold[i]),
                    bool(keep[i]),
                )
            )
        return keep

    def _retry(self, slots: np.ndarray, held_back: np.ndarray) -> np.ndarray:
        """Try a rejected device again once as many new readings as were held back arrived.

        A gradual drift, or an alarm right at the change, leaves the held-back
        readings still mostly of the old concept; a few readings later the
        adaptation may win.  After ``GUARD_RETRIES`` rejections in a row a
        device keeps its current model until its next drift.  A device that
        has no model yet has nothing to keep: it gets θ, which won every
        judgement; those slots are returned.
        """
        again = self._retries[slots] < GUARD_RETRIES
        self._retries[slots] = np.where(again, self._retries[slots] + 1, 0)
        retry = slots[again]
        if len(retry):
            # Ready again when the buffer is back to adapt_after readings, i.e. after held_back new ones.
            self.buffers.keep_newest(retry, self.cfg.adapt_after - held_back[again].astype(np.int64))
            self._pending[retry] = True
        given_up = slots[~again]
        return given_up[~self._has_model[given_up]]

    def _meta_step(self) -> None:
        assert self._meta is not None and self._rule is not None
        n = len(self.devices)
        active = np.flatnonzero((self._since_meta[:n] > 0) & (self.buffers.count[:n] >= self.cfg.adapt_after))
        if len(active) == 0:
            return
        if len(active) > self.cfg.meta_batch:
            active = np.sort(self._rng.choice(active, self.cfg.meta_batch, replace=False))
        # Reptile adapts on as many readings as a device will have when it adapts.
        x, y, mask = self.buffers.recent(active, self.cfg.adapt_after)
        deltas = self._rule.directions(self.net, self._meta.theta, x, y, mask)
        weights = torch.from_numpy(self._since_meta[active]).float()
        self._since_meta[:] = 0
        if self.local_meta:
            self._meta.step(deltas, weights)
        else:
            self.contributions.append((deltas, weights))

    # -- checkpoints -----------------------------------------------------------------

    def export_devices(self, device_ids: Sequence[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything the fleet knows about ``device_ids``, plus its worker-wide state.

        Returns tensors (stacked weights ``param.*``, ring buffers ``buffer.*``,
        detector blobs, scaler moments, θ ``theta.*``) and JSON-able ``info``
        (per-device counters and detector states, scaler counts, meta cadence,
        random generator state).  :meth:`import_devices` is the inverse; see
        :mod:`learners.checkpoint` for the signed wire format.
        """
        slots = np.array([self.devices.slot(d) for d in device_ids], dtype=np.int64)
        idx = torch.from_numpy(slots)
        tensors = {f"param.{k}": v[idx] for k, v in self.params.items()}  # indexing copies
        tensors |= {f"published.{k}": v[idx] for k, v in self.published.items()}
        tensors["buffer.x"] = torch.from_numpy(self.buffers.x[slots].copy())
        tensors["buffer.y"] = torch.from_numpy(self.buffers.y[slots].copy())
        states, blobs = self.monitor.export_slots(slots.tolist())
        tensors["detector.blobs"] = torch.frombuffer(bytearray(b"".join(blobs) or b"\0"), dtype=torch.uint8)
        for name, sc in (("x", self.scaler.x), ("y", self.scaler.y)):
            tensors[f"scaler.{name}.mean"] = torch.from_numpy(sc.mean.copy())
            tensors[f"scaler.{name}.m2"] = torch.from_numpy(sc._m2.copy())
        for k, v in self.theta.items():
            tensors[f"theta.{k}"] = v.detach().clone()
        info: dict[str, Any] = {
            "device_ids": list(device_ids),
            "buffer_count": self.buffers.count[slots].tolist(),
            "buffer_next": self.buffers._next[slots].tolist(),
            "pending": self._pending[slots].tolist(),
            "since_meta": self._since_meta[slots].tolist(),
            "has_model": self._has_model[slots].tolist(),
            "guard_retries": self._retries[slots].tolist(),
            "detectors": states,
            "blob_sizes": [len(b) for b in blobs],
            "scaler_counts": [self.scaler.x.count, self.scaler.y.count],
            "error_scale": self.monitor.fleet_scale,
            "processed": self.processed,
            "meta_version": self.meta_version,
            "rng": self._rng.bit_generator.state,
            "meta_bounds": self._meta.bounds.state() if self._meta is not None else None,
        }
        return tensors, info

    def drop_devices(self, device_ids: Sequence[str]) -> np.ndarray:
        """Forget ``device_ids`` (save them first with :meth:`export_devices`); returns the kept old slots.

        The remaining devices move down to fill the gaps, in their order, so
        slots stay dense: new slot ``i`` is old slot ``keep[i]`` (state kept
        per slot elsewhere must be renumbered the same way).  Capacity is
        kept for the devices that come next.
        """
        n = len(self.devices)
        gone = np.zeros(n, dtype=bool)
        gone[[self.devices.slot(d) for d in device_ids]] = True
        keep = np.flatnonzero(~gone)
        k, idx = len(keep), torch.from_numpy(keep)
        for p in (self.params, self.published):
            for v in p.values():
                v[:k] = v[idx]  # index_select copies before the write
                v[k:n] = 0
        b = self.buffers
        per_slot = (self._pending, self._has_model, self._retries, self._since_meta)
        for a in (*per_slot, b.x, b.y, b.count, b._next):
            a[:k] = a[keep]
            a[k:n] = 0
        self.monitor.retain(keep)
        self.devices.retain(keep)
        return keep

    def import_devices(
        self, tensors: dict[str, torch.Tensor], info: dict[str, Any], worker_wide: bool = False
    ) -> list[str]:
        """Restore devices from :meth:`export_devices` output; returns their ids.

        Devices already known here are overwritten; new ones get a slot.  θ is
        adopted only if it is newer than the current one.  The scaler, the
        fleet error scale, the meta cadence and the random generator are
        worker-wide, not per device: they are taken over only with
        ``worker_wide=True`` (a fresh worker), never merged into a worker that
        has its own.

        Raises
        ------
        ValueError
            If the state does not fit this fleet's architecture or buffer size.
        """
        ids: list[str] = list(info["device_ids"])
        n = len(ids)
        expected = {
            f"{part}.{k}": (n, *v.shape) for k, v in self.theta.items() for part in ("param", "published")
        }
        expected["buffer.x"] = (n, self.buffers.size, self.cfg.n_features)
        expected["buffer.y"] = (n, self.buffers.size)
        expected |= {f"theta.{k}": tuple(v.shape) for k, v in self.theta.items()}
        expected |= {"scaler.x.mean": (self.cfg.n_features,), "scaler.x.m2": (self.cfg.n_features,)}
        expected |= {"scaler.y.mean": (1,), "scaler.y.m2": (1,)}
        for name, shape in expected.items():
            got = tuple(tensors[name].shape) if name in tensors else None
            if got != shape:
                raise ValueError(f"checkpoint does not fit this learner: {name} is {got}, expected {shape}")
        sizes = [int(s) for s in info["blob_sizes"]]
        blob = tensors["detector.blobs"].numpy().tobytes()
        if len(sizes) != n or sum(sizes) > len(blob):
            raise ValueError("checkpoint does not fit this learner: detector states do not match the devices")
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
        blobs = [blob[starts[i] : starts[i + 1]] for i in range(n)]
        if n:
            slots, new = self.devices.slots_for(ids)
            if new:
                self._add_devices(new)
            idx = torch.from_numpy(slots)
            for k, v in self.params.items():
                v[idx] = tensors[f"param.{k}"].to(v.dtype)
                self.published[k][idx] = tensors[f"published.{k}"].to(v.dtype)
            self.buffers.x[slots] = tensors["buffer.x"].numpy()
            self.buffers.y[slots] = tensors["buffer.y"].numpy()
            self.buffers.count[slots] = np.asarray(info["buffer_count"], dtype=np.int64)
            self.buffers._next[slots] = np.asarray(info["buffer_next"], dtype=np.int64)
            self._pending[slots] = np.asarray(info["pending"], dtype=bool)
            self._since_meta[slots] = np.asarray(info["since_meta"], dtype=np.int64)
            self._has_model[slots] = np.asarray(info["has_model"], dtype=bool)
            self._retries[slots] = np.asarray(info["guard_retries"], dtype=np.int64)
            self.monitor.import_slots(slots.tolist(), info["detectors"], blobs)
        if self._meta is not None:
            theta = {k: tensors[f"theta.{k}"] for k in self.theta}
            self._meta.adopt(theta, int(info["meta_version"]))
        if worker_wide:
            for i, (name, sc) in enumerate((("x", self.scaler.x), ("y", self.scaler.y))):
                sc.count = int(info["scaler_counts"][i])
                sc.mean = tensors[f"scaler.{name}.mean"].numpy().astype(np.float64).copy()
                sc._m2 = tensors[f"scaler.{name}.m2"].numpy().astype(np.float64).copy()
            self.monitor.fleet_scale = float(info["error_scale"])
            self.processed = int(info["processed"])
            self._rng.bit_generator.state = info["rng"]
            if self._meta is not None and info.get("meta_bounds"):  # absent in older checkpoints
                self._meta.bounds.restore(info["meta_bounds"])
        return ids
