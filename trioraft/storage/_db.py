"""raft.db: the schema, its migrations and the verified reading of every row.

Tables (schema version 2)::

    hard_state  (id=0, term, vote, commit_index, crc)    one row
    snapshot    (id=0, idx, term)                        the newest snapshot file
    compaction  (id=0, idx, term, crc)                   the last dropped entry
    log         (idx PRIMARY KEY, term, kind, data, crc)  entries after compaction

Version 1 (before the catch-up tail) had no `compaction` table: compaction
always went to the snapshot, so the migration records the snapshot's (index,
term) as the compaction point. A database newer than this code is refused.

Every CRC32 is checked when read, and every value's type and range too:
SQLite columns are dynamically typed, so a damaged or edited row can hold a
string where an integer belongs. Any such row is StorageCorrupt, never a
crash and never silently dropped (see `read_log`).
"""

from __future__ import annotations

import sqlite3
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from trioraft.core import Entry, EntryKind, HardState, SnapshotMeta
from trioraft.storage._checks import MAX_INT, check_id
from trioraft.storage._files import corrupt
from trioraft.storage._protocol import LogPosition

__all__ = [
    "SCHEMA_VERSION",
    "check_log_shape",
    "compaction_crc",
    "hard_crc",
    "log_rows",
    "migrate",
    "read_compaction",
    "read_hard_state",
    "read_log",
    "read_snapshot_row",
    "row_crc",
]

SCHEMA_VERSION = 2

_TABLES = """
CREATE TABLE IF NOT EXISTS hard_state (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    term INTEGER NOT NULL,
    vote TEXT,
    commit_index INTEGER NOT NULL,
    crc INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    idx INTEGER NOT NULL,
    term INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
    idx INTEGER PRIMARY KEY,
    term INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    data BLOB NOT NULL,
    crc INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS compaction (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    idx INTEGER NOT NULL,
    term INTEGER NOT NULL,
    crc INTEGER NOT NULL
);
"""

_ROW_HEAD = struct.Struct(">QQI")
_PAIR = struct.Struct(">QQ")
_KINDS = frozenset(int(k) for k in EntryKind)


def row_crc(idx: int, term: int, kind: int, data: bytes) -> int:
    """The CRC32 stored with each log row, over (idx, term, kind, data)."""
    return zlib.crc32(data, zlib.crc32(_ROW_HEAD.pack(idx, term, kind)))


def log_rows(entries: Sequence[Entry]) -> list[tuple[int, int, int, bytes, int]]:
    """The rows to insert for `entries` (checked), CRCs included: `row_crc`, inlined."""
    pack, crc = _ROW_HEAD.pack, zlib.crc32
    return [
        (e.index, e.term, k, e.data, crc(e.data, crc(pack(e.index, e.term, k))))
        for e in entries
        for k in (int(e.kind),)
    ]


def hard_crc(term: int, vote: str | None, commit: int) -> int:
    v = b"\x00" if vote is None else b"\x01" + vote.encode()
    return zlib.crc32(v, zlib.crc32(_PAIR.pack(term, commit)))


def compaction_crc(idx: int, term: int) -> int:
    return zlib.crc32(b"compaction" + _PAIR.pack(idx, term))


def _is_int(v: object) -> bool:
    return type(v) is int and 0 <= v <= MAX_INT


def migrate(conn: sqlite3.Connection, path: Path, version: int) -> None:
    """Bring a database at schema `version` (0: new) to SCHEMA_VERSION, in one transaction."""
    if version > SCHEMA_VERSION:
        raise corrupt(
            path,
            f"schema version {version} is newer than this trioraft ({SCHEMA_VERSION}); "
            "run the newer trioraft",
        )
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # One statement at a time: executescript() would commit on its own.
        for statement in _TABLES.split(";"):
            if statement.strip():
                conn.execute(statement)
        if version == 1:
            # v1 compacted every entry a snapshot covered, in the same transaction.
            row = conn.execute("SELECT idx, term FROM snapshot WHERE id = 0").fetchone()
            if row is not None:
                idx, term = row
                if not (_is_int(idx) and _is_int(term)):
                    raise corrupt(path, "the snapshot row is damaged")
                conn.execute(
                    "INSERT OR REPLACE INTO compaction (id, idx, term, crc) VALUES (0, ?, ?, ?)",
                    (idx, term, compaction_crc(idx, term)),
                )
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def read_hard_state(conn: sqlite3.Connection, path: Path) -> HardState:
    row = conn.execute(
        "SELECT term, vote, commit_index, crc FROM hard_state WHERE id = 0"
    ).fetchone()
    if row is None:
        return HardState()
    term, vote, commit, crc = row
    ok = _is_int(term) and _is_int(commit) and type(crc) is int
    if ok and vote is not None:
        try:
            check_id("vote", vote, printable=False)
        except ValueError:
            ok = False
    if not ok or hard_crc(term, vote, commit) != crc:
        raise corrupt(path, "hard state (term, vote, commit) checksum mismatch")
    return HardState(term=term, vote=vote, commit=commit)


def read_snapshot_row(conn: sqlite3.Connection, path: Path) -> tuple[int, int] | None:
    row = conn.execute("SELECT idx, term FROM snapshot WHERE id = 0").fetchone()
    if row is None:
        return None
    idx, term = row
    if not (_is_int(idx) and _is_int(term)) or idx == 0:
        raise corrupt(path, "the snapshot record is damaged")
    return idx, term


def read_compaction(conn: sqlite3.Connection, path: Path) -> LogPosition:
    row = conn.execute("SELECT idx, term, crc FROM compaction WHERE id = 0").fetchone()
    if row is None:
        return LogPosition()
    idx, term, crc = row
    if not (_is_int(idx) and _is_int(term)) or compaction_crc(idx, term) != crc:
        raise corrupt(path, "the compaction record (last dropped entry) checksum mismatch")
    return LogPosition(idx, term)


def read_log(conn: sqlite3.Connection, path: Path, after: int) -> list[Entry]:
    """Every entry after `after`, verified: contiguous, typed, in range, CRC intact.

    A row whose CRC fails is corruption wherever it is, the last row
    included. The suspicion of issue 11 holds: SQLite commits are atomic
    (WAL with synchronous=FULL), so a row is either in a committed
    transaction -- whose save() returned, after which the node may have
    acknowledged it to a leader that counted it towards a commit -- or not
    in the database at all. A torn write of the last transaction is dropped
    by SQLite itself (its WAL frames are checksummed) before we see it. So a
    bad row is never "a torn tail we may drop": dropping it could lose a
    committed entry. The node refuses to start.
    """
    entries: list[Entry] = []
    expected = after + 1
    rows = conn.execute(
        "SELECT idx, term, kind, data, crc FROM log WHERE idx > ? ORDER BY idx", (after,)
    )
    for idx, term, kind, data, crc in rows:
        if idx != expected:
            raise corrupt(path, f"the log has a gap: entry {expected} is missing (next is {idx})")
        expected += 1
        if not (
            _is_int(term)
            and kind in _KINDS
            and type(kind) is int
            and isinstance(data, bytes)
            and row_crc(idx, term, kind, data) == crc
        ):
            raise corrupt(
                path,
                f"log entry {idx} fails its checksum. SQLite commits are atomic, so this "
                "is damage to an entry the node may have acknowledged, not a torn write",
            )
        entries.append(Entry(idx, term, EntryKind(kind), data))
    return entries


def check_log_shape(
    path: Path, snapshot: SnapshotMeta, compacted: LogPosition, entries: list[Entry]
) -> None:
    """Compaction never passes the snapshot, and the log agrees with both."""
    if compacted.index > snapshot.index:
        raise corrupt(
            path,
            f"entries up to {compacted.index} were dropped but the snapshot covers "
            f"only up to {snapshot.index}",
        )
    if compacted.index == snapshot.index and compacted.term != snapshot.term:
        raise corrupt(path, "the compaction record and the snapshot disagree")
    if compacted.index < snapshot.index:
        last = entries[-1].index if entries else compacted.index
        held = last >= snapshot.index
        if not held or entries[snapshot.index - compacted.index - 1].term != snapshot.term:
            raise corrupt(
                path,
                f"the log does not hold the snapshot's entry {snapshot.index} "
                f"(term {snapshot.term}) although it was not compacted",
            )
