"""Device ids ↔ dense slot numbers, so per-device state can live in arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class DeviceIndex:
    """Assigns each new device id the next free slot.

    Examples
    --------
    >>> index = DeviceIndex()
    >>> slots, new = index.slots_for(["a", "b", "a", "c"])
    >>> slots.tolist(), new
    ([0, 1, 0, 2], [0, 1, 2])
    >>> index.ids, len(index)
    (['a', 'b', 'c'], 3)
    >>> index.slots_for([""])
    Traceback (most recent call last):
    ...
    ValueError: device id must be a non-empty string, got ''
    """

    def __init__(self) -> None:
        self._slot: dict[str, int] = {}
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._slot

    def slot(self, device_id: str) -> int:
        """Slot of a known device; ``KeyError`` for an unknown one."""
        return self._slot[device_id]

    def slots_for(self, device_ids: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Slots of ``device_ids`` (registering new ones) and the slots just created."""
        # Fast path for the common case, every device known: one comprehension.
        known = [self._slot.get(d, -1) for d in device_ids]
        if -1 not in known:
            return np.array(known, dtype=np.int64), []
        slot, ids = self._slot, self.ids
        out = np.empty(len(device_ids), dtype=np.int64)
        new: list[int] = []
        for i, d in enumerate(device_ids):
            s = slot.get(d)
            if s is None:
                if not isinstance(d, str) or not d:
                    raise ValueError(f"device id must be a non-empty string, got {d!r}")
                s = slot[d] = len(ids)
                ids.append(d)
                new.append(s)
            out[i] = s
        return out, new

    def retain(self, keep: np.ndarray) -> None:
        """Keep only the devices of slots ``keep`` (ascending); they get slots 0, 1, … in that order."""
        self.ids = [self.ids[int(s)] for s in keep]
        self._slot = {d: i for i, d in enumerate(self.ids)}
