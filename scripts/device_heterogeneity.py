"""How different are the devices' best models?  Pooled vs per-device ridge models, per data set.

Each device's readings are split in time: the first 70% train, the last 30%
test.  Three linear (ridge) models are scored on every device's test part:

- ``pooled``: one model fitted on all devices' training parts;
- ``own``: the device's model, fitted on its own training part only;
- ``oracle`` (regression only): the device's model fitted on its test part
  itself (in-sample: a lower bound of what any per-device linear model
  could reach there).

With ``--shuffled`` each device's readings are shuffled (seeded) before the
split, for data without a natural order (watch: one recording per activity,
so a time split leaves activities out of a device's training part).

If ``own`` is not better than ``pooled`` and ``oracle`` is only a little
better, the devices share one model up to noise, and no initialisation
(meta-learned or not) can gain much by personalising.  Error: MAE
(regression) or error rate (classification, one-vs-all least squares).

Usage: ``python scripts/device_heterogeneity.py air wind`` and
``python scripts/device_heterogeneity.py --shuffled watch``
"""

from __future__ import annotations

import sys

import numpy as np

from pipeline.tools.datasets import load_dataset

RIDGE = 1.0
TRAIN = 0.7


def ridge(x: np.ndarray, y: np.ndarray, lam: float = RIDGE) -> np.ndarray:
    """Weights (intercept last) minimising ``|[x 1] w − y|² + lam |w|²`` (intercept unpenalised)."""
    a = np.hstack([x, np.ones((len(x), 1))])
    pen = lam * np.eye(a.shape[1])
    pen[-1, -1] = 0.0
    return np.linalg.solve(a.T @ a + pen, a.T @ y)


def predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``[x 1] w``."""
    return np.hstack([x, np.ones((len(x), 1))]) @ w


def error(task: str, y: np.ndarray, out: np.ndarray, classes: int) -> float:
    """MAE, or the error rate of the arg-max of one-vs-all outputs."""
    if task == "regression":
        return float(np.abs(out - y).mean())
    return float((out.argmax(1) != y).mean())


def main(names: list[str], shuffled: bool = False, seed: int = 0) -> None:
    """Print one line per data set: the mean per-device test error of the three models."""
    rng = np.random.default_rng(seed)
    print(f"{'shuffled' if shuffled else 'time'} split of each device, {TRAIN:.0%} train")
    print("dataset  devices  pooled   own      oracle   own_vs_pooled  oracle_vs_pooled")
    for name in names:
        data = load_dataset(name)
        ids = np.asarray(data.device_ids)
        x = data.x.astype(np.float64)
        classes = max(len(data.classes), 2)
        splits = {}
        for d in dict.fromkeys(data.device_ids):
            rows = np.flatnonzero(ids == d)
            rows = rng.permutation(rows) if shuffled else rows
            cut = int(TRAIN * len(rows))
            splits[d] = (rows[:cut], rows[cut:])
        train = np.concatenate([tr for tr, _ in splits.values()])
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-9
        xs = (x - mu) / sd
        if data.task == "regression":
            target = data.y.astype(np.float64)
        else:
            target = np.eye(classes)[data.y.astype(np.int64)]
        pooled = ridge(xs[train], target[train])
        errs = []
        for tr, te in splits.values():
            y_te = data.y[te]
            errs.append(
                [
                    error(data.task, y_te, predict(pooled, xs[te]), classes),
                    error(data.task, y_te, predict(ridge(xs[tr], target[tr]), xs[te]), classes),
                    error(data.task, y_te, predict(ridge(xs[te], target[te]), xs[te]), classes)
                    if data.task == "regression"
                    else np.nan,
                ]
            )
        p, o, q = np.mean(errs, axis=0)
        oracle, oracle_gain = ("n/a", "n/a") if np.isnan(q) else (f"{q:.4f}", f"{(q - p) / p:+.1%}")
        print(
            f"{name:<8} {len(splits):<8} {p:<8.4f} {o:<8.4f} {oracle:<8} {(o - p) / p:<+14.1%} {oracle_gain}"
        )


if __name__ == "__main__":
    argv = sys.argv[1:]
    main([a for a in argv if a != "--shuffled"] or ["air", "wind"], shuffled="--shuffled" in argv)
