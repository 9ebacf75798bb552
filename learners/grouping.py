"""A micro-batch's readings grouped by device, for padded ``[devices, readings, …]`` tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DeviceGroups:
    """Where each reading of a micro-batch sits once the batch is grouped by device.

    Reading ``i`` belongs to device ``slots[group[i]]`` and is that device's
    ``rank[i]``-th reading in the batch (batch order).  :meth:`pad` lays values
    out as ``[devices, width, …]`` so every device can be handled by one batched
    matrix product on its own weights, without copying weights per reading.

    Attributes
    ----------
    slots
        The distinct device slots of the batch, ascending ``[U]``.
    counts
        Readings per device ``[U]``.
    group
        Index into ``slots`` of each reading ``[N]``.
    rank
        Position of each reading among its device's readings ``[N]``.

    Examples
    --------
    >>> g = DeviceGroups.of(np.array([3, 1, 3]))
    >>> g.slots.tolist(), g.counts.tolist(), g.rank.tolist()
    ([1, 3], [1, 2], [0, 0, 1])
    >>> padded = g.pad(np.array([10.0, 20.0, 30.0]))
    >>> padded.tolist(), g.mask().tolist()
    ([[20.0, 0.0], [10.0, 30.0]], [[1.0, 0.0], [1.0, 1.0]])
    >>> g.unpad(padded).tolist()
    [10.0, 20.0, 30.0]
    """

    slots: np.ndarray
    counts: np.ndarray
    group: np.ndarray
    rank: np.ndarray

    @classmethod
    def of(cls, slots: np.ndarray) -> DeviceGroups:
        """Group a batch whose reading ``i`` belongs to device slot ``slots[i]``."""
        slots = np.asarray(slots, dtype=np.int64)
        if len(slots) == 0 or slots.min() < 0:
            return cls._of_any(slots)
        # Slots are small non-negative ints: count them instead of sorting them (np.unique).
        per_slot = np.bincount(slots)
        uniq = np.flatnonzero(per_slot)
        counts = per_slot[uniq]
        index = np.cumsum(per_slot > 0) - 1  # slot → its position in uniq
        group = index[slots]
        return cls(uniq, counts, group, _ranks(group, counts))

    @classmethod
    def _of_any(cls, slots: np.ndarray) -> DeviceGroups:
        uniq, group, counts = np.unique(slots, return_inverse=True, return_counts=True)
        group = group.reshape(-1)
        return cls(uniq, counts, group, _ranks(group, counts))

    @property
    def width(self) -> int:
        """Readings of the busiest device: the padded length."""
        return int(self.counts.max())

    def pad(self, values: np.ndarray) -> np.ndarray:
        """``values[N, …]`` as ``[U, width, …]``, zero where a device has fewer readings."""
        out = np.zeros((len(self.slots), self.width, *values.shape[1:]), dtype=values.dtype)
        out[self.group, self.rank] = values
        return out

    def mask(self) -> np.ndarray:
        """``[U, width]``: 1 where :meth:`pad` put a reading, else 0 (float32)."""
        # A device's readings take the first ``counts`` places of its row.
        return (np.arange(self.width) < self.counts[:, None]).astype(np.float32)

    def unpad(self, padded: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`pad`: back to batch order ``[N, …]``."""
        return padded[self.group, self.rank]


def _ranks(group: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Position of each reading among the readings of its group, in batch order."""
    order = np.argsort(group, kind="stable")
    starts = np.cumsum(counts) - counts
    rank = np.empty_like(group)
    rank[order] = np.arange(len(group)) - np.repeat(starts, counts)
    return rank
