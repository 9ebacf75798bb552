"""k-shot personalisation of devices held out of training.

A seeded share of the fleet's devices is *held out*: their readings never
reach a strategy while it learns from the other devices' stream, so θ (and
every other learned state: scalers, pooled models) is blind to them.  Then
each held-out device is personalised on ``k`` of its own readings only and
scored on the readings that follow — never on readings it trained on:

- torch strategies (``reptile``, ``fomaml``, ``scratch``, ``finetune``): θ
  adapted with the strategy's own inner loop (``inner_steps`` SGD steps of
  ``inner_lr``), in the learner's normalisation;
- ``global``: the shared model as it is (no per-device weights: it is the
  "no personalisation" reference; ``finetune`` is the fine-tuned one);
- ``river-*``: a fresh River model per device, one pass over the k readings.

An *episode* of a device starts at reading ``s``: support ``[s, s+k)``,
query ``[s+k, s+k+horizon)``.  All k share the episodes, so the curve
compares like with like.  The strategy's state personalising an episode is
either the one at the end of the training stream (``kshot``) or the one
just before the episode began (``kshot_online``: a device joining the
running fleet; see :func:`run_held_out`).  With ``shuffle_seed`` a
device's readings are shuffled first (for data without a natural order,
where the first k readings would all come from one recording): support and
query are then random disjoint samples of the device.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from learners.base import Personalise, StepResult, Strategy, StrategyBase, reading_errors
from learners.config import Task
from learners.evaluation.prequential import PrequentialEvaluator
from learners.evaluation.replay import replay

KS: tuple[int, ...] = (5, 10, 20, 50)
HORIZON = 100
WARMUP = 0.1
"""Share of the training stream before the first online k-shot checkpoint."""
CHECKPOINTS = 50


def split_devices(
    device_ids: Sequence[str], held_out: float = 0.2, seed: int = 0, min_readings: int = 0
) -> tuple[list[str], list[str]]:
    """``(training, held_out)`` device ids; a seeded random share is held out.

    ``round(held_out · devices)`` devices (at least one) are drawn among those
    with at least ``min_readings`` readings, so that every held-out device
    can be scored.  Both lists are in order of first appearance.

    Examples
    --------
    >>> ids = [f"d{i}" for i in range(10)] * 3
    >>> train, held = split_devices(ids, held_out=0.2, seed=0)
    >>> len(train), len(held), sorted(set(train) | set(held)) == sorted(set(ids))
    (8, 2, True)
    >>> split_devices(ids, 0.2, seed=0) == (train, held)
    True
    """
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be in (0, 1), got {held_out}")
    uniq, first, counts = np.unique(np.asarray(device_ids), return_index=True, return_counts=True)
    order = np.argsort(first)
    uniq, counts = uniq[order], counts[order]
    eligible = np.flatnonzero(counts >= min_readings)
    n_held = max(1, round(held_out * len(uniq)))
    if n_held >= len(uniq) or len(eligible) < n_held:
        raise ValueError(
            f"cannot hold out {n_held} of {len(uniq)} devices "
            f"({len(eligible)} have >= {min_readings} readings)"
        )
    held = set(np.random.default_rng(seed).choice(eligible, n_held, replace=False).tolist())
    train = [str(d) for i, d in enumerate(uniq) if i not in held]
    return train, [str(d) for i, d in enumerate(uniq) if i in held]


def episode_starts(n: int, k_max: int, horizon: int, episodes: int) -> np.ndarray:
    """Up to ``episodes`` evenly spaced starts, the first at 0, that fit ``k_max + horizon``.

    Examples
    --------
    >>> episode_starts(1000, 50, 100, 1).tolist(), episode_starts(1000, 50, 100, 3).tolist()
    ([0], [0, 425, 850])
    >>> episode_starts(100, 50, 100, 3).tolist()
    []
    """
    last = n - k_max - horizon
    if last < 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, last, max(episodes, 1)).round().astype(np.int64))


@dataclass
class KShotCurve:
    """Mean query error per k over all held-out episodes, with its standard error.

    ``metric`` is ``"mae"`` (regression) or ``"error_rate"`` (1 − accuracy).
    """

    ks: list[int]
    error: list[float]
    sem: list[float]
    episodes: int
    devices: int
    metric: str
    per_episode: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    """``[episodes, ks]`` errors, for paired comparisons between strategies."""

    def as_dict(self, prefix: str = "kshot") -> dict[str, Any]:
        """JSON-ready: ``{"kshot": {"5": …}, "kshot_sem": {…}, …}``."""
        return {
            f"{prefix}_metric": self.metric,
            prefix: {str(k): _round(e) for k, e in zip(self.ks, self.error, strict=True)},
            f"{prefix}_sem": {str(k): _round(s) for k, s in zip(self.ks, self.sem, strict=True)},
            f"{prefix}_episodes": self.episodes,
            f"{prefix}_devices": self.devices,
        }


@dataclass(frozen=True)
class Episode:
    """A held-out device's readings for one episode, as indices into the table.

    The support of size k is ``rows[:k]``, its query ``rows[k : k + horizon]``.
    """

    device: str
    rows: np.ndarray


def make_episodes(
    device_ids: Sequence[str],
    ks: Sequence[int] = KS,
    horizon: int = HORIZON,
    episodes: int = 1,
    shuffle_seed: int | None = None,
    only: Collection[str] | None = None,
) -> list[Episode]:
    """Every device's episodes (of the devices in ``only``, if given), in device order.

    Examples
    --------
    >>> eps = make_episodes(["a", "b", "a"] * 100, ks=(5, 20), horizon=10, episodes=2)
    >>> [(e.device, e.rows[:3].tolist(), len(e.rows)) for e in eps]
    [('a', [0, 2, 3], 30), ('a', [255, 257, 258], 30), ('b', [1, 4, 7], 30), ('b', [211, 214, 217], 30)]
    """
    ids = np.asarray(device_ids)
    rng = np.random.default_rng(shuffle_seed)
    size = max(ks) + horizon
    out = []
    for d in dict.fromkeys(device_ids):
        if only is not None and d not in only:
            continue
        rows = np.flatnonzero(ids == d)
        if shuffle_seed is not None:
            rows = rng.permutation(rows)
        out += [
            Episode(str(d), rows[s : s + size]) for s in episode_starts(len(rows), max(ks), horizon, episodes)
        ]
    return out


def episode_errors(
    personalise: Personalise,
    episodes: Sequence[Episode],
    x: np.ndarray,
    y: np.ndarray,
    task: Task,
    ks: Sequence[int] = KS,
    horizon: int = HORIZON,
) -> np.ndarray:
    """``[episodes, ks]`` mean query error after personalising on each k (all episodes at once)."""
    out = np.zeros((len(episodes), len(ks)))
    if not episodes:
        return out
    rows = np.stack([e.rows for e in episodes])
    for j, k in enumerate(ks):
        support, query = rows[:, :k], rows[:, k : k + horizon]  # disjoint by construction
        pred = personalise(x[support], y[support], x[query])
        out[:, j] = reading_errors(task, y[query], pred).mean(1)
    return out


def summarise(errors: np.ndarray, ks: Sequence[int], task: Task, devices: int) -> KShotCurve:
    """Mean and standard error per k of ``[episodes, ks]`` errors."""
    n = len(errors)
    return KShotCurve(
        ks=list(ks),
        error=[float(errors[:, j].mean()) if n else float("nan") for j in range(len(ks))],
        sem=[float(errors[:, j].std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan") for j in range(len(ks))],
        episodes=n,
        devices=devices,
        metric="mae" if task == "regression" else "error_rate",
        per_episode=errors,
    )


def paired_difference(a: KShotCurve, b: KShotCurve) -> dict[str, list[float | None]]:
    """Per k, mean and standard error of ``a − b`` over the episodes both scored (same episodes).

    Positive means ``b`` has the lower error.

    Examples
    --------
    >>> a = summarise(np.array([[1.0], [2.0], [3.0]]), [5], "regression", 1)
    >>> b = summarise(np.array([[0.5], [1.0], [2.5]]), [5], "regression", 1)
    >>> paired_difference(a, b)
    {'5': [0.666667, 0.166667]}
    """
    if a.per_episode.shape != b.per_episode.shape:
        raise ValueError("the two curves were not scored on the same episodes")
    diff = a.per_episode - b.per_episode
    n = len(diff)
    return {
        str(k): [
            _round(diff[:, j].mean()) if n else None,
            _round(diff[:, j].std(ddof=1) / np.sqrt(n)) if n > 1 else None,
        ]
        for j, k in enumerate(a.ks)
    }


def kshot_curve(
    personalise: Personalise,
    device_ids: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    task: Task,
    ks: Sequence[int] = KS,
    horizon: int = HORIZON,
    episodes: int = 1,
    shuffle_seed: int | None = None,
) -> KShotCurve:
    """Personalise on ``k`` readings, score the next ``horizon``, for every device and k.

    ``device_ids, x, y`` are the held-out devices' readings in time order
    (shuffled per device first when ``shuffle_seed`` is given).

    Examples
    --------
    >>> ids = ["a"] * 200
    >>> x, y = np.zeros((200, 1)), np.arange(200.0)
    >>> def last_value(xs, ys, xq):  # predicts the last support reading
    ...     return np.repeat(ys[:, -1:], xq.shape[1], axis=1)
    >>> c = kshot_curve(last_value, ids, x, y, "regression", ks=(5, 50), horizon=10)
    >>> c.error, c.episodes   # query of k=5 is readings 5..14, of k=50 is 50..59
    ([5.5, 5.5], 1)
    """
    ks = sorted(ks)
    eps = make_episodes(device_ids, ks, horizon, episodes, shuffle_seed)
    errors = episode_errors(personalise, eps, x, y, task, ks, horizon)
    return summarise(errors, ks, task, len({e.device for e in eps}))


def personaliser(strategy: Strategy) -> Personalise:
    """How a trained strategy personalises a new device (see the module docstring)."""
    return strategy.personaliser()


class Recorder(StrategyBase):
    """Wraps a strategy to keep its predictions and detected drifts while :func:`replay` runs it.

    ``before_batch(position)`` is called with the stream position before each
    micro-batch.  The :class:`~learners.base.Strategy` members are the wrapped strategy's.
    """

    def __init__(
        self, inner: Strategy, task: Task, before_batch: Callable[[int], None] | None = None
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.before_batch = before_batch
        self.evaluator = PrequentialEvaluator(task)
        self.predictions: list[np.ndarray] = []
        self.drift_at: list[int] = []  # stream position of the last reading of the detecting batch
        self._seen = 0

    def learn_predict(self, device_ids: Sequence[str], x: np.ndarray, y: np.ndarray) -> StepResult:
        if self.before_batch is not None:
            self.before_batch(self._seen)
        result = self.inner.learn_predict(device_ids, x, y)
        self._seen += len(y)
        self.predictions.append(result.y_pred)
        self.drift_at += [self._seen - 1] * len(result.drifted)
        self.evaluator.update(device_ids, y, result.y_pred, result.drifted)
        return result

    @property
    def n_adaptations(self) -> int:
        return self.inner.n_adaptations

    @property
    def meta_version(self) -> int:
        return self.inner.meta_version

    @property
    def start_wins(self) -> dict[str, int]:
        return self.inner.start_wins

    def personaliser(self) -> Personalise:
        return self.inner.personaliser()


@dataclass
class HeldOutRun:
    """A strategy trained on the training devices' stream, then scored k-shot on held-out ones."""

    summary: dict[str, Any]
    curve: KShotCurve
    """k-shot from the state at the end of the stream."""
    online: KShotCurve | None
    """k-shot from the state when the episode began (time order only)."""
    errors: np.ndarray
    """Prequential error of every training reading, in stream order."""
    drift_at: np.ndarray
    """Stream positions (into ``errors``) where drifts were detected."""
    recoveries: list[int]
    train_rows: np.ndarray
    """Indices of the training readings in the full table."""


def run_held_out(
    strategy: Strategy,
    device_ids: Sequence[str],
    x: np.ndarray,
    y: np.ndarray,
    task: Task,
    held_out: Collection[str],
    batch_size: int,
    ks: Sequence[int] = KS,
    horizon: int = HORIZON,
    episodes: int = 1,
    shuffle_seed: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> HeldOutRun:
    """Replay the readings of all devices but ``held_out``, scoring k-shot on the held-out ones.

    The held-out readings are removed *before* the strategy sees anything,
    so nothing it learns depends on them.  Two k-shot curves:

    - ``kshot`` (end): after the whole training stream, every episode;
    - ``kshot_online`` (time order only): each episode with the strategy as
      it was before the episode's first reading — at the last of 50 evenly
      spaced checkpoints — as for a device joining then; episodes starting
      in the first 10% of the training stream (warm-up) are left out.

    Examples
    --------
    >>> from learners import LearnerConfig
    >>> from learners.strategies import make_strategy
    >>> from learners.evaluation.synthetic import make_fleet_stream
    >>> s = make_fleet_stream(n_devices=6, n_readings=3000, n_features=3, late_joiners=0.0)
    >>> run = run_held_out(make_strategy("reptile", LearnerConfig(n_features=3)), s.device_ids,
    ...                    s.x, s.y, "regression", held_out=["dev-0005"], batch_size=32, ks=(5, 20),
    ...                    episodes=3)
    >>> run.summary["devices"], len(run.errors), run.curve.ks, run.curve.episodes, run.online.episodes
    (5, 2496, [5, 20], 3, 2)
    """
    ks = sorted(ks)
    held = set(held_out)
    is_held = np.fromiter((d in held for d in device_ids), dtype=bool, count=len(device_ids))
    train_rows = np.flatnonzero(~is_held)
    ids = list(device_ids)
    eps = make_episodes(ids, ks, horizon, episodes, shuffle_seed, only=held)
    n = len(train_rows)
    online = np.full((len(eps), len(ks)), np.nan)
    marks = [
        (int(n * (WARMUP + (1 - WARMUP) * g / CHECKPOINTS)) // batch_size) * batch_size
        for g in range(CHECKPOINTS)
    ]
    marks = [*sorted(set(marks) - {0}), n]
    checkpoint = _online_scorer(
        strategy, eps, (x, y, task), ks, horizon, train_rows, marks, online, shuffle_seed is None
    )
    recorder = Recorder(strategy, task, checkpoint if n else None)
    summary = replay(
        recorder, [ids[i] for i in train_rows], x[train_rows], y[train_rows], task, batch_size, progress
    )
    checkpoint(n)
    curve = summarise(
        episode_errors(personaliser(strategy), eps, x, y, task, ks, horizon),
        ks,
        task,
        len({e.device for e in eps}),
    )
    online_curve = _online_curve(online, eps, ks, task) if shuffle_seed is None else None
    preds = np.concatenate(recorder.predictions) if recorder.predictions else np.zeros(0)
    recoveries, _ = recorder.evaluator.recoveries()
    extra = online_curve.as_dict("kshot_online") if online_curve else {}
    return HeldOutRun(
        summary={**summary, **curve.as_dict(), **extra},
        curve=curve,
        online=online_curve,
        errors=reading_errors(task, y[train_rows], preds),
        drift_at=np.asarray(recorder.drift_at, dtype=np.int64),
        recoveries=recoveries,
        train_rows=train_rows,
    )


def _online_curve(online: np.ndarray, eps: list[Episode], ks: Sequence[int], task: Task) -> KShotCurve:
    """The k-shot curve of the episodes the online checkpoints scored."""
    scored = np.flatnonzero(~np.isnan(online[:, 0]))
    return summarise(online[scored], ks, task, len({eps[i].device for i in scored}))


def _online_scorer(
    strategy: Strategy,
    eps: list[Episode],
    data: tuple[np.ndarray, np.ndarray, Task],
    ks: Sequence[int],
    horizon: int,
    train_rows: np.ndarray,
    marks: list[int],
    online: np.ndarray,
    enabled: bool,
) -> Callable[[int], None]:
    """The replay's checkpoint hook: fills ``online`` with episodes' errors at the checkpoint before them."""
    x, y, task = data
    firsts = np.array([e.rows[0] for e in eps], dtype=np.int64)

    def checkpoint(seen: int) -> None:
        """Score the episodes that start between this checkpoint and the next one."""
        if not enabled or seen not in marks:
            return
        g = marks.index(seen)
        hi = train_rows[marks[g + 1] - 1] if g + 1 < len(marks) else np.inf
        pick = np.flatnonzero((firsts > train_rows[seen - 1]) & (firsts <= hi))
        if pick.size:
            chosen = [eps[i] for i in pick]
            online[pick] = episode_errors(personaliser(strategy), chosen, x, y, task, ks, horizon)

    return checkpoint


def _round(v: float) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 6)
