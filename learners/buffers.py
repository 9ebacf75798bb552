"""Each device's most recent readings, kept as one stacked ring buffer."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from learners.grouping import DeviceGroups


class DeviceBuffers:
    """Ring buffers of ``size`` readings per device, stored as ``[devices, size, …]``.

    Writes are vectorised over a micro-batch that mixes devices; a device with
    more than ``size`` readings in one batch keeps its last ``size``.

    Examples
    --------
    >>> buf = DeviceBuffers(n_features=1, size=3)
    >>> buf.push(np.array([0, 1, 0, 0, 0]), np.arange(5.0)[:, None], np.arange(5.0))
    >>> buf.count[:2].tolist()
    [3, 1]
    >>> x, y, mask = buf.recent(np.array([0, 1]), 3)
    >>> y.tolist(), mask.tolist()   # newest first
    ([[4.0, 3.0, 2.0], [1.0, 0.0, 0.0]], [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    """

    def __init__(self, n_features: int, size: int, capacity: int = 64) -> None:
        self.size = size
        self.x = np.zeros((capacity, size, n_features), dtype=np.float32)
        self.y = np.zeros((capacity, size), dtype=np.float32)
        self.count = np.zeros(capacity, dtype=np.int64)
        self._next = np.zeros(capacity, dtype=np.int64)

    def ensure(self, n_slots: int) -> None:
        """Grow (doubling) so that slots ``0 … n_slots-1`` exist."""
        capacity = len(self.count)
        if n_slots <= capacity:
            return
        new = max(n_slots, 2 * capacity)
        pad = new - capacity
        self.x = np.concatenate([self.x, np.zeros((pad, *self.x.shape[1:]), np.float32)])
        self.y = np.concatenate([self.y, np.zeros((pad, self.size), np.float32)])
        self.count = np.concatenate([self.count, np.zeros(pad, np.int64)])
        self._next = np.concatenate([self._next, np.zeros(pad, np.int64)])

    def push(
        self, slots: np.ndarray, x: np.ndarray, y: np.ndarray, groups: DeviceGroups | None = None
    ) -> None:
        """Append one batch of readings; ``slots[i]`` owns ``x[i], y[i]``.

        ``groups`` is ``DeviceGroups.of(slots)`` when the caller already has it.
        """
        self.ensure(int(slots.max()) + 1)
        g = groups or DeviceGroups.of(slots)
        keep = g.rank >= g.counts[g.group] - self.size  # only the last `size` of a device
        s, r = slots[keep], g.rank[keep]
        pos = (self._next[s] + r) % self.size
        self.x[s, pos] = x[keep]
        self.y[s, pos] = y[keep]
        self._next[g.slots] = (self._next[g.slots] + g.counts) % self.size
        self.count[g.slots] = np.minimum(self.count[g.slots] + g.counts, self.size)

    def push_each(self, slots: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        """Append one reading to each of ``slots`` (distinct, all known): ``x[i], y[i]`` to ``slots[i]``.

        Examples
        --------
        >>> buf = DeviceBuffers(n_features=1, size=2)
        >>> for v in (1.0, 2.0, 3.0):
        ...     buf.push_each(np.array([0]), np.array([[v]]), np.array([v]))
        >>> buf.recent(np.array([0]), 2)[1].tolist(), buf.count[0]
        ([[3.0, 2.0]], np.int64(2))
        """
        pos = self._next[slots]
        self.x[slots, pos] = x
        self.y[slots, pos] = y
        self._next[slots] = (pos + 1) % self.size
        self.count[slots] = np.minimum(self.count[slots] + 1, self.size)

    def keep_newest(self, slots: np.ndarray, keep: np.ndarray | int) -> None:
        """Forget all but the ``keep`` newest readings of each of ``slots``."""
        self.count[slots] = np.minimum(self.count[slots], keep)

    def state_dict(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """Copies of what the buffers hold for ``slots``: readings, counts and ring positions.

        Examples
        --------
        >>> buf = DeviceBuffers(n_features=1, size=2)
        >>> buf.push(np.array([0, 0, 0]), np.arange(3.0)[:, None], np.arange(3.0))
        >>> other = DeviceBuffers(n_features=1, size=2)
        >>> other.load_state_dict(np.array([4]), buf.state_dict(np.array([0])))
        >>> other.recent(np.array([4]), 2)[1].tolist() == buf.recent(np.array([0]), 2)[1].tolist()
        True
        """
        return {
            "x": self.x[slots].copy(),
            "y": self.y[slots].copy(),
            "count": self.count[slots].copy(),
            "next": self._next[slots].copy(),
        }

    def load_state_dict(self, slots: np.ndarray, state: dict[str, np.ndarray]) -> None:
        """Put :meth:`state_dict` output into ``slots`` (growing as needed)."""
        if len(slots):
            self.ensure(int(np.max(slots)) + 1)
        self.x[slots] = state["x"]
        self.y[slots] = state["y"]
        self.count[slots] = np.asarray(state["count"], dtype=np.int64)
        self._next[slots] = np.asarray(state["next"], dtype=np.int64)

    def retain(self, keep: np.ndarray, n: int) -> None:
        """Move slots ``keep`` (ascending) down to ``0 … len(keep)-1`` and clear the rest up to ``n``."""
        k = len(keep)
        for a in (self.x, self.y, self.count, self._next):
            a[:k] = a[keep]
            a[k:n] = 0

    def recent(self, slots: np.ndarray, m: int) -> tuple[Tensor, Tensor, Tensor]:
        """The newest ``m`` readings of each slot, newest first, padded with mask 0."""
        m = min(m, self.size)
        back = np.arange(m)
        idx = (self._next[slots, None] - 1 - back[None, :]) % self.size
        mask = back[None, :] < self.count[slots, None]
        rows = slots[:, None]
        return (
            torch.from_numpy(self.x[rows, idx]),
            torch.from_numpy(self.y[rows, idx]),
            torch.from_numpy(mask.astype(np.float32)),
        )
