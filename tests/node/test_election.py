"""Elections, failover and leadership transfer on real RaftNodes (virtual time)."""

from __future__ import annotations

import trio

from tests.node.helpers import put
from trioraft.testing.cluster import open_cluster

# Election timeout is 150-300 ms: with PreVote and the CheckQuorum lease a
# failover needs about one lease plus one or two election rounds.
FAILOVER_BOUND = 2.0


async def test_three_nodes_elect_exactly_one_leader(autojump_clock: trio.testing.MockClock):
    async with open_cluster(3, seed=1) as cluster:
        leader = await cluster.wait_for_leader()
        # Let a few seconds of heartbeats pass: the leadership is stable and unique.
        await trio.sleep(5)
        assert cluster.leaders() == [leader]
        terms = {n.status()["term"] for n in cluster.running()}
        assert len(terms) == 1
        assert all(n.leader_id == leader.id for n in cluster.running())


async def test_leader_crash_elects_new_leader_and_old_leader_catches_up(
    autojump_clock: trio.testing.MockClock,
):
    async with open_cluster(3, seed=2) as cluster:
        old = await cluster.wait_for_leader()
        await put(old, "before", "1")
        await cluster.crash(old.id)

        start = trio.current_time()
        new = await cluster.wait_for_leader(among=set(cluster.ids) - {old.id})
        assert trio.current_time() - start < FAILOVER_BOUND
        assert new.id != old.id

        await put(new, "after", "2")  # writes continue with one node down

        restarted = await cluster.restart(old.id)
        digest = await cluster.wait_converged()
        assert restarted.kv.state_digest() == digest
        assert restarted.kv.get("before") == "1"
        assert restarted.kv.get("after") == "2"


async def test_transfer_leadership_moves_the_leader(autojump_clock: trio.testing.MockClock):
    async with open_cluster(3, seed=3) as cluster:
        old = await cluster.wait_for_leader()
        await put(old, "k", "v")
        assert await old.transfer_leadership(timeout=2.0)
        new = await cluster.wait_for_leader()
        assert new.id != old.id
        assert not old.is_leader
        await put(new, "k2", "v2")
        await cluster.wait_converged()


async def test_five_nodes_tolerate_two_crashed_nodes(autojump_clock: trio.testing.MockClock):
    async with open_cluster(5, seed=4) as cluster:
        leader = await cluster.wait_for_leader()
        follower = next(n for n in cluster.followers())
        await cluster.crash(leader.id)
        await cluster.crash(follower.id)

        survivors = set(cluster.up)
        assert len(survivors) == 3
        new = await cluster.wait_for_leader(among=survivors)
        for i in range(10):
            await put(new, f"k{i}", str(i))
        digest = await cluster.wait_converged()
        assert all(n.kv.get("k9") == "9" for n in cluster.running())
        assert set(cluster.digests().values()) == {digest}
