"""Which devices leave a worker's memory when it holds too many: least recently seen first.

A plain state machine (no learner, no broker): the worker core tells it which
devices it just learned (:meth:`LruEviction.touch`) and asks which ones to
evict (:meth:`LruEviction.victims`); saving and restoring their state is the
core's business (:mod:`pipeline.worker_core`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator


class LruEviction:
    """Resident devices in least-recently-seen order, and a bound on how many may stay.

    Parameters
    ----------
    max_devices
        Most devices resident at once once a batch is learned.
    low_water
        When over the bound, evict down to this many (default 90 % of
        ``max_devices``), so evictions come in rounds, not one device per batch.

    Examples
    --------
    >>> lru = LruEviction(max_devices=3, low_water=2)
    >>> lru.touch(["a", "b", "c"]); lru.touch(["a"]); lru.touch(["d"])
    >>> list(lru), lru.over()
    (['b', 'c', 'a', 'd'], True)
    >>> lru.victims(busy={"d"})  # the idle ones, least recently seen first
    ['b', 'c']
    >>> list(lru), lru.over()
    (['a', 'd'], False)
    """

    def __init__(self, max_devices: int, low_water: int | None = None) -> None:
        if max_devices < 1:
            raise ValueError(f"max_devices must be >= 1, got {max_devices}")
        low = max_devices - max_devices // 10 if low_water is None else low_water
        if not 0 <= low <= max_devices:
            raise ValueError(f"low_water must be between 0 and max_devices ({max_devices}), got {low}")
        self.max_devices = max_devices
        self.low_water = low
        self._order: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._order

    def touch(self, device_ids: Iterable[str]) -> None:
        """``device_ids`` were just seen (in this order): they become the most recent."""
        order = self._order
        for d in device_ids:
            order[d] = None
            order.move_to_end(d)

    def forget(self, device_ids: Iterable[str]) -> None:
        """Stop tracking ``device_ids`` (they left memory some other way, e.g. a revoked partition)."""
        for d in device_ids:
            self._order.pop(d, None)

    def over(self) -> bool:
        """Whether more than ``max_devices`` are resident."""
        return len(self._order) > self.max_devices

    def victims(self, busy: Collection[str] = ()) -> list[str]:
        """The devices to evict now, least recently seen first; they are no longer tracked.

        Nothing while at most ``max_devices`` are resident; otherwise idle
        devices (not in ``busy``, the batch being learned) down to
        ``low_water``.  If fewer are idle, all idle ones go.
        """
        if not self.over():
            return []
        excess = len(self._order) - self.low_water
        out: list[str] = []
        for d in self._order:
            if len(out) == excess:
                break
            if d not in busy:
                out.append(d)
        for d in out:
            del self._order[d]
        return out
