"""Exercise 4 (persistence) with real processes, fsync on.

* Graceful: write, SIGTERM every node, restart every node: all data is there.
* Crash: four writers run while every node is SIGKILLed at once. After a restart,
  every write that was answered 200 is there (or a newer value of its key), and all
  nodes converge to the same state.
"""

from __future__ import annotations

import random
import time

import httpx
import pytest
import trio

from trioraft.testing.procs import HTTPX_BYTESTREAM_WARNING, ProcCluster

pytestmark = [pytest.mark.processes, pytest.mark.filterwarnings(HTTPX_BYTESTREAM_WARNING)]


async def list_all(cluster: ProcCluster, node_id: str, consistency: str) -> dict[str, str]:
    resp = await cluster.request(
        node_id, "GET", "/kv", params={"prefix": "", "limit": "10000", "consistency": consistency}
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["more"] is False
    return {item["key"]: item["value"] for item in body["items"]}


async def test_graceful_stop_of_all_nodes_keeps_everything(make_cluster):
    cluster = await make_cluster(3)
    expected = {f"key-{i:03}": f"value-{i}" for i in range(60)}

    async def writer(part: list[tuple[str, str]]) -> None:
        for key, value in part:
            await cluster.put(key, value)  # on the leader, retried on 503/504

    items = list(expected.items())
    async with trio.open_nursery() as nursery:
        for w in range(4):
            nursery.start_soon(writer, items[w::4])
    leader = await cluster.wait_for_leader()
    resp = await cluster.request(leader, "DELETE", "/kv/key-000")
    assert resp.json()["deleted"] is True
    del expected["key-000"]

    t0 = time.monotonic()
    codes = await cluster.stop_all()  # SIGTERM, all at once
    print(f"\ngraceful stop of all nodes took {time.monotonic() - t0:.3f}s")
    assert codes == dict.fromkeys(cluster.ids, 0), codes

    cluster.start_all()
    leader = await cluster.wait_for_leader()
    assert await list_all(cluster, leader, "linearizable") == expected
    for node_id in cluster.ids:
        assert await cluster.get("key-059", node_id=node_id) == "value-59"
    assert await cluster.wait_converged() == expected
    for node_id in cluster.ids:
        assert await list_all(cluster, node_id, "stale") == expected


class Writer:
    """Writes increasing values to a few keys of its own, straight to the leader.

    After any answer other than 200 the key's last write has an unknown outcome (it
    may apply later), so the writer retires that key and goes on with a fresh one:
    on every key, all acknowledged writes come before the one possibly-pending write,
    and the final value must be at least the highest acknowledged one.
    """

    def __init__(self, cluster: ProcCluster, wid: int, slots: int = 4) -> None:
        self.cluster = cluster
        self.wid = wid
        self.gen = 0
        self.keys = [self._fresh(s) for s in range(slots)]
        self.acked: dict[str, int] = {}
        self.counter = 0
        self.oks = 0
        self.errors = 0

    def _fresh(self, slot: int) -> str:
        self.gen += 1
        return f"w{self.wid}-s{slot}-g{self.gen}"

    async def run(self, leader_box: list[str | None], stop: trio.Event) -> None:
        # Never cancelled mid-request (that leaks httpx body iterators): `stop` ends it.
        rng = random.Random(self.wid)
        while not stop.is_set():
            slot = rng.randrange(len(self.keys))
            key = self.keys[slot]
            self.counter += 1
            leader = leader_box[0]
            ok = False
            if leader is not None:
                try:
                    resp = await self.cluster.request(
                        leader,
                        "PUT",
                        f"/kv/{key}",
                        json={"value": f"{self.counter:08}"},
                        timeout=2.0,
                    )
                    ok = resp.status_code == 200
                except httpx.HTTPError:
                    ok = False
            if ok:
                self.acked[key] = self.counter
                self.oks += 1
            else:
                self.errors += 1
                self.keys[slot] = self._fresh(slot)  # the old key may have a pending write
                if not stop.is_set():
                    leader_box[0] = await self.cluster.leader()
                    await trio.sleep(0.02)


async def test_sigkill_of_all_nodes_under_load_loses_no_acknowledged_write(make_cluster):
    cluster = await make_cluster(3)
    leader_box: list[str | None] = [await cluster.wait_for_leader()]
    writers = [Writer(cluster, w) for w in range(4)]
    stop = trio.Event()

    async with trio.open_nursery() as nursery:
        for w in writers:
            nursery.start_soon(w.run, leader_box, stop)
        await trio.sleep(2.0)
        oks_before = sum(w.oks for w in writers)
        cluster.kill_all()  # SIGKILL every node, writes in flight
        killed_at = time.monotonic()
        await trio.sleep(0.3)  # the writers see the crash
        stop.set()
    acked = {k: v for w in writers for k, v in w.acked.items()}
    oks = sum(w.oks for w in writers)
    print(f"\n{oks} writes acknowledged ({oks_before} before the kill), on {len(acked)} keys")
    assert oks_before >= 20, "the writers barely wrote anything: the test proves nothing"

    cluster.start_all()
    leader = await cluster.wait_for_leader()
    print(f"restarted, leader {leader} after {time.monotonic() - killed_at:.3f}s")
    state = await list_all(cluster, leader, "linearizable")
    lost = {k: (v, state.get(k)) for k, v in acked.items() if int(state.get(k, "-1")) < v}
    assert not lost, f"acknowledged writes lost (key: (acked, found)): {lost}"

    await cluster.wait_caught_up()
    converged = await cluster.wait_converged()
    assert converged == state
    for node_id in cluster.ids:
        assert await list_all(cluster, node_id, "stale") == state

    # And the cluster still takes writes.
    await cluster.put("after-restart", "ok")


async def test_sigterm_stops_a_node_promptly(make_cluster):
    # Regression: idle keep-alive connections (peers' links, client pools) used
    # to hold every shutdown for hypercorn's full graceful_timeout (5 s).
    cluster = await make_cluster(3)
    leader = await cluster.wait_for_leader()
    follower = next(i for i in cluster.ids if i != leader)
    await cluster.put("k", "v")
    t0 = time.monotonic()
    code = await cluster.stop(follower, grace=15)
    took = time.monotonic() - t0
    print(f"\nSIGTERM to exit of {follower}: {took:.3f}s")
    assert code == 0
    assert took < 3.5
