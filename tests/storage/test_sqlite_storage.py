"""SqliteStorage: what survives a restart, and how damage is told apart from a torn write."""

from __future__ import annotations

import sqlite3
import threading
import zlib
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from trioraft.core import Configuration, Entry, EntryKind, HardState, SnapshotMeta
from trioraft.storage import (
    DataDirLocked,
    LogPosition,
    SnapshotTransfer,
    SqliteStorage,
    StorageCorrupt,
    open_storage,
)

META = SnapshotMeta(index=6, term=2, config=Configuration.of_voters({"n1", "n2", "n3"}))


def entries(first: int, last: int, term: int = 2) -> list[Entry]:
    return [Entry(i, term, EntryKind.NORMAL, f"cmd{i}".encode()) for i in range(first, last + 1)]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "node1"


def reopen(data_dir: Path) -> SqliteStorage:
    return SqliteStorage(data_dir, fsync=False)


def populate(data_dir: Path, last: int = 10) -> None:
    with open_storage(data_dir, fsync=False) as s:
        s.save(HardState(term=2, vote="n1", commit=last), entries(1, last))


def sql(data_dir: Path, statement: str, *args: object) -> None:
    """Change raft.db behind the storage's back (the storage must be closed)."""
    with closing(sqlite3.connect(data_dir / "raft.db")) as conn, conn:
        conn.execute(statement, args)


@pytest.fixture
def opened(data_dir: Path) -> Iterator[list[SqliteStorage]]:
    """Storages a test opens; closed at the end even if the test fails."""
    stores: list[SqliteStorage] = []
    yield stores
    for s in stores:
        s.close()


def load_fresh(data_dir: Path, opened: list[SqliteStorage]) -> SqliteStorage:
    s = reopen(data_dir)
    opened.append(s)
    return s


# ------------------------------------------------------------------ persistence
def test_open_storage_creates_the_data_dir_layout(tmp_path: Path) -> None:
    with open_storage(tmp_path / "a" / "b" / "node1") as s:
        s.load()
        names = {p.name for p in s.path.iterdir()}
    assert {"LOCK", "raft.db", "snapshots"} <= names


def test_everything_survives_close_and_reopen(data_dir: Path) -> None:
    with open_storage(data_dir, fsync=False) as s:
        s.save(HardState(term=2, vote="n1", commit=9), entries(1, 10))
        s.save_snapshot(META, b"snapshot-data")
        s.compact(4)  # a catch-up tail of 5..6
    with reopen(data_dir) as s:
        state = s.load()
        assert state.hard_state == HardState(term=2, vote="n1", commit=9)
        assert state.snapshot == META
        assert state.compacted == LogPosition(4, 2)
        assert state.entries == entries(5, 10)
        assert s.load_snapshot() == (META, b"snapshot-data")
        with s.open_snapshot_reader(META) as reader:
            assert reader.read(4, 4) == b"shot"


def test_installed_snapshot_survives_reopen(data_dir: Path) -> None:
    with open_storage(data_dir, fsync=False) as s:
        s.save(None, entries(1, 3))
        t = SnapshotTransfer(META, 11, zlib.crc32(b"from-leader"))
        s.stage_chunk(t, 0, b"from-")
        s.stage_chunk(t, 5, b"leader")
        s.finish_transfer(t)
        s.install_transfer(t, keep_entries_after=False)
    with reopen(data_dir) as s:
        state = s.load()
        assert (state.snapshot, state.entries) == (META, [])
        assert s.load_snapshot() == (META, b"from-leader")


def test_only_the_newest_snapshot_file_is_kept(data_dir: Path) -> None:
    with open_storage(data_dir, fsync=False) as s:
        s.save(None, entries(1, 10))
        s.save_snapshot(META, b"six")
        s.save_snapshot(SnapshotMeta(index=9, term=2), b"nine")
        files = sorted(p.name for p in (data_dir / "snapshots").iterdir())
    assert files == ["snap-2-9.bin"]


def test_fsync_mode_round_trips(data_dir: Path) -> None:
    with open_storage(data_dir) as s:
        s.save(HardState(term=1), entries(1, 2))
        s.save_snapshot(SnapshotMeta(index=1, term=2), b"x", compact_to=1)
    with open_storage(data_dir) as s:
        assert s.load().entries == entries(2, 2)


# ------------------------------------------------------------------ the lock
def test_second_open_of_a_data_dir_fails_clearly(data_dir: Path) -> None:
    with (
        open_storage(data_dir, fsync=False),
        pytest.raises(DataDirLocked, match="in use by another trioraft node"),
    ):
        open_storage(data_dir, fsync=False)
    with open_storage(data_dir, fsync=False) as s:  # released by close()
        s.load()


# ------------------------------------------------------------------ torn tail?
# Issue 11 suspected that dropping "torn" last rows loses acknowledged data.
# Confirmed: save() returning is what the runtime acknowledges after, and a
# committed row can only fail its CRC through damage, so load() must refuse.
@pytest.mark.parametrize("rows", ["idx = 10", "idx >= 8"], ids=["last row", "last rows"])
def test_bad_last_rows_are_corruption_not_a_torn_tail(
    data_dir: Path, opened: list[SqliteStorage], rows: str
) -> None:
    populate(data_dir)  # save() returned: entries 1..10 may have been acknowledged
    sql(data_dir, f"UPDATE log SET crc = crc + 1 WHERE {rows}")
    with pytest.raises(
        StorageCorrupt,
        match=r"raft\.db: log entry \d+ fails its checksum.*"
        r"not a torn write.*backup",
    ) as info:
        load_fresh(data_dir, opened).load()
    assert str(data_dir / "raft.db") in str(info.value)
    opened.pop().close()
    # Nothing was dropped: a fixed (restored) database loads in full.
    sql(data_dir, f"UPDATE log SET crc = crc - 1 WHERE {rows}")
    assert load_fresh(data_dir, opened).load().entries == entries(1, 10)


def test_truncated_last_row_data_is_corruption(data_dir: Path, opened: list[SqliteStorage]) -> None:
    populate(data_dir)
    sql(data_dir, "UPDATE log SET data = substr(data, 1, length(data) - 1) WHERE idx = 10")
    with pytest.raises(StorageCorrupt, match="log entry 10 fails its checksum"):
        load_fresh(data_dir, opened).load()


# ------------------------------------------------------------------ corruption
def test_corrupt_middle_row_refuses_to_start(data_dir: Path, opened: list[SqliteStorage]) -> None:
    populate(data_dir)
    sql(data_dir, "UPDATE log SET data = X'00' WHERE idx = 5")
    with pytest.raises(StorageCorrupt, match=r"raft\.db.*entry 5.*backup") as info:
        load_fresh(data_dir, opened).load()
    assert str(data_dir / "raft.db") in str(info.value)


def test_gap_in_the_log_refuses_to_start(data_dir: Path, opened: list[SqliteStorage]) -> None:
    populate(data_dir)
    sql(data_dir, "DELETE FROM log WHERE idx = 4")
    with pytest.raises(StorageCorrupt, match="entry 4 is missing"):
        load_fresh(data_dir, opened).load()


def test_log_not_starting_after_the_snapshot_is_corrupt(
    data_dir: Path, opened: list[SqliteStorage]
) -> None:
    populate(data_dir)
    sql(data_dir, "DELETE FROM log WHERE idx = 1")
    with pytest.raises(StorageCorrupt, match="entry 1 is missing"):
        load_fresh(data_dir, opened).load()


def test_corrupt_hard_state_refuses_to_start(data_dir: Path, opened: list[SqliteStorage]) -> None:
    populate(data_dir)
    sql(data_dir, "UPDATE hard_state SET term = 1")
    with pytest.raises(StorageCorrupt, match="hard state"):
        load_fresh(data_dir, opened).load()


def test_unreadable_database_refuses_to_open(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / "raft.db").write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(StorageCorrupt, match=r"raft\.db.*unreadable"):
        reopen(data_dir)
    with open_storage(data_dir / "elsewhere"):  # and the lock was not leaked
        pass
    (data_dir / "raft.db").unlink()
    reopen(data_dir).close()


def snapshot_dir_with(data_dir: Path) -> Path:
    with open_storage(data_dir, fsync=False) as s:
        s.save(None, entries(1, 10))
        s.save_snapshot(META, b"precious state machine data")
    return data_dir / "snapshots" / "snap-2-6.bin"


@pytest.mark.parametrize("where", [-3, 10], ids=["data", "header"])
def test_corrupt_snapshot_file_refuses_to_start(
    data_dir: Path, opened: list[SqliteStorage], where: int
) -> None:
    path = snapshot_dir_with(data_dir)
    raw = bytearray(path.read_bytes())
    raw[where] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(StorageCorrupt, match="checksum") as info:
        load_fresh(data_dir, opened).load()
    assert str(path) in str(info.value)
    assert path.exists()  # nothing is deleted: the operator decides


def test_truncated_snapshot_file_refuses_to_start(
    data_dir: Path, opened: list[SqliteStorage]
) -> None:
    path = snapshot_dir_with(data_dir)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(StorageCorrupt, match=r"snap-2-6\.bin"):
        load_fresh(data_dir, opened).load()


def test_missing_snapshot_file_refuses_to_start(
    data_dir: Path, opened: list[SqliteStorage]
) -> None:
    snapshot_dir_with(data_dir).unlink()
    with pytest.raises(StorageCorrupt, match="missing"):
        load_fresh(data_dir, opened).load()


def test_snapshots_without_a_database_refuse_to_open(data_dir: Path) -> None:
    snapshot_dir_with(data_dir)
    for name in ("raft.db", "raft.db-wal", "raft.db-shm"):
        (data_dir / name).unlink(missing_ok=True)
    with pytest.raises(StorageCorrupt, match=r"raft\.db is missing"):
        reopen(data_dir)


# ------------------------------------------------------------------ leftovers
def test_interrupted_writes_are_cleaned_up_at_load(
    data_dir: Path, opened: list[SqliteStorage]
) -> None:
    snapshot_dir_with(data_dir)
    snaps = data_dir / "snapshots"
    (snaps / "snap-2-9.bin.tmp").write_bytes(b"half a snapshot")
    (snaps / "incoming-3-12.part").write_bytes(b"half a transfer")
    (snaps / "snap-3-12.bin").write_bytes(b"renamed but never recorded")
    (snaps / "snap-1-2.bin").write_bytes(b"superseded")
    s = load_fresh(data_dir, opened)
    assert s.load().snapshot == META
    assert sorted(p.name for p in snaps.iterdir()) == ["snap-2-6.bin"]


def test_close_discards_an_unfinished_transfer(data_dir: Path) -> None:
    with open_storage(data_dir, fsync=False) as s:
        s.stage_chunk(SnapshotTransfer(META, 100, 0), 0, b"partial")
    assert list((data_dir / "snapshots").iterdir()) == []


def test_calls_may_come_from_another_thread(data_dir: Path) -> None:
    # The runtime calls storage via trio.to_thread, not from the opening thread.
    errors: list[BaseException] = []
    with open_storage(data_dir, fsync=False) as s:

        def work() -> None:
            try:
                s.save(HardState(term=1), entries(1, 3))
                s.load()
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=work)
        t.start()
        t.join()
        assert errors == []
        assert s.load().entries == entries(1, 3)


def test_corruption_deletes_nothing(data_dir: Path, opened: list[SqliteStorage]) -> None:
    populate(data_dir)
    sql(data_dir, "UPDATE log SET crc = crc + 1 WHERE idx = 2")
    leftover = data_dir / "snapshots" / "incoming-3-12.part"
    leftover.write_bytes(b"evidence")
    with pytest.raises(StorageCorrupt):
        load_fresh(data_dir, opened).load()
    assert leftover.exists()
