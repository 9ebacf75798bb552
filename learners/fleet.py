"""Per-device models stacked in one tensor, learning from a shared θ.

This is the heart of metastream: predict-then-learn on micro-batches that
mix many devices, per-device drift detection, k-step adaptation from θ on
drift or for a new device, and periodic meta-updates of θ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.func import vmap

from learners.base import Personalise, StepResult, reading_errors
from learners.buffers import DeviceBuffers
from learners.config import LearnerConfig
from learners.drift import DriftMonitor
from learners.grouping import DeviceGroups
from learners.guard import GuardCheck, accept, split_holdout
from learners.nets import FunctionalNet, Params, stack
from learners.registry import DeviceIndex
from learners.scaling import PrequentialScaler
from learners.stepper import FlatLayout, ReadingStepper
from learners.theta_source import Tasks, ThetaSource, theta_source
from wire.models import ModelHeader, encode_model

GUARD_RETRIES = 3
"""Rejected adaptations of one device in a row that are retried a few readings later."""

InitName = Literal["reptile", "fomaml", "scratch", "finetune"]
INITS: tuple[InitName, ...] = ("reptile", "fomaml", "scratch", "finetune")


class FleetLearner:
    """Stacked per-device MLPs whose starting point θ comes from a θ source.

    Parameters
    ----------
    cfg
        Model, learning and drift settings.
    init
        Where θ (the weights a new or drifted device restarts from) comes
        from: a :class:`~learners.theta_source.ThetaSource`, or the name of
        one (:data:`~learners.theta_source.THETA_SOURCES`):

        - ``"reptile"``: meta-learned online with Reptile,
        - ``"fomaml"``: meta-learned online with first-order MAML,
        - ``"scratch"``: a fixed random initialisation (no meta-learning),
        - ``"finetune"``: a global model trained on all devices' data pooled.
    local_meta
        With a name: apply meta-updates to θ here (offline replay, a single
        worker).  With ``False`` the source is a
        :class:`~learners.theta_source.RemoteTheta`: the devices' proposed
        changes of θ are queued for a meta agent
        (:meth:`take_contributions`), and θ comes back through
        :meth:`adopt_theta`.

    Examples
    --------
    >>> cfg = LearnerConfig(n_features=2, adapt_after=2, buffer_size=4)
    >>> fleet = FleetLearner(cfg, init="reptile")
    >>> r = fleet.learn_predict(["a", "b", "a"], np.ones((3, 2)), np.array([1.0, 2.0, 1.5]))
    >>> r.y_pred.shape, r.adapted, fleet.devices.ids
    ((3,), ['a'], ['a', 'b'])
    >>> from learners.theta_source import FrozenTheta
    >>> FleetLearner(cfg, FrozenTheta(cfg)).name
    'scratch'
    """

    def __init__(
        self, cfg: LearnerConfig, init: ThetaSource | InitName = "reptile", local_meta: bool = True
    ) -> None:
        self.cfg = cfg
        self.source: ThetaSource = (
            theta_source(init, cfg, remote=not local_meta) if isinstance(init, str) else init
        )
        """Where θ comes from (see :mod:`learners.theta_source`)."""
        self.name: str = self.source.name
        self.net = FunctionalNet(cfg)
        theta = self.source.theta
        self._theta_queue: list[tuple[int, int, Params]] = []
        self.theta_log: list[tuple[int, int]] = []
        """``(position, version)`` of every θ adopted from the meta agent: the reading it took effect at."""
        self.devices = DeviceIndex()
        self.params: Params = stack(theta, 64)
        self._layout = FlatLayout(self.params)
        self.published: Params = stack(theta, 64)
        """Each device's weights as last adapted, i.e. the model its edge runs."""
        self.buffers = DeviceBuffers(cfg.n_features, cfg.buffer_size)
        self.scaler = PrequentialScaler(cfg.task, cfg.n_features)
        self.monitor = DriftMonitor(cfg.detector, cfg.cooldown, cfg.seed)
        self._pending = np.zeros(64, dtype=bool)
        self._has_model = np.zeros(64, dtype=bool)
        self._retries = np.zeros(64, dtype=np.int64)
        self._since_meta = np.zeros(64, dtype=np.int64)
        self.processed = 0
        self.n_drifts = 0
        self.n_adaptations = 0
        self.n_rejected = 0
        self._checks: list[GuardCheck] = []

    # -- θ -----------------------------------------------------------------------

    @property
    def theta(self) -> Params:
        """The current initialisation new and drifted devices start from."""
        return self.source.theta

    @property
    def start_wins(self) -> dict[str, int]:
        """How often each candidate start won an adaptation (none here: every adaptation starts from θ)."""
        return {}

    @property
    def meta_version(self) -> int:
        """Number of meta-updates θ has had (0 when θ is not meta-learned)."""
        return self.source.version

    def adopt_theta(self, theta: Params, version: int, at: int | None = None) -> bool:
        """Use θ from the meta agent from stream position ``at`` on, if it is newer than the current one.

        ``at`` is a reading count of this learner's stream (:attr:`processed`),
        by default the current one: readings from ``at`` on start from the
        new θ.  A later ``at`` is queued, and :meth:`learn_predict` cuts its
        batch there, so a replay given a worker's :attr:`theta_log` (and the
        θ versions) reproduces the worker's run.  Returns whether θ was
        adopted now (or, for a later ``at``, is newer than the current one).

        Raises
        ------
        ValueError
            For a strategy without meta-learned θ, or an ``at`` in the past.
        """
        if not self.source.adopts:
            raise ValueError(f"strategy {self.name!r} has no meta-learned θ to adopt")
        at = self.processed if at is None else int(at)
        if at < self.processed:
            raise ValueError(
                f"θ version {version} cannot take effect at reading {at}: the stream is at {self.processed}"
            )
        if at == self.processed:
            return self._adopt_now(theta, version)
        self._theta_queue.append((at, version, {k: v.detach().clone() for k, v in theta.items()}))
        self._theta_queue.sort(key=lambda e: e[:2])
        return version > self.meta_version

    def _adopt_now(self, theta: Params, version: int) -> bool:
        if not self.source.adopt(theta, version):
            return False
        self.theta_log.append((self.processed, version))
        return True

    def personaliser(self) -> Personalise:
        """θ adapted on a new device's ``k`` readings with the fleet's inner loop, in its normalisation."""
        return self.kshot(lambda xs, ys: self.source.adapt(self.net, xs, ys, torch.ones_like(ys)))

    def kshot(self, adapt: Callable[[Tensor, Tensor], Params]) -> Personalise:
        """A k-shot personaliser whose weights come from ``adapt(x_support, y_support)``.

        ``adapt`` gets the support in the fleet's normalisation (``[E, k, F]``,
        ``[E, k]``) and returns ``[E, …]`` weights; predictions come back in
        the data's units.
        """

        def run(xs: np.ndarray, ys: np.ndarray, xq: np.ndarray) -> np.ndarray:
            sx, sy = self.scaler.x, self.scaler.y
            xs_t = torch.from_numpy(sx.transform(xs).astype(np.float32))
            xq_t = torch.from_numpy(sx.transform(xq).astype(np.float32))
            if self.cfg.task == "regression":
                ys = (ys - sy.mean[0]) / sy.std[0]
            phi = adapt(xs_t, torch.from_numpy(ys.astype(np.float32)))
            out = vmap(self.net.forward)(phi, xq_t)
            return self.scaler.inverse_y(self.net.predict(out).numpy().astype(np.float64))

        return run

    def take_contributions(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Queued ``(deltas [n, P], weights [n])`` for the meta agent, oldest first."""
        return self.source.take_contributions()

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
        """Predict every reading with its device's current model, then learn from it alone.

        Prequential and batch-invariant: reading ``i`` of device ``d`` is
        predicted with the weights ``d`` had after its previous reading and
        then learned in its own SGD step; its error goes to ``d``'s drift
        detector, and an accepted drift or a new device that has enough
        readings adapts from θ right at that reading, so ``d``'s next
        readings are learned from the adapted weights.  Devices step
        together: step ``j`` of a batch updates every device that has a
        ``j``-th reading in it (:meth:`_learn_segment`).  Worker-wide state
        changes only at fixed positions of the stream, never at a batch's
        end: θ's meta-update every ``meta_every`` readings (the devices drawn
        with a generator seeded by the position; for ``finetune``, θ is the
        pooled model as of that position), and θ from the meta agent at the
        position given to :meth:`adopt_theta`.  A batch is cut at those
        positions.  The same stream therefore gives the same predictions,
        drifts, adaptations and weights however it is cut into batches, and
        after a checkpoint (:meth:`export_devices`) is restored.
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        xs, ys, y_mean, y_std = self.scaler.fit_transform(x, y)
        n = len(device_ids)
        slots = np.empty(n, dtype=np.int64)
        pred = np.empty(n)
        drift_at: list[int] = []
        adapted_at: list[int] = []
        self._checks = []
        start = 0
        for stop in self._segment_ends(n):
            seg_slots, seg_pred, seg_drift, seg_adapted = self._learn_segment(
                device_ids[start:stop], xs[start:stop], ys[start:stop], full=True
            )
            slots[start:stop], pred[start:stop] = seg_slots, seg_pred
            drift_at += (seg_drift + start).tolist()
            adapted_at += (seg_adapted + start).tolist()
            self.processed += stop - start
            self._at_position()
            start = stop
        drift_at.sort()
        adapted_at.sort()
        y_pred = pred * y_std + y_mean if self.cfg.task == "regression" else pred
        ids = self.devices.ids
        return StepResult(
            y_pred,
            drifted=list(dict.fromkeys(ids[slots[i]] for i in drift_at)),
            adapted=list(dict.fromkeys(ids[slots[i]] for i in adapted_at)),
            meta_version=self.meta_version,
            checks=self._checks,
            slots=slots,
            drift_at=drift_at,
            adapted_at=adapted_at,
        )

    def learn_online(
        self, device_ids: Sequence[str], x: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, DeviceGroups, np.ndarray, np.ndarray, np.ndarray]:
        """Predict-then-learn only: one SGD step per reading, no drift detection or adaptation.

        The stepping of :meth:`learn_predict` without its buffers, detectors,
        adaptations or meta-updates (the stream position does not move).
        Returns each reading's slot, the batch's device grouping, the
        standardised inputs and targets, and each reading's prediction made
        before its step (standardised units).
        """
        xs, ys, _, _ = self.scaler.fit_transform(
            np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        )
        slots, pred, _, _ = self._learn_segment(device_ids, xs, ys, full=False)
        return slots, DeviceGroups.of(slots), xs, ys, pred

    def _segment_ends(self, n: int) -> list[int]:
        """Where the next ``n`` readings are cut: at the positions where worker-wide state changes."""
        start, stop = self.processed, self.processed + n
        ends = {n}
        if self.source.cadenced:
            every = self.cfg.meta_every
            ends |= {p - start for p in range((start // every + 1) * every, stop, every)}
        ends |= {at - start for at, _, _ in self._theta_queue if start < at < stop}
        return sorted(ends) if n else []

    def _at_position(self) -> None:
        """What happens once the stream reaches ``processed``: meta-update, pooled θ, queued θ."""
        at = self.processed
        if at % self.cfg.meta_every == 0:
            self.source.at_cadence(self.net, lambda: self._draw_tasks(at))
        while self._theta_queue and self._theta_queue[0][0] <= at:
            _, version, theta = self._theta_queue.pop(0)
            self._adopt_now(theta, version)

    def _learn_segment(
        self, device_ids: Sequence[str], xs: np.ndarray, ys: np.ndarray, full: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Prequential steps over readings during which θ does not change.

        Devices are ordered by their number of readings here, most first, so
        the devices with a ``j``-th reading are the first rows of the
        gathered weights (one flat row per device, :class:`ReadingStepper`):
        step ``j`` works on a prefix, in place (views, no gather).
        With ``full`` every step also buffers the readings, feeds the
        detectors and adapts where a drift was accepted or a device is ready.
        Returns each reading's slot and prediction (standardised), and the
        indices of the readings at which a drift was accepted and after
        which a device got a new model.
        """
        slots, new = self.devices.slots_for(device_ids)
        if new:
            self._add_devices(new)
        n = len(slots)
        pred = np.empty(n)
        if n == 0:
            return slots, pred, np.zeros(0, np.int64), np.zeros(0, np.int64)
        groups = DeviceGroups.of(slots)
        dev_slots, table, active = _step_table(groups, n)
        uniq = torch.from_numpy(dev_slots)
        stepper = ReadingStepper(self.net, self._layout.gather(self.params, uniq), self._layout)
        # Readings laid out [position j, row, …] once, so step j takes a contiguous slice.
        xp, yp = xs[table.T], ys[table.T]
        xt, yt = torch.from_numpy(xp), torch.from_numpy(yp)
        lr = self.cfg.online_lr
        drift_at: list[np.ndarray] = []
        adapted_at: list[np.ndarray] = []
        # Regression steps need no autograd: inference mode skips its bookkeeping on every op
        # (nothing made in here outlives the segment but values written into existing tensors).
        with torch.inference_mode(self.cfg.task == "regression"):
            for j, u in enumerate(active.tolist()):
                idx = table[:u, j]
                p = stepper.step(u, xt[j, :u], yt[j, :u], lr).numpy().astype(np.float64)
                pred[idx] = p
                if not full:
                    continue
                s_j = dev_slots[:u]
                self.buffers.push_each(s_j, xp[j, :u], yp[j, :u])
                errors = reading_errors(self.cfg.task, yp[j, :u].astype(np.float64), p)
                hits = self.monitor.update_each(s_j, errors)
                if hits:
                    drifted = s_j[hits]
                    fresh = np.array([self.monitor.fresh.get(int(d), 0) for d in drifted])
                    # Adapt only on readings after the change point: ADWIN estimates
                    # where it was; with other detectors, wait for fresh readings.
                    self.buffers.keep_newest(drifted, fresh)
                    self._pending[drifted] = True
                    self.n_drifts += len(hits)
                    drift_at.append(idx[hits])
                ready = self._pending[s_j] & (self.buffers.count[s_j] >= self.cfg.adapt_after)
                if ready.any():
                    got = self._adapt(s_j[ready])
                    if len(got):
                        rows = np.flatnonzero(np.isin(s_j, got))
                        r, g = torch.from_numpy(rows), torch.from_numpy(s_j[rows])
                        stepper.flat[r] = self._layout.gather(self.params, g)
                        adapted_at.append(idx[rows])
        self._layout.scatter(stepper.flat, self.params, uniq)
        if full:
            self._since_meta[groups.slots] += groups.counts
        self.source.observe(xs, ys)
        empty = np.zeros(0, np.int64)
        return (
            slots,
            pred,
            np.concatenate(drift_at) if drift_at else empty,
            np.concatenate(adapted_at) if adapted_at else empty,
        )

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
        x, y, mask, train, hold = self._adaptation_readings(slots)
        n_hold = hold.sum(1)
        guarded = n_hold > 0
        keep = torch.ones(len(slots), dtype=torch.bool)
        if bool(guarded.any()):
            # One batched call adapts each device twice: without its held-back
            # readings (to be judged on them) and with them (what a kept device gets).
            both = self.source.adapt(self.net, torch.cat([x, x]), torch.cat([y, y]), torch.cat([train, mask]))
            judged = {k: v[: len(slots)] for k, v in both.items()}
            phi = {k: v[len(slots) :] for k, v in both.items()}
            keep = self._judge(slots, judged, x, y, hold) | ~guarded
            offset = len(slots)
        else:
            phi = self.source.adapt(self.net, x, y, mask)
            offset = 0
        ids = self.devices.ids
        kept = slots[keep.numpy()]
        self.source.adapted([ids[s] for s in kept.tolist()], offset + np.flatnonzero(keep.numpy()))
        return self._install_adaptations(slots, keep, phi, n_hold)

    def _adaptation_readings(self, slots: np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Each device's recent readings ``x, y, mask``, split into ``train`` and the guard's ``hold``."""
        x, y, mask = self.buffers.recent(slots, self.cfg.adapt_after)
        train, hold = split_holdout(mask, self.cfg.guard_holdout, self.cfg.guard_min_holdout)
        return x, y, mask, train, hold

    def _install_adaptations(
        self, slots: np.ndarray, keep: Tensor, phi: Params, n_hold: Tensor
    ) -> np.ndarray:
        """The kept adaptations become the devices' (and their edges') models; the rest retry or take θ."""
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

    def _draw_tasks(self, position: int) -> Tasks | None:
        """The devices active since the last meta-update, with their recent readings, at ``position``."""
        n = len(self.devices)
        active = np.flatnonzero((self._since_meta[:n] > 0) & (self.buffers.count[:n] >= self.cfg.adapt_after))
        if len(active) == 0:
            return None
        if len(active) > self.cfg.meta_batch:
            # Seeded by the position, so a replay or a restored worker draws the same devices.
            rng = np.random.default_rng([self.cfg.seed, position])
            active = np.sort(rng.choice(active, self.cfg.meta_batch, replace=False))
        # Reptile adapts on as many readings as a device will have when it adapts.
        x, y, mask = self.buffers.recent(active, self.cfg.adapt_after)
        weights = torch.from_numpy(self._since_meta[active]).float()
        self._since_meta[:] = 0
        ids = self.devices.ids
        return Tasks(x, y, mask, weights, tuple(ids[s] for s in active.tolist()))

    # -- checkpoints -----------------------------------------------------------------

    def export_devices(self, device_ids: Sequence[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything the fleet knows about ``device_ids``, plus its worker-wide state.

        Returns tensors (stacked weights ``param.*``, ring buffers ``buffer.*``,
        detector blobs, scaler moments, θ ``theta.*``) and JSON-able ``info``
        (per-device counters and detector states, scaler counts, the stream
        position, which sets the meta cadence and its random draws); with
        ``finetune`` also the pooled model and its readings that wait for a
        whole chunk.  :meth:`import_devices` is the inverse; see
        :mod:`wire.checkpoint` for the signed wire format.
        """
        slots = np.array([self.devices.slot(d) for d in device_ids], dtype=np.int64)
        idx = torch.from_numpy(slots)
        tensors = {f"param.{k}": v[idx] for k, v in self.params.items()}  # indexing copies
        tensors |= {f"published.{k}": v[idx] for k, v in self.published.items()}
        buffered = self.buffers.state_dict(slots)
        tensors["buffer.x"] = torch.from_numpy(buffered["x"])
        tensors["buffer.y"] = torch.from_numpy(buffered["y"])
        states, blobs = self.monitor.export_slots(slots.tolist())
        tensors["detector.blobs"] = torch.frombuffer(bytearray(b"".join(blobs) or b"\0"), dtype=torch.uint8)
        scaler_counts = []
        for name, sc in (("x", self.scaler.x), ("y", self.scaler.y)):
            count, sums = sc.state_dict()
            scaler_counts.append(count)
            tensors |= {f"scaler.{name}.{part}": torch.from_numpy(v) for part, v in sums.items()}
        for k, v in self.theta.items():
            tensors[f"theta.{k}"] = v.detach().clone()
        source_tensors, source_state = self.source.export_state()
        tensors |= source_tensors
        info: dict[str, Any] = {
            "device_ids": list(device_ids),
            "buffer_count": buffered["count"].tolist(),
            "buffer_next": buffered["next"].tolist(),
            "pending": self._pending[slots].tolist(),
            "since_meta": self._since_meta[slots].tolist(),
            "has_model": self._has_model[slots].tolist(),
            "guard_retries": self._retries[slots].tolist(),
            "detectors": states,
            "blob_sizes": [len(b) for b in blobs],
            "scaler_counts": scaler_counts,
            "error_scale": self.monitor.fleet_scale,
            "processed": self.processed,
            "meta_version": self.meta_version,
            "meta_bounds": source_state,  # the θ source's worker-wide state (its name is historical)
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
        for a in (self._pending, self._has_model, self._retries, self._since_meta):
            a[:k] = a[keep]
            a[k:n] = 0
        self.buffers.retain(keep, n)
        self.monitor.retain(keep)
        self.devices.retain(keep)
        return keep

    def import_devices(
        self, tensors: dict[str, torch.Tensor], info: dict[str, Any], worker_wide: bool = False
    ) -> list[str]:
        """Restore devices from :meth:`export_devices` output; returns their ids.

        Devices already known here are overwritten; new ones get a slot.  θ is
        adopted only if it is newer than the current one.  The scaler, the
        fleet error scale, the stream position and the pooled model are
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
        for name, width in (("x", self.cfg.n_features), ("y", 1)):
            expected |= {f"scaler.{name}.{part}": (width,) for part in ("shift", "s1", "s2")}
        expected |= self.source.expected_shapes(tensors)
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
            buffered = {"x": tensors["buffer.x"].numpy(), "y": tensors["buffer.y"].numpy()}
            buffered |= {"count": info["buffer_count"], "next": info["buffer_next"]}
            self.buffers.load_state_dict(slots, buffered)
            self._pending[slots] = np.asarray(info["pending"], dtype=bool)
            self._since_meta[slots] = np.asarray(info["since_meta"], dtype=np.int64)
            self._has_model[slots] = np.asarray(info["has_model"], dtype=bool)
            self._retries[slots] = np.asarray(info["guard_retries"], dtype=np.int64)
            self.monitor.import_slots(slots.tolist(), info["detectors"], blobs)
        theta = {k: tensors[f"theta.{k}"] for k in self.theta}
        self.source.import_state(
            theta, int(info["meta_version"]), tensors, info.get("meta_bounds"), worker_wide
        )
        if worker_wide:
            for i, (name, sc) in enumerate((("x", self.scaler.x), ("y", self.scaler.y))):
                sums = {part: tensors[f"scaler.{name}.{part}"].numpy() for part in ("shift", "s1", "s2")}
                sc.load_state_dict(int(info["scaler_counts"][i]), sums)
            self.monitor.fleet_scale = float(info["error_scale"])
            self.processed = int(info["processed"])
        return ids


def _step_table(groups: DeviceGroups, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Devices' slots, most readings first; ``table[row, j]``, the index of that row's ``j``-th
    reading; and ``active[j]``, how many rows have a ``j``-th reading."""
    order = np.argsort(-groups.counts, kind="stable")
    dev_slots, counts = groups.slots[order], groups.counts[order]
    row_of = np.empty_like(order)
    row_of[order] = np.arange(len(order))
    table = np.zeros((len(order), int(counts[0])), dtype=np.int64)  # [row, j] → reading index
    table[row_of[groups.group], groups.rank] = np.arange(n)
    # Devices with a j-th reading: counts is descending, so they are rows 0 … active[j]-1.
    active = np.searchsorted(-counts, -np.arange(int(counts[0])), side="left")
    return dev_slots, table, active
