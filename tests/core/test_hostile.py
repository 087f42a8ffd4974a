"""Issue 10: a node never raises, asserts or corrupts its state because of what a
peer sends. One test per finding (each fails on the previous core)."""

from __future__ import annotations

import pytest

from tests.core.harness import Cluster
from trioraft.core import (
    MAX_TERM_OR_INDEX,
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    ReadIndexResponse,
    RequestVote,
    Role,
    SnapshotMeta,
    TimeoutNow,
)


def _cluster() -> Cluster:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.deliver()
    for i in range(3):
        c.propose("a", f"x{i}".encode())
        c.deliver()
    return c


def _snapshot_of(c: Cluster, node: str) -> tuple[object, ...]:
    k = c.core(node)
    return (k.term, k.vote, k.role, k.leader_id, k.commit_index, tuple(k.log.entries),
            k.log.snapshot, k.configuration)


def test_a_forged_match_index_beyond_the_log_is_ignored() -> None:
    # Before: match 10**6 made the leader stop replicating to b (504s for 40 s).
    c = _cluster()
    a = c.core("a")
    a.step(AppendEntriesResponse("b", "a", a.term, True, match_index=10**6), c.now)
    c.process("a")
    assert a.progress["b"].match_index <= a.log.last_index()
    c.crash("c")  # commits now need b
    index = c.propose("a", b"after")
    c.deliver()
    assert a.commit_index >= index


def test_a_forged_snapshot_response_beyond_the_log_is_ignored() -> None:
    c = _cluster()
    a = c.core("a")
    a.step(InstallSnapshotResponse("b", "a", a.term, 10**6), c.now)
    assert a.progress["b"].match_index <= a.log.last_index()


def test_a_forged_future_read_round_ack_does_not_confirm_later_reads() -> None:
    # Before: b's forged read_seq pre-acknowledged every later read round, so a
    # leader could serve reads without confirming it still led.
    c = _cluster()
    a = c.core("a")
    a.step(AppendEntriesResponse("b", "a", a.term, True, match_index=1, read_seq=10**6), c.now)
    c.process("a")
    a.read_index(7)
    c.process("a")
    c.queue = []  # the heartbeat round is lost: nobody confirms
    c.process("a")
    assert c.read_states["a"] == []


@pytest.mark.parametrize(
    "entries",
    [
        (Entry(5, 2), Entry(6, 1)),  # terms decrease
        (Entry(5, 9),),  # beyond the message's term
        (Entry(7, 2),),  # not contiguous with prev_log_index
        (Entry(5, 2, EntryKind.CONFIG, b"\xff not json"),),  # undecodable CONFIG
        (Entry(5, 2, EntryKind.CONFIG, b"[]"),),  # a configuration without voters
    ],
)
def test_malformed_append_entries_change_nothing(entries: tuple[Entry, ...]) -> None:
    c = _cluster()
    b = c.core("b")
    before = _snapshot_of(c, "b")
    last = b.log.last_index()
    b.step(AppendEntries("a", "b", b.term, last, b.log.last_term(), entries, 10**9), c.now)
    c.process("b")
    assert _snapshot_of(c, "b") == before


def test_leader_commit_beyond_the_entries_commits_only_what_was_sent() -> None:
    c = _cluster()
    b = c.core("b")
    last = b.log.last_index()
    msg = AppendEntries("a", "b", b.term, last, b.log.last_term(),
                        (Entry(last + 1, b.term, data=b"n"),), 10**9)
    b.step(msg, c.now)
    c.process("b")
    assert b.commit_index == last + 1


@pytest.mark.parametrize(
    "meta",
    [
        SnapshotMeta(50, 9, Configuration.of_voters("abc")),  # term beyond the message's
        SnapshotMeta(50, 1, Configuration()),  # no configuration
        SnapshotMeta(0, 0, Configuration.of_voters("abc")),  # index 0
    ],
)
def test_odd_install_snapshot_metas_change_nothing(meta: SnapshotMeta) -> None:
    c = _cluster()
    before = _snapshot_of(c, "b")
    c.core("b").step(InstallSnapshot("a", "b", c.core("b").term, meta, 0), c.now)
    c.process("b")
    assert _snapshot_of(c, "b") == before


def test_a_stale_install_snapshot_changes_nothing() -> None:
    c = _cluster()
    b = c.core("b")
    before = _snapshot_of(c, "b")
    meta = SnapshotMeta(1, 1, Configuration.of_voters("abc"))
    b.step(InstallSnapshot("a", "b", b.term, meta, 0), c.now)
    c.process("b")
    assert _snapshot_of(c, "b")[:7] == before[:7]


def test_a_second_leader_in_the_same_term_is_not_believed() -> None:
    c = _cluster()
    b = c.core("b")
    before = _snapshot_of(c, "b")
    last = b.log.last_index()
    forged = AppendEntries("c", "b", b.term, last, b.log.last_term(),
                           (Entry(last + 1, b.term, data=b"evil"),), last + 1)
    b.step(forged, c.now)
    c.process("b")
    assert _snapshot_of(c, "b") == before
    a = c.core("a")
    a.step(AppendEntries("c", "a", a.term, 0, 0, (), 0), c.now)
    assert a.role is Role.LEADER


def test_read_index_responses_for_unknown_ids_or_from_others_are_ignored() -> None:
    c = _cluster()
    b = c.core("b")
    b.read_index(5)
    c.process("b")
    c.queue = []
    b.step(ReadIndexResponse("a", "b", b.term, (99,), 10**12), c.now)  # unknown id
    b.step(ReadIndexResponse("c", "b", b.term, (5,), 0), c.now)  # not the leader
    c.process("b")
    assert c.read_states["b"] == []
    b.step(ReadIndexResponse("a", "b", b.term, (5,), 4), c.now)
    c.process("b")
    assert c.read_states["b"] == [(5, 4)]


def test_timeout_now_is_taken_only_from_the_current_leader_at_the_current_term() -> None:
    c = _cluster()
    b = c.core("b")
    term = b.term
    b.step(TimeoutNow("c", "b", term), c.now)  # not the leader
    b.step(TimeoutNow("a", "b", term + 5), c.now)  # not our term
    c.process("b")
    assert (b.term, b.role) == (term, Role.FOLLOWER)
    b.step(TimeoutNow("a", "b", term), c.now)
    assert b.role is Role.CANDIDATE
    assert b.term == term + 1


def test_a_transfer_vote_cannot_get_past_the_lease_to_inflate_terms() -> None:
    c = _cluster()
    b = c.core("b")
    term = b.term
    b.step(RequestVote("c", "b", term + 10**9, 10**6, term, transfer=True), c.now)
    c.process("b")
    assert b.term == term
    assert b.leader_id == "a"
    # Not up to date: refused as well, even for the next term.
    b.step(RequestVote("c", "b", term + 1, 0, 0, transfer=True), c.now)
    assert b.term == term


def test_terms_at_or_beyond_2_62_are_refused_and_never_reached_by_increment() -> None:
    c = _cluster()
    b = c.core("b")
    before = _snapshot_of(c, "b")
    for t in (MAX_TERM_OR_INDEX, 2**63 - 1, 2**63, -1):
        b.step(AppendEntries("a", "b", t, 0, 0, (), 0), c.now)
        b.step(RequestVote("c", "b", t, 10**6, 1), c.now)
    c.process("b")
    assert _snapshot_of(c, "b") == before
    top = MAX_TERM_OR_INDEX - 1
    b.step(AppendEntries("a", "b", top, 0, 0, (), 0), c.now)
    assert b.term == top
    c.now += 100
    b.handle_timeout(c.now)  # its election timer fires: it must not go past the bound
    c.process("b")
    assert b.term == top
    assert b.role is not Role.CANDIDATE


def test_wrong_field_types_are_dropped_not_raised() -> None:
    c = _cluster()
    b = c.core("b")
    before = _snapshot_of(c, "b")
    weird = [
        AppendEntries("a", "b", b.term, "1", 0, (), 0),  # type: ignore[arg-type]
        AppendEntries("a", "b", b.term, 0, 0, [Entry(1, 1)], 0),  # type: ignore[arg-type]
        AppendEntries("a", "b", b.term, 0, 0, (Entry(1, 1, 7),), 0),  # type: ignore[arg-type]
        RequestVote("c", "b", True, 0, 0),  # type: ignore[arg-type]
        ReadIndexResponse("a", "b", b.term, ("x",), 1),  # type: ignore[arg-type]
        TimeoutNow("a" * 1000, "b", b.term),
    ]
    for m in weird:
        b.step(m, c.now)
    c.process("b")
    assert _snapshot_of(c, "b") == before


def test_entries_that_contradict_our_committed_prefix_are_not_appended() -> None:
    # Found by the fuzzer: a message reaching back below our commit index whose
    # entry at the commit index has another term cannot come from a real
    # leader (Leader Completeness); appending its tail made our log's terms
    # decrease.
    c = _cluster()
    b = c.core("b")
    c.elect("b")  # b leads term 2 ...
    c.deliver()
    c.propose("b", b"y")
    c.deliver()
    a = c.core("a")
    assert a.log.last_term() == a.term == 2
    before = _snapshot_of(c, "a")
    last = a.log.last_index()
    forged = AppendEntries("b", "a", a.term, 1, 1, tuple(Entry(i, 1) for i in range(2, last + 2)),
                           0)
    a.step(forged, c.now)
    c.process("a")
    assert _snapshot_of(c, "a") == before
    assert b.role is Role.LEADER


def test_a_snapshot_older_in_term_than_our_committed_entries_is_ignored() -> None:
    c = _cluster()
    c.elect("b")
    c.deliver()
    a = c.core("a")
    before = _snapshot_of(c, "a")
    meta = SnapshotMeta(a.log.last_index() + 5, 1, Configuration.of_voters("abc"))
    a.step(InstallSnapshot("b", "a", a.term, meta, 0), c.now)
    c.process("a")
    assert _snapshot_of(c, "a") == before
