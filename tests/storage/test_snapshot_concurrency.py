"""SqliteStorage: a local snapshot's file is written without blocking the log (issue 11 #4).

Saving a 115 MB snapshot held the storage (and the node's one disk thread)
for up to 0.8 s, so log fsyncs waited behind it and a leader's heartbeats
stopped: a healthy cluster changed leader. Now `save_snapshot` writes its
file outside the storage's mutex, under a name of its own, and puts it in
place only after checking again that nothing overtook it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.storage.test_sqlite_storage import META, entries
from trioraft.core import Entry, EntryKind, HardState, SnapshotMeta
from trioraft.storage import LogPosition, MemoryStorage, SqliteStorage, _files, _snapdir, _sqlite


class _Gate:
    """Makes `write_durably` wait, from the thread that writes, until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        real = _files.write_durably

        def gated(path: Path, parts: list[bytes], fsync: bool) -> None:
            self.entered.set()
            assert self.release.wait(10), "the test never released the write"
            real(path, parts, fsync)

        monkeypatch.setattr(_snapdir, "write_durably", gated)


def _in_thread(fn: object, *args: object) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args)  # type: ignore[operator]
        except BaseException as exc:  # handed to the test
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, errors


def _opened_with_log(d: Path, last: int) -> SqliteStorage:
    """An open, loaded storage holding entries 1..last, all committed."""
    s = SqliteStorage(d, fsync=False)
    s.load()
    s.save(HardState(term=2, vote="n1", commit=last), entries(1, last))
    return s


def test_the_storages_say_whether_snapshot_writes_may_run_concurrently(tmp_path: Path) -> None:
    with SqliteStorage(tmp_path / "d", fsync=False) as s:
        assert s.concurrent_maintenance is True
    assert MemoryStorage().concurrent_maintenance is False


def test_the_log_is_written_while_a_snapshot_file_is_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _opened_with_log(tmp_path / "d", 6) as s:
        gate = _Gate(monkeypatch)
        t, errors = _in_thread(s.save_snapshot, META, [b"snap", b"shot"])
        assert gate.entered.wait(5)
        # The snapshot's file is being written: the log is not held up by it.
        done = threading.Event()
        t2, errors2 = _in_thread(lambda: (s.save(None, entries(7, 9)), done.set()))
        assert done.wait(5), "save() waited for the snapshot's file"
        assert s.load_snapshot() is None  # not in place before it is durable
        gate.release.set()
        t.join(5)
        t2.join(5)
        assert errors == errors2 == []
        assert s.load_snapshot() == (META, b"snapshot")
    with SqliteStorage(tmp_path / "d", fsync=False) as s:
        state = s.load()
        assert state.snapshot == META
        assert [e.index for e in state.entries] == list(range(1, 10))
        assert not [p for p in (tmp_path / "d" / "snapshots").iterdir()
                    if p.name.endswith(".tmp")]


def test_a_snapshot_overtaken_while_its_file_was_written_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _opened_with_log(tmp_path / "d", 9) as s:
        gate = _Gate(monkeypatch)
        t, errors = _in_thread(s.save_snapshot, META, b"old")
        assert gate.entered.wait(5)
        monkeypatch.undo()  # the newer snapshot is written at once
        newer = SnapshotMeta(index=9, term=2, config=META.config)
        s.save_snapshot(newer, b"newer")
        gate.release.set()
        t.join(5)
        assert len(errors) == 1
        assert isinstance(errors[0], ValueError)
        assert "older than the stored one" in str(errors[0])
        assert s.load_snapshot() == (newer, b"newer")
        names = sorted(p.name for p in (tmp_path / "d" / "snapshots").iterdir())
        assert names == ["snap-2-9.bin"]  # the overtaken file is gone, no .tmp left


def test_a_large_file_is_flushed_as_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushes: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(_files.os, "fdatasync", lambda fd: (flushes.append(fd), real(fd)))
    monkeypatch.setattr(_files, "FLUSH_EVERY", 1000)
    _files.write_durably(tmp_path / "f", [b"x" * 600] * 10, fsync=True)
    assert len(flushes) == 5  # every 1,000 bytes or more written (then the final fsync)
    assert (tmp_path / "f").read_bytes() == b"x" * 6000
    flushes.clear()
    _files.write_durably(tmp_path / "g", [b"x" * 600] * 10, fsync=False)
    assert flushes == []


def test_compaction_goes_in_bounded_steps_each_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropping many entries is done a bounded step at a time, each its own
    transaction with the mutex taken per step (log writes go in between); a crash
    between steps leaves a consistent, smaller compaction."""
    monkeypatch.setattr(_sqlite, "COMPACT_STEP_BYTES", 3 * 100)
    monkeypatch.setattr(_sqlite, "COMPACT_STEP_ROWS", 1000)
    d = tmp_path / "d"
    with SqliteStorage(d, fsync=False) as s:
        s.load()
        s.save(HardState(term=2, vote="n1", commit=20),
               [Entry(i, 2, EntryKind.NORMAL, b"x" * 100) for i in range(1, 21)])  # fmt: skip
        s.save_snapshot(SnapshotMeta(index=20, term=2, config=META.config), b"s")
        steps: list[int] = []
        real = SqliteStorage._set_compaction

        def recording(self: SqliteStorage, conn: object, pos: LogPosition, drop_all: bool) -> None:
            assert self._mutex._is_owned()  # type: ignore[attr-defined]
            steps.append(pos.index)
            if len(steps) == 3:
                raise RuntimeError("the process dies during the third step")
            real(self, conn, pos, drop_all)  # type: ignore[arg-type]

        monkeypatch.setattr(SqliteStorage, "_set_compaction", recording)
        with pytest.raises(RuntimeError):
            s.compact(14)
        assert steps == [3, 6, 9]  # 300 bytes a step
    with SqliteStorage(d, fsync=False) as s:
        state = s.load()
        assert state.compacted == LogPosition(6, 2)  # the two finished steps
        assert [e.index for e in state.entries] == list(range(7, 21))
        monkeypatch.setattr(SqliteStorage, "_set_compaction", real)
        steps.clear()
        s.compact(14)
        assert s.load().compacted == LogPosition(14, 2)


def test_a_snapshot_file_interrupted_while_written_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed write of a snapshot's file (outside the mutex, under its own `.tmp`
    name) leaves the old state and no file; what a killed process leaves under
    that name is removed at the next start."""
    real = _files.write_durably

    def fails_halfway(path: Path, parts: list[bytes], fsync: bool) -> None:
        real(path, parts[:1], fsync)  # part of it reached the disk ...
        raise OSError("no space left on device")

    d = tmp_path / "d"
    with _opened_with_log(d, 6) as s:
        monkeypatch.setattr(_snapdir, "write_durably", fails_halfway)
        with pytest.raises(OSError, match="no space"):
            s.save_snapshot(META, [b"snap", b"shot"])
        assert list((d / "snapshots").iterdir()) == []
        assert s.load_snapshot() is None
    # A killed process runs no cleanup: its half-written file stays behind.
    leftover = d / "snapshots" / "snap-2-6.bin.0123456789ab.tmp"
    leftover.write_bytes(b"snap")
    with SqliteStorage(d, fsync=False) as s:
        state = s.load()
        assert state.snapshot == SnapshotMeta()  # no snapshot: the old state
        assert [e.index for e in state.entries] == list(range(1, 7))
    assert not leftover.exists()


def test_a_batch_larger_than_one_insert_statement_is_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Log rows go in multi-row INSERTs bounded by SQLite's parameter limit: a batch
    over the bound takes several statements, and every row lands, in order."""
    monkeypatch.setattr(_sqlite, "_ROWS_PER_INSERT", 3)
    d = tmp_path / "d"
    with _opened_with_log(d, 10) as s:
        s.save(None, entries(8, 17))  # replaces 8..10, adds 11..17: 10 rows, 4 statements
    with SqliteStorage(d, fsync=False) as s:
        assert s.load().entries == entries(1, 17)
