"""Membership changes on real RaftNodes under virtual time (issue 12).

The clusters start as production does (`open_cluster(membership=True)`): an
identity and the bootstrap CONFIG entry in every node's storage, no static
voters, transports whose peers follow the configuration.
"""

from __future__ import annotations

import pytest
import trio

from tests.membership.helpers import Writes, assert_all_present, write_load
from tests.node.helpers import linearizable_get, put
from trioraft.core import (
    ChangeInProgress,
    ConfChange,
    LastVoter,
    Member,
    NotCaughtUp,
    NotLeader,
    TransferRefused,
    UnknownMember,
)
from trioraft.errors import NoLeader, NoQuorum, UnknownOutcome
from trioraft.node._membership import NameTaken
from trioraft.testing.cluster import open_cluster


def names(cluster_node: object) -> tuple[list[str], list[str]]:
    """(voters, learners) of a node's latest configuration, by name."""
    core = cluster_node.core  # type: ignore[attr-defined]
    cfg = core.configuration
    return (sorted(m.display_name for m in cfg.members if m.voter),
            sorted(m.display_name for m in cfg.members if not m.voter))


async def test_grow_three_to_five_and_shrink_back_under_writes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3, seed=11, membership=True) as cluster:
        await cluster.wait_for_leader()
        w = Writes()
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_load, cluster, w, stop)
            await trio.sleep(1)
            n4 = await cluster.add("n4")
            n5 = await cluster.add("n5")
            assert n4.id != "n4"
            assert n5.id != "n5"
            leader = cluster.leader()
            assert leader is not None
            assert names(leader) == (["n1", "n2", "n3", "n4", "n5"], [])
            await trio.sleep(1)
            # Shrink, the leader included among the candidates to go.
            for name in ("n1", "n2"):
                await cluster.remove(name)
                gone = cluster.nodes[name]
                await cluster.wait_until(lambda gone=gone: gone.membership.removed is not None)
                await cluster.crash(name)
            await trio.sleep(1)
            stop.set()
        leader = await cluster.wait_for_leader()
        assert names(leader) == (["n3", "n4", "n5"], [])
        assert len(w.acked) > 100
        await cluster.wait_converged()
        assert_all_present(cluster, w)
        # The transports follow the configuration: nobody talks to n1 or n2.
        for node in cluster.running():
            assert set(node.transport.peers) == {  # type: ignore[attr-defined]
                cluster.member_id(n) for n in ("n3", "n4", "n5")
            } - {node.id}


async def test_removing_the_leader_hands_over_first_and_the_old_leader_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3, seed=12, membership=True) as cluster:
        old = await cluster.wait_for_leader()
        await put(old, "k", "v")
        # Through the leader itself: it transfers leadership, then says who leads.
        with pytest.raises(NotLeader) as exc:
            await old.membership.remove(old.name, 5.0)
        new_id = exc.value.leader_hint
        assert new_id is not None
        assert new_id != old.id
        await cluster.remove(old.name)
        await cluster.wait_until(lambda: old.membership.removed is not None)
        assert old.membership.removed is not None
        assert "was removed from cluster" in old.membership.removed.message()
        new = await cluster.wait_for_leader(among=set(cluster.ids) - {old.name})
        assert names(new) == (sorted(set(cluster.ids) - {old.name}), [])
        await put(new, "k2", "v2")
        assert await linearizable_get(new, "k") == "v"


async def test_a_leader_that_removes_itself_without_a_successor_steps_down_after_commit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The core's own path (no transfer possible: the other voter is not caught up
    is not needed; we propose the removal directly): thesis §4.2.2."""
    async with open_cluster(3, seed=13, membership=True) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.propose_change(ConfChange.remove(leader.id), 5.0)
        await cluster.wait_until(lambda: not leader.is_leader)
        await cluster.wait_until(lambda: leader.membership.removed is not None)
        new = await cluster.wait_for_leader(among=set(cluster.ids) - {leader.name})
        assert leader.id not in new.core.configuration.ids  # type: ignore[union-attr]


async def test_a_wiped_node_is_readmitted_under_a_fresh_member_id_while_writes_continue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3, seed=14, membership=True) as cluster:
        leader = await cluster.wait_for_leader()
        victim = next(n for n in cluster.ids if n != leader.name)
        w = Writes()
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_load, cluster, w, stop)
            await trio.sleep(1)
            await cluster.crash(victim)
            fresh = await cluster.start(victim, wipe=True)
            assert fresh.id != victim
            assert fresh.name == victim
            # Before admission it is nobody: no voter, not in any configuration.
            assert fresh.core is not None
            assert fresh.id not in fresh.core.voters
            await cluster.readmit(victim)
            await trio.sleep(1)
            stop.set()
        leader = await cluster.wait_for_leader()
        cfg = leader.core.configuration  # type: ignore[union-attr]
        assert victim not in cfg.ids
        assert fresh.id in cfg.voters
        assert names(leader) == (sorted(cluster.ids), [])
        await cluster.wait_converged()
        assert_all_present(cluster, w)


async def test_a_readmission_interrupted_after_the_removal_carries_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Regression (membership chaos campaign, seed 7): a partition stopped a
    re-admission after its first step (the old member id's removal, which then
    committed), so no member had the node's name any more and the leader
    refused to re-admit it ("a new node is added by the operator"): the node
    waited for the operator for good. The node now says which old member id
    it replaces, and the leader carries on with the other two steps."""
    async with open_cluster(3, seed=21, membership=True) as cluster:
        leader = await cluster.wait_for_leader()
        victim = next(n for n in cluster.ids if n != leader.name)
        old_id = cluster.member_id(victim)
        await cluster.crash(victim)
        fresh = await cluster.start(victim, wipe=True)
        # The first step of a re-admission, then nothing (its leader "lost").
        await leader.membership.remove_by_id(victim, old_id, 5.0)
        url = cluster.url(fresh.id)
        with pytest.raises(UnknownMember):  # without saying what it replaces
            await leader.membership.readmit(victim, fresh.id, url, 5.0, leader.spawn)
        with pytest.raises(UnknownMember):  # a member id that is still a member
            await leader.membership.readmit(victim, fresh.id, url, 5.0, leader.spawn,
                                            replaces=leader.id)  # fmt: skip
        status = await leader.membership.readmit(victim, fresh.id, url, 5.0, leader.spawn,
                                                 replaces=old_id)  # fmt: skip
        assert status == "started"
        await cluster.wait_until(lambda: cluster._is_voter(fresh.id), 60)
        assert names(leader) == (sorted(cluster.ids), [])
        assert old_id not in leader.core.configuration.ids  # type: ignore[union-attr]


async def test_the_issue_scenario_waits_for_the_old_leader_and_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cut C off, write k=v1 (on L and F), kill F, wipe it and restart it empty,
    kill L, heal C: the cluster must not elect F and C (k would be gone). F comes
    back as a new incarnation that neither votes nor counts, so C cannot win an
    election; once L is back, k is there and F is re-admitted."""
    async with open_cluster(3, seed=15, membership=True) as cluster:
        leader = await cluster.wait_for_leader()
        lname = leader.name
        f, c = [n for n in cluster.ids if n != lname]
        cluster.network.isolate(cluster.member_id(c))
        await put(leader, "k", "v1")
        await cluster.crash(f)
        fresh = await cluster.start(f, wipe=True)
        await cluster.crash(lname)
        cluster.network.heal()
        await trio.sleep(5)  # many election timeouts
        assert cluster.leaders() == []
        assert fresh.core is not None
        assert fresh.core.term == 0
        with pytest.raises((NoLeader, NoQuorum, UnknownOutcome)):
            await cluster.nodes[c].read_barrier(timeout=1.0)
        await cluster.restart(lname)
        new = await cluster.wait_for_leader()
        assert new.name in (lname, c)
        assert await linearizable_get(new, "k") == "v1"
        await cluster.readmit(f)
        await cluster.wait_converged()
        assert fresh.kv.get("k") == "v1"


async def test_a_joiner_and_a_learner_never_count(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=16, membership=True) as cluster:
        leader = await cluster.wait_for_leader()
        learner = await cluster.add("n4", promote=False)
        await cluster.wait_until(lambda: leader.core.caught_up(learner.id))  # type: ignore[union-attr]
        others = [n for n in ("n1", "n2", "n3") if n != leader.name]
        for n in others:
            await cluster.crash(n)
        # The leader and a caught-up learner: 1 of 3 voters. Nothing commits.
        with pytest.raises((UnknownOutcome, NotLeader, NoLeader, NoQuorum)):
            await put(leader, "x", "1")
        await trio.sleep(3)
        assert not any(n.is_leader for n in cluster.running())
        assert learner.core is not None
        assert learner.core.role.value == "learner"


async def test_one_change_at_a_time_and_a_refused_change_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3, seed=17, membership=True) as cluster:
        leader = await cluster.wait_for_leader()
        core = leader.core
        assert core is not None
        # Cut the followers off: the first change is appended but cannot commit.
        cluster.network.isolate(leader.id)
        pending = Member("extra-1", False, "extra", "http://extra.invalid:1")
        with pytest.raises(UnknownOutcome):
            await leader.propose_change(ConfChange.add_learner(pending), 0.05)
        appended = core.configuration
        assert "extra-1" in appended.ids
        with pytest.raises(ChangeInProgress):
            await leader.membership.remove("n1" if leader.name != "n1" else "n2", 1.0)
        assert core.configuration == appended  # the refused one changed nothing
        cluster.network.heal()
        await cluster.wait_for_leader()
        await cluster.wait_converged()


async def test_refusals(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=18, membership=True) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(n for n in cluster.running() if n is not leader)
        with pytest.raises(NotLeader):
            await follower.membership.promote("n1", 1.0)
        with pytest.raises(NameTaken):
            await leader.membership.add_learner("n2", "n2-new", "http://x.invalid:1", 1.0)
        with pytest.raises(UnknownMember):
            await leader.membership.remove("nobody", 1.0)
        with pytest.raises(TransferRefused):
            await leader.transfer_to("nobody", 1.0)
        # A learner that cannot be reached is not caught up: no promotion.
        learner = await cluster.add("n4", promote=False)
        cluster.network.isolate(learner.id)
        await trio.sleep(1)
        leader = await cluster.wait_for_leader()
        with pytest.raises(NotCaughtUp):
            await leader.membership.promote("n4", 1.0)
        with pytest.raises(TransferRefused):
            await leader.transfer_to(learner.id, 1.0)  # a learner never leads
        assert names(leader) == (["n1", "n2", "n3"], ["n4"])
        cluster.network.heal()
        await cluster.promote("n4")
        for n in ("n1", "n2", "n3"):
            if n != leader.name:
                await cluster.remove(n)
        await cluster.remove("n4")
        with pytest.raises(LastVoter):
            await leader.membership.remove(leader.name, 1.0)


async def test_leadership_transfer_to_a_named_voter(autojump_clock: trio.testing.MockClock) -> None:
    async with open_cluster(3, seed=19, membership=True) as cluster:
        leader = await cluster.wait_for_leader()
        target = next(n for n in cluster.running() if n is not leader)
        await put(leader, "k", "v")
        await cluster.wait_until(lambda: leader.core.caught_up(target.id))  # type: ignore[union-attr]
        assert await leader.transfer_to(target.id, 2.0) == target.id
        assert (await cluster.wait_for_leader()) is target


async def test_a_new_member_catches_up_by_snapshot_and_restarts_with_its_configuration(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3, seed=20, membership=True, snapshot_entries=20,
                            snapshot_catchup_entries=5) as cluster:
        leader = await cluster.wait_for_leader()
        for i in range(60):
            await put(leader, f"k{i}", str(i))
        n4 = await cluster.add("n4")
        assert n4.stats.get("snapshots_installed", 0) >= 1
        assert n4.kv.get("k0") == "0"
        await cluster.crash("n4")
        again = await cluster.restart("n4")
        assert again.core is not None
        assert again.id in again.core.voters
        await cluster.wait_converged()


async def test_a_node_still_hears_a_leader_its_uncommitted_change_removed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Regression (found by the membership chaos run): a leader appends the removal
    of B, cannot commit it, and B becomes leader. The old leader's latest
    configuration lacks B, but it must still accept B's stream (B is in the
    committed configuration), or it never receives the entries that overwrite
    its uncommitted change and stays behind for good."""
    async with open_cluster(3, seed=21, membership=True) as cluster:
        a = await cluster.wait_for_leader()
        b_name = next(n for n in cluster.ids if n != a.name)
        b = cluster.nodes[b_name]
        cluster.network.isolate(a.id)
        with pytest.raises((UnknownOutcome, NotLeader)):
            await a.propose_change(ConfChange.remove(b.id), 0.05)
        assert b.id not in a.core.configuration.ids  # type: ignore[union-attr]
        new = await cluster.wait_for_leader(among=set(cluster.ids) - {a.name})
        await put(new, "after", "1")
        cluster.network.heal()
        await cluster.wait_converged()
        assert a.core is not None
        assert b.id in a.core.configuration.ids  # the uncommitted removal was overwritten
        assert a.kv.get("after") == "1"
