"""Regression guard: an adapted model replaces the current one only if it is no worse.

When a device adapts, its newest buffered readings are held back from the
adaptation; the adapted weights φ and the device's current weights are
both scored on them, for all adapting devices at once, and φ is kept only
where its loss is not higher (up to a tiny tolerance).  Everything here is
pure tensor maths over padded ``[D, n]`` masks, like
:meth:`learners.nets.FunctionalNet.masked_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

TOLERANCE = 1e-6
"""Relative slack: φ whose loss exceeds the current one by float noise only still counts as no worse."""


@dataclass(frozen=True)
class GuardCheck:
    """One adapted model compared with the current one on held-back readings.

    Losses are the mean per-reading loss (squared error or cross-entropy) in
    the learner's standardised units, on ``held_back`` readings that the
    adaptation did not see.
    """

    device_id: str
    current_loss: float
    adapted_loss: float
    held_back: int
    accepted: bool


def split_holdout(mask: Tensor, share: float, minimum: int) -> tuple[Tensor, Tensor]:
    """``(train_mask, holdout_mask)``: the newest readings of each row are held back.

    ``mask`` is ``[D, n]`` with real readings first (newest first, as
    :meth:`learners.buffers.DeviceBuffers.recent` returns them).  A row of
    ``n`` readings holds back ``max(minimum, round(share · n))`` of its
    newest ones, never more than half; a row too short to hold back
    ``minimum`` and keep as many to adapt on holds back nothing (too few
    readings to judge by).  ``share == 0`` holds back nothing anywhere.

    Examples
    --------
    >>> mask = torch.tensor([[1.0] * 8, [1.0] * 3 + [0.0] * 5])
    >>> train, hold = split_holdout(mask, share=0.25, minimum=2)
    >>> hold.sum(1).tolist(), train.sum(1).tolist()
    ([2.0, 0.0], [6.0, 3.0])
    >>> hold[0].tolist()
    [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    >>> split_holdout(mask, share=0.0, minimum=2)[1].sum().item()
    0.0
    """
    if share <= 0:
        return mask, torch.zeros_like(mask)
    n = mask.sum(1)
    h = torch.clamp(torch.round(share * n), min=float(minimum))
    h = torch.minimum(h, torch.floor(n / 2))
    h = torch.where(n >= 2 * minimum, h, torch.zeros_like(h)).clamp(min=0)
    position = torch.arange(mask.shape[1], dtype=mask.dtype).unsqueeze(0)
    hold = (position < h.unsqueeze(1)).to(mask.dtype) * mask
    return mask - hold, hold


def accept(current_loss: Tensor, adapted_loss: Tensor, tolerance: float = TOLERANCE) -> Tensor:
    """Where the adapted model does not do worse: ``adapted ≤ current · (1 + tol) + tol``.

    A non-finite adapted loss (a diverged adaptation) is never accepted; a
    finite one always beats a non-finite current loss.

    Examples
    --------
    >>> current = torch.tensor([1.0, 1.0, 1.0, 0.0, float("inf")])
    >>> accept(current, torch.tensor([0.5, 1.0, 1.5, float("nan"), 9.0])).tolist()
    [True, True, False, False, True]
    """
    finite = torch.isfinite(adapted_loss)
    ok = adapted_loss <= current_loss * (1.0 + tolerance) + tolerance
    return finite & (ok | ~torch.isfinite(current_loss))


__all__ = ["TOLERANCE", "GuardCheck", "accept", "split_holdout"]
