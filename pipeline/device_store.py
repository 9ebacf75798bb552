"""Records of devices evicted from memory, on local disk (SQLite), until they come back.

Only a cache of the worker's own state: what it must survive a crash is in
the checkpoints (:mod:`wire.checkpoint`); a restarted worker starts with
an empty store and restores from those.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterable, Sequence


class DeviceStore:
    """Device id → device record bytes, in a private SQLite file (unlinked at once, so never left behind).

    Parameters
    ----------
    directory
        Where the file goes (default: the system's temporary directory);
        ``":memory:"`` keeps it in RAM (tests).

    Examples
    --------
    >>> store = DeviceStore(":memory:")
    >>> store.put({"a": b"state-a", "b": b"state-b"})
    >>> len(store), "a" in store, store.get(["a", "zz"])
    (2, True, {'a': b'state-a'})
    >>> store.pop(["a"]), len(store)
    ({'a': b'state-a'}, 1)
    >>> store.close()
    """

    def __init__(self, directory: str | None = None) -> None:
        if directory == ":memory:":
            self.path = ":memory:"
        else:
            fd, self.path = tempfile.mkstemp(prefix="metastream-devices-", suffix=".sqlite", dir=directory)
            os.close(fd)
        # One learner thread uses the store, but not always the thread that created it.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # A cache, not a database of record: no journal, no fsync.
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE IF NOT EXISTS device (id TEXT PRIMARY KEY, record BLOB NOT NULL)")
        if self.path != ":memory:":
            # Unlinked while open: the space is freed when the process ends, even by SIGKILL.
            os.unlink(self.path)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def __contains__(self, device_id: object) -> bool:
        row = self._db.execute("SELECT 1 FROM device WHERE id = ?", (device_id,)).fetchone()
        return row is not None

    def put(self, records: dict[str, bytes]) -> None:
        """Store (or replace) records."""
        if not records:
            return
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO device VALUES (?, ?)", list(records.items()))
        self._db.execute("COMMIT")
        self._n = self._db.execute("SELECT COUNT(*) FROM device").fetchone()[0]

    def get(self, device_ids: Sequence[str]) -> dict[str, bytes]:
        """The stored records of ``device_ids`` (absent ones are left out)."""
        out: dict[str, bytes] = {}
        for start in range(0, len(device_ids), 500):  # SQLite's bound on query parameters
            part = list(device_ids[start : start + 500])
            marks = ",".join("?" * len(part))
            rows = self._db.execute(f"SELECT id, record FROM device WHERE id IN ({marks})", part)
            out.update((str(d), bytes(r)) for d, r in rows)
        return out

    def pop(self, device_ids: Sequence[str]) -> dict[str, bytes]:
        """Remove and return the stored records of ``device_ids``."""
        out = self.get(device_ids)
        self.delete(out)
        return out

    def delete(self, device_ids: Iterable[str]) -> None:
        """Remove records (absent ones are ignored)."""
        ids = [(d,) for d in device_ids]
        if ids:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM device WHERE id = ?", ids)
            self._db.execute("COMMIT")
            self._n = self._db.execute("SELECT COUNT(*) FROM device").fetchone()[0]

    def close(self) -> None:
        """Close the store (its file's space is freed)."""
        self._db.close()
