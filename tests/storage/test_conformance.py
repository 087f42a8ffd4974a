"""The Storage protocol, as every implementation must honour it."""

from __future__ import annotations

import pytest

from trioraft.core import Configuration, Entry, EntryKind, HardState, SnapshotMeta
from trioraft.storage import PersistedState, Storage


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, EntryKind.NORMAL, f"cmd{i}".encode()) for i in range(first, last + 1)]


META = SnapshotMeta(index=6, term=1, config=Configuration.of_voters({"a", "b", "c"}))


def stage(s: Storage, meta: SnapshotMeta, data: bytes, chunk: int = 3) -> None:
    for off in range(0, len(data), chunk):
        assert s.write_incoming_chunk(meta, off, data[off : off + chunk]) == min(
            off + chunk, len(data)
        )


def test_fresh_storage_is_empty(storage: Storage) -> None:
    assert storage.load() == PersistedState()
    assert storage.load_snapshot() is None
    assert storage.snapshot_size() == 0


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


def test_snapshot_compacts_the_log(storage: Storage) -> None:
    storage.save(HardState(term=1, commit=8), entries(1, 10))
    storage.save_snapshot(META, b"state-at-6")
    state = storage.load()
    assert state.snapshot == META
    assert state.entries == entries(7, 10)
    assert state.hard_state.commit == 8
    assert storage.load_snapshot() == (META, b"state-at-6")
    assert storage.snapshot_size() == len(b"state-at-6")


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
    assert storage.load().entries == entries(10, 10)


def test_snapshot_reads_back_in_chunks(storage: Storage) -> None:
    data = bytes(range(256)) * 40
    storage.save(None, entries(1, 6))
    storage.save_snapshot(META, data)
    chunks = []
    offset = 0
    while chunk := storage.read_snapshot_chunk(META, offset, 1000):
        assert len(chunk) <= 1000
        chunks.append(chunk)
        offset += len(chunk)
    assert b"".join(chunks) == data
    assert storage.read_snapshot_chunk(META, len(data) + 5, 10) == b""


def test_reading_a_superseded_snapshot_raises_key_error(storage: Storage) -> None:
    with pytest.raises(KeyError):
        storage.read_snapshot_chunk(META, 0, 10)
    storage.save(None, entries(1, 10))
    storage.save_snapshot(META, b"six")
    storage.save_snapshot(SnapshotMeta(index=8, term=1), b"eight")
    with pytest.raises(KeyError):
        storage.read_snapshot_chunk(META, 0, 10)


def test_install_incoming_replaces_the_log(storage: Storage) -> None:
    storage.save(HardState(term=2), entries(1, 4))
    data = b"snapshot from the leader" * 10
    stage(storage, META, data)
    assert storage.install_incoming(META, keep_entries_after=False) == data
    state = storage.load()
    assert state.snapshot == META
    assert state.entries == []
    assert storage.load_snapshot() == (META, data)
    storage.save(None, entries(7, 8, term=2))
    assert storage.load().entries == entries(7, 8, term=2)


def test_install_incoming_can_keep_the_entries_after(storage: Storage) -> None:
    storage.save(None, entries(1, 9))
    stage(storage, META, b"abcdefgh")
    assert storage.install_incoming(META, keep_entries_after=True) == b"abcdefgh"
    assert storage.load().entries == entries(7, 9)


def test_chunk_at_offset_zero_restarts_the_transfer(storage: Storage) -> None:
    assert storage.write_incoming_chunk(META, 0, b"stale") == 5
    assert storage.write_incoming_chunk(META, 5, b"-more") == 10
    assert storage.write_incoming_chunk(META, 0, b"fresh") == 5
    assert storage.write_incoming_chunk(META, 5, b"!") == 6
    assert storage.install_incoming(META, keep_entries_after=False) == b"fresh!"


def test_new_transfer_replaces_an_unfinished_one(storage: Storage) -> None:
    other = SnapshotMeta(index=9, term=2, config=Configuration.of_voters({"a"}))
    storage.write_incoming_chunk(META, 0, b"old transfer")
    storage.write_incoming_chunk(other, 0, b"new")
    with pytest.raises(ValueError, match="no staged"):
        storage.install_incoming(META, keep_entries_after=False)
    assert storage.install_incoming(other, keep_entries_after=False) == b"new"


def test_out_of_order_chunk_is_refused(storage: Storage) -> None:
    storage.write_incoming_chunk(META, 0, b"12345")
    with pytest.raises(ValueError, match="out-of-order"):
        storage.write_incoming_chunk(META, 7, b"x")
    with pytest.raises(ValueError, match="out-of-order"):
        storage.write_incoming_chunk(META, 3, b"x")
    assert storage.write_incoming_chunk(META, 5, b"6") == 6


def test_chunk_without_a_started_transfer_is_refused(storage: Storage) -> None:
    with pytest.raises(ValueError, match="not started"):
        storage.write_incoming_chunk(META, 10, b"x")
    storage.write_incoming_chunk(META, 0, b"x")
    with pytest.raises(ValueError, match="not started"):
        storage.write_incoming_chunk(SnapshotMeta(index=7, term=1), 1, b"x")


def test_install_without_staging_is_refused(storage: Storage) -> None:
    with pytest.raises(ValueError, match="no staged"):
        storage.install_incoming(META, keep_entries_after=False)


def test_empty_incoming_snapshot_installs(storage: Storage) -> None:
    assert storage.write_incoming_chunk(META, 0, b"") == 0
    assert storage.install_incoming(META, keep_entries_after=False) == b""
    assert storage.load_snapshot() == (META, b"")


def test_closed_storage_refuses_work(storage: Storage) -> None:
    storage.close()
    with pytest.raises(ValueError, match="closed"):
        storage.save(HardState(term=1), [])
    storage.close()  # idempotent
