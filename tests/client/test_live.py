"""The clients against a real node (in-process, on loopback): every key shape the API
accepts, the largest value, paging past the server's 10,000-key page, asyncio, and 64
concurrent tasks on one AsyncClient."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import trio

from tests.api.conftest import Cluster, make_configs, start_cluster
from trioraft import kv
from trioraft.client import AsyncClient, Client, TooLarge, TxnOp

pytestmark = pytest.mark.processes

KEYS = ["/lead", "/", "//", ".", "..", "%", "%41", "%2F", "a/../b", "./x", "x/.", "k/cas",
        "sp ace?#&=", "é", "k" * kv.MAX_KEY_BYTES]  # fmt: skip


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with start_cluster(make_configs(1, tmp_path)) as cluster:
        yield cluster


@pytest.mark.parametrize("key", KEYS, ids=range(len(KEYS)))
async def test_every_key_shape_through_the_async_client(node: Cluster, key: str) -> None:
    async with AsyncClient([node.leader_url]) as client:
        await client.put(key, "v")
        assert await client.get(key) == "v"
        assert await client.get(key, consistency="stale") == "v"
        assert await client.cas(key, "v", "w") is True
        assert (await client.range()).items == [(key, "w")]
        assert await client.delete(key) is True
        assert await client.get(key) is None


async def test_every_key_shape_through_the_sync_client(node: Cluster) -> None:
    def run() -> list[tuple[str, str]]:
        with Client([node.leader_url]) as client:
            for key in KEYS:
                client.put(key, key)
                assert client.get(key) == key
            return list(client.scan())

    assert await trio.to_thread.run_sync(run) == sorted((k, k) for k in KEYS)


async def test_values_up_to_the_limit(node: Cluster) -> None:
    big = "é" * (kv.MAX_VALUE_BYTES // 2)  # exactly the limit in UTF-8 bytes
    async with AsyncClient([node.leader_url]) as client:
        await client.put("big", big)
        assert await client.get("big") == big
        with pytest.raises(TooLarge):
            await client.put("big", big + "x")


async def test_scan_pages_past_the_servers_largest_page(node: Cluster) -> None:
    n = 10_500
    async with AsyncClient([node.leader_url], timeout=30.0) as client:
        for start in range(0, n, 1000):  # 1000 puts per transaction (MAX_TXN_OPS)
            ops = [TxnOp.put(f"k{i:05}", str(i)) for i in range(start, min(n, start + 1000))]
            assert (await client.txn().success(*ops).commit()).succeeded
        first = await client.range("k", 10_000)
        assert first.more
        assert first.next_after == "k09999"
        rest = await client.range("k", 10_000, after=first.next_after)
        assert [k for k, _ in rest.items] == [f"k{i:05}" for i in range(10_000, n)]
        assert not rest.more
        keys = [k async for k, _ in client.scan("k")]
    assert keys == [f"k{i:05}" for i in range(n)]


async def test_async_client_under_asyncio_against_a_real_node(node: Cluster) -> None:
    url = node.leader_url

    async def main() -> list[str | None]:
        async with AsyncClient([url]) as client:
            async with anyio.create_task_group() as tg:
                for i in range(32):
                    tg.start_soon(client.put, f"a{i}", str(i))
            return [await client.get(f"a{i}") for i in range(32)]

    values = await trio.to_thread.run_sync(lambda: anyio.run(main, backend="asyncio"))
    assert values == [str(i) for i in range(32)]


async def test_64_concurrent_tasks_share_kept_alive_connections(node: Cluster) -> None:
    tasks, per_task = 64, 4
    async with AsyncClient([node.leader_url], timeout=30.0) as client:
        async def worker(t: int) -> None:
            for i in range(per_task):
                await client.put(f"t{t}/{i}", str(i))

        async with trio.open_nursery() as nursery:
            for t in range(tasks):
                nursery.start_soon(worker, t)
        # Every write landed, and the pool kept its connections open for reuse
        # (at most one per concurrent task) instead of reconnecting per request.
        pool = client._http._transport._pool  # type: ignore[attr-defined]
        assert 0 < len(pool.connections) <= tasks
        assert len([k async for k in client.scan("t")]) == tasks * per_task
