"""Real in-process clusters on loopback for the HTTP contract tests (API.md §3-5).

Each node is `trioraft.server.serve` run inside the fixture's nursery, so a test
talks HTTP to real hypercorn servers backed by real RaftNodes and durable
storage (in `tmp_path`, fsync off for speed). The fixtures yield a `Cluster`;
tests use its `client` (an httpx.AsyncClient) and its node URLs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio

import trioraft.server
from trioraft.config import NodeConfig
from trioraft.node import RaftNode
from trioraft.server import serve
from trioraft.testing.procs import free_ports

LEADER_WAIT_S = 10.0
SETTLE_S = 5.0
TOKEN = "s3cret-token"


def make_configs(
    n: int, data_root: Path, *, token: str | None = None, **overrides: Any
) -> list[NodeConfig]:
    ports = free_ports(n)
    ids = [f"node{i + 1}" for i in range(n)]
    urls = {i: f"http://127.0.0.1:{p}" for i, p in zip(ids, ports, strict=True)}
    return [
        NodeConfig(
            id=i,
            listen_host="127.0.0.1",
            listen_port=p,
            advertise_url=urls[i],
            peers={j: u for j, u in urls.items() if j != i},
            data_dir=data_root / i,
            # All nodes share the test's one event loop, on a machine that may be
            # busy: a timeout 10x the heartbeat keeps spurious elections rare.
            election_timeout_ms=overrides.get("election_timeout_ms", (300, 600)),
            heartbeat_ms=overrides.get("heartbeat_ms", 30),
            cluster_token=token,
            fsync=False,
            request_timeout_s=overrides.get("request_timeout_s", 5.0),
        )
        for i, p in zip(ids, ports, strict=True)
    ]


@dataclass
class Cluster:
    nodes: list[RaftNode]
    client: httpx.AsyncClient
    urls: dict[str, str] = field(default_factory=dict)

    @property
    def leader(self) -> RaftNode:
        (leader,) = [n for n in self.nodes if n.is_leader]
        return leader

    @property
    def leader_url(self) -> str:
        return self.urls[self.leader.id]

    @property
    def follower_urls(self) -> list[str]:
        return [self.urls[n.id] for n in self.nodes if not n.is_leader]

    @property
    def all_urls(self) -> list[str]:
        return list(self.urls.values())

    async def wait_leader(self) -> RaftNode:
        """Until exactly one node leads and every node knows it (bounded)."""
        with trio.fail_after(LEADER_WAIT_S):
            while True:
                leaders = [n for n in self.nodes if n.is_leader]
                if len(leaders) == 1 and all(
                    n.leader_id == leaders[0].id for n in self.nodes
                ):
                    return leaders[0]
                await trio.sleep(0.01)

    async def settle(self) -> None:
        """Until every node has committed and applied everything in the leader's log.

        Only meaningful between requests (nothing in flight): then the leader's
        last index, which includes its no-op, is where everyone ends up.
        """
        leader = await self.wait_leader()
        with trio.fail_after(SETTLE_S):
            while True:
                target = leader.core.log.last_index() if leader.core else 0
                if all(
                    n.core is not None
                    and n.core.commit_index >= target
                    and n.kv.applied_index >= target
                    for n in self.nodes
                ):
                    return
                await trio.sleep(0.01)

    async def state(self) -> dict[str, Any]:
        """What every node holds, over HTTP: stale full range and /status indexes."""
        await self.settle()
        out: dict[str, Any] = {}
        for node_id, url in self.urls.items():
            r = await self.client.get(
                f"{url}/kv", params={"consistency": "stale", "limit": "10000"}
            )
            assert r.status_code == 200, r.text
            s = (await self.client.get(f"{url}/status")).json()
            out[node_id] = {
                "items": r.json()["items"],
                "commit_index": s["commit_index"],
                "applied_index": s["applied_index"],
                "last_log_index": s["last_log_index"],
                "term": s["term"],
            }
        return out

    async def read_everywhere(self, key: str) -> dict[str, str | None]:
        """The stale value of `key` on every node, once the cluster has settled."""
        await self.settle()
        out: dict[str, str | None] = {}
        for node_id, url in self.urls.items():
            r = await self.client.get(
                f"{url}/kv/{quote_key(key)}", params={"consistency": "stale"}
            )
            assert r.status_code in (200, 404), r.text
            out[node_id] = r.json()["value"] if r.status_code == 200 else None
        return out


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    """No node's data or log changed between two `Cluster.state()` snapshots.

    One allowance: if a (load-induced) election happened meanwhile, each new
    term may add the new leader's no-op entry, and nothing else.
    """
    assert before.keys() == after.keys()
    for node_id, b in before.items():
        a = after[node_id]
        assert a["items"] == b["items"], node_id
        elections = a["term"] - b["term"]
        if elections == 0:
            assert a == b, node_id
        else:
            grown = a["last_log_index"] - b["last_log_index"]
            assert 0 <= grown <= elections, (node_id, b, a)


def quote_key(key: str) -> str:
    """Percent-encode a key for a /kv/{key} path, slashes and dots included.

    Dots too: clients (httpx, browsers) remove "." and ".." path segments
    before sending, so a key ".." must travel as "%2E%2E".
    """
    return quote(key, safe="").replace(".", "%2E")


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return tmp_path / "data"


class AppCapture:
    """Wraps `trioraft.server.create_app` to keep each node's app.

    `serve` closes the app's forwarding connections only in the app's
    after_serving hook, which runs on a graceful (signal) shutdown; a test
    cancels `serve` instead, so the fixture runs those hooks itself. (See
    test_serve_cancelled_from_outside_closes_forwarding_connections.)
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.apps: list[Any] = []
        real = trioraft.server.create_app

        def capture(node: RaftNode) -> Any:
            app = real(node)
            self.apps.append(app)
            return app

        monkeypatch.setattr(trioraft.server, "create_app", capture)

    async def close(self) -> None:
        with trio.CancelScope(shield=True):
            for app in self.apps:
                for fn in app.after_serving_funcs:
                    await fn()


@asynccontextmanager
async def start_cluster(
    configs: list[NodeConfig], capture: AppCapture | None = None, *, wait: bool = True
) -> AsyncIterator[Cluster]:
    try:
        async with trio.open_nursery() as nursery:
            nodes: list[RaftNode] = []
            for cfg in configs:
                nodes.append(await nursery.start(serve, cfg))
            async with httpx.AsyncClient(timeout=15.0) as client:
                cluster = Cluster(nodes, client, {c.id: c.advertise_url for c in configs})
                if wait:
                    await cluster.wait_leader()
                    await cluster.settle()
                yield cluster
            nursery.cancel_scope.cancel()
    finally:
        if capture is not None:
            await capture.close()


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch) -> AppCapture:
    return AppCapture(monkeypatch)


@pytest.fixture
async def single(data_root: Path, capture: AppCapture) -> AsyncIterator[Cluster]:
    """A one-node cluster, leader elected."""
    async with start_cluster(make_configs(1, data_root), capture) as cluster:
        yield cluster


@pytest.fixture
async def trio3(data_root: Path, capture: AppCapture) -> AsyncIterator[Cluster]:
    """A three-node cluster, leader elected and known to every node."""
    async with start_cluster(make_configs(3, data_root), capture) as cluster:
        yield cluster


@pytest.fixture
async def secured(data_root: Path, capture: AppCapture) -> AsyncIterator[Cluster]:
    """A one-node cluster with a cluster token on /raft/*."""
    async with start_cluster(make_configs(1, data_root, token=TOKEN), capture) as cluster:
        yield cluster


@pytest.fixture
async def leaderless(data_root: Path, capture: AppCapture) -> AsyncIterator[Cluster]:
    """One node of a three-node cluster whose peers never start: no leader, ever."""
    configs = make_configs(3, data_root)
    async with start_cluster(configs[:1], capture, wait=False) as cluster:
        yield cluster
