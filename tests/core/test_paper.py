"""The Raft paper's classic scenarios, as executable specifications."""

from __future__ import annotations

import pytest

from tests.core.harness import Cluster, between
from trioraft.core import AppendEntriesResponse, Role

LEADER_LOG = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]

# Figure 7: the follower logs a leader of term 8 may find.
FIGURE_7 = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],  # missing entries
    "b": [1, 1, 1, 4],  # missing many entries
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],  # an extra uncommitted entry
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],  # extra entries of a later term
    "e": [1, 1, 1, 4, 4, 4, 4],  # missing and extra entries
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],  # a leader of terms 2 and 3 that never committed
}


@pytest.mark.parametrize("case", sorted(FIGURE_7))
def test_figure_7_leader_brings_every_follower_log_in_line(case: str) -> None:
    c = Cluster(["leader", "follower", "voter"], max_entries_per_msg=64)
    c.set_log("leader", LEADER_LOG, term=7)
    c.set_log("follower", FIGURE_7[case], term=7)
    c.elect("leader", allow=between("leader", "voter"))  # term 8
    c.tick("leader")  # its heartbeat probes the follower
    c.deliver()  # replication to the follower
    assert c.terms("follower") == [*LEADER_LOG, 8]  # the leader's log plus its no-op
    assert c.core("follower").commit_index == len(LEADER_LOG) + 1


@pytest.mark.parametrize("case", sorted(FIGURE_7))
def test_figure_7_fast_backtracking_needs_at_most_one_rejection_per_term(case: str) -> None:
    c = Cluster(["leader", "follower", "voter"], max_entries_per_msg=64)
    c.set_log("leader", LEADER_LOG, term=7)
    c.set_log("follower", FIGURE_7[case], term=7)
    c.elect("leader", allow=between("leader", "voter"))
    c.tick("leader")
    rejections = []
    c.deliver(lambda m: not (isinstance(m, AppendEntriesResponse) and not m.success
                             and rejections.append(m)))
    # Without the conflict hint, case b would need six round trips and f nine.
    # Distinct probes rejected (the heartbeat may duplicate one probe).
    assert len({m.reject_index for m in rejections}) <= len(set(FIGURE_7[case]))
    assert c.terms("follower") == [*LEADER_LOG, 8]


def _figure_8(unsafe: frozenset[str]) -> Cluster:
    """Figure 8: an entry of an old term on a majority can still be overwritten.

    (a) s1 leads term 2 and gets its entry at index 2 onto s2 only.
    (b) s1 crashes; s5 wins term 3 (votes of s3, s4) with a different entry at 2.
    (c) s5 crashes; s1 wins term 4 (s2, s3) and copies its index-2 entry to s3,
        so the term-2 entry is on a majority -- but it must NOT count as committed.
    (d) s1 crashes; s5 wins term 5 (s2, s3, s4: its last term 3 beats their 2)
        and overwrites index 2 everywhere.
    """
    ids = ["s1", "s2", "s3", "s4", "s5"]
    c = Cluster(ids, max_entries_per_msg=1, unsafe=unsafe)
    c.elect("s2")  # term 1: its no-op at index 1 goes everywhere
    c.deliver()
    c.crash("s2")  # ... and it restarts as a follower
    c.boot("s2")
    c.elect("s1", allow=between("s1", "s2", "s3", "s4"))  # term 2: no-op@2 (term 2)...
    c.queue = [m for m in c.queue if m.dst in ("s1", "s2")]
    c.deliver(between("s1", "s2"))  # ...reaches s2 only
    assert c.terms("s2")[:2] == [1, 2]
    c.crash("s1")
    c.queue = []
    c.elect("s5", allow=between("s3", "s4", "s5"))  # term 3: no-op@2 (term 3) goes nowhere
    c.queue = []
    c.crash("s5")
    c.boot("s1")
    c.elect("s1", allow=between("s1", "s2", "s3"))  # term 4: no-op@3 (term 4)
    # Replicate to s3 one entry at a time, but once it holds index 2 lose the rest.
    c.deliver(lambda m: "s4" not in (m.src, m.dst) and not (
        m.dst == "s3" and c.core("s3").log.last_index() >= 2
        and any(e.index > 2 for e in getattr(m, "entries", ()))))
    assert c.terms("s3")[:2] == [1, 2]  # the term-2 entry is now on s1, s2, s3
    c.queue = []
    c.crash("s1")
    c.boot("s5")
    c.elect("s5", allow=between("s2", "s3", "s4", "s5"))  # term 5
    c.deliver(between("s2", "s3", "s4", "s5"))
    return c


def test_figure_8_a_leader_never_commits_an_earlier_term_entry_by_counting_replicas() -> None:
    c = _figure_8(frozenset())
    # s1 (term 4) never applied its term-2 entry at index 2 ...
    assert [e.index for e in c.applied["s1"]] == [1]
    # ... which was right: it has been replaced by s5's term-3 entry, now committed.
    assert c.core("s5").commit_index >= 2
    assert [e.term for e in c.applied["s5"][:2]] == [1, 3]


def test_figure_8_counting_old_term_replicas_breaks_state_machine_safety() -> None:
    # The broken variant commits (and applies) the term-2 entry at index 2 in
    # step (c); s5 later commits a different entry there.
    c = _figure_8(frozenset({"commit_old_terms"}))
    s1_applied = {e.index: e.term for e in c.applied["s1"]}
    s5_applied = {e.index: e.term for e in c.applied["s5"]}
    assert s1_applied[2] == 2
    assert s5_applied[2] == 3


def test_a_new_leader_appends_a_no_op_of_its_term() -> None:
    c = Cluster(["a", "b", "c"])
    c.elect("a")
    assert c.core("a").role is Role.LEADER
    assert c.terms("a") == [c.core("a").term]


def test_messages_from_outside_the_configuration_change_nothing() -> None:
    from trioraft.core import RequestVote

    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.deliver()
    core = c.core("b")
    term, vote = core.term, core.vote
    core.step(RequestVote("intruder", "b", term + 100, 10**6, 10**6), c.now + 100)
    c.process("b")
    assert (core.term, core.vote) == (term, vote)
    assert not c.queue  # not even answered


def test_commit_notices_ask_for_no_reply() -> None:
    from trioraft.core import AppendEntries, AppendEntriesResponse

    c = Cluster(["a", "b", "c"])
    c.elect("a")
    c.deliver()  # the no-op commits
    c.propose("a", b"x")
    seen: list[object] = []

    def record(m: object) -> bool:
        seen.append(m)
        return True

    c.deliver(record)
    notices = [m for m in seen if isinstance(m, AppendEntries) and m.commit_only]
    assert notices  # followers hear about the new commit index at once...
    assert all(c.core(f).commit_index == c.core("a").commit_index for f in ("b", "c"))
    replies_to_notices = [
        m for m in seen if isinstance(m, AppendEntriesResponse)
    ]
    # ...and only the entries themselves were acknowledged, not the notices.
    assert len(replies_to_notices) == len(
        [m for m in seen if isinstance(m, AppendEntries) and not m.commit_only]
    )


def test_a_retired_node_never_campaigns_but_still_follows() -> None:
    c = Cluster(["a", "b", "c"])
    c.core("b").retire()  # b is shutting down
    for _ in range(5):  # its election timer fires again and again
        c.tick("b")
    assert c.core("b").role is Role.FOLLOWER
    assert c.core("b").term == 0
    assert not c.queue  # it asked nobody for a vote
    c.elect("a")
    c.deliver()
    assert c.core("b").leader_id == "a"  # it still follows (and voted)
