"""GET /metrics on every node: Prometheus text, the documented families, names by the
conventions, one registry per node; the NodeMetrics hooks; /ui and /ui/state."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import Cluster, make_configs, start_cluster
from trioraft import metrics
from trioraft.metrics import NodeMetrics, Watcher, metrics_of, route_of

pytestmark = pytest.mark.processes

DOCUMENTED = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


@pytest.fixture
async def trio3(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with start_cluster(make_configs(3, tmp_path)) as cluster:
        yield cluster


def parse(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(family.name, []).extend(family.samples)
    return out


def value(samples: list[Any], name: str, **labels: str) -> float:
    [v] = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    return float(v)


async def scrape(c: Cluster, node_id: str) -> dict[str, list[Any]]:
    r = await c.client.get(f"{c.urls[node_id]}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["access-control-allow-origin"] == "*"
    return parse(r.text)


async def test_every_node_serves_its_own_metrics(trio3: Cluster) -> None:
    leader = trio3.leader.id
    for _ in range(3):
        r = await trio3.client.put(f"{trio3.leader_url}/kv/k", json={"value": "v"})
        assert r.status_code == 200
    await trio3.settle()
    for node in trio3.nodes:
        m = await scrape(trio3, node.id)
        st = node.status()
        assert value(m["trioraft_term"], "trioraft_term") == st["term"]
        role = "leader" if node.id == leader else "follower"
        assert value(m["trioraft_role"], "trioraft_role", role=role) == 1
        assert value(m["trioraft_role"], "trioraft_role", role="candidate") == 0
        assert value(m["trioraft_is_leader"], "trioraft_is_leader") == (node.id == leader)
        for f in ("commit_index", "applied_index", "last_log_index", "snapshot_index"):
            assert value(m[f"trioraft_{f}"], f"trioraft_{f}") == st[f]
        assert value(m["trioraft_fsyncs"], "trioraft_fsyncs_total") == node.stats["fsyncs"]
        assert value(m["trioraft_voters"], "trioraft_voters") == 3
        assert value(m["process_resident_memory_bytes"], "process_resident_memory_bytes") > 0
    # The writes went to the leader's URL: its histogram has them, the others' not.
    m = await scrape(trio3, leader)
    hist = m["trioraft_http_request_duration_seconds"]
    put = dict(route="/kv/{key}", method="PUT", status="200")
    assert value(hist, "trioraft_http_request_duration_seconds_count", **put) == 3
    assert value(m["trioraft_proposals"], "trioraft_proposals_total") >= 3
    follower = next(n.id for n in trio3.nodes if n.id != leader)
    hist = (await scrape(trio3, follower))["trioraft_http_request_duration_seconds"]
    assert not [s for s in hist if s.labels.get("method") == "PUT"]


async def test_the_leader_reports_each_followers_replication(trio3: Cluster) -> None:
    await trio3.settle()
    leader = trio3.leader.id
    m = await scrape(trio3, leader)
    followers = sorted(n.id for n in trio3.nodes if n.id != leader)
    for peer in followers:
        assert value(m["trioraft_replication_lag_entries"],
                     "trioraft_replication_lag_entries", peer=peer) == 0
        assert value(m["trioraft_replication_lag_seconds"],
                     "trioraft_replication_lag_seconds", peer=peer) == 0
        assert value(m["trioraft_replication_state"], "trioraft_replication_state",
                     peer=peer, state="replicate") == 1
        assert value(m["trioraft_peer_up"], "trioraft_peer_up", peer=peer) in (0, 1)
    follower_metrics = await scrape(trio3, followers[0])
    assert "trioraft_replication_lag_entries" not in follower_metrics


async def test_metric_names_follow_the_conventions_and_are_documented(trio3: Cluster) -> None:
    metrics_of(trio3.leader).observe_fsync(0.001)  # so the histograms have samples
    text = (await trio3.client.get(f"{trio3.leader_url}/metrics")).text
    docs = DOCUMENTED.read_text()
    for family in text_string_to_metric_families(text):
        name = family.name
        if name.startswith(("process_", "python_")):
            continue
        assert name.startswith("trioraft_"), name
        assert re.fullmatch(r"[a-z_]+", name), name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), name
        if family.type == "histogram":
            assert name.endswith(("_seconds", "_entries")), name
        shown = name + "_total" if family.type == "counter" else name
        assert f"`{shown}`" in docs, f"{shown} is not in docs/operations.md"


async def test_nodes_in_one_process_do_not_share_a_registry(trio3: Cluster) -> None:
    a, b = trio3.nodes[0], trio3.nodes[1]
    assert metrics_of(a).registry is not metrics_of(b).registry
    metrics_of(a).observe_batch(7)
    assert metrics_of(a).batch_size.collect()[0].samples != \
        metrics_of(b).batch_size.collect()[0].samples


async def test_ui_and_ui_state(trio3: Cluster) -> None:
    r = await trio3.client.get(f"{trio3.leader_url}/ui")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = r.text
    # One self-contained page: no external script, style, font or image.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page
    assert "@import" not in page
    r = await trio3.client.get(f"{trio3.urls[trio3.nodes[2].id]}/ui/state")
    assert r.headers["access-control-allow-origin"] == "*"
    body = r.json()
    assert body["status"]["id"] == trio3.nodes[2].id
    assert set(body["requests"]) == {"reads", "writes"}
    assert isinstance(body["loop_lag_ms"], float)


# ---------------------------------------------------------------- units


class FakeNode:
    """Just what the metrics read of a node (weak-referenceable, like RaftNode)."""

    def __init__(self) -> None:
        self.id = "n1"
        self.stats: dict[str, int] = {}
        self.core = SimpleNamespace(progress={})
        self.st: dict[str, Any] = {}

    def status(self) -> dict[str, Any]:
        return dict(self.st)


def fake_node(**status: Any) -> Any:
    node = FakeNode()
    node.st = {"id": "n1", "role": "follower", "term": 1, "leader": None, "commit_index": 0,
               "applied_index": 0, "last_log_index": 0, "snapshot_index": 0, "members": {},
               **status}  # fmt: skip
    return node


def test_the_watcher_records_role_and_leader_changes() -> None:
    node = fake_node()
    w = Watcher(node, 0.05)
    w.sample()
    node.st.update(role="precandidate")
    w.sample()
    node.st.update(role="leader", term=2, leader="n1")
    w.sample()
    w.sample()  # no change: nothing recorded
    node.st.update(role="follower", term=3, leader="n2")
    w.sample()
    m = metrics_of(node)
    assert [(c.term, c.role, c.leader) for c in m.history] == [
        (1, "follower", None), (1, "precandidate", None), (2, "leader", "n1"),
        (3, "follower", "n2"),
    ]  # fmt: skip
    assert m.leader_changes._value.get() == 3  # None (first sight), n1, n2


def test_the_runtime_hook_takes_over_leader_changes() -> None:
    node = fake_node()
    m = metrics_of(node)
    m.observe_leader_change(5, "leader", "n1")
    node.st.update(role="candidate", term=9)
    Watcher(node, 0.05).sample()  # the sampler defers to the runtime now
    assert [(c.term, c.role) for c in m.history] == [(5, "leader")]


def test_lag_in_seconds_is_the_age_of_the_oldest_missing_entry() -> None:
    m = NodeMetrics(fake_node())
    m.note_log(10, now=100.0)
    m.note_log(20, now=101.0)
    m.note_log(30, now=103.0)
    assert m.lag_seconds(30, 30, now=104.0) == 0.0
    assert m.lag_seconds(25, 30, now=104.0) == pytest.approx(1.0)  # 21-30 since t=103
    assert m.lag_seconds(15, 30, now=104.0) == pytest.approx(3.0)  # 11-20 since t=101
    m.note_log(5, now=105.0)  # a new leader's shorter log: start over
    assert m.lag_seconds(3, 5, now=106.0) == pytest.approx(1.0)


def test_hooks_show_up_in_the_exposition() -> None:
    m = NodeMetrics(fake_node())
    m.observe_fsync(0.004)
    m.observe_apply(0.001, 12)
    m.observe_batch(64)
    m.observe_read_index()
    m.observe_snapshot_transfer("sent", "n2", 1000, ok=True)
    m.observe_loop_lag(0.002)
    text = metrics.render(m).decode()
    for line in (
        "trioraft_fsync_duration_seconds_count 1.0",
        "trioraft_applied_entries_total 12.0",
        "trioraft_proposal_batch_size_entries_count 1.0",
        "trioraft_read_index_rounds_total 1.0",
        'trioraft_snapshot_transfers_total{direction="sent",peer="n2",result="ok"} 1.0',
        'trioraft_snapshot_transfer_bytes_total{direction="sent",peer="n2"} 1000.0',
        "trioraft_event_loop_lag_seconds_count 1.0",
    ):
        assert line in text


@pytest.mark.parametrize(
    ("path", "method", "route"),
    [
        ("/kv/a", "GET", "/kv/{key}"), ("/kv/a/cas", "POST", "/kv/{key}/cas"),
        ("/kv/a/cas", "PUT", "/kv/{key}"), ("/kv", "GET", "/kv"), ("/status", "GET", "/status"),
        ("/raft/messages", "POST", "/raft/messages"), ("/nope/x", "GET", "other"),
        ("/kv/" + "x" * 500, "GET", "/kv/{key}"),
    ],
)  # fmt: skip
def test_request_labels_are_route_templates_never_keys(path, method, route) -> None:
    assert route_of(path, method) == route
