"""Regression tests for RaftNode runtime details found while building the cluster tests."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
import trio

from tests.node.helpers import put
from trioraft.core import Entry, HardState, Message, RequestVote
from trioraft.errors import NoQuorum, UnknownOutcome
from trioraft.storage import MemoryStorage, Storage
from trioraft.testing.cluster import open_cluster


class RecordingStorage(MemoryStorage):
    """Records which thread each save ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        self.threads.add(threading.get_ident())
        super().save(hard_state, entries)


class StallingStorage(MemoryStorage):
    """A disk that hangs on save() while `stalled` (like an fsync that takes ages)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        assert self.gate.wait(timeout=30), "test forgot to release the stalled disk"
        super().save(hard_state, entries)


async def test_run_disk_inline_calls_storage_on_the_event_loop_thread(
    autojump_clock: trio.testing.MockClock,
):
    storages: list[RecordingStorage] = []

    def factory(node_id: str) -> Storage:
        storages.append(RecordingStorage())
        return storages[-1]

    async with open_cluster(3, storage_factory=factory) as cluster:
        await put(await cluster.wait_for_leader(), "k", "v")
        await cluster.wait_converged()
    assert {t for s in storages for t in s.threads} == {threading.get_ident()}


async def test_default_node_runs_storage_in_a_worker_thread():
    # Real clock: the threaded path is what production uses.
    storages: list[RecordingStorage] = []

    def factory(node_id: str) -> Storage:
        storages.append(RecordingStorage())
        return storages[-1]

    with trio.fail_after(10):
        async with open_cluster(3, storage_factory=factory, run_disk_inline=False) as cluster:
            await put(await cluster.wait_for_leader(), "k", "v")
            await cluster.wait_converged()
    threads = {t for s in storages for t in s.threads}
    assert threads
    assert threading.get_ident() not in threads


async def test_write_that_timed_out_before_being_proposed_never_applies():
    # NoQuorum from propose() promises "not proposed, never will be" (API: a
    # 503 is safe to retry). The proposal was still queued in the inbox while
    # the driver was stuck on a slow disk; once the disk came back, the driver
    # appended it anyway and it applied -- a retry would have applied twice.
    # Real clock: under autojump, virtual time would jump while the stalled
    # worker thread blocks, timing out the warm-up write too.
    disk = StallingStorage()
    async with open_cluster(
        1, storage_factory=lambda _: disk, run_disk_inline=False, request_timeout_s=0.3
    ) as cluster:
        node = await cluster.wait_for_leader()
        await put(node, "warmup", "ok")

        disk.gate.clear()
        outcomes: dict[str, type[BaseException]] = {}

        async def write(key: str, task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            try:
                await put(node, key, "v")
            except (UnknownOutcome, NoQuorum) as exc:
                outcomes[key] = type(exc)

        async with trio.open_nursery() as nursery:
            await nursery.start(write, "first")  # taken by the driver, stuck on disk
            await trio.sleep(0.01)
            await nursery.start(write, "second")  # still in the inbox
        assert outcomes == {"first": UnknownOutcome, "second": NoQuorum}

        disk.gate.set()
        await put(node, "after", "ok")
        assert node.kv.get("first") == "v"  # unknown outcome: it may apply, and did
        assert node.kv.get("second") is None  # NoQuorum: it must never apply


@pytest.mark.parametrize("n", [1, 3])
async def test_cluster_restart_keeps_only_what_was_persisted(
    n: int, autojump_clock: trio.testing.MockClock
):
    async with open_cluster(n) as cluster:
        leader = await cluster.wait_for_leader()
        await put(leader, "k", "v")
        await cluster.wait_converged()
        await cluster.crash_all()
        for i in cluster.ids:
            await cluster.restart(i)
        await cluster.wait_converged()
        assert all(node.kv.get("k") == "v" for node in cluster.running())


async def test_open_node_runs_a_node_for_the_block(tmp_path, autojump_clock):
    from pathlib import Path

    from tests.node.helpers import put
    from trioraft.config import NodeConfig
    from trioraft.node import open_node
    from trioraft.storage import MemoryStorage
    from trioraft.transport import MemoryNetwork

    cfg = NodeConfig(id="solo", listen_host="127.0.0.1", listen_port=1,
                     advertise_url="http://solo.invalid", peers={}, data_dir=Path(tmp_path),
                     election_timeout_ms=(150, 300), heartbeat_ms=50, cluster_token=None)
    storage = MemoryStorage()
    transport = MemoryNetwork().transport("solo", [])  # no peers
    async with open_node(cfg, storage, transport, run_disk_inline=True) as node:
        assert await node.wait_for_leader(5) == "solo"
        result = await put(node, "k", "v")
        assert node.kv.get("k") == "v"
    assert storage.load().entries[-1].index == result.index  # durable after the block


async def test_a_follower_whose_disk_stalled_steps_queued_heartbeats_before_its_timer():
    """Regression (issue 11 #4, the 1M-key stability run): a follower's driver that
    waited on a slow disk for longer than its election timeout found its deadline
    passed and campaigned (pre-vote requests went out) although the leader's
    heartbeats had been arriving all along, queued in its inbox. It must step
    what queued first: the heartbeats reset its timer, and it never campaigns.
    Real clock: the stall is a worker thread blocked on the disk."""
    disks: dict[str, StallingStorage] = {}

    def factory(node_id: str) -> Storage:
        disks[node_id] = StallingStorage()
        return disks[node_id]

    async with open_cluster(3, storage_factory=factory, run_disk_inline=False) as cluster:
        leader = await cluster.wait_for_leader()
        await put(leader, "warmup", "ok")
        follower = cluster.followers()[0]
        votes: list[RequestVote] = []
        send = follower.transport.send

        def recording_send(msg: Message) -> None:
            if isinstance(msg, RequestVote):
                votes.append(msg)
            send(msg)

        follower.transport.send = recording_send  # type: ignore[method-assign]
        assert leader.core is not None
        term = leader.core.term
        disks[follower.id].gate.clear()
        await put(leader, "k", "v")  # the follower's driver now waits on its disk
        await trio.sleep(0.8)  # > the 300 ms maximum election timeout; heartbeats queue
        disks[follower.id].gate.set()
        await trio.sleep(0.5)
        await cluster.wait_converged()
        assert votes == []
        assert leader.core.term == term
        assert leader.is_leader
