"""The storage boundary: what the runtime needs from stable storage.

Every method is *blocking* and is called from one dedicated worker thread at a
time (the runtime serialises them), never from the Trio event loop. A method
returns only once what it wrote is durable (fsync'd) -- the runtime acknowledges
votes, appends and client writes only after that, which is what makes the
core's "persist before you answer" rule hold. (`SnapshotReader.read` is the
exception: it only reads, from its own open file, and may run on any thread.)

Errors: a call whose arguments are out of range or would break an invariant
of the log (a batch leaving a gap, overwriting the snapshot, an older
snapshot, a term >= 2**63, an out-of-order chunk, a transfer that fails its
checksum) raises ValueError and changes nothing durable. Any other exception
from a write (OSError, sqlite3.Error: disk full, I/O error) is fatal: the
runtime must stop the node rather than retry, since what reached the disk is
then unknown.

The log after compaction (PLAN.md, "Snapshots and the log")::

    ... dropped ... | compacted | entries ............................. |
                    ^ LogPosition(index, term) of the last dropped entry
                                      ^ snapshot.index (newest snapshot)

`compacted.index <= snapshot.index`: only what a durable snapshot covers may
be dropped, and the entries between the two are the *catch-up tail* a lagging
follower can still be sent instead of a whole snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, Self

from trioraft.core import Configuration, Entry, HardState, SnapshotMeta

__all__ = [
    "Identity",
    "LogPosition",
    "PersistedState",
    "SnapshotReader",
    "SnapshotTransfer",
    "Storage",
    "StorageCorrupt",
]


class StorageCorrupt(Exception):
    """Stable storage is damaged.

    The message names the file and says what the operator can do; the node
    refuses to start rather than silently dropping data it may have
    acknowledged.
    """


@dataclass(frozen=True, slots=True)
class LogPosition:
    """An (index, term) pair: here, the last entry compaction dropped."""

    index: int = 0
    term: int = 0


@dataclass(slots=True)
class PersistedState:
    hard_state: HardState = field(default_factory=HardState)
    # The newest snapshot (index 0: none).
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    # The last entry compaction dropped (index 0: none). compacted.index <=
    # snapshot.index; if they are equal, the terms are equal too.
    compacted: LogPosition = field(default_factory=LogPosition)
    # Contiguous, starting at compacted.index + 1; when compacted.index <
    # snapshot.index they include the entry at snapshot.index (its term is
    # snapshot.term).
    entries: list[Entry] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        """Nothing Raft ever wrote: no term, vote, entry or snapshot."""
        return (
            self.hard_state == HardState()
            and not self.entries
            and self.snapshot.index == 0
            and self.compacted.index == 0
        )


@dataclass(frozen=True, slots=True)
class SnapshotTransfer:
    """Names one incoming snapshot transfer: the snapshot and its whole data.

    The sender takes `size` and `checksum` from its `SnapshotReader` and sends
    them with every chunk; the receiver stages each transfer separately and
    checks size and checksum of the whole staged file before it can be
    installed. `checksum` is the CRC32 (zlib) of all `size` bytes of data.
    """

    meta: SnapshotMeta
    size: int
    checksum: int


class SnapshotReader(Protocol):
    """One snapshot held open for reading, however many newer ones are saved.

    A reader keeps its snapshot alive until `close()` (the file stays open
    after a newer snapshot unlinks it), so a transfer in progress is never
    cut off by a new snapshot. Its user must close it.
    """

    @property
    def meta(self) -> SnapshotMeta: ...

    @property
    def size(self) -> int:
        """Length of the snapshot's data in bytes."""
        ...

    @property
    def checksum(self) -> int:
        """CRC32 of the whole data (what `SnapshotTransfer.checksum` carries)."""
        ...

    def transfer(self) -> SnapshotTransfer:
        """The descriptor a receiver stages this snapshot under."""
        ...

    def read(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes of data from `offset` (b"" at or past the end)."""
        ...

    def close(self) -> None:
        """Release the snapshot (idempotent); `read` then raises ValueError."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this data dir belongs to (issue 12): written once, never guessed.

    `cluster_id` and `member_id` may be "" while a new node has not yet
    bootstrapped or been admitted; once set, storage refuses to change them
    (a member id names one incarnation: a wiped node comes back under a new
    one, in a new data dir). `bootstrap_nonce` is chosen at first start.
    """

    cluster_id: str
    member_id: str
    name: str
    bootstrap_nonce: str


class Storage(Protocol):
    # True when `save_snapshot` and `compact` may run in a thread of their own
    # while the other methods are called: they do their long work (writing a
    # snapshot's file, dropping many entries) without blocking them, so the
    # log keeps being persisted meanwhile.
    concurrent_maintenance: bool

    # ------------------------------------------------------------ the log
    def load(self) -> PersistedState:
        """Everything persisted so far (called once, at start-up).

        Verifies what it reads; any damage raises StorageCorrupt (nothing is
        deleted then). Leftover staging and temp files are removed. The
        returned state is a copy the caller owns.
        """
        ...

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Durably store `hard_state` (if given) and `entries` in one batch.

        `entries` are contiguous and start after the newest snapshot; any
        stored entry with an index >= entries[0].index is discarded first
        (conflict truncation). One call is one fsync: the runtime batches a
        whole Ready into it (group commit).
        """
        ...

    def compact(self, index: int) -> None:
        """Drop the entries <= `index` (at most the newest snapshot's index).

        The compaction point only moves forward: an index at or below it is
        a no-op.
        """
        ...

    # ------------------------------------------------------- snapshots
    def save_snapshot(
        self, meta: SnapshotMeta, data: bytes | Sequence[bytes], compact_to: int = 0
    ) -> None:
        """Atomically store a snapshot taken locally; it becomes the newest.

        `data` is the snapshot's bytes, or a list of pieces that are written
        one after the other (a large snapshot is never joined into one copy).
        The log keeps every entry (compaction is its own step: `compact`,
        once the core names the compaction point), unless `compact_to` is
        given: then, in the same transaction, the entries <= compact_to go. A
        snapshot past the end of the log empties it. Finished incoming
        transfers now older than the newest snapshot are dropped.
        """
        ...

    def load_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        """The newest snapshot, or None."""
        ...

    def open_snapshot_reader(self, meta: SnapshotMeta | None = None) -> SnapshotReader:
        """A reader for the newest snapshot, which must be `meta` if given.

        `meta` is matched on (index, term). Raises KeyError if there is no
        snapshot or the newest one is another.
        """
        ...

    # ------------------------------------------------ incoming transfers
    def stage_chunk(self, transfer: SnapshotTransfer, offset: int, data: bytes) -> int:
        """Stage a chunk of `transfer`; return the bytes staged so far.

        Chunks arrive in order. Offset 0 (re)starts the transfer and abandons
        any other one still in progress (not a finished one). A transfer
        larger than the configured maximum, a chunk past the declared size, a
        gap, or a chunk for a transfer already finished raises ValueError.
        Staged bytes need not be durable.
        """
        ...

    def finish_transfer(self, transfer: SnapshotTransfer) -> bytes:
        """Check a fully staged transfer and return its data.

        Verifies the staged file's size and the CRC32 of all of it (read back
        from where it is staged) against the declared ones; on a mismatch the
        staging is removed and ValueError raised. A finished transfer stays
        staged, untouched, until `install_transfer` or `discard_transfer`;
        the caller checks the data decodes before it installs.
        """
        ...

    def discard_transfer(self, transfer: SnapshotTransfer) -> None:
        """Drop a staged transfer, finished or not (no-op if unknown)."""
        ...

    def install_transfer(self, transfer: SnapshotTransfer, keep_entries_after: bool) -> None:
        """Atomically make a finished transfer the newest snapshot.

        Compacts the log to the snapshot's index. With keep_entries_after the
        stored entries after it are kept if they follow it (the stored log
        holds the snapshot's index with its term); otherwise, or without
        keep_entries_after, the whole stored log is discarded. (The core may
        say keep for entries it has not handed to save() yet: they arrive
        with the same Ready's save(), after the install.) Finished
        transfers now older than the newest snapshot are dropped (they could
        never be installed). Raises ValueError (changing nothing) if
        `transfer` is not finished or is older than the newest snapshot.
        """
        ...

    # ------------------------------------------------------- identity
    def load_identity(self) -> Identity | None:
        """The data dir's identity, or None if it has none (empty or legacy)."""
        ...

    def save_identity(self, identity: Identity) -> None:
        """Durably (atomically) store the identity.

        Raises ValueError if a field is malformed or if it would change a
        cluster id, member id or bootstrap nonce that is already set.
        """
        ...

    def bootstrap(self, config: Configuration) -> None:
        """Durably write the bootstrap configuration: entry 1, term 1, CONFIG.

        One transaction: that entry and hard state (term 1, no vote, commit
        1). Requires an identity with a cluster id and a member id in
        `config`, and an empty log (ValueError otherwise). Idempotent: if the
        log already holds exactly this bootstrap, nothing changes.
        """
        ...

    def close(self) -> None: ...
