"""Paired comparison of one strategy's k-shot error against another's, over seeds and episodes.

``metastream evaluate … --seeds 0,1,2,3,4`` scores every strategy on the
same held-out episodes under several learner seeds.  For a reference
(``reptile``) and each baseline, the difference ``reference − baseline`` of
every (seed, episode) pair is one cell of a ``[seeds, episodes]`` matrix;
negative means the reference has the lower error.

The confidence interval comes from a two-way ("pigeonhole") bootstrap:
seeds and episodes are resampled independently, with replacement, and the
statistic is the mean of the resampled cells.  Resampling seeds carries the
noise of training (θ, the shared model, the meta-batches all depend on the
seed); resampling episodes carries the noise of which windows of which
held-out devices were scored.  The bootstrap generator is seeded, so the
interval is reproducible.  The verdict is ``ahead`` when the whole interval
is below zero, ``behind`` when it is above, else ``tie``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BOOTSTRAP = 4000
LEVEL = 0.95


def bootstrap_interval(
    diffs: np.ndarray, level: float = LEVEL, n_boot: int = BOOTSTRAP, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean of ``diffs [seeds, episodes]``, resampling both axes.

    Parameters
    ----------
    diffs
        Paired differences, one row per seed, one column per episode (the
        same episodes in every row).
    level
        Coverage of the interval.
    n_boot
        Bootstrap replicates.
    seed
        Seeds the bootstrap's generator.

    Returns
    -------
    tuple of float
        ``(low, high)``.

    Examples
    --------
    >>> d = np.array([[-1.0, -2.0, -3.0], [-1.5, -2.5, -2.0]])
    >>> low, high = bootstrap_interval(d)
    >>> bool(-3.0 <= low < d.mean() < high <= -1.0)
    True
    >>> bootstrap_interval(np.full((2, 4), 0.5))
    (0.5, 0.5)
    """
    if diffs.ndim != 2 or diffs.size == 0:
        raise ValueError(f"diffs must be a non-empty [seeds, episodes] matrix, got shape {diffs.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n_seeds, n_eps = diffs.shape
    rng = np.random.default_rng(seed)
    # Resampling with replacement = multinomial counts on each axis.
    rows = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot)
    cols = rng.multinomial(n_eps, np.full(n_eps, 1.0 / n_eps), size=n_boot)
    means = np.einsum("bs,se,be->b", rows, diffs, cols) / (n_seeds * n_eps)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def verdict(low: float, high: float) -> str:
    """``ahead`` (interval below 0: the reference has the lower error), ``behind`` or ``tie``.

    Examples
    --------
    >>> verdict(-0.3, -0.1), verdict(-0.1, 0.2), verdict(0.05, 0.2)
    ('ahead', 'tie', 'behind')
    """
    if high < 0.0:
        return "ahead"
    if low > 0.0:
        return "behind"
    return "tie"


def compare(
    errors: Mapping[str, Sequence[np.ndarray]],
    ks: Sequence[int],
    reference: str = "reptile",
    level: float = LEVEL,
    n_boot: int = BOOTSTRAP,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per baseline × k: mean of ``reference − baseline``, its interval and the verdict.

    Parameters
    ----------
    errors
        Per strategy, one ``[episodes, ks]`` error matrix per seed (same
        seeds in the same order, same episodes, for every strategy).
    ks
        The k of the matrices' columns.
    reference
        The strategy compared against every other one.
    level, n_boot, seed
        See :func:`bootstrap_interval`.

    Examples
    --------
    >>> ref = [np.array([[1.0, 0.5], [2.0, 1.0]]), np.array([[1.2, 0.4], [1.8, 1.1]])]
    >>> base = [e + np.array([0.5, -0.2]) for e in ref]   # ref better at k=5, worse at k=10
    >>> rows = compare({"reptile": ref, "global": base}, ks=[5, 10])
    >>> [(r["baseline"], r["k"], r["mean_diff"], r["verdict"]) for r in rows]
    [('global', 5, -0.5, 'ahead'), ('global', 10, 0.2, 'behind')]
    """
    if reference not in errors:
        raise ValueError(f"no errors for the reference {reference!r}")
    ref = errors[reference]
    out = []
    for name, per_seed in errors.items():
        if name == reference:
            continue
        if len(per_seed) != len(ref) or any(a.shape != b.shape for a, b in zip(per_seed, ref, strict=True)):
            raise ValueError(f"{name!r} was not scored on the same seeds and episodes as {reference!r}")
        diff = np.stack([r - b for r, b in zip(ref, per_seed, strict=True)])  # [seeds, episodes, ks]
        for j, k in enumerate(ks):
            d = diff[:, :, j]
            low, high = bootstrap_interval(d, level, n_boot, seed)
            out.append(
                {
                    "reference": reference,
                    "baseline": name,
                    "k": int(k),
                    "mean_diff": round(float(d.mean()), 6),
                    "ci_low": round(low, 6),
                    "ci_high": round(high, 6),
                    "level": level,
                    "verdict": verdict(low, high),
                    "reference_error": round(float(np.mean([r[:, j].mean() for r in ref])), 6),
                    "baseline_error": round(float(np.mean([b[:, j].mean() for b in per_seed])), 6),
                    "seeds": len(ref),
                    "episodes": int(d.shape[1]),
                }
            )
    return out


def format_comparison(rows: Sequence[dict[str, Any]]) -> str:
    """An aligned text table of :func:`compare`'s rows.

    Examples
    --------
    >>> row = {"baseline": "global", "k": 5, "reference_error": 0.3, "baseline_error": 0.31,
    ...        "mean_diff": -0.01, "ci_low": -0.02, "ci_high": -0.001, "verdict": "ahead"}
    >>> print(format_comparison([row]))
    baseline  k  reference  baseline  diff     95% CI              verdict
    global    5  0.3        0.31      -0.0100  [-0.0200, -0.0010]  ahead
    """
    head = ["baseline", "k", "reference", "baseline", "diff", f"{round(100 * LEVEL)}% CI", "verdict"]
    cells = [
        [
            str(r["baseline"]),
            str(r["k"]),
            f"{r['reference_error']:.4g}",
            f"{r['baseline_error']:.4g}",
            f"{r['mean_diff']:+.4f}",
            f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]",
            str(r["verdict"]),
        ]
        for r in rows
    ]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip() for c in cells]
    return "\n".join(lines)
