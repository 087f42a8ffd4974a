"""Regression tests for issue 11's core bugs (each fails on the code before its fix)."""

from __future__ import annotations

import random

import pytest

from tests.core.harness import Cluster
from trioraft.core import (
    AppendEntries,
    AppendEntriesResponse,
    CoreConfig,
    Entry,
    HardState,
    InstallSnapshot,
    Message,
    ProgressState,
    RaftCore,
    ReadIndexRequest,
    Role,
    SnapshotMeta,
    TimeoutNow,
)


def _leader_with_followers(n: int = 3, **cfg: object) -> Cluster:
    c = Cluster([chr(ord("a") + i) for i in range(n)], **cfg)
    c.elect("a")
    c.deliver()
    return c


def test_a_reordered_stale_rejection_never_moves_match_index_back() -> None:
    # b acknowledged everything; then a duplicate of an older rejection, whose
    # reject_index equals its match index, arrives late. The old code took it
    # for a wiped follower and moved match_index back.
    c = _leader_with_followers(max_entries_per_msg=1)
    for i in range(5):
        c.propose("a", f"x{i}".encode())
        c.deliver()
    a = c.core("a")
    match = a.progress["b"].match_index
    assert match == a.log.last_index()
    stale = AppendEntriesResponse(
        "b", "a", a.term, False, conflict_index=match, conflict_term=None, reject_index=match
    )
    a.step(stale, c.now)
    c.process("a")
    assert a.progress["b"].match_index == match
    older = AppendEntriesResponse("b", "a", a.term, False, conflict_index=2, reject_index=3)
    a.step(older, c.now)
    assert a.progress["b"].match_index == match


def test_an_unresponsive_follower_gets_one_small_probe_then_heartbeats_only() -> None:
    c = _leader_with_followers(max_bytes_per_msg=1 << 20)
    c.crash("c")  # c stops answering; it is not removed
    sent_to_c: list[AppendEntries] = []

    def deliver() -> None:
        sent_to_c.extend(m for m in c.queue if isinstance(m, AppendEntries) and m.dst == "c")
        c.deliver()

    for _ in range(10):  # a backlog of 1,000 one-KiB entries for c to miss
        for _ in range(100):
            c.core("a").propose([b"v" * 1024])
        c.process("a")
        deliver()
    before = len(sent_to_c)
    for _ in range(40):  # two seconds of heartbeats
        c.tick("a")
        deliver()
    later = sent_to_c[before:]
    entries = sum(len(m.entries) for m in later)
    assert len([m for m in later if not m.entries]) >= 30  # the heartbeats go on
    # Before the fix: a probe of up to 512 entries / 1 MiB at every heartbeat.
    assert entries <= 2 * CoreConfig(id="a", voters=frozenset()).probe_max_entries
    assert c.core("a").progress["c"].state is ProgressState.PROBE


def test_the_next_probe_goes_once_the_follower_answers() -> None:
    c = _leader_with_followers(max_entries_per_msg=64)
    c.crash("c")
    for i in range(30):
        c.propose("a", f"x{i}".encode())
    c.deliver()
    for _ in range(5):
        c.tick("a")
        c.deliver()
    c.boot("c")  # back (from its disk): it answers again and catches up
    for _ in range(10):
        c.tick("a")
        c.deliver()
    assert c.core("c").log.last_index() == c.core("a").log.last_index()
    assert c.core("a").progress["c"].state is ProgressState.REPLICATE


def test_forwarded_reads_lost_on_the_network_time_out_while_the_leader_is_stable() -> None:
    c = _leader_with_followers(read_timeout=1.0)
    b = c.core("b")
    b.read_index(1)
    c.process("b")
    c.queue = [m for m in c.queue if not isinstance(m, ReadIndexRequest)]  # lost
    for _ in range(30):  # 1.5 s of a healthy leader's heartbeats
        c.tick("a")
        c.deliver()
        if c.now >= b.deadline:
            b.handle_timeout(c.now)
            c.process("b")
    assert c.read_states["b"] == [(1, -1)]
    assert b.leader_id == "a"  # refused although the leader never changed
    assert not b._forwarded


def test_pending_reads_are_bounded_on_followers_and_leaders() -> None:
    c = _leader_with_followers(max_pending_reads=10)
    b = c.core("b")
    for ctx in range(1, 16):
        b.read_index(ctx)
    rd = b.ready()
    assert sorted(rd.read_states) == [(ctx, -1) for ctx in range(11, 16)]
    b.advance(rd)
    a = c.core("a")
    a.step(ReadIndexRequest("c", "a", a.term, tuple(range(100, 120))), c.now)
    refused = [m for m in a.ready().messages if getattr(m, "index", None) == -1]
    assert sum(len(m.ctxs) for m in refused) == 10  # type: ignore[attr-defined]


def test_a_retiring_node_does_not_campaign_on_timeout_now() -> None:
    c = _leader_with_followers()
    b = c.core("b")
    b.retire()
    term = b.term
    b.step(TimeoutNow("a", "b", term), c.now)
    c.process("b")
    assert b.role is Role.FOLLOWER
    assert b.term == term


def test_a_rejected_heartbeat_during_a_snapshot_transfer_starts_no_second_transfer() -> None:
    c = _leader_with_followers(snapshot_catchup_entries=0)
    c.crash("c")
    for i in range(10):
        c.propose("a", f"x{i}".encode())
        c.deliver()
    a = c.core("a")
    a.compact(a.applied_index)  # c now needs a snapshot
    c.boot("c")
    for _ in range(10):  # heartbeats while the transfer is in flight (never delivered)
        c.tick("a")
        c.deliver(keep=lambda m: isinstance(m, InstallSnapshot))
    assert len([m for m in c.queue if isinstance(m, InstallSnapshot)]) == 1
    assert a.progress["c"].state is ProgressState.SNAPSHOT


def test_a_follower_a_little_behind_catches_up_from_the_tail_not_a_snapshot() -> None:
    c = _leader_with_followers(snapshot_catchup_entries=50)
    c.crash("c")
    for i in range(30):
        c.propose("a", f"x{i}".encode())
        c.deliver()
    a = c.core("a")
    point = a.snapshot_taken(a.snapshot_meta(a.applied_index))
    assert a.log.snapshot.index == a.applied_index
    assert point == (0, 0)  # 32 < 50 entries: nothing dropped yet
    c.boot("c")
    seen: list[Message] = []
    for _ in range(5):
        c.tick("a")
        c.deliver(lambda m: bool(seen.append(m)) or True)
    assert not [m for m in seen if isinstance(m, InstallSnapshot)]
    assert c.core("c").log.last_index() == a.log.last_index()


def test_a_follower_behind_the_compaction_point_gets_the_newest_snapshot() -> None:
    c = _leader_with_followers(snapshot_catchup_entries=5)
    c.crash("c")
    for i in range(30):
        c.propose("a", f"x{i}".encode())
        c.deliver()
    a = c.core("a")
    meta = a.snapshot_meta(a.applied_index)
    assert a.snapshot_taken(meta) == (meta.index - 5, a.log.term_at(meta.index - 5))
    assert a.log.first_index() == meta.index - 4
    c.boot("c")
    c.tick("a")
    c.deliver(keep=lambda m: isinstance(m, InstallSnapshot))
    assert [m.meta for m in c.queue if isinstance(m, InstallSnapshot)] == [meta]


def test_restart_takes_the_compaction_point() -> None:
    log = [Entry(i, 1, data=b"x") for i in range(1, 21)]
    snap = SnapshotMeta(15, 1)
    cfg = CoreConfig(id="a", voters=frozenset("abc"))
    core = RaftCore(cfg, random.Random(1), HardState(1, None, 20), snap, log[9:], 0.0, (9, 1))
    assert core.log.first_index() == 10
    assert core.log.snapshot == snap
    assert core.applied_index == 15
    assert core.commit_index == 20
    # Without a compaction point, the snapshot's own point is the compaction point.
    core = RaftCore(cfg, random.Random(1), HardState(1, None, 20), snap, log[9:], 0.0)
    assert core.log.first_index() == 16


def test_snapshot_meta_names_the_configuration_in_force_at_its_index() -> None:
    c = _leader_with_followers()
    a = c.core("a")
    meta = a.snapshot_meta(a.applied_index)
    assert meta.config == a.configuration
    assert meta.term == a.term


def test_a_transfer_is_refused_for_a_lagging_target_and_ends_on_a_timeout() -> None:
    from trioraft.core import TransferRefused

    c = _leader_with_followers()
    c.crash("c")
    for i in range(3):
        c.propose("a", f"x{i}".encode())
        c.deliver()
    a = c.core("a")
    for _ in range(3):
        c.tick("a")
        c.deliver()
    with pytest.raises(TransferRefused, match="not caught up"):
        a.transfer_leadership("c")
    with pytest.raises(TransferRefused, match="not another voter"):
        a.transfer_leadership("zz")
    a.transfer_leadership("b")
    c.process("a")
    c.deliver(lambda m: not isinstance(m, TimeoutNow))  # the TimeoutNow is lost
    assert a.transfer_target == "b"
    for _ in range(10):
        c.tick("a")
        c.deliver(lambda m: not isinstance(m, TimeoutNow))
    assert a.role is Role.LEADER
    assert a.transfer_target is None  # timed out: proposals are taken again
    a.propose([b"y"])


def test_snapshot_taken_ignores_an_overtaken_snapshot_and_refuses_a_foreign_one() -> None:
    c = _leader_with_followers(snapshot_catchup_entries=0)
    for i in range(5):
        c.propose("a", f"x{i}".encode())
        c.deliver()
    a = c.core("a")
    old = a.snapshot_meta(3)
    new = a.snapshot_meta(a.applied_index)
    assert a.snapshot_taken(new) == (new.index, new.term)
    assert a.snapshot_taken(old) == (new.index, new.term)  # overtaken: nothing changes
    assert a.log.snapshot == new
    with pytest.raises(ValueError, match="no snapshot"):
        a.snapshot_meta(a.applied_index + 1)  # not applied
    c.propose("a", b"more")
    c.deliver()
    with pytest.raises(ValueError, match="does not match"):
        a.snapshot_taken(SnapshotMeta(a.applied_index, a.term + 7, new.config))
