"""The Storage protocol, as every implementation must honour it."""

from __future__ import annotations

import zlib

import pytest

from trioraft.core import Configuration, Entry, EntryKind, HardState, SnapshotMeta
from trioraft.storage import (
    LogPosition,
    PersistedState,
    SnapshotReader,
    SnapshotTransfer,
    Storage,
)


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, EntryKind.NORMAL, f"cmd{i}".encode()) for i in range(first, last + 1)]


META = SnapshotMeta(index=6, term=1, config=Configuration.of_voters({"a", "b", "c"}))


def install(s: Storage, meta: SnapshotMeta, data: bytes, keep_entries_after: bool) -> None:
    """Receive `data` as a transfer from the leader and install it."""
    t = SnapshotTransfer(meta, len(data), zlib.crc32(data))
    for off in range(0, max(len(data), 1), 3):
        assert s.stage_chunk(t, off, data[off : off + 3]) == min(off + 3, len(data))
    assert s.finish_transfer(t) == data
    s.install_transfer(t, keep_entries_after)


def test_fresh_storage_is_empty(storage: Storage) -> None:
    assert storage.load() == PersistedState()
    assert storage.load_snapshot() is None


def test_save_then_load_round_trips(storage: Storage) -> None:
    log = [
        Entry(1, 1, EntryKind.NOOP),
        Entry(2, 1, EntryKind.NORMAL, b"\x00\xffbinary"),
        Entry(3, 2, EntryKind.CONFIG, b'["a","b"]'),
    ]
    storage.save(HardState(term=2, vote="a", commit=2), log)
    state = storage.load()
    assert state.hard_state == HardState(term=2, vote="a", commit=2)
    assert state.entries == log
    assert state.snapshot == SnapshotMeta()


def test_hard_state_only_keeps_the_log(storage: Storage) -> None:
    storage.save(HardState(term=1), entries(1, 3))
    storage.save(HardState(term=5, vote=None, commit=3), [])
    state = storage.load()
    assert state.hard_state == HardState(term=5, vote=None, commit=3)
    assert state.entries == entries(1, 3)


def test_entries_only_keep_the_hard_state(storage: Storage) -> None:
    storage.save(HardState(term=3, vote="b"), [])
    storage.save(None, entries(1, 2, term=3))
    assert storage.load().hard_state == HardState(term=3, vote="b")


def test_batches_append(storage: Storage) -> None:
    storage.save(None, entries(1, 3))
    storage.save(None, entries(4, 6))
    assert storage.load().entries == entries(1, 6)


def test_conflicting_batch_truncates_the_suffix(storage: Storage) -> None:
    storage.save(None, entries(1, 5, term=1))
    storage.save(None, entries(3, 4, term=2))
    assert storage.load().entries == entries(1, 2, term=1) + entries(3, 4, term=2)


def test_batch_leaving_a_gap_is_refused(storage: Storage) -> None:
    storage.save(None, entries(1, 3))
    with pytest.raises(ValueError, match="log ends at 3"):
        storage.save(None, entries(5, 6))
    assert storage.load().entries == entries(1, 3)


def test_non_contiguous_batch_is_refused(storage: Storage) -> None:
    with pytest.raises(ValueError, match="not contiguous"):
        storage.save(None, [Entry(1, 1), Entry(3, 1)])
    assert storage.load().entries == []


def test_load_returns_copies(storage: Storage) -> None:
    storage.save(None, entries(1, 3))
    storage.load().entries.clear()
    assert storage.load().entries == entries(1, 3)


def test_snapshot_keeps_the_log_unless_told_to_compact(storage: Storage) -> None:
    storage.save(HardState(term=1, commit=8), entries(1, 10))
    storage.save_snapshot(META, b"state-at-6")  # compaction is its own step
    state = storage.load()
    assert (state.snapshot, state.compacted, state.entries) == (META, LogPosition(), entries(1, 10))
    assert state.hard_state.commit == 8
    assert storage.load_snapshot() == (META, b"state-at-6")
    storage.save_snapshot(SnapshotMeta(index=8, term=1), b"state-at-8", compact_to=8)
    state = storage.load()
    assert (state.compacted, state.entries) == (LogPosition(8, 1), entries(9, 10))


def test_snapshot_data_may_come_in_pieces(storage: Storage) -> None:
    storage.save(None, entries(1, 10))
    storage.save_snapshot(META, [b"state", b"-at", b"", b"-6"])
    assert storage.load_snapshot() == (META, b"state-at-6")
    with storage.open_snapshot_reader(META) as reader:
        assert reader.checksum == zlib.crc32(b"state-at-6")


def test_snapshot_past_the_log_empties_it(storage: Storage) -> None:
    storage.save(None, entries(1, 4))
    storage.save_snapshot(META, b"s")
    assert storage.load().entries == []
    storage.save(None, entries(7, 8))
    assert storage.load().entries == entries(7, 8)


def test_batch_inside_the_snapshot_is_refused(storage: Storage) -> None:
    storage.save(None, entries(1, 10))
    storage.save_snapshot(META, b"s")
    with pytest.raises(ValueError, match="inside the snapshot"):
        storage.save(None, entries(6, 7, term=2))


def test_older_snapshot_is_refused(storage: Storage) -> None:
    storage.save(None, entries(1, 10))
    storage.save_snapshot(META, b"s")
    with pytest.raises(ValueError, match="older"):
        storage.save_snapshot(SnapshotMeta(index=3, term=1), b"old")
    assert storage.load_snapshot() == (META, b"s")


def test_newer_snapshot_replaces_the_older(storage: Storage) -> None:
    storage.save(None, entries(1, 10))
    storage.save_snapshot(META, b"six")
    newer = SnapshotMeta(index=9, term=1, config=Configuration.of_voters({"a"}))
    storage.save_snapshot(newer, b"nine")
    assert storage.load_snapshot() == (newer, b"nine")
    assert storage.load().entries == entries(1, 10)


def test_closed_storage_refuses_work(storage: Storage) -> None:
    storage.close()
    with pytest.raises(ValueError, match="closed"):
        storage.save(HardState(term=1), [])
    storage.close()  # idempotent


# ------------------------------------------------------------- the catch-up tail
def test_fresh_state_is_empty_and_written_state_is_not(storage: Storage) -> None:
    assert storage.load().is_empty
    storage.save(HardState(term=1), [])
    assert not storage.load().is_empty


def test_snapshot_without_compaction_keeps_the_whole_log(storage: Storage) -> None:
    storage.save(HardState(term=1, commit=8), entries(1, 10))
    storage.save_snapshot(META, b"state-at-6", compact_to=0)
    state = storage.load()
    assert (state.snapshot, state.compacted, state.entries) == (META, LogPosition(), entries(1, 10))
    assert storage.load_snapshot() == (META, b"state-at-6")


def test_snapshot_can_keep_a_catch_up_tail(storage: Storage) -> None:
    storage.save(None, entries(1, 10))
    storage.save_snapshot(META, b"s", compact_to=4)
    state = storage.load()
    assert state.compacted == LogPosition(4, 1)
    assert state.entries == entries(5, 10)
    # A newer snapshot leaves the tail where it was unless told otherwise.
    newer = SnapshotMeta(index=9, term=1, config=META.config)
    storage.save_snapshot(newer, b"nine", compact_to=0)
    state = storage.load()
    assert (state.snapshot, state.compacted, state.entries) == (
        newer,
        LogPosition(4, 1),
        entries(5, 10),
    )


def test_compaction_is_its_own_step(storage: Storage) -> None:
    storage.save(None, entries(1, 5, term=1) + entries(6, 10, term=2))
    meta = SnapshotMeta(index=8, term=2, config=META.config)
    storage.save_snapshot(meta, b"s", compact_to=0)
    storage.compact(3)
    assert storage.load().compacted == LogPosition(3, 1)
    storage.compact(2)  # never moves back
    storage.compact(3)  # idempotent
    storage.compact(7)
    state = storage.load()
    assert (state.compacted, state.entries) == (LogPosition(7, 2), entries(8, 10, term=2))
    storage.compact(8)  # up to the snapshot itself
    assert storage.load().compacted == LogPosition(8, 2)
    storage.save(None, entries(11, 12, term=3))
    assert storage.load().entries == entries(9, 10, term=2) + entries(11, 12, term=3)


def test_compaction_never_passes_the_snapshot(storage: Storage) -> None:
    storage.save(None, entries(1, 10))
    with pytest.raises(ValueError, match="snapshot covers only up to 0"):
        storage.compact(1)
    storage.save_snapshot(META, b"s", compact_to=0)
    with pytest.raises(ValueError, match="covers only up to 6"):
        storage.compact(7)
    with pytest.raises(ValueError, match="past the snapshot"):
        storage.save_snapshot(SnapshotMeta(index=8, term=1), b"s", compact_to=9)
    assert storage.load().entries == entries(1, 10)


def test_batch_inside_the_snapshot_is_refused_even_with_a_tail(storage: Storage) -> None:
    # Entries a snapshot covers are committed: conflict truncation never reaches them.
    storage.save(None, entries(1, 10))
    storage.save_snapshot(META, b"s", compact_to=2)
    with pytest.raises(ValueError, match="inside the snapshot"):
        storage.save(None, entries(5, 6, term=2))
    storage.save(None, entries(7, 8, term=2))  # after it: fine
    assert storage.load().entries == entries(3, 6) + entries(7, 8, term=2)


def test_snapshot_disagreeing_with_the_log_is_refused(storage: Storage) -> None:
    storage.save(None, entries(1, 10, term=1))
    with pytest.raises(ValueError, match="has term 2, the log has 1"):
        storage.save_snapshot(SnapshotMeta(index=6, term=2), b"s")
    assert storage.load_snapshot() is None
    assert storage.load().entries == entries(1, 10)


def test_install_compacts_to_the_snapshot(storage: Storage) -> None:
    storage.save(None, entries(1, 10))
    storage.save_snapshot(SnapshotMeta(index=3, term=1), b"3", compact_to=0)
    install(storage, META, b"abc", keep_entries_after=True)
    state = storage.load()
    assert (state.compacted, state.entries) == (LogPosition(6, 1), entries(7, 10))


def test_install_keeps_only_entries_that_follow_the_snapshot(storage: Storage) -> None:
    # The core may say keep for entries it has not saved yet (they come in the
    # same Ready's save(), after the install): what is stored does not follow
    # the snapshot, so none of it is kept -- and nothing raises.
    storage.save(None, entries(1, 4))
    install(storage, META, b"abc", keep_entries_after=True)
    state = storage.load()
    assert (state.compacted, state.entries) == (LogPosition(6, 1), [])
    storage.save(None, entries(7, 9))  # the core's unstable entries
    assert storage.load().entries == entries(7, 9)


def test_install_never_keeps_a_conflicting_suffix(storage: Storage) -> None:
    # Stored 6..9 are from term 1; the snapshot's entry 6 has term 2: those
    # entries belong to another history and must not follow it (terms would
    # go backwards along the log).
    storage.save(None, entries(1, 9, term=1))
    meta = SnapshotMeta(index=6, term=2, config=META.config)
    install(storage, meta, b"abc", keep_entries_after=True)
    state = storage.load()
    assert (state.snapshot, state.compacted, state.entries) == (meta, LogPosition(6, 2), [])


# ------------------------------------------------------------- snapshot readers
def read_all(reader: SnapshotReader, chunk: int = 1000) -> bytes:
    out, offset = [], 0
    while part := reader.read(offset, chunk):
        assert len(part) <= chunk
        out.append(part)
        offset += len(part)
    return b"".join(out)


def test_reader_reports_size_and_checksum_and_reads_in_chunks(storage: Storage) -> None:
    data = bytes(range(256)) * 40
    storage.save(None, entries(1, 6))
    storage.save_snapshot(META, data)
    reader = storage.open_snapshot_reader(META)
    try:
        assert (reader.meta, reader.size, reader.checksum) == (META, len(data), zlib.crc32(data))
        assert reader.transfer() == SnapshotTransfer(META, len(data), zlib.crc32(data))
        assert read_all(reader) == data
        assert reader.read(len(data) - 3, 100) == data[-3:]
        assert reader.read(len(data) + 5, 10) == b""
    finally:
        reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.read(0, 1)
    reader.close()  # idempotent


def test_reader_outlives_newer_snapshots(storage: Storage) -> None:
    # Issue 11 #2: each new snapshot aborted the transfer in progress.
    old = b"old snapshot " * 500
    storage.save(None, entries(1, 10))
    storage.save_snapshot(META, old)
    reader = storage.open_snapshot_reader(META)
    first = reader.read(0, 100)
    storage.save_snapshot(SnapshotMeta(index=8, term=1), b"newer")
    storage.save_snapshot(SnapshotMeta(index=9, term=1), b"newest")
    install(storage, SnapshotMeta(index=12, term=2), b"installed", keep_entries_after=False)
    assert first + reader.read(100, len(old)) == old
    reader.close()
    with pytest.raises(KeyError):
        storage.open_snapshot_reader(META)


def test_reader_is_only_for_the_newest_snapshot(storage: Storage) -> None:
    with pytest.raises(KeyError):
        storage.open_snapshot_reader()
    with pytest.raises(KeyError):
        storage.open_snapshot_reader(META)
    storage.save(None, entries(1, 10))
    storage.save_snapshot(META, b"six")
    for wrong in (SnapshotMeta(index=6, term=2), SnapshotMeta(index=5, term=1)):
        with pytest.raises(KeyError):
            storage.open_snapshot_reader(wrong)
    # Matched on (index, term): the message's copy of the config does not matter.
    with storage.open_snapshot_reader(SnapshotMeta(index=6, term=1)) as reader:
        assert reader.meta == META
        assert read_all(reader) == b"six"
    with pytest.raises(ValueError, match="closed"):
        reader.read(0, 1)
    with storage.open_snapshot_reader() as reader:  # no meta: the newest
        assert reader.meta == META
