"""In-memory storage: the `Storage` protocol with nothing on disk.

Used by unit tests and the deterministic simulation. It enforces the same
argument rules as the durable implementation (contiguous batches, in-order
snapshot chunks) so a runtime bug shows up in simulation first, and `load()`
hands out copies so a caller can never alias its internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from trioraft.core import Entry, HardState, SnapshotMeta
from trioraft.storage._checks import check_batch
from trioraft.storage._protocol import PersistedState

__all__ = ["MemoryStorage"]


@dataclass(slots=True)
class _Staging:
    meta: SnapshotMeta
    data: bytearray = field(default_factory=bytearray)


class MemoryStorage:
    """A `Storage` that keeps everything in process memory (lost on exit)."""

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot = SnapshotMeta()
        self._snapshot_data = b""
        # Contiguous, starting at self._snapshot.index + 1.
        self._entries: list[Entry] = []
        self._staging: _Staging | None = None
        self._closed = False

    # ---------------------------------------------------------------- helpers
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("storage is closed")

    def _last_index(self) -> int:
        return self._entries[-1].index if self._entries else self._snapshot.index

    def _compact(self, meta: SnapshotMeta, keep_entries_after: bool) -> None:
        if keep_entries_after:
            self._entries = [e for e in self._entries if e.index > meta.index]
        else:
            self._entries = []

    # --------------------------------------------------------------- protocol
    def load(self) -> PersistedState:
        self._check_open()
        return PersistedState(
            hard_state=self._hard_state,
            snapshot=self._snapshot,
            entries=list(self._entries),
        )

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        self._check_open()
        if entries:
            check_batch(entries, self._snapshot.index, self._last_index())
            first = entries[0].index
            del self._entries[first - self._snapshot.index - 1 :]
            self._entries.extend(entries)
        if hard_state is not None:
            self._hard_state = hard_state

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        self._check_open()
        if meta.index < self._snapshot.index:
            raise ValueError(
                f"snapshot at index {meta.index} is older than the stored one "
                f"at {self._snapshot.index}"
            )
        self._snapshot = meta
        self._snapshot_data = bytes(data)
        self._compact(meta, keep_entries_after=True)

    def load_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        self._check_open()
        if self._snapshot.index == 0:
            return None
        return self._snapshot, self._snapshot_data

    def snapshot_size(self) -> int:
        self._check_open()
        return len(self._snapshot_data)

    def read_snapshot_chunk(self, meta: SnapshotMeta, offset: int, size: int) -> bytes:
        self._check_open()
        if self._snapshot.index == 0 or meta != self._snapshot:
            raise KeyError(meta)
        if offset < 0 or size < 0:
            raise ValueError("offset and size must be >= 0")
        return self._snapshot_data[offset : offset + size]

    def write_incoming_chunk(self, meta: SnapshotMeta, offset: int, data: bytes) -> int:
        self._check_open()
        if offset == 0:
            self._staging = _Staging(meta)
        elif self._staging is None or self._staging.meta != meta:
            raise ValueError(f"chunk at offset {offset} for a transfer that was not started")
        elif offset != len(self._staging.data):
            raise ValueError(
                f"out-of-order snapshot chunk: offset {offset}, expected {len(self._staging.data)}"
            )
        self._staging.data += data
        return len(self._staging.data)

    def install_incoming(self, meta: SnapshotMeta, keep_entries_after: bool) -> bytes:
        self._check_open()
        if self._staging is None or self._staging.meta != meta:
            raise ValueError(f"no staged snapshot transfer for {meta}")
        if meta.index < self._snapshot.index:
            raise ValueError(
                f"incoming snapshot at index {meta.index} is older than the stored one "
                f"at {self._snapshot.index}"
            )
        data = bytes(self._staging.data)
        self._staging = None
        self._snapshot = meta
        self._snapshot_data = data
        self._compact(meta, keep_entries_after)
        return data

    def close(self) -> None:
        self._closed = True
        self._staging = None
