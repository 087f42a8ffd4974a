"""The call sequences the runtime is to use (docs/storage.md, "How the runtime calls storage").

Each test plays one sequence end to end against both implementations, with
the real KV state machine as the decodability check, so the documented
sequences are known to work before the runtime is wired to them.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.storage.conftest import make
from trioraft.core import Configuration, Entry, EntryKind, HardState, Member, SnapshotMeta
from trioraft.kv import InvalidSnapshot, KVStateMachine, Put, encode_command
from trioraft.storage import (
    DataDirKind,
    Identity,
    SnapshotReader,
    SnapshotTransfer,
    Storage,
    classify,
    new_nonce,
)

CHUNK = 64
CONFIG = Configuration.of_voters({"a", "b", "c"})


@pytest.fixture(params=["memory", "sqlite"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Storage, Storage]]:
    leader = make(request.param, tmp_path / "leader")
    follower = make(request.param, tmp_path / "follower")
    yield leader, follower
    leader.close()
    follower.close()


def leader_with_state(s: Storage, n: int, catchup: int) -> KVStateMachine:
    """Apply n puts, snapshot at n keeping `catchup` entries (the core's choice)."""
    kv = KVStateMachine()
    log = [
        Entry(i, 1, EntryKind.NORMAL, encode_command(Put(f"k{i}", "v" * 20)))
        for i in range(1, n + 1)
    ]
    s.save(HardState(term=1, commit=n), log)
    for e in log:
        kv.apply(e.index, e.data)
    s.save_snapshot(SnapshotMeta(n, 1, CONFIG), kv.snapshot(), compact_to=max(0, n - catchup))
    return kv


def send_chunks(reader: SnapshotReader, offset: int = 0) -> list[tuple[int, bytes, bool]]:
    """What the sender puts on the wire: (offset, chunk, done), reader.transfer() in each."""
    out = []
    while True:
        chunk = reader.read(offset, CHUNK)
        done = offset + len(chunk) >= reader.size
        out.append((offset, chunk, done))
        offset += len(chunk)
        if done:
            return out


def receive(
    follower: Storage, t: SnapshotTransfer, chunks: list[tuple[int, bytes, bool]]
) -> KVStateMachine | None:
    """The receiver: stage, and on `done` finish + decode; None if it was refused."""
    for offset, chunk, done in chunks:
        follower.stage_chunk(t, offset, chunk)
        if done:
            data = follower.finish_transfer(t)  # size and checksum of the whole file
            kv = KVStateMachine()
            try:
                kv.restore(data)  # decodes? (before anything is replaced)
            except InvalidSnapshot:
                follower.discard_transfer(t)
                return None
            return kv  # held until the core's Ready says install (or declines: discard)
    return None


def test_snapshot_sent_while_newer_snapshots_are_taken(pair: tuple[Storage, Storage]) -> None:
    leader, follower = pair
    kv = leader_with_state(leader, 40, catchup=10)
    meta = leader.load().snapshot
    with leader.open_snapshot_reader(meta) as reader:  # KeyError: the core's meta is stale
        t = reader.transfer()
        first = send_chunks(reader)[:2]
        # The leader takes two more snapshots mid-transfer (issue 11 #2).
        for i in (41, 42):
            e = Entry(i, 1, EntryKind.NORMAL, encode_command(Put(f"k{i}", "w")))
            leader.save(None, [e])
            kv.apply(i, e.data)
            leader.save_snapshot(SnapshotMeta(i, 1, CONFIG), kv.snapshot(), compact_to=i - 10)
        rest = send_chunks(reader, first[-1][0] + len(first[-1][1]))
    installed = receive(follower, t, first + rest)
    assert installed is not None
    assert installed.get("k40") == "v" * 20
    # The core accepted it: Ready.snapshot == t.meta, keep_entries_after=False.
    follower.install_transfer(t, keep_entries_after=False)
    state = follower.load()
    assert (state.snapshot, state.compacted.index, state.entries) == (meta, 40, [])
    # The leader kept its catch-up tail: entries 33..42 could still be sent instead.
    assert [e.index for e in leader.load().entries] == list(range(33, 43))


def test_garbage_with_a_matching_checksum_never_replaces_anything(
    pair: tuple[Storage, Storage],
) -> None:
    _, follower = pair
    leader_with_state(follower, 10, catchup=0)
    before = follower.load_snapshot()
    garbage = b"\x93\x00garbage" * 20
    t = SnapshotTransfer(SnapshotMeta(20, 2, CONFIG), len(garbage), zlib.crc32(garbage))
    assert receive(follower, t, [(0, garbage, True)]) is None
    assert follower.load_snapshot() == before
    with pytest.raises(ValueError, match="not finished"):
        follower.install_transfer(t, keep_entries_after=False)


def test_restart_recovers_snapshot_and_tail(pair: tuple[Storage, Storage]) -> None:
    leader, _ = pair
    leader_with_state(leader, 30, catchup=5)
    state = leader.load()  # RaftCore(snapshot=state.snapshot, compacted=state.compacted, ...)
    snap = leader.load_snapshot()
    assert snap is not None
    assert snap[0] == state.snapshot
    kv = KVStateMachine()
    kv.restore(snap[1])
    assert kv.applied_index == state.snapshot.index == 30
    assert state.compacted.index == 25
    assert [e.index for e in state.entries] == list(range(26, 31))


def test_identity_and_bootstrap_sequence(pair: tuple[Storage, Storage]) -> None:
    s, _ = pair
    # First start: empty. Write a nonce before talking to anyone.
    assert classify(s.load(), s.load_identity()) is DataDirKind.EMPTY
    me = Identity(cluster_id="", member_id="", name="a", bootstrap_nonce=new_nonce())
    s.save_identity(me)
    assert classify(s.load(), s.load_identity()) is DataDirKind.IDENTIFIED
    # Every initial member seen empty: cluster id from all nonces, ids = names.
    config = Configuration.of(Member(n, name=n) for n in ("a", "b", "c"))
    s.save_identity(Identity("c-1234", "a", "a", me.bootstrap_nonce))  # identity first...
    s.bootstrap(config)  # ...then the log: never a log without an identity
    state = s.load()
    assert classify(state, s.load_identity()) is DataDirKind.MEMBER
    assert state.entries[0] == Entry(1, 1, EntryKind.CONFIG, config.encode())
