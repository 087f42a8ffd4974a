"""Durable storage: the Raft log and hard state in SQLite, snapshots as files.

Data directory layout (see docs/storage.md)::

    LOCK                          flock'd for the life of the process
    raft.db, raft.db-wal, -shm    SQLite (WAL mode): hard state, log, snapshot record
    snapshots/snap-<term>-<index>.bin    the newest snapshot (header + data)
    snapshots/*.tmp, incoming-*.part     in-flight writes; removed by load()

Durability: every mutating call is one SQLite transaction, committed with
``synchronous=FULL`` (one fsync of the WAL), so a `save()` of a whole Ready is
one fsync (group commit). Snapshot files are written to a temp name, fsync'd,
renamed and the directory fsync'd *before* the database records them; the
database is the single source of truth for which snapshot is current, so a
crash at any point leaves a consistent pair.

Every log row carries a CRC32 of (idx, term, kind, data). `load()` verifies
them: damage confined to the last rows (a torn tail) is discarded with a
warning; anything else raises StorageCorrupt naming the file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from trioraft.core import Entry, EntryKind, HardState, SnapshotMeta
from trioraft.storage._checks import check_batch
from trioraft.storage._files import (
    DataDirLock,
    SnapFile,
    corrupt,
    encode_header,
    fsync_dir,
    incoming_name,
    open_snapshot,
    parse_snapshot_name,
    snapshot_name,
    verify_snapshot,
    write_file_atomically,
)
from trioraft.storage._protocol import PersistedState

__all__ = ["SqliteStorage", "open_storage"]

log = logging.getLogger("trioraft.storage")

DB_NAME = "raft.db"
SNAP_DIR = "snapshots"
SCHEMA_VERSION = 1

_SCHEMA = """
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
"""

_ROW_HEAD = struct.Struct(">QQI")
_HARD = struct.Struct(">QQ")
_KINDS = frozenset(int(k) for k in EntryKind)


def row_crc(idx: int, term: int, kind: int, data: bytes) -> int:
    """The CRC32 stored with each log row, over (idx, term, kind, data)."""
    return zlib.crc32(data, zlib.crc32(_ROW_HEAD.pack(idx, term, kind)))


def _hard_crc(term: int, vote: str | None, commit: int) -> int:
    v = b"\x00" if vote is None else b"\x01" + vote.encode()
    return zlib.crc32(v, zlib.crc32(_HARD.pack(term, commit)))


@dataclass(slots=True)
class _Staging:
    """An incoming snapshot being written to `path` (header first, patched at install)."""

    meta: SnapshotMeta
    path: Path
    file: BinaryIO
    header_len: int
    staged: int = 0  # data bytes written so far: the next expected offset
    crc: int = 0  # running CRC32 of the staged data


class SqliteStorage:
    """The durable `Storage`: SQLite for log and hard state, files for snapshots.

    Opening takes an exclusive lock on the data directory (DataDirLocked if
    another node holds it) and may raise StorageCorrupt if raft.db cannot be
    read. `load()` then verifies everything and repairs a torn tail.
    With ``fsync=False`` nothing is fsync'd: fast, and only for tests.
    """

    def __init__(self, path_dir: Path, fsync: bool = True) -> None:
        self.path = Path(path_dir)
        self.fsync = fsync
        self._snap_dir = self.path / SNAP_DIR
        self._db_path = self.path / DB_NAME
        self._snap_dir.mkdir(parents=True, exist_ok=True)
        self._mutex = threading.RLock()
        self._staging: _Staging | None = None
        self._snap: SnapFile | None = None
        self._snap_known = False  # whether self._snap reflects the database
        self._lock: DataDirLock | None = DataDirLock(self.path)
        try:
            self._conn: sqlite3.Connection | None = self._open_db()
        except BaseException:
            self._lock.release()
            raise

    # ------------------------------------------------------------ opening
    def _open_db(self) -> sqlite3.Connection:
        fresh = not self._db_path.exists()
        if fresh and any(parse_snapshot_name(p.name) for p in self._snap_dir.iterdir()):
            raise corrupt(self._db_path, "raft.db is missing but snapshot files exist")
        try:
            conn = sqlite3.connect(self._db_path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise corrupt(self._db_path, f"cannot open the database ({exc})") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise corrupt(self._db_path, f"cannot switch the database to WAL ({mode})")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'OFF'}")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise corrupt(
                    self._db_path,
                    f"schema version {version} is newer than this trioraft ({SCHEMA_VERSION})",
                )
            if version < SCHEMA_VERSION:
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;"
                )
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise corrupt(self._db_path, f"unreadable database ({exc})") from exc
        except BaseException:
            conn.close()
            raise
        if fresh and self.fsync:
            fsync_dir(self.path)  # make the new files' directory entries durable
        return conn

    # ------------------------------------------------------------ helpers
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError("storage is closed")
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction; COMMIT is the fsync (synchronous=FULL)."""
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _snapshot_index(self, conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT idx FROM snapshot WHERE id = 0").fetchone()
        return int(row[0]) if row else 0

    def _last_index(self, conn: sqlite3.Connection, snapshot_index: int) -> int:
        (last,) = conn.execute("SELECT max(idx) FROM log").fetchone()
        return snapshot_index if last is None else max(int(last), snapshot_index)

    def _current_snapshot(self) -> SnapFile | None:
        """The snapshot the database records, header-checked (cached)."""
        if not self._snap_known:
            row = self._db().execute("SELECT idx, term FROM snapshot WHERE id = 0").fetchone()
            if row is None:
                self._snap = None
            else:
                path = self._snap_dir / f"snap-{row[1]}-{row[0]}.bin"
                if not path.exists():
                    raise corrupt(path, "the snapshot recorded in raft.db is missing")
                f, snap = open_snapshot(path)
                f.close()
                self._snap = snap
            self._snap_known = True
        return self._snap

    def _reset_staging(self) -> None:
        st, self._staging = self._staging, None
        if st is not None:
            st.file.close()
            st.path.unlink(missing_ok=True)

    def _remove_snapshots_except(self, keep: Path | None) -> None:
        for p in self._snap_dir.iterdir():
            if parse_snapshot_name(p.name) and p != keep:
                log.info("removing superseded snapshot %s", p)
                p.unlink(missing_ok=True)

    def _record_snapshot(self, snap: SnapFile, keep_entries_after: bool) -> None:
        """Make the (durable) snapshot file current and compact the log, in one fsync."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO snapshot (id, idx, term) VALUES (0, ?, ?)",
                (snap.meta.index, snap.meta.term),
            )
            if keep_entries_after:
                conn.execute("DELETE FROM log WHERE idx <= ?", (snap.meta.index,))
            else:
                conn.execute("DELETE FROM log")
        self._snap, self._snap_known = snap, True
        # Only now that the database points at the new file may older ones go.
        self._remove_snapshots_except(snap.path)

    def _check_not_older(self, meta: SnapshotMeta) -> None:
        current = self._snapshot_index(self._db())
        if meta.index < current:
            raise ValueError(
                f"snapshot at index {meta.index} is older than the stored one at {current}"
            )

    # ------------------------------------------------------------ recovery
    def load(self) -> PersistedState:
        """Verify and repair the data directory, then return everything in it."""
        with self._mutex:
            self._reset_staging()
            try:
                (check,) = self._db().execute("PRAGMA quick_check").fetchone()
                if check != "ok":
                    raise corrupt(self._db_path, f"SQLite integrity check failed: {check}")
                hard_state = self._load_hard_state()
                snapshot = self._recover_snapshot()
                entries = self._recover_log(snapshot.index)
                # Only once everything verified (StorageCorrupt deletes nothing):
                self._remove_leftovers()
            except sqlite3.DatabaseError as exc:
                raise corrupt(self._db_path, f"unreadable database ({exc})") from exc
            last = entries[-1].index if entries else snapshot.index
            if hard_state.commit > last:
                # Only after a torn tail was dropped: the leader re-sends those entries.
                log.warning(
                    "commit index %d is past the last stored entry %d; using %d",
                    hard_state.commit,
                    last,
                    last,
                )
                hard_state = HardState(hard_state.term, hard_state.vote, last)
            return PersistedState(hard_state=hard_state, snapshot=snapshot, entries=entries)

    def _load_hard_state(self) -> HardState:
        row = (
            self._db()
            .execute("SELECT term, vote, commit_index, crc FROM hard_state WHERE id = 0")
            .fetchone()
        )
        if row is None:
            return HardState()
        term, vote, commit, crc = row
        if _hard_crc(term, vote, commit) != crc:
            raise corrupt(self._db_path, "hard state (term, vote, commit) checksum mismatch")
        return HardState(term=term, vote=vote, commit=commit)

    def _recover_snapshot(self) -> SnapshotMeta:
        self._snap_known = False
        row = self._db().execute("SELECT idx, term FROM snapshot WHERE id = 0").fetchone()
        if row is not None:
            path = self._snap_dir / f"snap-{row[1]}-{row[0]}.bin"
            if not path.exists():
                raise corrupt(path, "the snapshot recorded in raft.db is missing")
            # The log rows an older snapshot would need were compacted in the same
            # transaction that recorded this one, so there is no safe fallback.
            snap = verify_snapshot(path)
            if (snap.meta.index, snap.meta.term) != (row[0], row[1]):
                raise corrupt(path, f"header says index {snap.meta.index} term {snap.meta.term}")
            self._snap = snap
        else:
            self._snap = None
        self._snap_known = True
        return self._snap.meta if self._snap else SnapshotMeta()

    def _remove_leftovers(self) -> None:
        """Clear interrupted writes and snapshot files the database does not name."""
        for p in self._snap_dir.iterdir():
            if p.name.endswith((".tmp", ".part")):
                log.info("removing interrupted write %s", p)
                p.unlink(missing_ok=True)
        self._remove_snapshots_except(self._snap.path if self._snap else None)

    def _recover_log(self, snapshot_index: int) -> list[Entry]:
        conn = self._db()
        expected = snapshot_index + 1
        entries: list[Entry] = []
        bad_from: int | None = None
        rows = conn.execute(
            "SELECT idx, term, kind, data, crc FROM log WHERE idx > ? ORDER BY idx",
            (snapshot_index,),
        )
        for idx, term, kind, data, crc in rows:
            if idx != expected:
                raise corrupt(
                    self._db_path,
                    f"the log has a gap: entry {expected} is missing (next is {idx})",
                )
            expected += 1
            ok = (
                isinstance(data, bytes) and kind in _KINDS and row_crc(idx, term, kind, data) == crc
            )
            if ok and bad_from is None:
                entries.append(Entry(idx, term, EntryKind(kind), data))
            elif ok:
                raise corrupt(
                    self._db_path,
                    f"log entry {bad_from} fails its checksum but later entries "
                    f"(up to {idx}) are intact, so this is not a torn write",
                )
            elif bad_from is None:
                bad_from = idx
        # Rows a snapshot covers are garbage (normally none: compaction is atomic).
        (covered,) = conn.execute(
            "SELECT count(*) FROM log WHERE idx <= ?", (snapshot_index,)
        ).fetchone()
        if covered or bad_from is not None:
            with self._tx() as tx:
                tx.execute("DELETE FROM log WHERE idx <= ?", (snapshot_index,))
                if bad_from is not None:
                    log.warning(
                        "%s: discarding torn log tail, entries %d..%d fail their checksum",
                        self._db_path,
                        bad_from,
                        expected - 1,
                    )
                    tx.execute("DELETE FROM log WHERE idx >= ?", (bad_from,))
        return entries

    # ------------------------------------------------------------ protocol
    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        if hard_state is None and not entries:
            return
        with self._mutex, self._tx() as conn:
            if entries:
                snapshot_index = self._snapshot_index(conn)
                check_batch(entries, snapshot_index, self._last_index(conn, snapshot_index))
                conn.execute("DELETE FROM log WHERE idx >= ?", (entries[0].index,))
                conn.executemany(
                    "INSERT INTO log (idx, term, kind, data, crc) VALUES (?, ?, ?, ?, ?)",
                    [
                        (
                            e.index,
                            e.term,
                            int(e.kind),
                            e.data,
                            row_crc(e.index, e.term, int(e.kind), e.data),
                        )
                        for e in entries
                    ],
                )
            if hard_state is not None:
                hs = hard_state
                conn.execute(
                    "INSERT OR REPLACE INTO hard_state (id, term, vote, commit_index, crc) "
                    "VALUES (0, ?, ?, ?, ?)",
                    (hs.term, hs.vote, hs.commit, _hard_crc(hs.term, hs.vote, hs.commit)),
                )

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        with self._mutex:
            self._check_not_older(meta)
            crc = zlib.crc32(data)
            header = encode_header(meta, len(data), crc)
            final = self._snap_dir / snapshot_name(meta)
            write_file_atomically(final, [header, data], self.fsync)
            self._record_snapshot(
                SnapFile(final, meta, len(header), len(data), crc), keep_entries_after=True
            )

    def load_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        with self._mutex:
            snap = self._current_snapshot()
            if snap is None:
                return None
            with snap.path.open("rb") as f:
                f.seek(snap.data_offset)
                data = f.read(snap.data_len)
            if len(data) != snap.data_len or zlib.crc32(data) != snap.data_crc:
                raise corrupt(snap.path, "snapshot data checksum mismatch")
            return snap.meta, data

    def snapshot_size(self) -> int:
        with self._mutex:
            snap = self._current_snapshot()
            return snap.data_len if snap else 0

    def read_snapshot_chunk(self, meta: SnapshotMeta, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise ValueError("offset and size must be >= 0")
        with self._mutex:
            snap = self._current_snapshot()
            if snap is None or snap.meta != meta:
                raise KeyError(meta)
            n = max(0, min(size, snap.data_len - offset))
            if n == 0:
                return b""
            with snap.path.open("rb") as f:
                f.seek(snap.data_offset + offset)
                return f.read(n)

    def write_incoming_chunk(self, meta: SnapshotMeta, offset: int, data: bytes) -> int:
        with self._mutex:
            self._db()  # refuse after close
            st = self._staging
            if offset == 0:
                # A (re)start: drop whatever transfer was in progress.
                self._reset_staging()
                path = self._snap_dir / incoming_name(meta)
                f = path.open("wb")
                # Placeholder header, same length as the final one; patched at install.
                header = encode_header(meta, 0, 0)
                f.write(header)
                st = self._staging = _Staging(meta, path, f, len(header))
            elif st is None or st.meta != meta:
                raise ValueError(f"chunk at offset {offset} for a transfer that was not started")
            elif offset != st.staged:
                raise ValueError(
                    f"out-of-order snapshot chunk: offset {offset}, expected {st.staged}"
                )
            st.file.write(data)
            st.staged += len(data)
            st.crc = zlib.crc32(data, st.crc)
            return st.staged

    def install_incoming(self, meta: SnapshotMeta, keep_entries_after: bool) -> bytes:
        with self._mutex:
            st = self._staging
            if st is None or st.meta != meta:
                raise ValueError(f"no staged snapshot transfer for {meta}")
            self._check_not_older(meta)
            header = encode_header(meta, st.staged, st.crc)
            assert len(header) == st.header_len, "header length depends only on meta"
            st.file.seek(0)
            st.file.write(header)
            st.file.flush()
            size = os.fstat(st.file.fileno()).st_size
            if size != st.header_len + st.staged:
                self._reset_staging()
                raise ValueError(
                    f"staged snapshot {st.path} is {size} bytes, expected "
                    f"{st.header_len + st.staged}; restart the transfer"
                )
            if self.fsync:
                os.fsync(st.file.fileno())
            st.file.close()
            self._staging = None
            final = self._snap_dir / snapshot_name(meta)
            os.replace(st.path, final)
            if self.fsync:
                fsync_dir(self._snap_dir)
            snap = SnapFile(final, meta, st.header_len, st.staged, st.crc)
            self._record_snapshot(snap, keep_entries_after)
            with final.open("rb") as f:
                f.seek(snap.data_offset)
                data = f.read(snap.data_len)
            if zlib.crc32(data) != snap.data_crc:
                raise corrupt(final, "snapshot data checksum mismatch right after install")
            return data

    def close(self) -> None:
        with self._mutex:
            self._reset_staging()
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.release()

    def __enter__(self) -> SqliteStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_storage(data_dir: Path, fsync: bool = True) -> SqliteStorage:
    """Create `data_dir` if needed and open the durable storage in it."""
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    return SqliteStorage(Path(data_dir), fsync=fsync)
