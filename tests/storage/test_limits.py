"""Nothing out of range or of the wrong type reaches the disk, and nothing crashes.

Issue 10: term 2**63 made SQLite raise OverflowError and crashed a node. The
core refuses terms and indexes >= 2**62 from outside; storage is the last
line and refuses anything it could not store with ValueError, before writing
any of the batch.
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from typing import Any

import pytest

from tests.storage.test_conformance import META, entries
from trioraft.core import Configuration, Entry, EntryKind, HardState, Member, SnapshotMeta
from trioraft.storage import MAX_INT, SnapshotTransfer, Storage

BIG = 2**63

BAD_ENTRIES: list[tuple[Any, str]] = [
    (Entry(4, BIG), "term"),
    (Entry(4, -1), "term"),
    (Entry(4, 1.0), "term"),  # type: ignore[arg-type]
    (Entry(4, True), "term"),
    (Entry(4, 1, kind=7), "kind"),  # type: ignore[arg-type]
    (Entry(4, 1, kind=0), "kind"),  # type: ignore[arg-type]  # an int, not an EntryKind
    (Entry(4, 1, data="text"), "data bytes"),  # type: ignore[arg-type]
    (Entry(4, 1, data=bytearray(b"x")), "data bytes"),  # type: ignore[arg-type]
    (Entry(4.0, 1), "contiguous"),  # type: ignore[arg-type]
    (Entry(5, 1), "contiguous"),
]


@pytest.mark.parametrize(("bad", "match"), BAD_ENTRIES, ids=[m for _, m in BAD_ENTRIES])
def test_bad_last_entry_refuses_the_whole_batch(storage: Storage, bad: Entry, match: str) -> None:
    storage.save(HardState(term=1), entries(1, 2))
    with pytest.raises(ValueError, match=match):
        storage.save(HardState(term=9, vote="x", commit=2), [Entry(3, 1), bad])
    state = storage.load()
    assert state.entries == entries(1, 2)  # not entry 3 either
    assert state.hard_state == HardState(term=1)  # nor the hard state


@pytest.mark.parametrize("index", [BIG, -1, 0, 2**64])
def test_out_of_range_first_index_is_refused(storage: Storage, index: int) -> None:
    with pytest.raises(ValueError, match="index"):
        storage.save(None, [Entry(index, 1)])
    assert storage.load().entries == []


BAD_HARD_STATES: list[tuple[Any, str]] = [
    (HardState(term=BIG), "term"),
    (HardState(term=-1), "term"),
    (HardState(term=1, commit=BIG), "commit"),
    (HardState(term=1, vote=""), "vote"),
    (HardState(term=1, vote="x" * 129), "vote"),
    (HardState(term=1, vote="\ud800"), "vote"),  # a lone surrogate: cannot be encoded
    (HardState(term=1, vote=7), "vote"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("hs", "match"), BAD_HARD_STATES, ids=repr)
def test_bad_hard_state_is_refused_with_its_entries(
    storage: Storage, hs: HardState, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        storage.save(hs, entries(1, 3))
    assert storage.load().is_empty


def test_any_member_id_the_core_accepts_can_be_voted_for(storage: Storage) -> None:
    # The core takes ids of 1..128 characters; a vote for one must be storable,
    # or persisting it would stop the node.
    for vote in ("a\nb", "\x00", "ü" * 128, "🙂"):
        storage.save(HardState(term=1, vote=vote), [])
        assert storage.load().hard_state.vote == vote


def test_the_largest_values_round_trip(storage: Storage) -> None:
    top = SnapshotMeta(index=MAX_INT - 1, term=MAX_INT)
    storage.save_snapshot(top, b"s")  # past the (empty) log: the log starts after it
    hs = HardState(term=MAX_INT, vote="v" * 128, commit=MAX_INT)
    storage.save(hs, [Entry(MAX_INT, MAX_INT, EntryKind.NOOP)])
    state = storage.load()
    assert state.hard_state == hs
    assert state.entries == [Entry(MAX_INT, MAX_INT, EntryKind.NOOP)]
    assert storage.load_snapshot() == (top, b"s")
    with pytest.raises(ValueError, match="index"):
        storage.save(None, [Entry(MAX_INT, MAX_INT), Entry(MAX_INT + 1, MAX_INT)])
    assert storage.load().entries == [Entry(MAX_INT, MAX_INT, EntryKind.NOOP)]


MANY = Configuration(tuple(Member(f"m{i}") for i in range(65)))
BAD_METAS: list[tuple[Any, str]] = [
    (SnapshotMeta(index=BIG, term=1), "snapshot index"),
    (SnapshotMeta(index=0, term=1), "snapshot index"),
    (SnapshotMeta(index=5, term=BIG), "snapshot term"),
    (SnapshotMeta(index=5, term=-1), "snapshot term"),
    (SnapshotMeta(index=5, term=1, config=Configuration((Member("x" * 200),))), "member id"),
    (SnapshotMeta(index=5, term=1, config=Configuration((Member("a"), Member("a")))), "twice"),
    (SnapshotMeta(index=5, term=1, config=MANY), "more than 64"),
    (SnapshotMeta(index=5, term=1, config=["a"]), "must be a Configuration"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("meta", "match"), BAD_METAS, ids=[m for _, m in BAD_METAS])
def test_bad_snapshot_meta_is_refused(storage: Storage, meta: SnapshotMeta, match: str) -> None:
    storage.save(None, entries(1, 10))
    with pytest.raises(ValueError, match=match):
        storage.save_snapshot(meta, b"data")
    with pytest.raises(ValueError, match=match):
        storage.stage_chunk(SnapshotTransfer(meta, 4, zlib.crc32(b"data")), 0, b"data")
    assert storage.load_snapshot() is None
    assert storage.load().entries == entries(1, 10)


@pytest.mark.parametrize("data", ["text", bytearray(b"x"), None, [b"x", "y"], (b"x", None)])
def test_snapshot_data_must_be_bytes(storage: Storage, data: object) -> None:
    storage.save(None, entries(1, 10))
    with pytest.raises(ValueError, match="bytes"):
        storage.save_snapshot(META, data)  # type: ignore[arg-type]
    assert storage.load_snapshot() is None


@pytest.mark.parametrize("index", [BIG, -1, 1.5, "3"])
def test_compaction_index_is_range_checked(storage: Storage, index: object) -> None:
    storage.save(None, entries(1, 10))
    storage.save_snapshot(META, b"s", compact_to=0)
    with pytest.raises(ValueError, match="compaction index"):
        storage.compact(index)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compaction index"):
        storage.save_snapshot(replace(META, index=7), b"s", compact_to=index)  # type: ignore[arg-type]
    assert storage.load().entries == entries(1, 10)


@pytest.mark.parametrize(("offset", "size"), [(-1, 5), (0, -1), (BIG, 1), (0, BIG)])
def test_snapshot_reads_are_range_checked(storage: Storage, offset: int, size: int) -> None:
    storage.save(None, entries(1, 10))
    storage.save_snapshot(META, b"s")
    with storage.open_snapshot_reader() as reader, pytest.raises(ValueError, match=r"2\*\*63"):
        reader.read(offset, size)
