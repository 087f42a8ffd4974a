"""In-memory storage: the `Storage` protocol with nothing on disk.

Used by unit tests and the deterministic simulation. It enforces the same
argument rules as the durable implementation (ranges, contiguous batches,
compaction bounds, the staging rules of `_transfers`) so a runtime bug shows
up in simulation first, and `load()` hands out copies so a caller can never
alias its internals.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from trioraft.core import Configuration, Entry, HardState, SnapshotMeta
from trioraft.storage._checks import (
    bootstrap_entry,
    check_batch,
    check_hard_state,
    check_identity_change,
    check_index,
    check_snapshot,
    snapshot_parts,
)
from trioraft.storage._protocol import (
    Identity,
    LogPosition,
    PersistedState,
    SnapshotTransfer,
)
from trioraft.storage._transfers import Transfers

__all__ = ["DEFAULT_MAX_SNAPSHOT_BYTES", "MemoryStorage"]

DEFAULT_MAX_SNAPSHOT_BYTES = 2 << 30  # 2 GiB: the largest incoming snapshot by default


class _Buffer:
    """The staging of one transfer in memory."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def seal(self, size: int, checksum: int) -> bytes:
        return bytes(self.data)

    def discard(self) -> None:
        self.data = bytearray()


class _MemoryReader:
    def __init__(self, meta: SnapshotMeta, data: bytes, crc: int) -> None:
        self._meta = meta
        self._data: bytes | None = data  # a reference: a newer snapshot never changes it
        self._crc = crc

    @property
    def meta(self) -> SnapshotMeta:
        return self._meta

    @property
    def size(self) -> int:
        return len(self._data) if self._data is not None else 0

    @property
    def checksum(self) -> int:
        return self._crc

    def transfer(self) -> SnapshotTransfer:
        return SnapshotTransfer(self._meta, self.size, self._crc)

    def read(self, offset: int, size: int) -> bytes:
        check_index("offset", offset)
        check_index("size", size)
        if self._data is None:
            raise ValueError("snapshot reader is closed")
        return self._data[offset : offset + size]

    def close(self) -> None:
        self._data = None

    def __enter__(self) -> _MemoryReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MemoryStorage:
    """A `Storage` that keeps everything in process memory (lost on exit)."""

    def __init__(self, max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES) -> None:
        self._hard_state = HardState()
        self._snapshot = SnapshotMeta()
        self._snapshot_data = b""
        self._snapshot_crc = 0
        self._compacted = LogPosition()
        # Contiguous, starting at self._compacted.index + 1.
        self._entries: list[Entry] = []
        self._transfers: Transfers[_Buffer] = Transfers(
            max_snapshot_bytes, lambda meta: _Buffer()
        )
        self._identity: Identity | None = None
        self._closed = False

    # ---------------------------------------------------------------- helpers
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("storage is closed")

    def _last_index(self) -> int:
        return self._entries[-1].index if self._entries else self._compacted.index

    def _term_at(self, index: int) -> int | None:
        if index == self._compacted.index:
            return self._compacted.term
        if self._compacted.index < index <= self._last_index():
            return self._entries[index - self._compacted.index - 1].term
        return None

    def _check_not_older(self, meta: SnapshotMeta) -> None:
        if meta.index < self._snapshot.index:
            raise ValueError(
                f"snapshot at index {meta.index} is older than the stored one "
                f"at {self._snapshot.index}"
            )

    def _drop_through(self, index: int) -> None:
        """Drop entries <= index; the compaction point becomes `index`."""
        term = self._term_at(index)
        assert term is not None, "callers compact only to an index the log holds"
        del self._entries[: index - self._compacted.index]
        self._compacted = LogPosition(index, term)

    def _set_snapshot(self, meta: SnapshotMeta, data: bytes, keep_entries_after: bool) -> None:
        self._snapshot = meta
        self._snapshot_data = data
        self._snapshot_crc = zlib.crc32(data)
        # Keep the entries after it only if they follow it (see SqliteStorage).
        if keep_entries_after and self._term_at(meta.index) == meta.term:
            self._drop_through(meta.index)
        else:
            self._entries = []
            self._compacted = LogPosition(meta.index, meta.term)

    # --------------------------------------------------------------- the log
    def load(self) -> PersistedState:
        self._check_open()
        self._transfers.clear()
        return PersistedState(
            hard_state=self._hard_state,
            snapshot=self._snapshot,
            compacted=self._compacted,
            entries=list(self._entries),
        )

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        self._check_open()
        if hard_state is not None:
            check_hard_state(hard_state)
        if entries:
            check_batch(entries, self._snapshot.index, self._last_index())
            first = entries[0].index
            del self._entries[first - self._compacted.index - 1 :]
            self._entries.extend(entries)
        if hard_state is not None:
            self._hard_state = hard_state

    def compact(self, index: int) -> None:
        self._check_open()
        check_index("compaction index", index)
        if index <= self._compacted.index:
            return
        if index > self._snapshot.index:
            raise ValueError(
                f"cannot compact to {index}: the newest snapshot covers only up to "
                f"{self._snapshot.index}"
            )
        self._drop_through(index)

    # ------------------------------------------------------------- snapshots
    concurrent_maintenance = False  # one call at a time (no lock here)

    def save_snapshot(
        self, meta: SnapshotMeta, data: bytes | Sequence[bytes], compact_to: int = 0
    ) -> None:
        self._check_open()
        check_snapshot(meta)
        parts = snapshot_parts(data)
        check_index("compaction index", compact_to)
        if compact_to > meta.index:
            raise ValueError(f"cannot compact to {compact_to}, past the snapshot at {meta.index}")
        self._check_not_older(meta)
        term = self._term_at(meta.index)
        if term is not None and term != meta.term:
            raise ValueError(
                f"snapshot at index {meta.index} has term {meta.term}, the log has {term}"
            )
        self._snapshot = meta
        self._snapshot_data = b"".join(parts)  # memory keeps one copy anyway
        self._snapshot_crc = zlib.crc32(self._snapshot_data)
        if term is None and meta.index > self._last_index():
            # Past the end of the log: nothing here can follow it.
            self._entries = []
            self._compacted = LogPosition(meta.index, meta.term)
        elif compact_to > self._compacted.index:
            self._drop_through(compact_to)
        self._transfers.prune(meta.index)

    def load_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        self._check_open()
        if self._snapshot.index == 0:
            return None
        return self._snapshot, self._snapshot_data

    def open_snapshot_reader(self, meta: SnapshotMeta | None = None) -> _MemoryReader:
        self._check_open()
        s = self._snapshot
        if s.index == 0 or (meta is not None and (meta.index, meta.term) != (s.index, s.term)):
            raise KeyError(meta)
        return _MemoryReader(s, self._snapshot_data, self._snapshot_crc)

    # ---------------------------------------------------- incoming transfers
    def stage_chunk(self, transfer: SnapshotTransfer, offset: int, data: bytes) -> int:
        self._check_open()
        return self._transfers.chunk(transfer, offset, data)

    def finish_transfer(self, transfer: SnapshotTransfer) -> bytes:
        self._check_open()
        return self._transfers.finish(transfer)

    def discard_transfer(self, transfer: SnapshotTransfer) -> None:
        self._check_open()
        self._transfers.discard(transfer)

    def install_transfer(self, transfer: SnapshotTransfer, keep_entries_after: bool) -> None:
        self._check_open()
        staged = self._transfers.finished_staging(transfer)
        self._check_not_older(transfer.meta)
        self._set_snapshot(transfer.meta, bytes(staged.data), keep_entries_after)
        self._transfers.forget(transfer)
        self._transfers.prune(transfer.meta.index)

    # -------------------------------------------------------------- identity
    def load_identity(self) -> Identity | None:
        self._check_open()
        return self._identity

    def save_identity(self, identity: Identity) -> None:
        self._check_open()
        check_identity_change(self._identity, identity)
        self._identity = identity

    def bootstrap(self, config: Configuration) -> None:
        self._check_open()
        entry = bootstrap_entry(self._identity, config)
        if self._entries[:1] == [entry] and self._compacted.index == 0:
            return  # already written: nothing to do
        if self._entries or self._snapshot.index or self._compacted.index:
            raise ValueError("bootstrap needs an empty log")
        self.save(HardState(term=1, vote=None, commit=1), [entry])

    def close(self) -> None:
        self._closed = True
        self._transfers.clear()
