"""Differential privacy of device updates: clipping and the Gaussian mechanism (numpy only).

Two places to add the noise, same maths:

- **local DP** (:func:`local_privatise`, on the device): the update Δ is
  clipped to L2 norm ``clip`` and Gaussian noise is added before it leaves
  the device.  Any two clipped updates differ by at most ``2·clip``, so the
  noise standard deviation is ``noise_multiplier · 2 · clip``.
- **central DP** (:func:`central_privatise`, at the aggregator, e.g. on the
  sum that secure aggregation yields): every update is clipped, the weighted
  sum gets noise once.  Adding or removing one device changes the sum by at
  most ``clip`` (weights are capped at 1), so the standard deviation is
  ``noise_multiplier · clip``.

With secure aggregation the aggregator sees only the sum, so it cannot clip:
each device clips its own Δ (:func:`clip_to_norm`) and caps its weight
before masking, and the aggregator adds the central noise to the unmasked
weighted sum (:func:`noise_on_sum`).

Either way one release costs what a Gaussian mechanism with that
``noise_multiplier`` costs; ``pipeline.privacy`` keeps the account.
Weights are data too: under DP a device's weight is capped to ``[0, 1]``
(:func:`capped_weights`) rather than its raw sample count.
"""

from __future__ import annotations

import numpy as np


def _check(clip: float, noise_multiplier: float) -> None:
    if not (np.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a positive number; got {clip}")
    if not (np.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be >= 0; got {noise_multiplier}")


def clip_to_norm(update: np.ndarray, clip: float) -> np.ndarray:
    """``update`` scaled down to L2 norm ``clip`` if it is longer (float64 copy).

    Examples
    --------
    >>> clip_to_norm(np.array([3.0, 4.0]), 1.0).tolist()
    [0.6000000000000001, 0.8]
    >>> clip_to_norm(np.array([0.3, 0.4]), 1.0).tolist()
    [0.3, 0.4]
    """
    u = np.asarray(update, dtype=np.float64)
    if not np.all(np.isfinite(u)):
        raise ValueError("update has non-finite entries")
    norm = float(np.linalg.norm(u))
    return u * (clip / norm) if norm > clip else u.copy()


def capped_weights(counts: np.ndarray, weight_cap: float) -> np.ndarray:
    """Sample counts → weights ``min(count / weight_cap, 1)``: one device moves the sum by at most 1×.

    Examples
    --------
    >>> capped_weights(np.array([10, 50, 400]), 100.0).tolist()
    [0.1, 0.5, 1.0]
    """
    c = np.asarray(counts, dtype=np.float64)
    if not (weight_cap > 0) or np.any(c < 0):
        raise ValueError("weight_cap must be > 0 and counts >= 0")
    return np.minimum(c / weight_cap, 1.0)


def local_privatise(
    update: np.ndarray, clip: float, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """Local DP: clip ``update`` to ``clip`` and add N(0, (noise_multiplier · 2 · clip)²) to each entry.

    Examples
    --------
    >>> out = local_privatise(np.array([3.0, 4.0]), 1.0, 0.0, np.random.default_rng(0))
    >>> np.round(out, 6).tolist()
    [0.6, 0.8]
    """
    _check(clip, noise_multiplier)
    clipped = clip_to_norm(update, clip)
    return clipped + rng.normal(0.0, noise_multiplier * 2.0 * clip, clipped.shape)


def central_privatise(
    updates: np.ndarray,
    weights: np.ndarray,
    clip: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
    """Central DP: Σ wᵢ·clip(Δᵢ) + N(0, (noise_multiplier · clip)²), and Σ wᵢ.

    ``updates`` is ``[n, P]``, ``weights`` ``[n]`` within ``[0, 1]``
    (:func:`capped_weights`).  Returns the noisy weighted sum and the weight
    total; their ratio is the noisy weighted mean.

    Examples
    --------
    >>> s, w = central_privatise(np.array([[3.0, 4.0], [0.0, 0.5]]), np.array([1.0, 0.5]), 1.0, 0.0,
    ...                          np.random.default_rng(0))
    >>> np.round(s, 6).tolist(), w
    ([0.6, 1.05], 1.5)
    """
    _check(clip, noise_multiplier)
    u = np.asarray(updates, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if u.ndim != 2 or w.shape != (u.shape[0],):
        raise ValueError(f"updates must be [n, P] and weights [n]; got {u.shape} and {w.shape}")
    if np.any((w < 0) | (w > 1)):
        raise ValueError("weights must lie in [0, 1] under DP (see capped_weights)")
    clipped = np.stack([clip_to_norm(row, clip) for row in u]) if len(u) else u
    total = (w[:, None] * clipped).sum(axis=0)
    return total + rng.normal(0.0, noise_multiplier * clip, total.shape), float(w.sum())


def noise_on_sum(
    weighted_sum: np.ndarray, clip: float, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """Central DP on a sum of already clipped, weight-capped updates (e.g. secure aggregation's).

    Examples
    --------
    >>> noise_on_sum(np.zeros(3), 1.0, 0.0, np.random.default_rng(0)).tolist()
    [0.0, 0.0, 0.0]
    """
    _check(clip, noise_multiplier)
    total = np.asarray(weighted_sum, dtype=np.float64)
    return total + rng.normal(0.0, noise_multiplier * clip, total.shape)
