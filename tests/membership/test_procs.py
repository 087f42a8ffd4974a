"""Membership with real `trioraft serve` processes (issue 12, "Verification").

Few and focused (each boots real processes): grow 3 -> 5 and shrink 5 -> 3
under load, the leader included, with a linearizable history and no failed or
lost write; a wiped node re-admitted by itself while writes continue; the
issue's amnesia scenario; a removed member and a foreign data dir refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from trioraft.core import Configuration, Member
from trioraft.storage import Identity, SqliteStorage
from trioraft.testing.linearizability import check
from trioraft.testing.memberload import Load, final_reads, run_clients
from trioraft.testing.procs import HTTPX_BYTESTREAM_WARNING, ProcCluster, eventually

pytestmark = pytest.mark.filterwarnings(HTTPX_BYTESTREAM_WARNING)

FAST = {"election_timeout_ms": "150-300", "heartbeat_ms": 50}


def _live(cluster: ProcCluster, members: set[str]) -> list[str]:
    return [cluster.url(i) for i in sorted(members) if cluster[i].running]


async def _assert_history(cluster: ProcCluster, load: Load, state: dict[str, str]) -> None:
    """No write failed; the history, closed by a linearizable read of every key,
    is linearizable (so no acknowledged write was lost); the reads are the state."""
    assert load.failed_writes == []
    leader = await cluster.wait_for_leader()
    reads = await final_reads(load, cluster.url(leader))
    assert reads == {k: v for k, v in state.items() if k.startswith("m")}
    result = await trio.to_thread.run_sync(lambda: check(load.history, timeout=60))
    assert result.ok, result.explanation


async def test_grow_to_five_then_shrink_to_three_with_the_leader_under_load(
    tmp_path: Path,
) -> None:
    async with ProcCluster(3, tmp_path, **FAST) as cluster:  # type: ignore[arg-type]
        members = {"node1", "node2", "node3"}
        load, stop = Load(), trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_clients, load, lambda: _live(cluster, members), stop)
            await trio.sleep(1)
            for name in ("node4", "node5"):
                cluster.add_node(name)
                cluster.start(name)
            for name in ("node4", "node5"):
                added = await cluster.member_add(name)
                assert added["voter"] is True
                assert added["member_id"] != name  # a fresh incarnation id
                members.add(name)
            await cluster.wait_members(["node1", "node2", "node3", "node4", "node5"])
            await trio.sleep(1)
            leader = await cluster.wait_for_leader()
            follower = next(n for n in ("node1", "node2", "node3") if n != leader)
            for name in (leader, follower):
                members.discard(name)
                out = await cluster.member_remove(name)
                assert out["removed"] is True
                # The removed node stops by itself, cleanly.
                with trio.fail_after(20):
                    while cluster[name].running:  # noqa: ASYNC110 - a process exiting
                        await trio.sleep(0.1)
                assert cluster[name].returncode == 0
            await trio.sleep(1)
            stop.set()
        remaining = sorted(members)
        await cluster.wait_members(remaining)
        state = await cluster.wait_converged(remaining)
        await _assert_history(cluster, load, state)
        assert len(load.write_latencies) > 20
        # The removed leader's data dir refuses to start again, saying what to do.
        with trio.fail_after(60):
            proc = await trio.run_process(cluster[leader].argv, capture_stderr=True, check=False)
        assert proc.returncode == 1
        assert "was removed from cluster" in proc.stderr.decode()
        assert "re-admitted" in proc.stderr.decode()


async def test_a_wiped_node_comes_back_by_itself_while_writes_continue(tmp_path: Path) -> None:
    async with ProcCluster(3, tmp_path, **FAST) as cluster:  # type: ignore[arg-type]
        members = {"node1", "node2", "node3"}
        load, stop = Load(), trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_clients, load, lambda: _live(cluster, members), stop)
            await trio.sleep(1)
            leader = await cluster.wait_for_leader()
            victim = next(n for n in sorted(members) if n != leader)
            cluster.kill(victim)
            cluster.wipe(victim)
            cluster.start(victim)  # the same command line: nothing else to do

            async def readmitted() -> str:
                body = await cluster.members()
                m = {m["name"]: m for m in body["members"]}
                assert victim in m
                assert m[victim]["member_id"] != victim
                assert m[victim]["voter"]
                assert not body["change_in_progress"]
                return str(m[victim]["member_id"])

            new_id = await eventually(readmitted, 60, 0.2)
            await trio.sleep(1)
            stop.set()
        state = await cluster.wait_converged()
        await _assert_history(cluster, load, state)
        status = await cluster.status(victim)
        assert status is not None
        assert status["member_id"] == new_id


async def test_the_issue_scenario_waits_for_the_old_leader_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """Cut C off (SIGSTOP), write k=v1 (on L and F), kill F, wipe it and restart
    it empty, kill L, let C back: F and C must not elect a leader (k would be
    lost). With L back, k=v1 is there and F is re-admitted."""
    async with ProcCluster(3, tmp_path, **FAST) as cluster:  # type: ignore[arg-type]
        leader = await cluster.wait_for_leader()
        f, c = [n for n in cluster.ids if n != leader]
        cluster.pause(c)
        await cluster.put("k", "v1")
        cluster.kill(f)
        cluster.wipe(f)
        cluster.start(f)
        await cluster.wait_serving(f)
        cluster.kill(leader)
        cluster.resume(c)
        with trio.move_on_after(5):  # ~25 election timeouts
            while True:
                assert await cluster.leader() is None, "an amnesiac quorum elected a leader"
                await trio.sleep(0.1)
        cluster.start(leader)
        await cluster.wait_for_leader(30)
        assert await cluster.get("k") == "v1"

        async def readmitted() -> None:
            body = await cluster.members()
            m = {m["name"]: m for m in body["members"]}
            assert f in m
            assert m[f]["member_id"] != f
            assert m[f]["voter"]

        await eventually(readmitted, 60, 0.2)
        state = await cluster.wait_converged()
        assert state["k"] == "v1"


async def test_a_node_on_a_data_dir_of_another_cluster_refuses_to_start(tmp_path: Path) -> None:
    async with ProcCluster(2, tmp_path / "c", **FAST) as cluster:  # type: ignore[arg-type]
        # A data dir of cluster "c-other" whose configuration names node1 of it.
        foreign = tmp_path / "foreign"
        st = SqliteStorage(foreign)
        st.load()
        st.save_identity(Identity("c-other", "node9", "node9", "n"))
        st.bootstrap(Configuration.of([Member("node9", True, "node9", "http://127.0.0.1:1"),
                                       Member("node1", True, "node1", cluster.url("node1"))]))
        st.close()
        argv = [sys.executable, "-m", "trioraft", "serve", "--id", "node9",
                "--listen", "127.0.0.1:0", "--advertise", "http://127.0.0.1:1",
                "--peer", f"node1={cluster.url('node1')}", "--data-dir", str(foreign),
                "--election-timeout-ms", "150-300", "--heartbeat-ms", "50"]  # fmt: skip
        with trio.fail_after(60):
            proc = await trio.run_process(argv, capture_stderr=True, check=False)
        assert proc.returncode == 1
        err = proc.stderr.decode()
        assert "belongs to cluster c-other" in err
        assert "is a member of cluster" in err
        assert "empty its data dir" in err
