"""Stable storage for a Raft node: the protocol and its implementations.

`MemoryStorage` keeps everything in memory (tests, simulation);
`SqliteStorage` / `open_storage` keep it durably in a data directory.
See docs/storage.md for the layout, the formats and what happens on damage.
"""

from typing import TYPE_CHECKING

from trioraft.storage._checks import MAX_INT
from trioraft.storage._files import DataDirLocked
from trioraft.storage._identity import (
    LEGACY_CLUSTER_ID,
    DataDirKind,
    classify,
    legacy_identity,
    new_nonce,
    read_identity,
)
from trioraft.storage._memory import DEFAULT_MAX_SNAPSHOT_BYTES, MemoryStorage
from trioraft.storage._protocol import (
    Identity,
    LogPosition,
    PersistedState,
    SnapshotReader,
    SnapshotTransfer,
    Storage,
    StorageCorrupt,
)
from trioraft.storage._sqlite import SqliteStorage, open_storage
from trioraft.storage._transfers import MAX_FINISHED

__all__ = [
    "DEFAULT_MAX_SNAPSHOT_BYTES",
    "LEGACY_CLUSTER_ID",
    "MAX_FINISHED",
    "MAX_INT",
    "DataDirKind",
    "DataDirLocked",
    "Identity",
    "LogPosition",
    "MemoryStorage",
    "PersistedState",
    "SnapshotReader",
    "SnapshotTransfer",
    "SqliteStorage",
    "Storage",
    "StorageCorrupt",
    "classify",
    "legacy_identity",
    "new_nonce",
    "open_storage",
    "read_identity",
]

if TYPE_CHECKING:
    # Static proof that both implementations satisfy the protocols.
    from trioraft.storage._files import FileSnapshotReader
    from trioraft.storage._memory import _MemoryReader

    def _conforms(memory: MemoryStorage, sqlite: SqliteStorage) -> tuple[Storage, Storage]:
        return memory, sqlite

    def _readers(a: FileSnapshotReader, b: _MemoryReader) -> tuple[SnapshotReader, SnapshotReader]:
        return a, b
