"""One SGD step per reading for many stacked models at once, on one flat weight tensor.

The prequential loop of :class:`learners.fleet.FleetLearner` steps every
device of a segment once per reading position: step ``j`` updates the first
``u_j`` rows of the segment's stacked weights.  :class:`ReadingStepper` holds
those weights as one ``[U, P]`` tensor (views give each parameter its shape)
and does a step with few, in-place tensor operations: for regression the
gradient of one reading's squared error is written by hand straight into a
flat gradient tensor, clipped and applied in one operation each.

It computes exactly what :meth:`learners.nets.FunctionalNet.reading_step`
followed by ``w -= lr * step`` computes, bit for bit: the forward pass runs
the same batched products, and with one reading per model every product of
the backward pass that has a contraction of length one is a plain
elementwise product, which is what the batched product computes for it
(``tests/unit/test_stepper.py`` checks both tasks and deeper networks).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from learners.nets import MAX_GRAD_NORM, FunctionalNet, Params

_SMALL_BMM = 400
"""torch multiplies batched matrices with fewer than this many multiply-adds each in its own
loop, which gives the same bits whatever the tensors' strides; larger ones go to BLAS."""

_threshold_backward = torch.ops.aten.threshold_backward.default  # what ReLU's backward runs


class FlatLayout:
    """Where each parameter of one model lives in a flat row ``[P]``, in key order.

    Examples
    --------
    >>> layout = FlatLayout({"w": torch.zeros(5, 2, 3), "b": torch.zeros(5, 2)})
    >>> layout.size, layout.slices
    (8, {'w': (0, 6), 'b': (6, 8)})
    >>> flat = layout.gather({"w": torch.ones(5, 2, 3), "b": torch.full((5, 2), 2.0)}, torch.tensor([4, 0]))
    >>> flat.shape, layout.views(flat)["b"].tolist()
    (torch.Size([2, 8]), [[2.0, 2.0], [2.0, 2.0]])
    """

    def __init__(self, stacked: Params) -> None:
        self.shapes = {k: tuple(v.shape[1:]) for k, v in stacked.items()}
        self.slices: dict[str, tuple[int, int]] = {}
        offset = 0
        for k, shape in self.shapes.items():
            size = int(np.prod(shape, dtype=np.int64))
            self.slices[k] = (offset, offset + size)
            offset += size
        self.size = offset

    def gather(self, stacked: Params, idx: Tensor) -> Tensor:
        """Rows ``idx`` of stacked weights as one contiguous ``[len(idx), P]`` tensor."""
        return torch.cat([v.index_select(0, idx).reshape(len(idx), -1) for v in stacked.values()], dim=1)

    def views(self, flat: Tensor) -> Params:
        """Each parameter of ``flat`` ``[U, P]`` as a view shaped ``[U, …]`` (writes go through)."""
        n = flat.shape[0]
        return {k: flat[:, a:b].view(n, *self.shapes[k]) for k, (a, b) in self.slices.items()}

    def scatter(self, flat: Tensor, stacked: Params, idx: Tensor) -> None:
        """Write the rows of ``flat`` back into stacked weights at rows ``idx``."""
        for k, v in self.views(flat).items():
            stacked[k][idx] = v


class ReadingStepper:
    """A segment's stacked weights ``[U, P]``, stepped one reading per model at a time.

    Parameters
    ----------
    net
        The model family.
    flat
        The weights, one row per model (see :class:`FlatLayout`); stepped in place.
    layout
        How a row is laid out.

    Examples
    --------
    >>> from learners.config import LearnerConfig
    >>> from learners.nets import init_params, stack
    >>> cfg = LearnerConfig(n_features=2, hidden=(4,))
    >>> net, params = FunctionalNet(cfg), stack(init_params(cfg), 3)
    >>> layout = FlatLayout(params)
    >>> stepper = ReadingStepper(net, layout.gather(params, torch.arange(3)), layout)
    >>> out = stepper.step(2, torch.ones(2, 2), torch.zeros(2), lr=0.1)  # models 0 and 1 step
    >>> out.shape, bool(torch.equal(stepper.flat[2], stepper.flat[0]))
    (torch.Size([2]), False)
    """

    def __init__(self, net: FunctionalNet, flat: Tensor, layout: FlatLayout) -> None:
        self.net = net
        self.flat = flat
        self.layout = layout
        self.params = layout.views(flat)
        self._grad = torch.empty_like(flat)
        self._grads = layout.views(self._grad)
        self._regression = net.cfg.task == "regression"
        # Per linear layer: names, the weight transposed and the bias as [U, 1, out] (views of
        # ``flat``), whether a ReLU follows, and whether torch multiplies it with its own loop.
        self._layers: list[tuple[str, str, Tensor, Tensor, bool, bool]] = []
        children = list(net.template.named_children())
        for i, (name, layer) in enumerate(children):
            if isinstance(layer, nn.Linear):
                relu = i + 1 < len(children) and isinstance(children[i + 1][1], nn.ReLU)
                w, b = f"{name}.weight", f"{name}.bias"
                small = layer.in_features * layer.out_features < _SMALL_BMM
                self._layers.append(
                    (w, b, self.params[w].transpose(1, 2), self.params[b].unsqueeze(1), relu, small)
                )
            elif not isinstance(layer, nn.ReLU):
                raise TypeError(f"no per-reading step for {type(layer).__name__}")
        self._squares = [(a, b) for a, b in layout.slices.values()]

    def step(self, u: int, x: Tensor, y: Tensor, lr: float) -> Tensor:
        """Predict reading ``i`` with model ``i`` for ``i < u``, then take its SGD step.

        ``x`` is ``[u, F]``, ``y`` ``[u]``.  Returns the point predictions
        made before the step, ``[u]``.
        """
        if not self._regression:
            return self._step_autograd(u, x, y, lr)
        # Forward, keeping each linear layer's input.
        h = x.unsqueeze(1)
        inputs: list[Tensor] = []
        weights: list[Tensor] = []
        for wname, bname, wt, b, relu, small in self._layers:
            inputs.append(h)
            if small:
                weights.append(self.params[wname][:u])
                h = torch.baddbmm(b[:u], h, wt[:u])
            else:
                # Larger products go to BLAS, whose result depends on the memory layout:
                # give it the contiguous weights that reading_step has.
                w = self.params[wname][:u].contiguous()
                weights.append(w)
                h = torch.baddbmm(self.params[bname][:u].contiguous().unsqueeze(1), h, w.transpose(1, 2))
            if relu:
                h = torch.relu(h)
        out = h.view(u)
        # Backward of one reading's squared error, layer by layer, into the flat gradient.
        g = (2.0 * (out - y)).view(u, 1, 1)
        grads = self._grads
        for i in range(len(self._layers) - 1, -1, -1):
            wname, bname = self._layers[i][:2]
            gb = grads[bname][:u]
            gb.copy_(g.view(gb.shape))
            torch.mul(g.transpose(1, 2), inputs[i], out=grads[wname][:u])
            if i == 0:
                break
            # A contraction of length one (the output layer) is an elementwise product.
            g = g * weights[i] if g.shape[2] == 1 else torch.bmm(g, weights[i])
            if self._layers[i - 1][4]:
                g = _threshold_backward(g, inputs[i], 0)
        self._clip_and_apply(u, lr)
        return out

    def _clip_and_apply(self, u: int, lr: float) -> None:
        """``flat[:u] -= lr * clip(grad[:u])``, each model's gradient norm capped as in :func:`clip_grad`."""
        grad = self._grad[:u]
        squares = grad.pow(2)
        parts = [squares[:, a:b].sum(1) for a, b in self._squares]
        sq = parts[0]
        for part in parts[1:]:
            sq = sq + part
        scale = MAX_GRAD_NORM / sq.sqrt().clamp(min=MAX_GRAD_NORM)
        grad *= scale.unsqueeze(1)  # 1.0 for almost every model: multiplying by 1 changes no bit
        self.flat[:u] -= lr * grad

    def _step_autograd(self, u: int, x: Tensor, y: Tensor, lr: float) -> Tensor:
        """Classification: :meth:`FunctionalNet.reading_step` on views of the prefix."""
        # Contiguous copies: BLAS's products depend on the layout (see ``_SMALL_BMM``).
        sub = {k: v[:u].contiguous() for k, v in self.params.items()}
        step, out = self.net.reading_step(sub, x, y)
        for k, v in self.params.items():
            v[:u] -= lr * step[k]
        return self.net.predict(out)
