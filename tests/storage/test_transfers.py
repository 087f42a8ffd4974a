"""Incoming snapshot transfers (issue 11 #3, issue 10), over every implementation.

A transfer is named by (meta, size, CRC32); staging is per transfer and
bounded; the whole staged data is checked before it can be installed, and a
finished transfer is never written again.
"""

from __future__ import annotations

import zlib

import pytest

from tests.storage.conftest import SMALL_MAX
from tests.storage.test_conformance import META, entries
from trioraft.core import HardState, SnapshotMeta
from trioraft.storage import MAX_FINISHED, LogPosition, SnapshotTransfer, Storage

DATA = b"the leader's state machine, " * 20


def transfer(data: bytes = DATA, meta: SnapshotMeta = META) -> SnapshotTransfer:
    return SnapshotTransfer(meta, len(data), zlib.crc32(data))


def send(s: Storage, t: SnapshotTransfer, data: bytes, chunk: int = 50) -> None:
    for off in range(0, max(len(data), 1), chunk):
        assert s.stage_chunk(t, off, data[off : off + chunk]) == min(off + chunk, len(data))


def receive(s: Storage, data: bytes = DATA, meta: SnapshotMeta = META) -> SnapshotTransfer:
    t = transfer(data, meta)
    send(s, t, data)
    assert s.finish_transfer(t) == data
    return t


def current(s: Storage) -> tuple[SnapshotMeta, bytes] | None:
    return s.load_snapshot()


# ------------------------------------------------------------------ the happy path
def test_transfer_stages_finishes_and_installs(storage: Storage) -> None:
    storage.save(HardState(term=2, vote="a", commit=3), entries(1, 4))
    t = receive(storage)
    storage.install_transfer(t, keep_entries_after=False)
    assert current(storage) == (META, DATA)
    state = storage.load()
    assert (state.snapshot, state.compacted, state.entries) == (META, LogPosition(6, 1), [])
    assert state.hard_state == HardState(term=2, vote="a", commit=3)
    with pytest.raises(ValueError, match="not finished"):
        storage.install_transfer(t, keep_entries_after=False)  # it is gone once installed


def test_installed_transfer_can_be_sent_on(storage: Storage) -> None:
    t = receive(storage)
    storage.install_transfer(t, keep_entries_after=False)
    with storage.open_snapshot_reader(META) as reader:
        assert reader.transfer() == t


def test_empty_snapshot_transfers(storage: Storage) -> None:
    t = receive(storage, b"")
    storage.install_transfer(t, keep_entries_after=False)
    assert current(storage) == (META, b"")


def test_install_keeping_the_entries_after(storage: Storage) -> None:
    storage.save(None, entries(1, 9))
    t = receive(storage)
    storage.install_transfer(t, keep_entries_after=True)
    assert storage.load().entries == entries(7, 9)


# ------------------------------------------------------------------ order and restarts
def test_chunks_must_come_in_order(storage: Storage) -> None:
    t = transfer()
    storage.stage_chunk(t, 0, DATA[:10])
    for off in (5, 11, 50):
        with pytest.raises(ValueError, match="out-of-order"):
            storage.stage_chunk(t, off, DATA[off : off + 5])
    with pytest.raises(ValueError, match="not started"):
        storage.stage_chunk(transfer(DATA + b"!"), 10, b"x")
    assert storage.stage_chunk(t, 10, DATA[10:]) == len(DATA)
    assert storage.finish_transfer(t) == DATA


def test_offset_zero_restarts_the_same_transfer(storage: Storage) -> None:
    t = transfer()
    storage.stage_chunk(t, 0, b"garbage that will be replaced")
    send(storage, t, DATA)
    assert storage.finish_transfer(t) == DATA


def test_a_new_transfer_abandons_the_one_in_progress(storage: Storage) -> None:
    old, new = transfer(), transfer(b"newer", SnapshotMeta(index=9, term=2))
    storage.stage_chunk(old, 0, DATA[:10])
    send(storage, new, b"newer")
    with pytest.raises(ValueError, match=r"no snapshot transfer .* in progress"):
        storage.finish_transfer(old)
    with pytest.raises(ValueError, match="not started"):
        storage.stage_chunk(old, 10, DATA[10:20])
    assert storage.finish_transfer(new) == b"newer"


def test_incomplete_transfer_does_not_finish(storage: Storage) -> None:
    t = transfer()
    storage.stage_chunk(t, 0, DATA[:100])
    with pytest.raises(ValueError, match=f"incomplete: 100 of {len(DATA)}"):
        storage.finish_transfer(t)
    # Still in progress: the rest may come.
    storage.stage_chunk(t, 100, DATA[100:])
    assert storage.finish_transfer(t) == DATA


def test_truncated_prefix_with_its_own_checksum_is_another_transfer(storage: Storage) -> None:
    # Issue 11 #3 (b): a prefix whose checksum matched was installed. A prefix
    # is only ever staged under the full transfer's name, and that needs it all.
    full = transfer()
    storage.stage_chunk(full, 0, DATA[:100])
    with pytest.raises(ValueError, match="incomplete"):
        storage.finish_transfer(full)
    with pytest.raises(ValueError, match="not finished"):
        storage.install_transfer(full, keep_entries_after=False)
    assert current(storage) is None


# ------------------------------------------------------------------ checks before install
def test_checksum_mismatch_is_refused_and_discarded(storage: Storage) -> None:
    lying = SnapshotTransfer(META, len(DATA), zlib.crc32(DATA) ^ 1)
    send(storage, lying, DATA)
    with pytest.raises(ValueError, match=r"fails its check.*discarded"):
        storage.finish_transfer(lying)
    with pytest.raises(ValueError, match="not finished"):
        storage.install_transfer(lying, keep_entries_after=False)
    with pytest.raises(ValueError, match="in progress"):
        storage.finish_transfer(lying)
    assert current(storage) is None


def test_garbage_that_does_not_decode_never_reaches_the_snapshot(storage: Storage) -> None:
    # Issue 10: a garbage chunk with done=true was written to disk before being
    # checked, and the node failed on every restart. Now the runtime checks the
    # finished data (its state machine's restore) and discards it if it fails.
    storage.save(None, entries(1, 10))
    storage.save_snapshot(META, b"the good one", compact_to=6)
    garbage = b"\xff" * 40
    t = receive(storage, garbage, SnapshotMeta(index=9, term=1))
    storage.discard_transfer(t)  # the runtime's restore() refused it
    with pytest.raises(ValueError, match="not finished"):
        storage.install_transfer(t, keep_entries_after=False)
    state = storage.load()
    assert current(storage) == (META, b"the good one")
    assert (state.snapshot, state.entries) == (META, entries(7, 10))


def test_finished_transfer_is_never_overwritten(storage: Storage) -> None:
    # Issue 11 #3: a restart at offset 0 overwrote a finished, not yet
    # installed transfer, and the install recorded a prefix.
    t = receive(storage)
    with pytest.raises(ValueError, match="already received"):
        storage.stage_chunk(t, 0, DATA[:10])
    other = transfer(b"another snapshot", SnapshotMeta(index=7, term=1))
    send(storage, other, b"another")  # a different transfer: its own staging
    assert storage.finish_transfer(t) == DATA  # (finishing again re-checks it)
    storage.install_transfer(t, keep_entries_after=False)
    assert current(storage) == (META, DATA)


def test_two_finished_transfers_each_install_their_own_data(storage: Storage) -> None:
    a = receive(storage, b"snapshot A", SnapshotMeta(index=6, term=1))
    c = receive(storage, b"snapshot C", SnapshotMeta(index=5, term=2))
    storage.install_transfer(a, keep_entries_after=False)
    assert current(storage) == (SnapshotMeta(index=6, term=1), b"snapshot A")
    # C, now older than the newest snapshot, could never be installed: dropped.
    with pytest.raises(ValueError, match="not finished"):
        storage.install_transfer(c, keep_entries_after=False)
    b = receive(storage, b"snapshot B", SnapshotMeta(index=6, term=2))
    storage.install_transfer(b, keep_entries_after=False)  # not older: possible
    assert current(storage) == (SnapshotMeta(index=6, term=2), b"snapshot B")


def test_a_local_snapshot_drops_transfers_it_made_useless(storage: Storage) -> None:
    storage.save(None, entries(1, 10))
    old = receive(storage, b"at 5", SnapshotMeta(index=5, term=1))
    same = receive(storage, b"at 8", SnapshotMeta(index=8, term=1))
    storage.save_snapshot(SnapshotMeta(index=8, term=1), b"local 8")
    with pytest.raises(ValueError, match="not finished"):
        storage.install_transfer(old, keep_entries_after=False)
    storage.discard_transfer(same)  # what the runtime does once its core declines it
    assert current(storage) == (SnapshotMeta(index=8, term=1), b"local 8")


def test_install_of_an_older_snapshot_is_refused_and_changes_nothing(storage: Storage) -> None:
    storage.save(None, entries(1, 10))
    storage.save_snapshot(SnapshotMeta(index=8, term=1), b"eight", compact_to=8)
    t = receive(storage)  # index 6
    with pytest.raises(ValueError, match="older"):
        storage.install_transfer(t, keep_entries_after=False)
    assert current(storage) == (SnapshotMeta(index=8, term=1), b"eight")
    assert storage.load().entries == entries(9, 10)


def test_finished_transfers_are_bounded(storage: Storage) -> None:
    waiting = [
        receive(storage, f"snapshot {i}".encode(), SnapshotMeta(index=6 + i, term=1))
        for i in range(MAX_FINISHED)
    ]
    nxt = transfer(b"one too many", SnapshotMeta(index=20, term=1))
    with pytest.raises(ValueError, match="await installation"):
        storage.stage_chunk(nxt, 0, b"one")
    storage.discard_transfer(waiting[0])
    send(storage, nxt, b"one too many")
    assert storage.finish_transfer(nxt) == b"one too many"


def test_discard_of_an_unknown_transfer_is_a_no_op(storage: Storage) -> None:
    storage.discard_transfer(transfer())
    t = transfer()
    storage.stage_chunk(t, 0, DATA[:5])
    storage.discard_transfer(t)  # in progress: dropped too
    with pytest.raises(ValueError, match="not started"):
        storage.stage_chunk(t, 5, DATA[5:10])


def test_load_drops_staged_transfers(storage: Storage) -> None:
    # A restart: staging is not kept (a transfer simply starts over).
    t = receive(storage)
    u = transfer(b"half", SnapshotMeta(index=9, term=1))
    storage.stage_chunk(u, 0, b"ha")
    storage.load()
    with pytest.raises(ValueError, match="not finished"):
        storage.install_transfer(t, keep_entries_after=False)
    with pytest.raises(ValueError, match="not started"):
        storage.stage_chunk(u, 2, b"lf")


# ------------------------------------------------------------------ bounds
def test_transfer_larger_than_the_maximum_is_refused(small: Storage) -> None:
    big = b"x" * (SMALL_MAX + 1)
    with pytest.raises(ValueError, match="larger than the maximum"):
        small.stage_chunk(transfer(big), 0, b"x")
    t = receive(small, b"y" * SMALL_MAX)  # exactly the maximum is fine
    small.install_transfer(t, keep_entries_after=False)


def test_chunk_past_the_declared_size_is_refused(storage: Storage) -> None:
    # Issue 10: 50 MiB chunks grew a .part file without limit.
    t = transfer(b"0123456789")
    storage.stage_chunk(t, 0, b"01234")
    with pytest.raises(ValueError, match="runs past its declared size"):
        storage.stage_chunk(t, 5, b"56789-and-much-more")
    assert storage.stage_chunk(t, 5, b"56789") == 10  # nothing of it was staged
    assert storage.finish_transfer(t) == b"0123456789"


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (SnapshotTransfer(META, -1, 0), "snapshot size"),
        (SnapshotTransfer(META, 2**63, 0), "snapshot size"),
        (SnapshotTransfer(META, 5, 2**32), "CRC32"),
        (SnapshotTransfer(META, 5, -1), "CRC32"),
        (SnapshotTransfer(SnapshotMeta(index=0, term=1), 5, 0), "snapshot index"),
        (SnapshotTransfer(SnapshotMeta(index=2**63, term=1), 5, 0), "snapshot index"),
        (SnapshotTransfer(SnapshotMeta(index=1, term=2**63), 5, 0), "snapshot term"),
        (SnapshotTransfer(SnapshotMeta(index=1, term=True), 5, 0), "snapshot term"),
    ],
)
def test_out_of_range_transfers_are_refused(
    storage: Storage, bad: SnapshotTransfer, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        storage.stage_chunk(bad, 0, b"x")
    with pytest.raises(ValueError, match=match):
        storage.finish_transfer(bad)


@pytest.mark.parametrize(
    ("offset", "data", "match"),
    [
        (-1, b"x", "offset"),
        (2**63, b"x", "offset"),
        (True, b"x", "offset"),
        (0, "text", "must be bytes"),
        (0, None, "must be bytes"),
    ],
)
def test_malformed_chunks_are_refused(
    storage: Storage, offset: object, data: object, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        storage.stage_chunk(transfer(), offset, data)  # type: ignore[arg-type]
