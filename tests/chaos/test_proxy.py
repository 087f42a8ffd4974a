"""The fault-injecting TCP proxy: forwards, blocks, heals, delays, loses; the mesh's partitions."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from trioraft.testing.proxy import LinkProxy, ProxyMesh


async def _echo(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


@pytest.fixture
async def echo_port(nursery: trio.Nursery) -> int:
    listeners = await nursery.start(trio.serve_tcp, _echo, 0)
    port: int = listeners[0].socket.getsockname()[1]
    return port


@pytest.fixture
async def proxy(nursery: trio.Nursery, echo_port: int) -> LinkProxy:
    p = LinkProxy(echo_port)
    await nursery.start(p.serve)
    return p


async def _roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    """Connect, send, read the echo; b"" if the connection is closed instead."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            try:
                await stream.send_all(payload)
                got = b""
                while len(got) < len(payload):
                    data = await stream.receive_some(1024)
                    if not data:
                        return b""
                    got += data
                return got
            except trio.BrokenResourceError:
                return b""


async def test_forwards_both_ways(proxy: LinkProxy) -> None:
    assert await _roundtrip(proxy.port, b"hello") == b"hello"
    assert await _roundtrip(proxy.port, b"x" * 200_000) == b"x" * 200_000
    assert proxy.accepted == 2
    assert proxy.bytes_forwarded >= 2 * (5 + 200_000)


async def test_blocked_proxy_closes_new_connections(proxy: LinkProxy) -> None:
    proxy.block()
    assert await _roundtrip(proxy.port) == b""
    assert proxy.refused == 1


async def test_block_resets_open_connections(proxy: LinkProxy) -> None:
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            await stream.send_all(b"a")
            assert await stream.receive_some(10) == b"a"
            assert proxy.open_connections == 1
            proxy.block()
            try:
                await stream.send_all(b"b")
                data = await stream.receive_some(10)
            except trio.BrokenResourceError:
                data = b""
            assert data == b""
    assert proxy.reset == 1


async def test_unblock_heals(proxy: LinkProxy) -> None:
    proxy.block()
    assert await _roundtrip(proxy.port) == b""
    proxy.unblock()
    assert await _roundtrip(proxy.port) == b"ping"


async def test_delay_adds_latency_each_way(proxy: LinkProxy) -> None:
    proxy.delay = 0.15
    start = trio.current_time()
    assert await _roundtrip(proxy.port) == b"ping"
    assert trio.current_time() - start >= 0.3  # 0.15 there, 0.15 back
    proxy.clear()
    start = trio.current_time()
    assert await _roundtrip(proxy.port) == b"ping"
    assert trio.current_time() - start < 0.3


async def test_delay_keeps_order(proxy: LinkProxy) -> None:
    proxy.delay = 0.05
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            sent = b"".join(b"%d," % i for i in range(200))
            for i in range(200):
                await stream.send_all(b"%d," % i)
            got = b""
            while len(got) < len(sent):
                got += await stream.receive_some(4096)
            assert got == sent


async def test_loss_resets_connections(nursery: trio.Nursery, echo_port: int) -> None:
    p = LinkProxy(echo_port, rng=random.Random(1))
    await nursery.start(p.serve)
    p.loss = 1.0
    assert await _roundtrip(p.port) == b""
    assert p.reset == 1
    p.loss = 0.0
    assert await _roundtrip(p.port) == b"ping"


async def test_target_down_closes_the_connection(nursery: trio.Nursery) -> None:
    # Nothing listens on the target: the client's connection is closed, not hung.
    free = trio.socket.socket()
    await free.bind(("127.0.0.1", 0))
    dead_port = free.getsockname()[1]
    free.close()
    p = LinkProxy(dead_port)
    await nursery.start(p.serve)
    assert await _roundtrip(p.port) == b""


async def test_mesh_routes_each_ordered_pair(nursery: trio.Nursery, echo_port: int) -> None:
    mesh = await ProxyMesh.open(nursery, ["a", "b", "c"], random.Random(0))
    assert len(mesh.links) == 6
    assert len({mesh.port(s, d) for s, d in mesh.links}) == 6
    mesh.set_targets({"a": echo_port, "b": echo_port, "c": echo_port})
    assert mesh.url("a", "b") == f"http://127.0.0.1:{mesh.port('a', 'b')}"
    assert await _roundtrip(mesh.port("a", "b")) == b"ping"
    mesh.isolate("a")
    assert await _roundtrip(mesh.port("a", "b")) == b""
    assert await _roundtrip(mesh.port("c", "a")) == b""
    assert await _roundtrip(mesh.port("b", "c")) == b"ping"
    mesh.heal()
    assert await _roundtrip(mesh.port("a", "b")) == b"ping"


def _reach(mesh: ProxyMesh) -> set[tuple[str, str]]:
    return {(a, b) for a, b in mesh.links if mesh.can_reach(a, b)}


def test_partition_splits_groups_and_isolates_the_rest() -> None:
    mesh = ProxyMesh(["n1", "n2", "n3", "n4", "n5"])
    mesh.partition([{"n1", "n2"}, {"n3", "n4"}])  # n5 in no group: alone
    assert _reach(mesh) == {("n1", "n2"), ("n2", "n1"), ("n3", "n4"), ("n4", "n3")}
    mesh.partition([{"n1", "n2", "n3", "n4", "n5"}])
    assert len(_reach(mesh)) == 20


def test_bridge_connects_both_halves_to_the_bridge_only() -> None:
    mesh = ProxyMesh(["n1", "n2", "n3", "n4", "n5"])
    mesh.bridge({"n1", "n2"}, "n3", {"n4", "n5"})
    reach = _reach(mesh)
    for other in ("n1", "n2", "n4", "n5"):
        assert ("n3", other) in reach
        assert (other, "n3") in reach
    assert ("n1", "n2") in reach
    assert ("n4", "n5") in reach
    assert ("n1", "n4") not in reach
    assert ("n5", "n2") not in reach


def test_heal_clears_every_fault() -> None:
    mesh = ProxyMesh(["a", "b"])
    mesh.cut("a", "b")
    mesh.set_delay("a", "b", 0.1)
    mesh.set_loss("b", "a", 0.5)
    assert mesh.describe() != "healthy"
    mesh.heal()
    assert mesh.describe() == "healthy"


# -- slow links: a bandwidth limit per direction (token bucket) ------------------


async def _sink_server(nursery: trio.Nursery) -> tuple[int, list[int]]:
    """A server that reads and discards; the list holds the bytes it received."""
    received = [0]

    async def sink(stream: trio.SocketStream) -> None:
        try:
            async for data in stream:
                received[0] += len(data)
        except trio.BrokenResourceError:
            pass

    listeners = await nursery.start(trio.serve_tcp, sink, 0)
    return listeners[0].socket.getsockname()[1], received


async def test_rate_limit_caps_throughput_one_way(proxy: LinkProxy) -> None:
    proxy.rate_up = 200_000  # bytes/s going up; the echo comes back unlimited
    payload = bytes(range(256)) * 1200  # 300 KiB
    start = trio.current_time()
    assert await _roundtrip(proxy.port, payload) == payload  # intact and in order
    # The bucket starts with one burst (16 KiB); the rest passes at 200 kB/s.
    assert trio.current_time() - start >= (len(payload) - proxy.burst) / 200_000 * 0.95
    proxy.clear()
    assert proxy.rate_up == 0


async def test_a_rate_limited_link_pushes_back_on_the_sender(nursery: trio.Nursery) -> None:
    # A real slow link slows the sender down (TCP flow control) instead of
    # swallowing everything: the proxy holds only about half a second's worth.
    port, received = await _sink_server(nursery)
    p = LinkProxy(port)
    await nursery.start(p.serve)
    p.rate_up = 50_000
    stream = await trio.open_tcp_stream("127.0.0.1", p.port)
    async with stream:
        with trio.move_on_after(1.0) as scope:
            await stream.send_all(b"x" * (32 << 20))
        assert scope.cancelled_caught  # 32 MiB cannot leave in a second at 50 kB/s
        # What got through in that second: one burst and the rate, nothing more.
        assert received[0] <= p.burst + 50_000 * 1.2
        assert p.bytes_forwarded <= p.burst + 50_000 * 1.2


async def test_clearing_the_rate_lets_queued_bytes_through(proxy: LinkProxy) -> None:
    proxy.rate_up = 20_000
    payload = b"y" * 100_000  # five seconds at that rate
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with stream:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_all, payload)
                await trio.sleep(0.3)
                proxy.rate_up = 0  # the link recovers: the rest flows at once
                got = b""
                while len(got) < len(payload):
                    got += await stream.receive_some(1 << 16)
            assert got == payload


def test_mesh_slow_link_is_one_direction_and_heals() -> None:
    mesh = ProxyMesh(["a", "b", "c"])
    mesh.set_slow("a", "b", 0.05, 100_000)
    # a -> b on either proxy of the pair: up on a->b, down on b->a.
    assert mesh.links["a", "b"].rate_up == 100_000
    assert mesh.links["b", "a"].rate_down == 100_000
    assert mesh.links["a", "b"].rate_down == 0
    assert mesh.links["b", "a"].rate_up == 0
    assert mesh.describe() == "a->b delay=0.050,rate=100000"
    mesh.cut("a", "c")
    mesh.clear_quality()  # the slow link goes, the partition stays
    assert mesh.describe() == "a->c blocked; c->a blocked"
    mesh.heal()
    assert mesh.describe() == "healthy"


# -- the proxy in its own process ------------------------------------------------


async def test_remote_mesh_applies_faults_in_the_proxy_process(
    nursery: trio.Nursery, echo_port: int, tmp_path: Path
) -> None:
    from trioraft.testing.proxy_remote import RemoteMesh

    async with trio.open_nursery() as inner:
        mesh = await RemoteMesh.start(inner, ["a", "b"], 1, tmp_path / "proxy.log")
        try:
            mesh.set_targets({"a": echo_port, "b": echo_port})
            await mesh.sync()
            assert mesh.url("a", "b") == f"http://127.0.0.1:{mesh.port('a', 'b')}"
            assert await _roundtrip(mesh.port("a", "b")) == b"ping"
            mesh.cut("a", "b")  # applied to the mirror at once, to the process in order
            assert mesh.describe() == "a->b blocked; b->a blocked"
            await mesh.sync()
            assert await _roundtrip(mesh.port("a", "b")) == b""
            mesh.heal()
            mesh.set_slow("a", "b", 0.15, 1 << 20)
            await mesh.sync()
            start = trio.current_time()
            assert await _roundtrip(mesh.port("a", "b")) == b"ping"
            assert trio.current_time() - start >= 0.15  # the latency a -> b, in the child
            lag = await mesh.fetch_lag()
            assert "worst_ms" in lag
            assert mesh.errors == []
        finally:
            await mesh.aclose()
            inner.cancel_scope.cancel()
    assert mesh._proc.returncode is not None  # the process is gone
