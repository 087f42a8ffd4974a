"""Snapshots under load, end to end on real RaftNodes (issue 11 #2 and #3; virtual time).

A follower that is behind must converge *while writes continue* and the leader
takes a snapshot every few hundred entries: the transfer in progress survives
the newer snapshots (the sender holds a storage reader on the snapshot it
started with), and once installed the follower catches up from the leader's
catch-up tail instead of needing another snapshot. A slow link does not stall a
follower for good; a rejected heartbeat during a transfer does not start a
second one; a transfer restarted while a finished one awaits installation
never gets a truncated snapshot installed; and a restart keeps the catch-up
tail (the core is rebuilt from the stored compaction point).

State: 1,000 keys of about 1 KiB (a snapshot of ~1 MiB, four transfer chunks).
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import trio

from trioraft.errors import RaftError
from trioraft.kv import Put, encode_command
from trioraft.node import RaftNode
from trioraft.testing.cluster import Cluster, open_cluster
from trioraft.transport import LinkError, SnapshotOffer

KEYS = 1000
VALUE = "x" * 1000
SNAPSHOT_ENTRIES = 200  # a snapshot every 200 entries ...
RATE_BATCH, RATE_EVERY = 10, 0.05  # ... while writes go on at 200 entries/s: every 1 s
SLOW = {"delay": 0.03, "bandwidth": 600_000}  # 30 ms and 600 kB/s: ~1.7 s per snapshot


def _batch(seq: itertools.count[int], n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        i = next(seq)
        out.append(encode_command(Put(f"k{i % KEYS}", f"{i:08d}{VALUE}")))
    return out


async def _write_bulk(cluster: Cluster, seq: itertools.count[int], n: int) -> None:
    leader = await cluster.wait_for_leader()
    for _ in range(n // 50):
        await leader.propose(_batch(seq, 50))


async def _keep_writing(cluster: Cluster, seq: itertools.count[int], stop: trio.Event) -> None:
    """RATE_BATCH writes every RATE_EVERY seconds through the current leader, until stop."""
    next_at = trio.current_time()
    while not stop.is_set():
        leader = cluster.leader()
        if leader is not None:
            # A write that fails (an election) is simply not retried: load, not a history.
            with contextlib.suppress(RaftError):
                await leader.propose(_batch(seq, RATE_BATCH))
        next_at = max(next_at + RATE_EVERY, trio.current_time())
        await trio.sleep_until(next_at)


def _count_transfers(node: RaftNode, to: str) -> list[SnapshotOffer]:
    """Record every snapshot transfer `node` starts to `to` (its transport's send_snapshot)."""
    started: list[SnapshotOffer] = []
    send = node.transport.send_snapshot

    async def send_snapshot(offer: SnapshotOffer, read_chunk: Any) -> None:
        if offer.msg.dst == to:
            started.append(offer)
        await send(offer, read_chunk)

    node.transport.send_snapshot = send_snapshot  # type: ignore[method-assign]
    return started


async def _watch_installs(
    node: RaftNode, leader: RaftNode, seen: list[tuple[int, int]]
) -> None:
    """Append (installed snapshot index, the leader's newest) whenever `node` installs one."""
    count = node.stats.get("snapshots_installed", 0)
    while True:
        await trio.sleep(0.01)
        if node.stats.get("snapshots_installed", 0) > count:
            count = node.stats["snapshots_installed"]
            seen.append((node._c.log.snapshot.index, leader._c.log.snapshot.index))


async def _lagging_follower(cluster: Cluster, seq: itertools.count[int]) -> tuple[RaftNode, str]:
    """Crash a follower, write until the leader compacted far past it; (leader, its id)."""
    leader = await cluster.wait_for_leader()
    victim = cluster.followers()[0].id
    await cluster.crash(victim)
    await _write_bulk(cluster, seq, 2000)
    stored = cluster.storages[victim].load()
    assert leader._c.log.first_index() > stored.entries[-1].index + 1  # it needs a snapshot
    return leader, victim


async def test_a_follower_behind_converges_while_writes_and_snapshots_go_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 11 #2: with a snapshot every second and a transfer that takes ~1.7 s (a slow
    link: 30 ms, 600 kB/s) the follower used to restart its transfer with every new
    snapshot and never caught up while the load went on. Now one transfer carries it
    past the newer snapshots, and the catch-up tail does the rest."""
    async with open_cluster(
        3, seed=31, snapshot_entries=SNAPSHOT_ENTRIES, snapshot_catchup_entries=1500,
    ) as cluster:
        seq = itertools.count()
        leader, victim = await _lagging_follower(cluster, seq)
        # The transfer goes over a slow link: it takes longer than a snapshot period.
        cluster.network.slow_link(leader.id, victim, **SLOW)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_keep_writing, cluster, seq, stop)
            await trio.sleep(1.0)  # the load is on
            back = await cluster.restart(victim)
            transfers = _count_transfers(leader, victim)  # (the link's delay: none yet)
            behind_at_install: list[tuple[int, int]] = []
            nursery.start_soon(_watch_installs, back, leader, behind_at_install)
            start = trio.current_time()
            # Converged *while the load continues*: within one write batch of the leader.
            await cluster.wait_until(
                lambda: back.kv.applied_index >= leader._c.commit_index - 2 * RATE_BATCH,
                timeout_s=15.0,
            )
            took = trio.current_time() - start
            # It stays with the leader as long as the load goes on.
            for _ in range(20):
                await trio.sleep(0.25)
                assert back.kv.applied_index >= leader._c.commit_index - 1000
            stop.set()
            nursery.cancel_scope.cancel()
        print(f"lagging follower converged in {took:.2f} s (virtual) under load, "
              f"transfers={len(transfers)}, "
              f"installs (installed, leader's newest)={behind_at_install}")
        assert cluster.leader() is leader  # no election: this is a healthy cluster
        # One snapshot, then entries from the tail: no second transfer was needed.
        assert len(transfers) == 1
        [(installed, newest)] = behind_at_install
        assert newest > installed  # the leader took newer snapshots mid-transfer
        digest = await cluster.wait_converged()
        assert back.kv.state_digest() == digest


async def test_a_rejected_heartbeat_during_a_transfer_starts_no_second_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 11 #3a: a transfer taking ~3.5 s over a slow link sees dozens of heartbeats
    the follower rejects (it lacks the log); none of them starts another transfer."""
    async with open_cluster(
        3, seed=32, snapshot_entries=SNAPSHOT_ENTRIES, snapshot_catchup_entries=100,
    ) as cluster:
        seq = itertools.count()
        leader, victim = await _lagging_follower(cluster, seq)
        cluster.network.slow_link(leader.id, victim, **SLOW)
        rejected = 0
        step = leader._c.step

        def counting_step(msg: Any, now: float) -> None:
            nonlocal rejected
            if msg.src == victim and getattr(msg, "success", True) is False:
                rejected += 1
            step(msg, now)

        leader._c.step = counting_step  # type: ignore[method-assign]
        back = await cluster.restart(victim)
        transfers = _count_transfers(leader, victim)
        await cluster.wait_until(lambda: back.stats.get("snapshots_installed", 0) >= 1, 15.0)
        await cluster.wait_converged()
        assert rejected >= 10  # heartbeats were rejected while the transfer ran
        assert len(transfers) == 1


async def test_a_restarted_transfer_never_installs_a_truncated_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 11 #3b: the follower has received a whole snapshot and waits to install it
    (its driver is busy); the leader restarts the same transfer from offset 0 and gets one
    chunk across. What the follower installs is the whole snapshot, never the restarted
    transfer's prefix, and it restarts from it."""
    async with open_cluster(
        3, seed=33, snapshot_entries=SNAPSHOT_ENTRIES, snapshot_catchup_entries=100,
    ) as cluster:
        seq = itertools.count()
        leader, victim = await _lagging_follower(cluster, seq)
        cluster.network.slow_link(leader.id, victim, **SLOW)
        # Record the first transfer: its offer and its data.
        offers: list[SnapshotOffer] = []
        chunks: dict[int, bytes] = {}
        send = leader.transport.send_snapshot

        async def send_snapshot(offer: SnapshotOffer, read_chunk: Any) -> None:
            async def reading(offset: int, size: int) -> bytes:
                data: bytes = await read_chunk(offset, size)
                chunks.setdefault(offset, data)
                return data

            offers.append(offer)
            await send(offer, reading)

        leader.transport.send_snapshot = send_snapshot  # type: ignore[method-assign]
        back = await cluster.restart(victim)
        # The follower's driver is slow to get to the install (a long fsync or
        # restore before it): it waits until the test lets it go.
        gate, waiting = trio.Event(), trio.Event()
        persist = back._driver._persist

        async def slow_persist(rd: Any) -> None:
            if rd.snapshot is not None:
                waiting.set()
                await gate.wait()
            await persist(rd)

        back._driver._persist = slow_persist  # type: ignore[method-assign]
        with trio.fail_after(15):
            await waiting.wait()
        assert offers
        assert len(chunks) > 1  # a whole transfer of several chunks
        await trio.sleep(6)  # long past any "recently finished" grace period

        async def restarted() -> None:
            async def first_chunk_only(offset: int, size: int) -> bytes:
                if offset > 0:
                    await trio.sleep_forever()  # the retry is cut off after one chunk
                return chunks[0][:size]

            # Refusing the retry is fine too: the transfer awaits installation.
            with contextlib.suppress(LinkError):
                await send(offers[0], first_chunk_only)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(restarted)
            await trio.sleep(2)  # its first chunk arrived (or was refused)
            gate.set()
            await cluster.wait_until(lambda: back.stats.get("snapshots_installed", 0) >= 1, 5)
            nursery.cancel_scope.cancel()
        # What it installed and stored is the whole first transfer, byte for byte.
        whole = b"".join(chunks[k] for k in sorted(chunks))
        stored = cluster.storages[victim].load_snapshot()
        assert stored is not None
        assert stored[0].index == offers[0].msg.meta.index
        assert stored[1] == whole
        digest = await cluster.wait_converged()
        assert back.kv.state_digest() == digest
        # ... and it restarts from it.
        await cluster.crash(victim)
        again = await cluster.restart(victim)
        assert again.kv.applied_index >= offers[0].msg.meta.index
        assert await cluster.wait_converged() == again.kv.state_digest()


async def test_a_restart_keeps_the_catch_up_tail(autojump_clock: trio.testing.MockClock) -> None:
    """The core is rebuilt from the stored compaction point: after the whole cluster
    restarts, a follower a little behind the newest snapshot (but within the tail)
    still catches up with entries, not with a snapshot."""
    async with open_cluster(
        3, seed=34, snapshot_entries=50, snapshot_catchup_entries=100,
    ) as cluster:
        seq = itertools.count()
        leader = await cluster.wait_for_leader()
        await _write_bulk(cluster, seq, 300)
        victim = cluster.followers()[0].id
        await cluster.wait_applied(leader.kv.applied_index)
        await cluster.crash(victim)
        victim_last = cluster.storages[victim].load().entries[-1].index
        await _write_bulk(cluster, seq, 100)  # the others snapshot past the victim
        # A snapshot is encoded and written off the event loop: wait until the
        # others' newest one is on disk before everyone crashes.
        await cluster.wait_until(
            lambda: all(
                cluster.storages[i].load().snapshot.index > victim_last
                for i in cluster.ids if i != victim
            ),
            timeout_s=30,
        )
        await cluster.crash_all()
        for node_id in cluster.ids:
            stored = cluster.storages[node_id].load()
            assert stored.compacted.index < stored.snapshot.index  # a tail is stored
            node = await cluster.restart(node_id)
            # ... and the restarted core holds it.
            assert node._c.log.first_index() == stored.compacted.index + 1
            assert node._c.log.snapshot == stored.snapshot
        back = cluster.nodes[victim]
        others = [cluster.nodes[i] for i in cluster.ids if i != victim]
        assert all(o._c.log.snapshot.index > back._c.log.last_index() for o in others)
        await cluster.wait_converged()
        assert back.stats.get("snapshots_installed", 0) == 0
