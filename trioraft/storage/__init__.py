"""Stable storage for a Raft node: the protocol and its implementations.

`MemoryStorage` keeps everything in memory (tests, simulation);
`SqliteStorage` / `open_storage` keep it durably in a data directory.
"""

from typing import TYPE_CHECKING

from trioraft.storage._files import DataDirLocked
from trioraft.storage._memory import MemoryStorage
from trioraft.storage._protocol import PersistedState, Storage, StorageCorrupt
from trioraft.storage._sqlite import SqliteStorage, open_storage

__all__ = [
    "DataDirLocked",
    "MemoryStorage",
    "PersistedState",
    "SqliteStorage",
    "Storage",
    "StorageCorrupt",
    "open_storage",
]

if TYPE_CHECKING:
    # Static proof that both implementations satisfy the protocol.
    def _conforms(memory: MemoryStorage, sqlite: SqliteStorage) -> tuple[Storage, Storage]:
        return memory, sqlite
