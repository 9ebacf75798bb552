"""Strategy ``auto``: each adaptation starts from whichever candidate does best on held-back readings.

On a fleet of near-identical devices the pooled model is the best start
there is; on a fleet of different devices, or after a drift, a
meta-learned θ is.  :class:`AutoFleet` does not guess: when a device
adapts, it adapts from every candidate start (continuous meta θ, the pooled
model, and any start added to :attr:`AutoFleet.extra_candidates`, e.g. a
clustered θ_k) on the readings the regression guard does not hold back,
scores each result on the held-back ones, and keeps the winner (then the
regression guard judges it as usual).  How often each candidate won is
kept per fleet in :attr:`AutoFleet.wins`; a device with too few readings
to judge by starts from the fleet's most frequent winner.

:class:`AutoStrategy` blends that personal learner with the pooled model
per device (:class:`~learners.blend.ErrorWeightedBlend`), so personalising
never costs much prequential error.

Candidates change only at fixed reading counts (the pooled model is
snapshot there), so the result does not depend on how the stream is cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from learners.base import Personalise, StepResult
from learners.blend import ErrorWeightedBlend
from learners.blended import BlendedStrategy
from learners.config import LearnerConfig
from learners.continuous import ContinuousFleet
from learners.nets import Params
from learners.pooled import AdamGlobalModel
from learners.registry import DeviceIndex
from learners.scaling import PrequentialScaler
from learners.theta_source import MetaLearnedTheta, PooledStream

Candidate = tuple[str, Params, int | None]
"""A named start for an adaptation and its inner steps (``None``: the config's; 0: used as it is)."""

CandidateSource = Callable[[], Sequence[Candidate]]

AUTO_EVERY = 256
"""Readings between two of ``auto``'s continuous meta-steps (and pooled-model snapshots).

Fewer than :data:`~learners.continuous.CONTINUOUS_EVERY`'s: each step cuts the
micro-batch into one more segment, each with its fixed cost, while θ loses no
data by stepping less often (a step moves it towards the devices' weights, and
they have learned from every reading since).
"""

CLEARLY = 2.0
"""Standard errors by which a candidate must beat the first one on held-back readings to be chosen."""


def pick_candidates(losses: Tensor, hold: Tensor) -> Tensor:
    """Per device, the candidate to adapt from: the first one unless another is clearly better.

    ``losses`` is ``[C, D, n]``: each candidate's per-reading loss on each
    device's held-back readings (``hold`` marks them, ``[D, n]``).  A
    candidate other than the first wins only where its mean loss is lower
    than the first one's by more than ``CLEARLY`` standard errors of the paired
    per-reading differences; among those, the lowest mean loss wins.  A
    device with too few readings to judge gets the first candidate.

    Examples
    --------
    >>> hold = torch.ones(2, 4)
    >>> first = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    >>> other = torch.tensor([[0.5, 0.6, 0.4, 0.5], [0.1, 2.0, 0.1, 1.5]])  # clearly better; noisy
    >>> pick_candidates(torch.stack([first, other]), hold).tolist()
    [1, 0]
    """
    n = hold.sum(1)
    mean = (losses * hold).sum(2) / n.clamp(min=1)  # [C, D]
    diff = (losses[:1] - losses) * hold  # > 0 where the candidate does better than the first
    diff_mean = diff.sum(2) / n.clamp(min=1)
    var = (((diff - diff_mean.unsqueeze(2)) * hold) ** 2).sum(2) / (n - 1).clamp(min=1)
    se = (var / n.clamp(min=1)).sqrt()
    # A diverged first candidate leaves every finite one in the running.
    clearly = ((diff_mean > CLEARLY * se) & (n > 1)) | ~torch.isfinite(mean[:1])
    clearly[0] = True
    finite = torch.isfinite(mean)
    score = torch.where(clearly & finite, mean, torch.full_like(mean, float("inf")))
    return torch.where(n > 0, score.argmin(0), torch.zeros_like(n, dtype=torch.long))


class MomentsKeepingScaler(PrequentialScaler):
    """A :class:`PrequentialScaler` that keeps the target moments of its last batch.

    Examples
    --------
    >>> sc = MomentsKeepingScaler("regression", n_features=1)
    >>> _ = sc.fit_transform(np.array([[0.0], [1.0]]), np.array([10.0, 30.0]))
    >>> [m.tolist() for m in sc.moments]  # mean and std before each reading
    [[0.0, 10.0], [1.0, 1.0]]
    """

    def __init__(self, task: str, n_features: int) -> None:
        super().__init__(task, n_features)
        self.moments: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.ones(0))
        """The target's mean and std before each reading of the last batch."""

    def fit_transform(
        self, x: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        xs, ys, y_mean, y_std = super().fit_transform(x, y)
        self.moments = (y_mean, y_std)
        return xs, ys, y_mean, y_std


class PooledAlongsideTheta(MetaLearnedTheta):
    """A meta-learned θ, with an Adam pooled model learning from every reading alongside it.

    The pooled model steps on whole chunks of the pooled stream
    (:class:`~learners.theta_source.PooledStream`); its weights and the
    readings that wait for a whole chunk are part of the checkpoint.

    Examples
    --------
    >>> src = PooledAlongsideTheta(LearnerConfig(n_features=2, hidden=(4,)))
    >>> src.observe(np.ones((40, 2), np.float32), np.ones(40, np.float32))
    >>> src.name, len(src.pool.pending_y)  # one chunk of 32 learned, 8 wait
    ('reptile', 8)
    """

    def __init__(self, cfg: LearnerConfig) -> None:
        super().__init__(cfg)
        self.pooled = AdamGlobalModel(cfg)
        self.pool = PooledStream(self.pooled, cfg.n_features)
        self.outputs: list[Tensor] = []
        """The pooled model's raw outputs for the readings observed while :attr:`recording`."""
        self.recording = False

    def observe(self, xs: np.ndarray, ys: np.ndarray) -> None:
        waiting = len(self.pool.pending_y)
        out = self.pool.observe(xs, ys)
        if out is not None and self.recording:
            self.outputs.append(out[waiting:])
        # The pooled model steps only on whole chunks, so the readings still waiting are
        # predicted by the weights their chunk will step from; padded to a whole chunk, the
        # forward pass has the shape of that step's own.
        pending_x, pending_y = self.pool.pending_x, self.pool.pending_y
        fresh = min(len(xs), len(pending_y))
        if fresh and self.recording:
            padded = np.zeros((self.pooled.chunk, pending_x.shape[1]), dtype=np.float32)
            padded[: len(pending_x)] = pending_x
            out = self.pooled.net.stacked_forward(self.pooled.params, torch.from_numpy(padded)[None])[0]
            self.outputs.append(out[len(pending_y) - fresh : len(pending_y)])

    def take_outputs(self) -> Tensor:
        """The pooled model's raw outputs (``[n, n_outputs]``) recorded since the last call.

        Each reading's output is the one its prediction would get before the
        pooled model learns from it (prequential), whatever the cuts.
        """
        out = torch.cat(self.outputs) if self.outputs else torch.zeros(0, self.pooled.net.cfg.n_outputs)
        self.outputs = []
        return out

    def export_state(self) -> tuple[dict[str, Tensor], Any]:
        tensors, state = super().export_state()
        return tensors | self.pool.export(), state

    def expected_shapes(self, tensors: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
        return super().expected_shapes(tensors) | self.pool.expected_shapes(tensors)

    def import_state(
        self, theta: Params, version: int, tensors: dict[str, Tensor], state: Any, worker_wide: bool
    ) -> None:
        super().import_state(theta, version, tensors, state, worker_wide)
        if worker_wide:
            self.pool.restore(tensors)


class AutoFleet(ContinuousFleet):
    """Continuous meta-learning whose adaptations pick their start among candidates.

    Parameters
    ----------
    cfg
        Model, learning and drift settings.
    every
        Readings between two continuous meta-steps (and pooled-model snapshots).

    Examples
    --------
    >>> cfg = LearnerConfig(n_features=2, adapt_after=8, buffer_size=8, guard_min_holdout=2)
    >>> fleet = AutoFleet(cfg, every=4)
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(40, 2)); y = x @ np.array([1.0, -1.0])
    >>> _ = fleet.learn_predict(["a", "b"] * 20, x, y)
    >>> [name for name, _, _ in fleet.candidates()], sum(fleet.wins.values()) >= 1
    (['pooled', 'finetune', 'meta'], True)
    """

    def __init__(self, cfg: LearnerConfig, every: int = AUTO_EVERY) -> None:
        source = PooledAlongsideTheta(cfg)
        super().__init__(cfg, every=every, source=source)
        self.name = "auto"
        # The source steps the pooled model on whole chunks at the end of every segment.
        self._source = source
        self._pooled: AdamGlobalModel = source.pooled
        self._moments = MomentsKeepingScaler(cfg.task, cfg.n_features)
        self.scaler = self._moments
        self.pooled_pred = np.zeros(0)
        """The pooled model's prediction of each reading of the last :meth:`learn_predict` (data units)."""
        self._pooled_theta = {k: v.clone() for k, v in self._pooled.theta.items()}
        self.extra_candidates: list[CandidateSource] = []
        """More starting points (e.g. the nearest clustered θ_k), asked at every adaptation."""
        self.wins: dict[str, int] = {name: 0 for name, _, _ in self.candidates()}
        """How often each candidate won an adaptation that could be judged, for this fleet."""

    @property
    def start_wins(self) -> dict[str, int]:
        """How often each candidate start won an adaptation (per fleet)."""
        return dict(self.wins)

    def learn_predict(self, device_ids: Sequence[str], x: np.ndarray, y: np.ndarray) -> StepResult:
        """As :meth:`FleetLearner.learn_predict`; the pooled model's predictions go to :attr:`pooled_pred`."""
        self._source.outputs, self._source.recording = [], True
        try:
            result = super().learn_predict(device_ids, x, y)
        finally:
            self._source.recording = False
        pred = self.net.predict(self._source.take_outputs()).numpy().astype(np.float64)
        y_mean, y_std = self._moments.moments
        self.pooled_pred = pred * y_std + y_mean if self.cfg.task == "regression" else pred
        return result

    def pooled_personaliser(self) -> Personalise:
        """k-shot with the pooled model as it is (what ``global`` does; no per-device weights)."""

        def run(xs: np.ndarray, ys: np.ndarray, xq: np.ndarray) -> np.ndarray:
            xq_t = torch.from_numpy(self.scaler.x.transform(xq).astype(np.float32))
            out = self.net.forward(self._pooled.theta, xq_t.reshape(-1, xq.shape[-1]))
            pred = self.net.predict(out).numpy().astype(np.float64).reshape(xq.shape[:2])
            return self.scaler.inverse_y(pred)

        return run

    def personaliser(self) -> Personalise:
        """k-shot: adapt from every candidate, keep the best on the support's newest readings."""
        return auto_own_personaliser(self)

    def candidates(self) -> list[Candidate]:
        """The starting points an adaptation chooses from; the first (the pooled model) is the one to beat."""
        out: list[Candidate] = [
            ("pooled", self._pooled_theta, 0),
            ("finetune", self._pooled_theta, None),
            ("meta", self.theta, None),
        ]
        for source in self.extra_candidates:
            out.extend(source())
        return out

    def favourite(self) -> int:
        """Index of the candidate that won most often so far (the first one on ties)."""
        names = [name for name, _, _ in self.candidates()]
        counts = [self.wins.get(name, 0) for name in names]
        return int(np.argmax(counts))

    def _at_position(self) -> None:
        at = self.processed
        if at % self.every == 0:
            self._pooled_theta = {k: v.clone() for k, v in self._pooled.theta.items()}
        super()._at_position()

    def choose(
        self, x: Tensor, y: Tensor, train: Tensor, hold: Tensor, count: bool = True
    ) -> tuple[Params, Params, np.ndarray]:
        """Adapt from every candidate; per device keep the one with the lowest held-back loss.

        Returns the chosen adaptations without and with the held-back
        readings (``[D, …]``), and each device's winning candidate index.
        Devices without held-back readings get the fleet's favourite.  With
        ``count`` the judged choices are added to :attr:`wins`.
        """
        cands = self.candidates()
        d = x.shape[0]
        judged_all, phi_all = self._adapt_candidates(cands, x, y, train, hold)
        c = len(cands)
        judged_rows = {k: torch.cat([p[k] for p in judged_all]) for k in judged_all[0]}
        out = self.net.stacked_forward(judged_rows, x.repeat(c, 1, 1))
        per_reading = self.net.sample_loss(out, y.repeat(c, 1)).view(c, d, -1) * hold
        losses = torch.nan_to_num(per_reading, nan=float("inf"))
        table = pick_candidates(losses, hold)
        guarded = (hold.sum(1) > 0).numpy()
        best = np.where(guarded, table.numpy(), self.favourite())
        for i in np.flatnonzero(guarded) if count else []:
            name = cands[int(best[i])][0]
            self.wins[name] = self.wins.get(name, 0) + 1
        pick = torch.from_numpy(best)
        rows = torch.arange(d)

        def gather(per_candidate: list[Params]) -> Params:
            return {k: torch.stack([p[k] for p in per_candidate])[pick, rows] for k in per_candidate[0]}

        return gather(judged_all), gather(phi_all), best

    def _adapt_candidates(
        self, cands: Sequence[Candidate], x: Tensor, y: Tensor, train: Tensor, hold: Tensor
    ) -> tuple[list[Params], list[Params]]:
        """Each candidate's adaptation without and with the held-back readings (``[D, …]`` each).

        Candidates with the same number of inner steps adapt in one call, their
        starts stacked along the device axis; a start used as it is (0 steps)
        is not adapted at all.
        """
        d = x.shape[0]
        judged: list[Params | None] = [None] * len(cands)
        phi: list[Params | None] = [None] * len(cands)
        by_steps: dict[int, list[int]] = {}
        for i, (_, start, steps) in enumerate(cands):
            if steps == 0:
                judged[i] = phi[i] = {k: v.unsqueeze(0).expand(d, *v.shape) for k, v in start.items()}
            else:
                by_steps.setdefault(self.cfg.inner_steps if steps is None else steps, []).append(i)
        for steps, group in by_steps.items():
            g = len(group)
            starts = {
                k: torch.stack([cands[i][1][k] for i in group]).repeat_interleave(2 * d, 0)
                for k in cands[0][1]
            }
            masks = torch.cat([train, train + hold]).repeat(g, 1)
            both = self.net.adapt(starts, x.repeat(2 * g, 1, 1), y.repeat(2 * g, 1), masks, steps=steps)
            for j, i in enumerate(group):
                judged[i] = {k: v[2 * d * j : 2 * d * j + d] for k, v in both.items()}
                phi[i] = {k: v[2 * d * j + d : 2 * d * (j + 1)] for k, v in both.items()}
        return [p for p in judged if p is not None], [p for p in phi if p is not None]

    def _adapt(self, slots: np.ndarray) -> np.ndarray:
        """As :meth:`FleetLearner._adapt`, from the winning candidate of each device."""
        if len(slots) == 0:
            return slots
        x, y, _, train, hold = self._adaptation_readings(slots)
        n_hold = hold.sum(1)
        guarded = n_hold > 0
        judged, phi, _ = self.choose(x, y, train, hold)
        keep = self._judge(slots, judged, x, y, hold) | ~guarded if bool(guarded.any()) else ~guarded
        return self._install_adaptations(slots, keep, phi, n_hold)

    # -- checkpoints: the pooled snapshot and the scores are worker-wide state ------------

    def export_devices(self, device_ids: Sequence[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors, info = super().export_devices(device_ids)
        tensors |= {f"pooled_theta.{k}": v.clone() for k, v in self._pooled_theta.items()}
        adam, info["pooled_adam_t"] = self._pooled.export_state()
        tensors |= {f"pooled_adam.{k}": v for k, v in adam.items()}
        info["start_wins"] = dict(self.wins)
        return tensors, info

    def import_devices(
        self, tensors: dict[str, Tensor], info: dict[str, Any], worker_wide: bool = False
    ) -> list[str]:
        ids = super().import_devices(tensors, info, worker_wide)
        if worker_wide:
            self._pooled_theta = {k: tensors[f"pooled_theta.{k}"].clone() for k in self._pooled_theta}
            adam = {
                k.removeprefix("pooled_adam."): v for k, v in tensors.items() if k.startswith("pooled_adam.")
            }
            self._pooled.restore_state(adam, int(info["pooled_adam_t"]))
            self.wins = {k: int(v) for k, v in info["start_wins"].items()}
        return ids


class AutoStrategy(BlendedStrategy):
    """Strategy ``auto``: :class:`AutoFleet` blended per device with the pooled model.

    The pooled model blended in is the one the fleet's candidates start from
    (one Adam pooled model learning from every reading, in the fleet's
    standardisation), so it is trained once and is cut-invariant like the rest.

    Examples
    --------
    >>> learner = AutoStrategy(LearnerConfig(n_features=2, adapt_after=2, buffer_size=4))
    >>> r = learner.learn_predict(["a", "b", "a"], np.ones((3, 2)), np.array([1.0, 2.0, 1.5]))
    >>> learner.name, r.y_pred.shape, r.adapted
    ('auto', (3,), ['a'])
    """

    def __init__(self, cfg: LearnerConfig, every: int = AUTO_EVERY) -> None:
        # Not BlendedStrategy's own: no second pooled model.
        self.cfg = cfg
        self.name = "auto"
        self.personal: AutoFleet = AutoFleet(cfg, every=every)
        self.blend = ErrorWeightedBlend(cfg.task)
        self.devices = DeviceIndex()

    def learn_predict(self, device_ids: Sequence[str], x: np.ndarray, y: np.ndarray) -> StepResult:
        own = self.personal.learn_predict(device_ids, x, y)
        return self._blended(device_ids, own, self.personal.pooled_pred, y)

    def pooled_personaliser(self) -> Personalise:
        return self.personal.pooled_personaliser()

    @property
    def n_adaptations(self) -> int:
        return self.personal.n_adaptations

    @property
    def meta_version(self) -> int:
        return self.personal.meta_version

    @property
    def start_wins(self) -> dict[str, int]:
        """How often each candidate start won an adaptation (per fleet)."""
        return dict(self.personal.wins)


def auto_own_personaliser(fleet: AutoFleet) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """k-shot for a new device: adapt from every candidate, keep the best on the support's newest readings.

    ``xs`` is ``[E, k, F]`` (E episodes), ``ys`` ``[E, k]``, ``xq`` ``[E, q, F]``;
    returns predictions ``[E, q]`` in the data's units.
    """

    def adapt(xs: Tensor, ys: Tensor) -> Params:
        k = xs.shape[1]
        hold = torch.zeros_like(ys)
        hold[:, k - max(1, k // 4) :] = 1.0
        _, phi, _ = fleet.choose(xs, ys, torch.ones_like(ys) - hold, hold, count=False)
        return phi

    return fleet.kshot(adapt)


__all__ = [
    "AUTO_EVERY",
    "AutoFleet",
    "AutoStrategy",
    "Candidate",
    "MomentsKeepingScaler",
    "PooledAlongsideTheta",
    "auto_own_personaliser",
]
