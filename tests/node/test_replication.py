"""Writes, linearizable reads and partitions on real RaftNodes (virtual time)."""

from __future__ import annotations

import pytest
import trio

from tests.node.helpers import put
from trioraft.errors import NoLeader, NoQuorum, ProposalDropped, UnknownOutcome
from trioraft.kv import Put, encode_command
from trioraft.testing.cluster import open_cluster


async def test_writes_apply_on_every_node(transport: str, autojump_clock: trio.testing.MockClock):
    async with open_cluster(3, seed=10, transport=transport) as cluster:
        leader = await cluster.wait_for_leader()
        for i in range(20):
            result = await put(leader, f"k{i % 7}", f"v{i}")
            assert result.index > 0
        digest = await cluster.wait_converged()
        assert set(cluster.digests().values()) == {digest}
        for n in cluster.running():
            assert n.kv.get("k5") == "v19"
            assert len(n.kv) == 7


async def test_minority_leader_cannot_commit_and_steps_down(
    transport: str, autojump_clock: trio.testing.MockClock,
):
    async with open_cluster(3, seed=11, request_timeout_s=2.0, transport=transport) as cluster:
        old = await cluster.wait_for_leader()
        majority = set(cluster.ids) - {old.id}
        cluster.network.partition({old.id}, majority)

        async def write_on_old() -> None:
            with pytest.raises((UnknownOutcome, NoQuorum)):
                await put(old, "lost", "x")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_on_old)
            new = await cluster.wait_for_leader(among=majority)
            assert new.id != old.id
            # CheckQuorum: cut off from a majority, the old leader stepped down.
            await cluster.wait_until(lambda: not old.is_leader, timeout_s=1.0)
            await put(new, "kept", "y")

        cluster.network.heal()
        await cluster.wait_converged()
        for n in cluster.running():
            assert n.kv.get("lost") is None  # never committed, overwritten on heal
            assert n.kv.get("kept") == "y"


async def test_read_barrier_on_lagging_follower_waits_for_the_write(
    transport: str, autojump_clock: trio.testing.MockClock,
):
    async with open_cluster(3, seed=12, transport=transport) as cluster:
        leader = await cluster.wait_for_leader()
        lagging = cluster.followers()[0]
        cluster.network.partition(set(cluster.ids) - {lagging.id}, {lagging.id})
        result = await put(leader, "k", "v")  # commits on the other two
        cluster.network.heal()
        await cluster.wait_until(lambda: lagging.leader_id == leader.id)
        assert lagging.kv.get("k") is None  # it has not caught up yet

        index = await lagging.read_barrier()
        assert index >= result.index
        assert lagging.kv.applied_index >= result.index
        assert lagging.kv.get("k") == "v"


async def test_read_barrier_on_follower_sees_a_completed_write(
    autojump_clock: trio.testing.MockClock,
):
    async with open_cluster(3, seed=13) as cluster:
        leader = await cluster.wait_for_leader()
        for i in range(5):
            await put(leader, "k", f"v{i}")
            for follower in cluster.followers():
                await follower.read_barrier()
                assert follower.kv.get("k") == f"v{i}"


async def test_isolated_leader_refuses_linearizable_reads(
    autojump_clock: trio.testing.MockClock,
):
    async with open_cluster(3, seed=14, request_timeout_s=2.0) as cluster:
        old = await cluster.wait_for_leader()
        await put(old, "k", "v1")
        majority = set(cluster.ids) - {old.id}
        cluster.network.partition({old.id}, majority)

        async def read_on_old() -> None:
            # Still calling itself leader, but it cannot confirm that with a
            # majority: the read must fail rather than return v1.
            with pytest.raises((NoQuorum, NoLeader)):
                await old.read_barrier()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_on_old)
            new = await cluster.wait_for_leader(among=majority)
            await put(new, "k", "v2")

        assert old.kv.get("k") == "v1"  # what a bare local read would wrongly return
        # Deposed (CheckQuorum) and still cut off: refused at once or after the timeout.
        with pytest.raises((NoQuorum, NoLeader)):
            await old.read_barrier()


async def test_retry_with_same_request_id_across_leader_change_applies_once(
    autojump_clock: trio.testing.MockClock,
):
    async with open_cluster(3, seed=15) as cluster:
        old = await cluster.wait_for_leader()
        first = await put(old, "k", "v", request_id="c:1")
        await cluster.wait_applied(first.index)  # every node knows c:1 is done
        await cluster.crash(old.id)

        new = await cluster.wait_for_leader(among=cluster.up)
        # Another client writes the key; a second application of c:1 would undo it.
        await put(new, "k", "other", request_id="d:1")
        retry = await put(new, "k", "v", request_id="c:1")

        assert retry == first  # the first result, index included
        assert new.kv.get("k") == "other"
        await cluster.restart(old.id)
        await cluster.wait_converged()
        assert all(n.kv.get("k") == "other" for n in cluster.running())


async def test_write_on_leader_isolated_as_it_proposes_has_unknown_outcome(
    autojump_clock: trio.testing.MockClock,
):
    async with open_cluster(3, seed=16, request_timeout_s=1.0) as cluster:
        leader = await cluster.wait_for_leader()
        # Cut the leader off in the same instant it takes the proposal: it is
        # appended (the leader does not know yet) but cannot commit.
        cluster.network.isolate(leader.id)
        before = leader.status()["last_log_index"]
        with pytest.raises(UnknownOutcome):
            await put(leader, "k", "v")
        assert leader.status()["last_log_index"] > before  # it was appended


async def test_overwritten_uncommitted_entry_raises_proposal_dropped(
    autojump_clock: trio.testing.MockClock,
):
    # A long request timeout: the answer must come from the overwrite, not a timeout.
    async with open_cluster(3, seed=17, request_timeout_s=60.0) as cluster:
        old = await cluster.wait_for_leader()
        majority = set(cluster.ids) - {old.id}
        cluster.network.partition({old.id}, majority)

        async with trio.open_nursery() as nursery:

            async def write_on_old() -> None:
                with pytest.raises(ProposalDropped):
                    await old.propose([encode_command(Put("k", "lost"))])
                nursery.cancel_scope.cancel()

            nursery.start_soon(write_on_old)
            new = await cluster.wait_for_leader(among=majority)
            await put(new, "k", "won")
            start = trio.current_time()
            cluster.network.heal()
            await trio.sleep(30)  # cancelled by write_on_old well before this
            raise AssertionError("the overwritten proposal was never answered")
        assert trio.current_time() - start < 5.0
        await cluster.wait_converged()
        assert all(n.kv.get("k") == "won" for n in cluster.running())


async def test_followers_relay_concurrent_writes_to_the_leader_in_batches(
    transport: str, autojump_clock: trio.testing.MockClock,
):
    async with open_cluster(3, seed=14, transport=transport) as cluster:
        leader = await cluster.wait_for_leader()
        follower = cluster.followers()[0]
        batches_before = leader.stats["batches"]
        results: list[object] = []

        async def write(i: int) -> None:
            results.append(await follower.forward(encode_command(Put(f"f{i}", str(i)))))

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(write, i)
        assert len(results) == 50
        assert all(r.index > 0 for r in results)  # type: ignore[attr-defined]
        # 50 writes reached the leader in far fewer proposals than 50.
        assert leader.stats["batches"] - batches_before < 10
        await cluster.wait_converged()
        assert follower.kv.get("f49") == "49"


async def test_a_follower_without_a_reachable_leader_refuses_to_relay(
    transport: str, autojump_clock: trio.testing.MockClock,
):
    async with open_cluster(3, seed=15, request_timeout_s=2.0, transport=transport) as cluster:
        await cluster.wait_for_leader()
        follower = cluster.followers()[0]
        cluster.network.isolate(follower.id)
        with pytest.raises((NoLeader, UnknownOutcome)):
            await follower.forward(encode_command(Put("x", "1")))
