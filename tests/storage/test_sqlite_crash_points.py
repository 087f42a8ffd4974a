"""SqliteStorage: a crash at any step of a snapshot write leaves old or new, never a mix.

Each step is interrupted by an exception that stands for the process dying
there; the storage is then abandoned without any cleanup (as a dead process
would leave it) and the data dir reopened.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.storage.test_sqlite_storage import entries
from trioraft.core import Configuration, HardState, SnapshotMeta
from trioraft.storage import (
    LogPosition,
    SnapshotTransfer,
    SqliteStorage,
    _files,
    _snapdir,
    _sqlite,
    open_storage,
)

OLD = SnapshotMeta(index=6, term=2, config=Configuration.of_voters({"n1", "n2", "n3"}))
NEW = SnapshotMeta(index=9, term=2, config=OLD.config)
OLD_DATA, NEW_DATA = b"old state " * 100, b"new state " * 120


class Crash(BaseException):
    """The process dies here."""


def crash(*args: object, **kwargs: object) -> None:
    raise Crash


def abandon(s: SqliteStorage) -> None:
    """What a killed process leaves: no cleanup, just the lock and connection gone."""
    s._release()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "node1"
    with open_storage(d, fsync=True) as s:
        s.save(HardState(term=2, commit=10), entries(1, 12))
        s.save_snapshot(OLD, OLD_DATA, compact_to=6)
    return d


def reopened(data_dir: Path) -> tuple[SnapshotMeta, bytes, LogPosition, list[int]]:
    with SqliteStorage(data_dir, fsync=False) as s:
        state = s.load()
        snap = s.load_snapshot()
        assert snap is not None
        assert snap[0] == state.snapshot
        files = sorted(p.name for p in (data_dir / "snapshots").iterdir())
        assert files == [f"snap-{state.snapshot.term}-{state.snapshot.index}.bin"]
        return state.snapshot, snap[1], state.compacted, [e.index for e in state.entries]


OLD_STATE = (OLD, OLD_DATA, LogPosition(6, 2), list(range(7, 13)))

# (where to crash, what the next start must find: the old snapshot or the new one)
Point = tuple[str, Callable[[pytest.MonkeyPatch], None], bool]
LOCAL_POINTS: list[Point] = [
    ("temp file written", lambda m: m.setattr(os, "replace", crash), False),
    (
        "renamed, before the commit",
        lambda m: m.setattr(_sqlite.SqliteStorage, "_set_compaction", crash),
        False,
    ),
    (
        "committed, old file still there",
        lambda m: m.setattr(_snapdir.SnapshotDir, "remove_except", crash),
        True,
    ),
]


@pytest.mark.parametrize(
    ("where", "patch", "is_new"), LOCAL_POINTS, ids=[p[0] for p in LOCAL_POINTS]
)
def test_local_snapshot_crash_points(
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    patch: Callable[[pytest.MonkeyPatch], None],
    is_new: bool,
) -> None:
    s = SqliteStorage(data_dir, fsync=True)
    s.load()
    with monkeypatch.context() as m:
        patch(m)
        with pytest.raises(Crash):
            s.save_snapshot(NEW, NEW_DATA, compact_to=8)
    abandon(s)
    expected = (NEW, NEW_DATA, LogPosition(8, 2), list(range(9, 13))) if is_new else OLD_STATE
    assert reopened(data_dir) == expected


def staged(s: SqliteStorage, keep: bool) -> SnapshotTransfer:
    t = SnapshotTransfer(NEW, len(NEW_DATA), zlib.crc32(NEW_DATA))
    s.stage_chunk(t, 0, NEW_DATA[:500])
    s.stage_chunk(t, 500, NEW_DATA[500:])
    assert s.finish_transfer(t) == NEW_DATA
    return t


INSTALL_POINTS: list[Point] = [
    ("finished, before the rename", lambda m: m.setattr(os, "replace", crash), False),
    (
        "renamed, before the directory fsync",
        lambda m: m.setattr(_snapdir, "fsync_dir", crash),
        False,
    ),
    (
        "in the transaction",
        lambda m: m.setattr(_sqlite.SqliteStorage, "_set_compaction", crash),
        False,
    ),
    (
        "committed, old file still there",
        lambda m: m.setattr(_snapdir.SnapshotDir, "remove_except", crash),
        True,
    ),
]


@pytest.mark.parametrize("keep", [True, False], ids=["keep", "replace log"])
@pytest.mark.parametrize(
    ("where", "patch", "is_new"), INSTALL_POINTS, ids=[p[0] for p in INSTALL_POINTS]
)
def test_install_crash_points(
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    patch: Callable[[pytest.MonkeyPatch], None],
    is_new: bool,
    keep: bool,
) -> None:
    s = SqliteStorage(data_dir, fsync=True)
    s.load()
    t = staged(s, keep)
    with monkeypatch.context() as m:
        patch(m)
        with pytest.raises(Crash):
            s.install_transfer(t, keep_entries_after=keep)
    abandon(s)
    kept = list(range(10, 13)) if keep else []
    expected = (NEW, NEW_DATA, LogPosition(9, 2), kept) if is_new else OLD_STATE
    assert reopened(data_dir) == expected


# ------------------------------------------------------------------ genuinely torn writes
WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from trioraft.core import Entry, HardState
    from trioraft.storage import open_storage

    s = open_storage(Path(sys.argv[1]), fsync=True)
    s.load()
    s.save(HardState(term=1, commit=5), [Entry(i, 1, data=b"a" * 100) for i in range(1, 6)])
    s.save(HardState(term=1, commit=10), [Entry(i, 1, data=b"b" * 100) for i in range(6, 11)])
    os._exit(0)  # die without closing: the WAL is not checkpointed
    """
)


def test_a_torn_last_transaction_is_dropped_whole_by_sqlite(tmp_path: Path) -> None:
    # The torn write that can happen: the process dies while SQLite appends
    # the last transaction to its WAL. That transaction's COMMIT never
    # returned, so save() never returned and nothing of it was acknowledged;
    # SQLite's checksummed WAL frames drop it whole, and load() finds the log
    # of the save() before it, every row intact.
    d = tmp_path / "node"
    subprocess.run([sys.executable, "-c", WRITER, str(d)], check=True)
    wal = d / "raft.db-wal"
    size = wal.stat().st_size
    assert size > 0
    with wal.open("r+b") as f:
        f.truncate(size - 100)  # cut into the last frame: the commit frame is gone
    (d / "raft.db-shm").unlink(missing_ok=True)  # as after a reboot
    with SqliteStorage(d, fsync=False) as s:
        state = s.load()
    assert [e.index for e in state.entries] == [1, 2, 3, 4, 5]
    assert state.hard_state == HardState(term=1, commit=5)


# ------------------------------------------------------------------ leftovers
def test_leftover_and_garbage_staging_never_stops_a_start(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snaps = data_dir / "snapshots"
    (snaps / "incoming-3-12.part").write_bytes(b"an old-style half transfer")
    (snaps / "incoming-3-12-7.part").write_bytes(os.urandom(1000))
    (snaps / "garbage.part").write_bytes(b"\x00" * 10)
    (snaps / "junk.part").mkdir()  # cannot be unlinked: logged, not fatal
    (snaps / "snap-9-99.bin.tmp").write_bytes(b"half a snapshot")
    (snaps / "snap-3-12.bin").write_bytes(b"renamed but never recorded")
    (snaps / "README").write_text("not ours: left alone")
    with caplog.at_level(logging.WARNING, logger="trioraft.storage"), open_storage(data_dir) as s:
        state = s.load()
        assert state.snapshot == OLD
        t = staged(s, keep=False)  # and a transfer works
        s.install_transfer(t, keep_entries_after=False)
    assert "junk.part" in caplog.text
    assert sorted(p.name for p in snaps.iterdir()) == ["README", "junk.part", "snap-2-9.bin"]


def test_a_staging_file_is_never_reused(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_files, "_staging_seq", itertools.count(1))
    stray = data_dir / "snapshots" / "incoming-2-9-1.part"
    with open_storage(data_dir, fsync=False) as s:
        s.load()
        stray.write_bytes(b"someone else's bytes")  # appeared after load
        t = staged(s, keep=False)
        assert stray.read_bytes() == b"someone else's bytes"
        s.install_transfer(t, keep_entries_after=False)
        assert s.load_snapshot() == (NEW, NEW_DATA)


def test_two_transfers_stage_in_two_files_of_bounded_size(data_dir: Path) -> None:
    with open_storage(data_dir, fsync=False) as s:
        s.load()
        finished = staged(s, keep=False)
        other = SnapshotTransfer(NEW, 10, zlib.crc32(b"0123456789"))
        s.stage_chunk(other, 0, b"01234")
        with pytest.raises(ValueError, match="declared size"):
            s.stage_chunk(other, 5, b"x" * 1_000_000)
        s.stage_chunk(other, 5, b"56789")
        assert s.finish_transfer(other) == b"0123456789"
        parts = sorted((data_dir / "snapshots").glob("*.part"), key=lambda p: p.stat().st_size)
        assert len(parts) == 2
        header = parts[1].stat().st_size - len(NEW_DATA)
        assert parts[0].stat().st_size == header + 10  # nothing of the refused chunk
        s.install_transfer(finished, keep_entries_after=False)
        assert s.load_snapshot() == (NEW, NEW_DATA)
        s.discard_transfer(other)
        assert list((data_dir / "snapshots").glob("*.part")) == []


# ------------------------------------------------------------------ readers on disk
def test_reader_reads_a_file_that_is_gone(data_dir: Path) -> None:
    with open_storage(data_dir, fsync=False) as s:
        s.load()
        reader = s.open_snapshot_reader(OLD)
        s.save_snapshot(NEW, NEW_DATA)
        assert not (data_dir / "snapshots" / "snap-2-6.bin").exists()
        assert reader.read(0, 10**6) == OLD_DATA
        assert reader.checksum == zlib.crc32(OLD_DATA)
        other = s.open_snapshot_reader()
    # Closing the storage closes the readers it handed out (no leaked files).
    with pytest.raises(ValueError, match="closed"):
        reader.read(0, 1)
    with pytest.raises(ValueError, match="closed"):
        other.read(0, 1)
