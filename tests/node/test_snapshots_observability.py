"""What an operator sees of writes, a snapshot transfer and a leader change (issue 14):
the runtime's metrics really move on /metrics, and its log events come out.

The main test runs real servers on loopback (in-process): two nodes take writes
and snapshots, a third joins empty and is brought up by a snapshot, leadership
moves; then every node's /metrics is scraped. Smaller ones: a slow fsync and a
loop stall are logged as such.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import Cluster, make_configs, start_cluster
from tests.node.helpers import put
from trioraft.node import LoopLagMonitor
from trioraft.server import serve
from trioraft.storage import MemoryStorage
from trioraft.testing.cluster import open_cluster


def parse(text: str) -> dict[str, float]:
    """{'name{label="v",...}': value} for every sample."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


async def scrape(c: Cluster, node_id: str) -> dict[str, float]:
    r = await c.client.get(f"{c.urls[node_id]}/metrics")
    assert r.status_code == 200
    return parse(r.text)


def events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    """The runtime's structured events (not the access log's)."""
    return [
        (r.event, r.fields)  # type: ignore[attr-defined]
        for r in caplog.records
        if hasattr(r, "event") and r.name != "trioraft.access"
    ]


@pytest.mark.processes  # real servers on loopback, like tests/ops/test_metrics.py
async def test_metrics_and_events_follow_writes_a_snapshot_and_a_leader_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioraft")
    configs = [
        dataclasses.replace(c, snapshot_entries=20, snapshot_catchup_entries=5)
        for c in make_configs(3, tmp_path)
    ]
    # A two-member cluster; the third node joins later (a new cluster needs
    # every initial member to bootstrap, issue 12), so it starts empty and the
    # leader compacted what it lacks.
    first = [dataclasses.replace(c, peers={k: v for k, v in c.peers.items() if k != "node3"})
             for c in configs[:2]]  # fmt: skip
    late = dataclasses.replace(configs[2], peers={},
                               join=tuple(c.advertise_url for c in first))  # fmt: skip
    async with start_cluster(first) as cluster:
        leader = cluster.leader
        before = len(events(caplog))
        for i in range(60):
            url = f"{cluster.leader_url}/kv/k{i % 7}"
            r = await cluster.client.put(url, json={"value": "v" * 50})
            assert r.status_code == 200, r.text
        r = await cluster.client.get(f"{cluster.leader_url}/kv/k1")  # linearizable: ReadIndex
        assert r.status_code == 200
        # Operator events, nothing per request: 60 writes log only their snapshots.
        # (loop_lag is the machine's, not the requests': a loaded test host may
        # stall the loop now and then, and that event is right to appear.)
        during = [e for e in events(caplog)[before:] if e[0] != "loop_lag"]
        assert {name for name, _ in during} == {"snapshot_taken"}
        assert len(during) <= 2 * 60 // 20
        # The third member starts empty: the leader compacted what it lacks.
        async with trio.open_nursery() as nursery:
            third = await nursery.start(serve, late)
            cluster.nodes.append(third)
            cluster.urls[late.id] = late.advertise_url
            body = {"name": late.id, "url": late.advertise_url, "promote": True,
                    "timeout_ms": 20_000}  # fmt: skip
            with trio.fail_after(30):
                while True:  # until the joiner is known to be waiting (it polls)
                    r = await cluster.client.post(f"{cluster.leader_url}/cluster/members",
                                                  json=body)  # fmt: skip
                    if r.status_code == 200 or r.json().get("code") not in (
                            "not_joining", "change_in_progress", "no_leader"):
                        break
                    await trio.sleep(0.1)
            assert r.status_code == 200, r.text
            assert r.json()["voter"], r.text
            late_id = r.json()["member_id"]  # a member id: one per incarnation
            with trio.fail_after(10):
                while third.stats.get("snapshots_installed", 0) == 0:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            await cluster.settle()
            # Leadership moves to another node.
            assert await leader.transfer_leadership(2.0)
            new = await cluster.wait_leader()
            assert new is not leader
            r = await cluster.client.put(f"{cluster.urls[new.id]}/kv/after", json={"value": "x"})
            assert r.status_code == 200
            await cluster.settle()

            m = await scrape(cluster, leader.id)
            assert m["trioraft_fsync_duration_seconds_count"] >= 1
            assert m["trioraft_apply_duration_seconds_count"] >= 1
            assert m["trioraft_applied_entries_total"] >= 60
            assert m["trioraft_proposal_batch_size_entries_count"] >= 1
            assert m["trioraft_proposal_batch_size_entries_sum"] >= 60
            assert m["trioraft_read_index_rounds_total"] >= 1
            assert m["trioraft_snapshots_total"] >= 2
            assert m["trioraft_snapshot_index"] >= 40
            sent = f'peer="{late_id}",result="ok"'
            assert m[f'trioraft_snapshot_transfers_total{{direction="sent",{sent}}}'] == 1
            to_late = f'direction="sent",peer="{late_id}"'
            assert m[f"trioraft_snapshot_transfer_bytes_total{{{to_late}}}"] > 0
            assert m["trioraft_leader_changes_total"] >= 2  # elected, then handed over
            assert m["trioraft_is_leader"] == 0

            t = await scrape(cluster, late.id)  # (by name: cluster.urls)
            got = f'direction="received",peer="{leader.id}",result="ok"'
            assert t[f"trioraft_snapshot_transfers_total{{{got}}}"] == 1
            assert t["trioraft_snapshots_installed_total"] == 1
            assert t["trioraft_leader_changes_total"] >= 2
            n = await scrape(cluster, new.id)
            assert n["trioraft_is_leader"] == 1
            assert n["trioraft_proposal_batch_size_entries_count"] >= 1
            nursery.cancel_scope.cancel()

    seen = events(caplog)
    names = {name for name, _ in seen}
    assert {"recovered", "role_changed", "leader_changed", "snapshot_taken", "snapshot_sent",
            "snapshot_installed", "node_started"} <= names  # fmt: skip
    [(_, installed)] = [e for e in seen if e[0] == "snapshot_installed"]
    assert installed["source"] == leader.id
    assert installed["bytes"] > 0
    assert any(f["leader"] == new.id and f["term"] > 0 for n_, f in seen if n_ == "leader_changed")


class SlowDisk(MemoryStorage):
    """A disk whose writes take 120 ms of real time while `slow` is set."""

    slow = False

    def save(self, hard_state: Any, entries: Any) -> None:
        if self.slow:
            time.sleep(0.12)
        super().save(hard_state, entries)


async def test_a_slow_fsync_is_logged_at_most_once_per_interval(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioraft")
    disk = SlowDisk()
    async with open_cluster(1, seed=51, storage_factory=lambda _: disk) as cluster:
        node = await cluster.wait_for_leader()
        await put(node, "fast", "1")
        disk.slow = True
        for i in range(3):  # three slow writes within 10 s: one line
            await put(node, f"slow{i}", "1")
        disk.slow = False
        slow = [f for name, f in events(caplog) if name == "slow_fsync"]
        assert len(slow) == 1
        assert slow[0]["ms"] >= 100
        assert slow[0]["entries"] == 1
        hist = node.metrics.fsync_seconds
        fast = hist.collect()[0]
        under = {s.labels["le"]: s.value for s in fast.samples if s.name.endswith("_bucket")}
        assert under["+Inf"] - under["0.1"] == 3  # the three slow ones, on /metrics too


def test_a_loop_stall_is_a_loop_lag_event(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trioraft")
    monitor = LoopLagMonitor(threshold=0.05)
    monitor.record(1.0, 0.01)
    monitor.record(2.0, 0.2)
    [(name, fields)] = events(caplog)
    assert name == "loop_lag"
    assert fields == {"ms": 200, "worst_ms": 200, "stalls": 1}
    assert caplog.records[0].levelno == logging.WARNING
