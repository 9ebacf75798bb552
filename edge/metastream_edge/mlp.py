"""The per-device MLP in numpy: forward pass, loss gradient, online step and k-step adaptation.

The same maths as the worker's :class:`learners.nets.FunctionalNet` for one
device (``n_features → hidden… → outputs``, ReLU between, weights named like
its ``nn.Sequential``): squared error for regression, cross-entropy for
classification, each device's gradient clipped to :data:`MAX_GRAD_NORM`
before a plain SGD step.  Everything stays float32, as on the worker.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Params = dict[str, np.ndarray]

PARTS = ("weight", "bias")

MAX_GRAD_NORM = 5.0
"""Gradient norm cap of every SGD step, online and in adaptation (same as the worker's)."""


def layer_names(params: Mapping[str, np.ndarray]) -> list[str]:
    """The linear layers' name prefixes in order (``["0", "2", …]``)."""
    return sorted({k.split(".")[0] for k in params if k.split(".")[0].isdigit()}, key=int)


def forward(params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Raw outputs ``[n, n_outputs]`` for standardised inputs ``x`` ``[n, F]``.

    Examples
    --------
    >>> p = {"0.weight": np.ones((2, 1), np.float32), "0.bias": np.array([0.0, -5.0], np.float32),
    ...      "2.weight": np.ones((1, 2), np.float32), "2.bias": np.zeros(1, np.float32)}
    >>> forward(p, np.array([[1.0], [3.0]], np.float32)).ravel().tolist()
    [1.0, 3.0]
    """
    return _forward(params, np.asarray(x, dtype=np.float32))[-1]


def _forward(params: Mapping[str, np.ndarray], x: np.ndarray) -> list[np.ndarray]:
    """Every linear layer's input, then the output (ReLU applied between layers)."""
    names = layer_names(params)
    acts = [x]
    h = x
    for i, name in enumerate(names):
        h = h @ params[f"{name}.weight"].T + params[f"{name}.bias"]
        if i < len(names) - 1:
            h = np.maximum(h, np.float32(0.0))
        acts.append(h)
    return acts


def point_predictions(task: str, out: np.ndarray) -> np.ndarray:
    """Regression: the output; classification: the arg-max class index (as float)."""
    if task == "regression":
        return out[:, 0]
    return out.argmax(-1).astype(out.dtype)


def gradient(
    task: str, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, mask: np.ndarray
) -> tuple[Params, np.ndarray]:
    """Gradient of the mean loss over the rows where ``mask`` is 1, and the outputs before any step.

    ``x`` is ``[n, F]``, ``y`` and ``mask`` ``[n]``; the mean divides by the
    number of readings (at least 1), like the worker's masked loss.
    """
    acts = _forward(params, x)
    out = acts[-1]
    weights = (mask / max(float(mask.sum()), 1.0)).astype(np.float32)
    if task == "regression":
        g = (weights * (np.float32(2.0) * (out[:, 0] - y)))[:, None]
    else:
        shifted = out - out.max(-1, keepdims=True)
        p = np.exp(shifted)
        p /= p.sum(-1, keepdims=True)
        p[np.arange(len(y)), y.astype(np.int64)] -= np.float32(1.0)
        g = p * weights[:, None]
    names = layer_names(params)
    grads: Params = {}
    for i in range(len(names) - 1, -1, -1):
        name = names[i]
        grads[f"{name}.weight"] = g.T @ acts[i]
        grads[f"{name}.bias"] = g.sum(0)
        if i > 0:
            g = (g @ params[f"{name}.weight"]) * (acts[i] > 0)
    return {k: grads[k].astype(np.float32) for k in params}, out


def clip_grad(step: Params, max_norm: float = MAX_GRAD_NORM) -> Params:
    """Scale the gradient down to an L2 norm of at most ``max_norm``.

    Examples
    --------
    >>> clip_grad({"w": np.array([3.0, 4.0], np.float32)}, 1.0)["w"].tolist()
    [0.6000000238418579, 0.800000011920929]
    """
    norm = float(np.sqrt(sum(float(np.square(v, dtype=np.float32).sum()) for v in step.values())))
    if norm <= max_norm:
        return step
    scale = np.float32(max_norm / norm)
    return {k: v * scale for k, v in step.items()}


def online_step(
    task: str, params: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float
) -> tuple[Params, np.ndarray]:
    """Predict-then-learn on a batch of one device's readings: one SGD step on their mean loss.

    Returns the new weights and the raw outputs ``[n, n_outputs]`` computed before the step.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    step, out = gradient(task, params, x, y, np.ones(len(y), np.float32))
    step = clip_grad(step)
    lr32 = np.float32(lr)
    new: Params = {k: v - lr32 * step[k] for k, v in params.items()}
    return new, out


def adapt(
    task: str,
    theta: Mapping[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray | None = None,
    steps: int = 10,
    lr: float = 0.2,
) -> Params:
    """φ ← ``steps`` clipped SGD steps from ``theta`` on the readings (rows with mask 1).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> theta = {"0.weight": rng.normal(size=(4, 1)).astype(np.float32), "0.bias": np.zeros(4, np.float32),
    ...          "2.weight": rng.normal(size=(1, 4)).astype(np.float32), "2.bias": np.zeros(1, np.float32)}
    >>> x = rng.normal(size=(16, 1)).astype(np.float32); y = 2 * x[:, 0]
    >>> def loss(p): return float(((forward(p, x)[:, 0] - y) ** 2).mean())
    >>> loss(adapt("regression", theta, x, y, steps=20, lr=0.1)) < loss(theta)
    True
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    m = np.ones(len(y), np.float32) if mask is None else np.asarray(mask, np.float32)
    lr32 = np.float32(lr)
    phi: Params = {k: np.array(v, np.float32) for k, v in theta.items()}
    for _ in range(steps):
        step = clip_grad(gradient(task, phi, x, y, m)[0])
        phi = {k: v - lr32 * step[k] for k, v in phi.items()}
    return phi


def flatten(params: Mapping[str, np.ndarray]) -> np.ndarray:
    """One model's parameters as a vector ``[P]`` in layer order, weight before bias (the worker's order).

    Examples
    --------
    >>> flatten({"2.bias": np.array([5.0]), "0.bias": np.array([3.0]), "0.weight": np.array([[1.0, 2.0]]),
    ...          "2.weight": np.array([[4.0]])}).tolist()
    [1.0, 2.0, 3.0, 4.0, 5.0]
    """
    return np.concatenate(
        [np.asarray(params[f"{n}.{part}"], np.float32).ravel() for n in layer_names(params) for part in PARTS]
    )
