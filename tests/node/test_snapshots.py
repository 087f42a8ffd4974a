"""Snapshots, log compaction and InstallSnapshot on real RaftNodes (virtual time)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import trio

from tests.node.helpers import put
from trioraft.kv import KVStateMachine
from trioraft.testing.cluster import open_cluster

SNAPSHOT_ENTRIES = 20
CATCHUP = 5  # the catch-up tail kept after each snapshot (small, so compaction shows)


async def test_snapshots_compact_the_log(autojump_clock: trio.testing.MockClock):
    async with open_cluster(
        3, seed=20, snapshot_entries=SNAPSHOT_ENTRIES, snapshot_catchup_entries=CATCHUP
    ) as cluster:
        leader = await cluster.wait_for_leader()
        for i in range(100):
            await put(leader, f"k{i % 10}", str(i))
        await cluster.wait_converged()
        await trio.sleep(0.1)  # the last snapshot's storage compaction follows the core's
        for n in cluster.running():
            status = n.status()
            assert status["snapshot_index"] >= 100 - 2 * SNAPSHOT_ENTRIES
            assert n.stats["snapshots"] >= 100 // SNAPSHOT_ENTRIES - 1
            # Compaction: only the entries after the snapshot, and a catch-up
            # tail of CATCHUP entries before it, are kept in memory ...
            assert n._c.log.first_index() == status["snapshot_index"] + 1 - CATCHUP
            # ... and in storage, which compacts to the point the core names.
            stored = cluster.storages[n.id].load()
            assert stored.snapshot.index == status["snapshot_index"]
            assert stored.compacted.index == n._c.log.first_index() - 1
            assert [e.index for e in stored.entries] == list(
                range(stored.compacted.index + 1, status["last_log_index"] + 1))


async def test_a_follower_wiped_under_its_old_id_never_moves_the_leaders_match_back(
    transport: str, autojump_clock: trio.testing.MockClock,
):
    """A node that lost its disk and returns under its *old* member id is outside
    Raft's fault model (it forgot votes and acknowledged entries); PLAN.md: it
    must rejoin under a fresh member id. The leader never believes a rejection
    below what the follower acknowledged (match_index never moves back: the
    commit rule depends on it), and the cluster keeps committing meanwhile."""
    async with open_cluster(
        3, seed=21, snapshot_entries=SNAPSHOT_ENTRIES, snapshot_catchup_entries=CATCHUP,
        transport=transport,
    ) as cluster:
        old = await cluster.wait_for_leader()
        for i in range(100):
            await put(old, f"k{i % 10}", str(i))
        victim = cluster.followers()[0]
        await cluster.wait_applied(old.kv.applied_index)
        match_before = old._c.progress[victim.id].match_index
        await cluster.crash(victim.id)
        fresh = await cluster.restart(victim.id, wipe=True)  # an empty MemoryStorage
        assert fresh.status()["last_log_index"] == 0
        for i in range(20):
            await put(old, f"after{i}", str(i))
        assert cluster.leader() is old
        assert old._c.progress[victim.id].match_index >= match_before
        assert old.kv.get("after19") == "19"


async def test_follower_down_past_the_snapshot_threshold_catches_up(
    transport: str, autojump_clock: trio.testing.MockClock,
):
    async with open_cluster(
        3, seed=22, snapshot_entries=SNAPSHOT_ENTRIES, snapshot_catchup_entries=CATCHUP,
        transport=transport,
    ) as cluster:
        leader = await cluster.wait_for_leader()
        await put(leader, "early", "1")
        victim = cluster.followers()[0]
        await cluster.wait_applied(leader.kv.applied_index)
        await cluster.crash(victim.id)
        down_at = cluster.storages[victim.id].load().entries[-1].index

        for i in range(5 * SNAPSHOT_ENTRIES):
            await put(leader, f"k{i % 10}", str(i))
        # The entries it missed are gone from the leader's log.
        assert leader._c.log.first_index() > down_at + 1

        back = await cluster.restart(victim.id)
        digest = await cluster.wait_converged()
        assert back.kv.state_digest() == digest
        assert back.kv.get("early") == "1"
        assert back.stats.get("snapshots_installed", 0) >= 1


async def test_a_local_snapshot_overtaken_by_an_installed_one_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (found by chaos, seed 301): a follower's own snapshot, still being
    encoded when the leader's InstallSnapshot landed, reached storage late; storage
    refused the older snapshot and the ValueError stopped the node."""
    gate = threading.Event()
    slow_ids: set[int] = set()
    original = KVStateMachine.snapshot_chunks

    def snapshot_chunks(self: KVStateMachine) -> Iterator[bytes]:
        chunks = original(self)
        if id(self) not in slow_ids:
            return chunks

        def slow() -> Iterator[bytes]:  # the follower's encode waits for the gate
            # Encoding runs in slices on the loop: empty frames keep it "in
            # progress" without holding the loop for long.
            deadline = time.monotonic() + 20
            while not gate.wait(0.001) and time.monotonic() < deadline:
                yield b""
            yield from chunks

        return slow()

    monkeypatch.setattr(KVStateMachine, "snapshot_chunks", snapshot_chunks)
    async with open_cluster(
        3, seed=5, snapshot_entries=20, snapshot_catchup_entries=CATCHUP, run_disk_inline=False
    ) as cluster:
        leader = await cluster.wait_for_leader()
        follower = cluster.followers()[0]
        slow_ids.add(id(follower.kv))
        for i in range(25):  # the follower starts its own snapshot, which now hangs
            await put(leader, f"k{i}", str(i))
        with trio.fail_after(10):
            while not follower._snapshotting:  # noqa: ASYNC110 -- no event exists for it
                await trio.sleep(0.01)
        cluster.network.isolate(follower.id)
        for i in range(100):  # the leader compacts far past the follower's log
            await put(leader, f"k{i % 10}", f"v{i}")
        cluster.network.heal()
        with trio.fail_after(10):  # the leader brings the follower up by InstallSnapshot
            while follower.stats.get("snapshots_installed", 0) == 0:  # noqa: ASYNC110
                await trio.sleep(0.01)
        gate.set()  # the stale local snapshot now reaches storage, and is dropped
        await trio.sleep(1)
        digest = await cluster.wait_converged()
        assert follower.kv.state_digest() == digest
        await put(leader, "after", "ok")  # the follower is still alive and following
        await cluster.wait_converged()
        assert follower.kv.get("after") == "ok"


async def test_a_snapshot_is_taken_at_the_byte_threshold_too(
    autojump_clock: trio.testing.MockClock,
):
    # The entry threshold is out of reach; 40 writes of 1 KiB pass the byte one.
    limits = {"snapshot_entries": 10**6, "snapshot_bytes": 16 * 1024}
    async with open_cluster(3, seed=22, **limits) as cluster:
        leader = await cluster.wait_for_leader()
        for i in range(40):
            await put(leader, f"k{i}", "x" * 1024)
        await cluster.wait_converged()
        for n in cluster.running():
            assert n.status()["snapshot_index"] > 0
            assert n.stats["snapshots"] >= 1
