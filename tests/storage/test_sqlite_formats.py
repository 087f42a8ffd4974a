"""SqliteStorage: old data dirs keep loading; damaged or forged records are StorageCorrupt.

A damaged record must end in a clear refusal naming the file, never in an
exception from deeper down (TypeError, OverflowError, struct.error) and never
in silently dropped data.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import zlib
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.storage.test_sqlite_storage import entries, populate, sql
from trioraft.core import Configuration, HardState, Member, SnapshotMeta
from trioraft.storage import (
    DataDirKind,
    LogPosition,
    SqliteStorage,
    StorageCorrupt,
    classify,
    open_storage,
)
from trioraft.storage._db import row_crc
from trioraft.storage._files import open_snapshot

META = SnapshotMeta(index=6, term=2, config=Configuration.of_voters({"n1", "n2", "n3"}))

V1_SCHEMA = """
CREATE TABLE hard_state (id INTEGER PRIMARY KEY CHECK (id = 0), term INTEGER NOT NULL,
    vote TEXT, commit_index INTEGER NOT NULL, crc INTEGER NOT NULL);
CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 0), idx INTEGER NOT NULL,
    term INTEGER NOT NULL);
CREATE TABLE log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, kind INTEGER NOT NULL,
    data BLOB NOT NULL, crc INTEGER NOT NULL);
PRAGMA user_version=1;
"""
_FIXED = struct.Struct(">8sHQQQII")


def header(
    version: int, index: int, term: int, data: bytes, config: bytes, data_len: int | None = None
) -> bytes:
    n = len(data) if data_len is None else data_len
    head = _FIXED.pack(b"TRRSNAP\x00", version, index, term, n, zlib.crc32(data), len(config))
    head += config
    return head + struct.pack(">I", zlib.crc32(head))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "node1"


@pytest.fixture
def opened() -> Iterator[list[SqliteStorage]]:
    stores: list[SqliteStorage] = []
    yield stores
    for s in stores:
        s.close()


def load(data_dir: Path, opened: list[SqliteStorage]) -> SqliteStorage:
    s = SqliteStorage(data_dir, fsync=False)
    opened.append(s)
    return s


# ------------------------------------------------------------------ old data dirs
def make_v1_dir(data_dir: Path, snapshot_version: int) -> None:
    """A data dir as the version before the catch-up tail wrote it."""
    (data_dir / "snapshots").mkdir(parents=True)
    with closing(sqlite3.connect(data_dir / "raft.db")) as conn:
        conn.executescript(V1_SCHEMA)
        conn.execute(
            "INSERT INTO hard_state VALUES (0, 3, 'n1', 8, ?)",
            (zlib.crc32(b"\x01n1", zlib.crc32(struct.pack(">QQ", 3, 8))),),
        )
        conn.execute("INSERT INTO snapshot VALUES (0, 6, 2)")
        for e in entries(7, 10):
            conn.execute(
                "INSERT INTO log VALUES (?, ?, 0, ?, ?)",
                (e.index, e.term, e.data, row_crc(e.index, e.term, 0, e.data)),
            )
        conn.commit()
    data = b"state machine as of 6"
    config = (
        json.dumps(sorted(["n1", "n2", "n3"])).encode()
        if snapshot_version == 1
        else META.config.encode()
    )
    (data_dir / "snapshots" / "snap-2-6.bin").write_bytes(
        header(snapshot_version, 6, 2, data, config) + data
    )


@pytest.mark.parametrize("snapshot_version", [1, 2])
def test_a_data_dir_of_the_previous_version_loads(
    data_dir: Path, opened: list[SqliteStorage], snapshot_version: int
) -> None:
    make_v1_dir(data_dir, snapshot_version)
    s = load(data_dir, opened)
    state = s.load()
    assert state.hard_state == HardState(term=3, vote="n1", commit=8)
    assert state.snapshot == META
    assert state.compacted == LogPosition(6, 2)  # v1 compacted up to its snapshot
    assert state.entries == entries(7, 10)
    assert s.load_snapshot() == (META, b"state machine as of 6")
    assert classify(state, s.load_identity()) is DataDirKind.LEGACY
    # ...and it carries on under the new schema.
    s.save_snapshot(SnapshotMeta(index=9, term=2), b"nine", compact_to=7)
    s.close()
    with closing(sqlite3.connect(data_dir / "raft.db")) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
    state = load(data_dir, opened).load()
    assert (state.compacted, state.entries) == (LogPosition(7, 2), entries(8, 10))


def test_a_v1_dir_without_a_snapshot_loads(data_dir: Path, opened: list[SqliteStorage]) -> None:
    data_dir.mkdir()
    with closing(sqlite3.connect(data_dir / "raft.db")) as conn:
        conn.executescript(V1_SCHEMA)
    state = load(data_dir, opened).load()
    assert state.is_empty


def test_a_newer_schema_is_refused(data_dir: Path) -> None:
    populate(data_dir)
    sql(data_dir, "PRAGMA user_version=3")
    with pytest.raises(StorageCorrupt, match="schema version 3 is newer"):
        SqliteStorage(data_dir, fsync=False)


# ------------------------------------------------------------------ forged snapshot headers
def with_snapshot_file(data_dir: Path, raw: bytes) -> None:
    with open_storage(data_dir, fsync=False) as s:
        s.save(None, entries(1, 10))
        s.save_snapshot(META, b"real")
    (data_dir / "snapshots" / "snap-2-6.bin").write_bytes(raw)


CONFIG = META.config.encode()
FORGED = {
    "index 0": header(2, 0, 2, b"d", CONFIG),
    "index 2**63": header(2, 2**63, 2, b"d", CONFIG),
    "term 2**64-1": header(2, 6, 2**64 - 1, b"d", CONFIG),
    "data length 2**63": header(2, 6, 2, b"d", CONFIG, data_len=2**63),
    "config not JSON": header(2, 6, 2, b"d", b"{not json"),
    "config deep JSON": header(2, 6, 2, b"d", b"[" * 100_000),
    "config bad member": header(2, 6, 2, b"d", b'[{"id": ""}]'),
    "config duplicate": header(2, 6, 2, b"d", b'[{"id": "a"}, {"id": "a"}]'),
    "v1 voters not strings": header(1, 6, 2, b"d", b"[1, 2]"),
    "v1 voter too long": header(1, 6, 2, b"d", json.dumps(["x" * 200]).encode()),
    "version 3": header(3, 6, 2, b"d", CONFIG),
}


@pytest.mark.parametrize("raw", FORGED.values(), ids=FORGED.keys())
def test_forged_snapshot_header_with_a_valid_crc_is_corrupt(
    data_dir: Path, opened: list[SqliteStorage], raw: bytes
) -> None:
    with_snapshot_file(data_dir, raw + b"d")
    with pytest.raises(StorageCorrupt, match=r"snap-2-6\.bin"):
        load(data_dir, opened).load()


FORGED_WHY = {
    "index 0": "out of range",
    "index 2**63": "out of range",
    "term 2**64-1": "out of range",
    "data length 2**63": "out of range",
    "config not JSON": "configuration",
    "config deep JSON": "configuration",
    "config bad member": "configuration",
    "config duplicate": "configuration",
    "v1 voters not strings": "configuration",
    "v1 voter too long": "configuration",
    "version 3": "unsupported snapshot format version 3",
}


@pytest.mark.parametrize("name", FORGED.keys())
def test_snapshot_file_format_checks_every_header_field(tmp_path: Path, name: str) -> None:
    path = tmp_path / "snap-2-6.bin"
    path.write_bytes(FORGED[name] + b"d")
    with pytest.raises(StorageCorrupt, match=FORGED_WHY[name]):
        open_snapshot(path)


def test_header_of_another_snapshot_is_corrupt(data_dir: Path, opened: list[SqliteStorage]) -> None:
    with_snapshot_file(data_dir, header(2, 7, 2, b"d", CONFIG) + b"d")
    with pytest.raises(StorageCorrupt, match="header says index 7 term 2"):
        load(data_dir, opened).load()


# ------------------------------------------------------------------ typed damage in raft.db
TYPED_DAMAGE = {
    "hard state term text": "UPDATE hard_state SET term = 'x'",
    "hard state vote integer": "UPDATE hard_state SET vote = 5",
    "hard state huge commit": "UPDATE hard_state SET commit_index = 1e300",
    "hard state crc text": "UPDATE hard_state SET crc = 'x'",
    "log term text": "UPDATE log SET term = 'abc' WHERE idx = 10",
    "log term real": "UPDATE log SET term = 2.5 WHERE idx = 10",
    "log kind unknown": "UPDATE log SET kind = 9 WHERE idx = 10",
    "log data text": "UPDATE log SET data = 'text' WHERE idx = 10",
    "log crc null": "UPDATE log SET crc = 'x' WHERE idx = 10",
}


@pytest.mark.parametrize("statement", TYPED_DAMAGE.values(), ids=TYPED_DAMAGE.keys())
def test_wrongly_typed_rows_are_corrupt_not_a_crash(
    data_dir: Path, opened: list[SqliteStorage], statement: str
) -> None:
    populate(data_dir)
    sql(data_dir, statement)
    with pytest.raises(StorageCorrupt, match=r"raft\.db"):
        load(data_dir, opened).load()


def test_damaged_snapshot_row_is_corrupt(data_dir: Path, opened: list[SqliteStorage]) -> None:
    with open_storage(data_dir, fsync=False) as s:
        s.save(None, entries(1, 10))
        s.save_snapshot(META, b"real")
    sql(data_dir, "UPDATE snapshot SET idx = 'six'")
    with pytest.raises(StorageCorrupt, match="snapshot record is damaged"):
        load(data_dir, opened).load()


# ------------------------------------------------------------------ the compaction record
def tail_dir(data_dir: Path) -> None:
    """Log 1..10, snapshot at 6, compacted to 2: a catch-up tail 3..6."""
    with open_storage(data_dir, fsync=False) as s:
        s.save(HardState(term=2, commit=10), entries(1, 10))
        s.save_snapshot(META, b"six", compact_to=2)


def test_catch_up_tail_survives_reopen(data_dir: Path, opened: list[SqliteStorage]) -> None:
    tail_dir(data_dir)
    state = load(data_dir, opened).load()
    assert (state.snapshot, state.compacted, state.entries) == (
        META,
        LogPosition(2, 2),
        entries(3, 10),
    )


COMPACTION_DAMAGE = {
    "crc": ("UPDATE compaction SET crc = crc + 1", "compaction record"),
    "edited": ("UPDATE compaction SET idx = 3", "compaction record"),
    "past the snapshot": ("DELETE FROM snapshot", "snapshot covers only up to 0"),
    "snapshot entry gone": ("DELETE FROM log WHERE idx >= 6", "does not hold the snapshot"),
    "snapshot entry term": ("UPDATE log SET term = 1 WHERE idx >= 6", "checksum"),
}


@pytest.mark.parametrize(
    ("statement", "match"), COMPACTION_DAMAGE.values(), ids=COMPACTION_DAMAGE.keys()
)
def test_inconsistent_compaction_is_corrupt(
    data_dir: Path, opened: list[SqliteStorage], statement: str, match: str
) -> None:
    tail_dir(data_dir)
    sql(data_dir, statement)
    with pytest.raises(StorageCorrupt, match=match):
        load(data_dir, opened).load()


def test_snapshot_entry_with_another_term_is_corrupt(
    data_dir: Path, opened: list[SqliteStorage]
) -> None:
    tail_dir(data_dir)
    # Re-checksummed, so only the shape check can see it.
    data = b"cmd6"
    sql(data_dir, "UPDATE log SET term = 1, crc = ? WHERE idx = 6", row_crc(6, 1, 0, data))
    with pytest.raises(StorageCorrupt, match="does not hold the snapshot's entry 6"):
        load(data_dir, opened).load()


def test_configuration_written_is_read_back(data_dir: Path, opened: list[SqliteStorage]) -> None:
    config = Configuration.of(
        [Member("a1", name="node1", url="https://h1:7000"), Member("b2", voter=False)]
    )
    meta = SnapshotMeta(index=3, term=1, config=config)
    with open_storage(data_dir, fsync=False) as s:
        s.save(None, entries(1, 3, term=1))
        s.save_snapshot(meta, b"x")
    assert load(data_dir, opened).load().snapshot == meta
