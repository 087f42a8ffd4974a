"""Membership changes in the core: learners, promotion, removal, one at a time."""

from __future__ import annotations

import pytest

from tests.core.harness import Cluster, between
from trioraft.core import (
    AppendEntries,
    ChangeInProgress,
    ConfChange,
    Configuration,
    EntryKind,
    LastVoter,
    Member,
    MemberExists,
    NotCaughtUp,
    NotLeader,
    Role,
    SnapshotMeta,
    UnknownMember,
)


def _cluster(*ids: str) -> Cluster:
    c = Cluster(list(ids or ("a", "b", "c")))
    c.elect("a")
    c.deliver()
    return c


def _commit_change(c: Cluster, leader: str, change: ConfChange) -> int:
    index, _ = c.core(leader).propose_change(change)
    c.process(leader)
    c.deliver()
    c.tick(leader)
    c.deliver()
    return index


def test_a_learner_receives_the_log_but_never_votes_or_counts() -> None:
    c = _cluster()
    c.join("d")
    _commit_change(c, "a", ConfChange.add_learner(Member("d")))
    a, d = c.core("a"), c.core("d")
    assert a.configuration.learners == {"d"}
    c.propose("a", b"x")
    c.deliver()
    assert d.log.last_index() == a.log.last_index()  # replicated to the learner
    assert d.role is Role.LEARNER
    assert d.configuration == a.configuration
    # With two of three voters down, the learner's acknowledgements commit nothing.
    c.crash("b")
    c.crash("c")
    index = c.propose("a", b"y")
    c.deliver()
    assert c.core("d").log.last_index() >= index
    assert a.commit_index < index
    # And the learner never campaigns.
    for _ in range(5):
        c.tick("d")
    assert d.role is Role.LEARNER
    assert not [m for m in c.queue if m.src == "d"]


def test_promotion_makes_a_learner_vote_and_count() -> None:
    c = _cluster()
    c.join("d")
    _commit_change(c, "a", ConfChange.add_learner(Member("d")))
    assert c.core("a").caught_up("d")
    _commit_change(c, "a", ConfChange.promote("d"))
    a = c.core("a")
    assert a.voters == {"a", "b", "c", "d"}
    assert a.quorum() == 3
    assert c.core("d").role is Role.FOLLOWER
    c.crash("c")
    index = c.propose("a", b"x")
    c.deliver()
    assert a.commit_index >= index  # a, b, d: 3 of 4
    c.boot("c")
    c.crash("a")
    c.elect("d", allow=between("b", "c", "d"))  # ... and d can now lead
    assert c.core("d").role is Role.LEADER


def test_a_learner_one_round_trip_behind_under_load_may_be_promoted() -> None:
    """Under steady writes a learner's acks trail the majority's: `match >= commit`
    holds at almost no instant, so the promotion was refused (409 not_caught_up)
    for as long as the load lasted. One message behind while acking is enough;
    a learner that stopped acking is not."""
    c = _cluster()
    c.join("d")
    _commit_change(c, "a", ConfChange.add_learner(Member("d")))
    a = c.core("a")
    c.tick("a")  # a quorum check: d is recently active
    c.deliver()
    # Writes commit on a, b, c; d's appends are still in flight (kept queued).
    index = c.propose("a", b"x")
    c.deliver(keep=lambda m: m.dst == "d" or m.src == "d")
    assert a.commit_index >= index
    assert not a.caught_up("d")
    assert a.promotable("d")
    _commit_change(c, "a", ConfChange.promote("d"))
    assert "d" in a.voters


def test_a_learner_that_stopped_acking_is_not_promoted() -> None:
    c = _cluster()
    c.join("d")
    _commit_change(c, "a", ConfChange.add_learner(Member("d")))
    a = c.core("a")
    c.crash("d")
    for _ in range(20):  # past a quorum check (one election timeout) with d silent
        c.tick("a")
        c.deliver()
    index = c.propose("a", b"x")
    c.deliver()
    assert a.commit_index >= index
    assert not a.promotable("d")
    with pytest.raises(NotCaughtUp):
        a.propose_change(ConfChange.promote("d"))


def test_removing_a_follower_shrinks_the_quorum() -> None:
    c = _cluster("a", "b", "c", "d")
    _commit_change(c, "a", ConfChange.remove("d"))
    a = c.core("a")
    assert a.voters == {"a", "b", "c"}
    assert "d" not in a.progress
    c.crash("c")
    index = c.propose("a", b"x")
    c.deliver()
    assert a.commit_index >= index


def test_a_removed_leader_leads_until_the_change_commits_then_steps_down() -> None:
    c = _cluster()
    a = c.core("a")
    index, _ = a.propose_change(ConfChange.remove("a"))
    c.process("a")
    assert a.role is Role.LEADER  # still leading, not counting itself
    assert a.quorum() == 2
    assert a.voters == {"b", "c"}
    c.deliver()
    c.tick("a")
    c.deliver()
    assert a.commit_index >= index
    assert a.role is Role.LEARNER  # stepped down; never campaigns again
    assert c.core("b").commit_index >= index  # told the others before leaving
    c.elect("b", allow=between("b", "c"))
    assert c.core("b").role is Role.LEADER
    for _ in range(5):
        c.tick("a")
    assert a.role is Role.LEARNER


def test_one_change_at_a_time() -> None:
    c = _cluster()
    c.join("d")
    a = c.core("a")
    a.propose_change(ConfChange.add_learner(Member("d")))
    with pytest.raises(ChangeInProgress, match="not committed"):
        a.propose_change(ConfChange.remove("c"))
    assert a.configuration.ids == {"a", "b", "c", "d"}


def test_no_change_before_the_leader_commits_an_entry_of_its_term() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")  # its no-op is not delivered yet
    with pytest.raises(ChangeInProgress, match="of its term"):
        c.core("a").propose_change(ConfChange.remove("c"))
    c.deliver()
    c.core("a").propose_change(ConfChange.remove("c"))


def test_refused_changes_change_nothing() -> None:
    c = _cluster()
    a = c.core("a")
    before = (a.configuration, a.log.last_index())
    with pytest.raises(MemberExists):
        a.propose_change(ConfChange.add_learner(Member("b")))
    with pytest.raises(UnknownMember):
        a.propose_change(ConfChange.remove("zz"))
    with pytest.raises(UnknownMember, match="not a learner"):
        a.propose_change(ConfChange.promote("b"))
    with pytest.raises(NotLeader):
        c.core("b").propose_change(ConfChange.remove("c"))
    assert (a.configuration, a.log.last_index()) == before
    solo = _cluster("a")
    with pytest.raises(LastVoter):
        solo.core("a").propose_change(ConfChange.remove("a"))


def test_a_follower_rolls_back_a_truncated_config_entry() -> None:
    c = _cluster()
    b = c.core("b")
    last = b.log.last_index()
    cfg = Configuration.of_voters(["a", "b"])
    from trioraft.core import Entry

    b.step(AppendEntries("a", "b", b.term, last, b.term,
                         (Entry(last + 1, b.term, EntryKind.CONFIG, cfg.encode()),), 0), c.now)
    assert b.voters == {"a", "b"}
    # A new leader of a later term overwrites that (uncommitted) entry.
    t = b.term + 1
    b.step(AppendEntries("c", "b", t, last, b.log.term_at(last),
                         (Entry(last + 1, t, EntryKind.NOOP),), last), c.now)
    assert b.voters == {"a", "b", "c"}


def test_configurations_survive_restarts_and_snapshots() -> None:
    c = _cluster()
    c.join("d")
    _commit_change(c, "a", ConfChange.add_learner(Member("d", name="node4", url="http://d")))
    a = c.core("a")
    expected = a.configuration
    c.crash("b")
    assert c.boot("b").configuration == expected  # from the CONFIG entry in its log
    meta = a.snapshot_meta(a.applied_index)
    assert meta.config == expected
    assert meta.config.get("d") == Member("d", False, "node4", "http://d")
    a.snapshot_taken(meta)
    c.disks["a"].snapshot = meta
    c.crash("a")
    c.disks["a"].entries = [e for e in c.disks["a"].entries if e.index > meta.index]
    assert c.boot("a").configuration == expected  # from the snapshot


def test_install_snapshot_carries_the_configuration() -> None:
    c = _cluster()
    c.join("d")
    d = c.core("d")
    cfg = Configuration.of([Member("a"), Member("b"), Member("c"), Member("d", voter=False)])
    from trioraft.core import InstallSnapshot

    d.step(InstallSnapshot("a", "d", c.core("a").term, SnapshotMeta(10, 1, cfg), 10), c.now)
    assert d.configuration == cfg
    assert d.role is Role.LEARNER
    c.process("d")
    assert c.disks["d"].snapshot.config == cfg


def test_a_voter_follows_a_leader_its_log_does_not_know_yet() -> None:
    # c lags: it never got the entries that added d; d is elected by a, b, d.
    c = _cluster()
    c.join("d")
    cut = between("a", "b", "d")
    _i, _ = c.core("a").propose_change(ConfChange.add_learner(Member("d")))
    c.process("a")
    c.deliver(cut)
    c.tick("a")
    c.deliver(cut)
    c.core("a").propose_change(ConfChange.promote("d"))
    c.process("a")
    c.deliver(cut)
    c.tick("a")
    c.deliver(cut)
    assert c.core("d").voters == {"a", "b", "c", "d"}
    assert "d" not in c.core("c").configuration.ids
    c.crash("a")
    c.boot("a")  # restarts as a follower
    c.elect("d", allow=between("a", "b", "d"))
    c.deliver()
    c.tick("d")
    c.deliver()
    assert c.core("c").log.last_index() == c.core("d").log.last_index()
    assert c.core("c").leader_id == "d"


# ----------------------------------------------------------------- teeth
# The two rules of single-server changes (see trioraft.core._changes), each
# shown necessary: the broken variant loses a committed entry in a scripted
# schedule, the real core refuses the change that makes it possible.


def _two_changes(unsafe: frozenset[str]) -> Cluster:
    """C0 = {a..e}. a removes d and then e back to back (C2 = {a, b, c}, quorum
    2) and commits X with b alone; c, d, e never saw either change. When a
    dies, c wins term 2 with c, d, e -- a majority of C0 -- without X."""
    c = Cluster(["a", "b", "c", "d", "e"], unsafe=unsafe)
    c.elect("a")
    c.deliver()
    a = c.core("a")
    a.propose_change(ConfChange.remove("d"))
    a.propose_change(ConfChange.remove("e"))  # refused unless "two_changes"
    x = c.propose("a", b"X")
    c.deliver(between("a", "b"))
    c.queue = []
    assert a.commit_index >= x  # a and b: a quorum of {a, b, c}
    c.crash("a")
    c.elect("c", allow=between("c", "d", "e"))
    c.deliver(between("b", "c", "d", "e"))
    c.tick("c")
    c.deliver(between("b", "c", "d", "e"))
    return c


def test_teeth_two_changes_in_flight_lose_a_committed_entry() -> None:
    c = _two_changes(frozenset({"two_changes"}))
    # A leader without the committed entry X: Leader Completeness is broken.
    assert c.core("c").role is Role.LEADER
    assert b"X" not in [e.data for e in c.core("c").log.entries]


def test_the_second_change_in_flight_is_refused() -> None:
    with pytest.raises(ChangeInProgress, match="not committed"):
        _two_changes(frozenset())


def _change_before_commit(unsafe: frozenset[str]) -> Cluster:
    """Ongaro's scenario (raft-dev, 2015). C0 = {a, b, c, d} plus learner e.
    a (term 1) promotes e -- C1 = {a..e} -- but only e gets it. b wins term 2
    under C0 and, before committing anything of its term, removes d: C2 =
    {a, b, c}, committed by b and c. Then a wins term 3 with a, d, e (a
    majority of C1) and overwrites what b committed."""
    c = Cluster(["a", "b", "c", "d"], unsafe=unsafe)
    c.join("e")
    c.elect("a")
    c.deliver()
    c.core("a").propose_change(ConfChange.add_learner(Member("e")))
    c.process("a")
    c.deliver()
    c.tick("a")
    c.deliver()
    c.core("a").propose_change(ConfChange.promote("e"))
    c.process("a")
    c.deliver(between("a", "e"))
    c.queue = []
    c.crash("a")
    c.elect("b", allow=between("b", "c", "d"))
    c.queue = []  # b's no-op goes nowhere yet
    b = c.core("b")
    b.propose_change(ConfChange.remove("d"))  # refused unless "change_before_commit"
    c.process("b")
    for _ in range(5):  # the lost probe is sent again after two heartbeats
        c.deliver(between("b", "c"))
        c.tick("b")
    assert b.commit_index == b.log.last_index()  # committed by b and c
    c.crash("b")
    c.boot("a")
    c.elect("a", allow=between("a", "d", "e"))
    return c


def test_teeth_a_change_before_the_leader_commits_in_its_term_loses_entries() -> None:
    c = _change_before_commit(frozenset({"change_before_commit"}))
    # a leads term 3 without b's committed term-2 entries: Leader Completeness
    # is broken (and a would overwrite them on every follower it reaches).
    assert c.core("a").role is Role.LEADER
    assert 2 not in [e.term for e in c.core("a").log.entries]
    assert [e.term for e in c.core("c").log.entries].count(2) == 2  # committed there


def test_a_change_before_the_leader_commits_in_its_term_is_refused() -> None:
    with pytest.raises(ChangeInProgress, match="of its term"):
        _change_before_commit(frozenset())
