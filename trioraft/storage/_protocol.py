"""The storage boundary: what the runtime needs from stable storage.

Every method is *blocking* and is called from one dedicated worker thread at a
time (the runtime serialises them), never from the Trio event loop. A method
returns only once what it wrote is durable (fsync'd) -- the runtime acknowledges
votes, appends and client writes only after that, which is what makes the
core's "persist before you answer" rule hold.

Errors: a call that would break an invariant of the log (a batch leaving a
gap, overwriting the snapshot, an older snapshot, an out-of-order chunk)
raises ValueError and changes nothing. Any other exception from a write
(OSError, sqlite3.Error: disk full, I/O error) is fatal: the runtime must stop
the node rather than retry, since what reached the disk is then unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from trioraft.core import Entry, HardState, SnapshotMeta

__all__ = ["PersistedState", "Storage", "StorageCorrupt"]


class StorageCorrupt(Exception):
    """Stable storage is damaged somewhere other than a torn tail.

    The message names the file and says what the operator can do; the node
    refuses to start rather than silently dropping committed data.
    """


@dataclass(slots=True)
class PersistedState:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)  # index 0: none
    # Contiguous, starting at snapshot.index + 1.
    entries: list[Entry] = field(default_factory=list)


class Storage(Protocol):
    def load(self) -> PersistedState:
        """Everything persisted so far (called once, at start-up).

        Verifies what it reads: a torn tail of the log is discarded (with a
        warning); any other damage raises StorageCorrupt. The returned state is
        a copy the caller owns.
        """
        ...

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Durably store `hard_state` (if given) and `entries` in one batch.

        `entries` are contiguous; any stored entry with an index >=
        entries[0].index is discarded first (conflict truncation). One call is
        one fsync: the runtime batches a whole Ready into it (group commit).
        """
        ...

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Atomically store a snapshot taken locally, then drop entries <= meta.index."""
        ...

    def load_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        """The newest snapshot, or None."""
        ...

    def snapshot_size(self) -> int:
        """Size in bytes of the newest snapshot's data (0 if none)."""
        ...

    def read_snapshot_chunk(self, meta: SnapshotMeta, offset: int, size: int) -> bytes:
        """Up to `size` bytes of the snapshot `meta` from `offset` (b"" at the end).

        Raises KeyError if that snapshot is no longer the newest one.
        """
        ...

    def write_incoming_chunk(self, meta: SnapshotMeta, offset: int, data: bytes) -> int:
        """Stage a chunk of a snapshot arriving from the leader.

        Chunks must arrive in order; a chunk at offset 0 restarts the transfer
        (and abandons any other one in progress); any other offset than the
        next expected one raises ValueError. Staged bytes need not be durable
        until install_incoming. Returns the number of bytes staged so far (the
        next expected offset).
        """
        ...

    def install_incoming(self, meta: SnapshotMeta, keep_entries_after: bool) -> bytes:
        """Atomically make the staged snapshot the newest one and return its data.

        If keep_entries_after, entries after meta.index are kept (the log
        matched); otherwise the whole log is discarded. Raises ValueError if
        no transfer of `meta` is staged.
        """
        ...

    def close(self) -> None: ...
