"""A linearizable read the core refuses says why: overload, a timeout, or a leadership
change -- never "leadership changed" when it did not (all three: not served, 503)."""

from __future__ import annotations

import pytest
import trio

from trioraft.errors import NoLeader, NoQuorum, Overloaded
from trioraft.testing.cluster import open_cluster


async def test_a_read_over_the_pending_bound_is_overloaded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3, seed=41, core_options={"max_pending_reads": 2}) as cluster:
        leader = await cluster.wait_for_leader()
        outcomes: list[object] = []

        async def read() -> None:
            try:
                outcomes.append(await leader.read_barrier())
            except (NoLeader, NoQuorum, Overloaded) as exc:
                outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(5):  # one turn of the driver: two fit, three are refused
                nursery.start_soon(read)
        refused = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(refused) == 3
        for exc in refused:
            assert isinstance(exc, Overloaded), exc
            assert "too many linearizable reads" in str(exc)
        assert leader.is_leader


@pytest.mark.parametrize("on", ["leader", "follower"])
async def test_a_read_not_confirmed_in_time_is_no_quorum(
    autojump_clock: trio.testing.MockClock, on: str
) -> None:
    """The core gives up on the read after read_timeout (the leader's heartbeat round,
    or a follower's forwarded request, got no answer) while the leader is unchanged."""
    async with open_cluster(
        3, seed=42, core_options={"read_timeout": 0.1}, election_timeout_ms=(1000, 2000),
        heartbeat_ms=50, request_timeout_s=5.0,
    ) as cluster:
        leader = await cluster.wait_for_leader()
        node = leader if on == "leader" else cluster.followers()[0]
        term = node.term
        # Lose every AppendEntries answer / every ReadIndex message for a while:
        # the read cannot be confirmed, yet nobody's term or leader changes.
        cluster.network.filter = lambda m: type(m).__name__ not in (
            "AppendEntriesResponse", "ReadIndexRequest", "ReadIndexResponse")
        with pytest.raises(NoQuorum, match="could not confirm its leadership for the read"):
            await node.read_barrier()
        assert (node.term, node.leader_id) == (term, leader.id)
        cluster.network.filter = None
        await node.read_barrier()  # and reads work again


async def test_a_read_cut_off_by_a_leader_change_says_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_cluster(3, seed=43, election_timeout_ms=(150, 300)) as cluster:
        leader = await cluster.wait_for_leader()
        cluster.network.isolate(leader.id)  # its read round never completes ...
        with pytest.raises((NoLeader, NoQuorum)) as info:
            await leader.read_barrier()  # ... and CheckQuorum deposes it first
        assert isinstance(info.value, NoLeader)
        assert "leadership changed during the read" in str(info.value)
