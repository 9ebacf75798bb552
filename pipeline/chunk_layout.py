"""Which chunk holds which device of a partition, and which chunks a checkpoint must write again.

A plain state machine for :meth:`pipeline.worker_core.WorkerCore.checkpoint`:
devices are placed in groups (one chunk each, about ``per_chunk`` devices);
a group whose device changed is *dirty* and its chunk is written again, the
others are named in the next manifest where they already are.  A group's
chunk alternates between two keys of the compacted checkpoint topic, so
writing it again never makes the chunk that the newest manifest names
compactable: a crash half-way through a checkpoint leaves the previous one
complete.
"""

from __future__ import annotations

from collections.abc import Iterable

from wire.checkpoint import ChunkRef

DEVICES_PER_CHUNK = 128
"""Devices per chunk to start with (each chunk stays under ``CHUNK_BYTES`` by splitting)."""


def manifest_key(partition: int) -> str:
    """Key of a partition's manifests on the checkpoint topic."""
    return f"{partition}/m"


class ChunkLayout:
    """The groups of one partition's devices and the chunk each group has on the topic.

    Examples
    --------
    >>> layout = ChunkLayout(0, per_chunk=2)
    >>> layout.changed(["a", "b", "c"])
    >>> layout.take_dirty()
    {0: ['a', 'b'], 1: ['c']}
    >>> layout.key_for(0), layout.key_for(1)
    ('0/c/0/0', '0/c/1/0')
    >>> layout.written([ChunkRef(0, "0/c/0/0", 10, "x", 2), ChunkRef(1, "0/c/1/0", 11, "y", 1)])
    >>> layout.changed(["c", "d"])
    >>> layout.take_dirty(), layout.key_for(1)
    ({1: ['c', 'd']}, '0/c/1/1')
    """

    def __init__(self, partition: int, per_chunk: int = DEVICES_PER_CHUNK) -> None:
        self.partition = partition
        self.per_chunk = per_chunk
        self.groups: dict[int, list[str]] = {}
        self.group_of: dict[str, int] = {}
        self.refs: dict[int, ChunkRef] = {}
        """Per group, its chunk in the newest written manifest."""
        self.seq = 0
        """Sequence number of the newest written manifest."""
        self._dirty: set[int] = set()
        self._open: int | None = None  # the group new devices join while it has room

    def changed(self, device_ids: Iterable[str]) -> None:
        """These devices' state changed (new devices get a group)."""
        for d in device_ids:
            g = self.group_of.get(d)
            if g is None:
                g = self._place(d)
            self._dirty.add(g)

    def remove(self, device_ids: Iterable[str]) -> None:
        """These devices left the partition (their groups are written again without them)."""
        for d in device_ids:
            g = self.group_of.pop(d, None)
            if g is not None:
                self.groups[g].remove(d)
                self._dirty.add(g)

    def split(self, group: int, keep: int) -> int:
        """Move the members of ``group`` after the first ``keep`` into a new (dirty) group; its number."""
        moved = self.groups[group][keep:]
        del self.groups[group][keep:]
        new = self._new_group()
        self.groups[new] = moved
        for d in moved:
            self.group_of[d] = new
        self._dirty.add(group)
        self._dirty.add(new)
        return new

    def is_dirty(self) -> bool:
        """Whether a chunk must be written (or dropped) at the next checkpoint."""
        return bool(self._dirty)

    def take_dirty(self) -> dict[int, list[str]]:
        """The dirty groups and their members (a copy); they are clean afterwards."""
        out = {g: list(self.groups[g]) for g in sorted(self._dirty)}
        self._dirty.clear()
        return out

    def key_for(self, group: int) -> str:
        """The key to write ``group``'s chunk under: not the one the newest manifest names."""
        ref = self.refs.get(group)
        slot = 0 if ref is None or ref.key.endswith("/1") else 1
        return f"{self.partition}/c/{group}/{slot}"

    def written(self, refs: Iterable[ChunkRef], seq: int | None = None) -> None:
        """A manifest naming ``refs`` (the rewritten groups) is on the topic; empty groups are gone."""
        for ref in refs:
            self.refs[ref.group] = ref
        for g in [g for g, members in self.groups.items() if not members]:
            del self.groups[g]
            self.refs.pop(g, None)
            if self._open == g:
                self._open = None
        self.seq = self.seq + 1 if seq is None else seq

    def manifest_refs(self, rewritten: Iterable[ChunkRef]) -> list[ChunkRef]:
        """Every non-empty group's chunk once ``rewritten`` are on the topic, by group."""
        refs = dict(self.refs) | {r.group: r for r in rewritten}
        return [refs[g] for g in sorted(refs) if self.groups.get(g)]

    def adopt(self, refs: Iterable[ChunkRef], members: dict[int, list[str]], seq: int) -> None:
        """Continue from a restored manifest: its groups, their members and chunks (``refs``)."""
        self.groups = {g: list(m) for g, m in members.items()}
        self.group_of = {d: g for g, m in self.groups.items() for d in m}
        self.refs = {r.group: r for r in refs}
        self.seq = seq
        # Groups with no chunk on the topic (a checkpoint of an earlier format) are written at once.
        self._dirty = {g for g in self.groups if g not in self.refs}
        self._open = None

    def _new_group(self) -> int:
        g = max(self.groups, default=-1) + 1
        self.groups[g] = []
        return g

    def _place(self, device_id: str) -> int:
        g = self._open
        if g is None or g not in self.groups or len(self.groups[g]) >= self.per_chunk:
            g = self._open = self._new_group()
        self.groups[g].append(device_id)
        self.group_of[device_id] = g
        return g
