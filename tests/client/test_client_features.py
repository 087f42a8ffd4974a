"""Keys of every shape, the store's 404 versus anyone's, failing fast on a dead cluster,
transactions, paging with a cursor, delete_prefix, and asyncio: against the fake cluster."""

from __future__ import annotations

import random
import time

import anyio
import httpx
import pytest
import trio

from tests.client.conftest import ENDPOINTS, URLS, call
from trioraft.client import (
    AsyncClient,
    Client,
    TrioraftError,
    TxnOp,
    TxnResult,
    Unavailable,
    key_path,
)

# ---------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("plain", "/kv/plain"),
        ("/lead", "/kv/%2Flead"),
        ("a/b", "/kv/a%2Fb"),
        (".", "/kv/%2E"),
        ("..", "/kv/%2E%2E"),
        ("a.b", "/kv/a.b"),
        ("100%", "/kv/100%25"),
        ("%2F", "/kv/%252F"),
        ("sp ace?#", "/kv/sp%20ace%3F%23"),
    ],
)
def test_key_path_is_one_encoded_segment(key, path):
    assert key_path(key) == path
    # ... and httpx sends it unchanged (it would drop a literal "." or ".." segment).
    assert httpx.URL("http://h:1" + path).raw_path == path.encode()


KEYS = ["/lead", "/", ".", "..", "%", "%41", "a%2Fb", "../x", "./.", "k/..", "é/."]


@pytest.mark.parametrize("key", KEYS)
async def test_every_key_shape_round_trips(autojump_clock, make, fake, key):
    client = make()
    await call(client.put, key, "v")
    assert fake.data == {key: "v"}
    assert await call(client.get, key) == "v"
    assert await call(client.cas, key, "v", "w") is True
    assert await call(client.delete, key) is True
    assert fake.data == {}


# ---------------------------------------------------------------- 404


@pytest.mark.parametrize(
    "body",
    [
        {"text": "<html>404 Not Found</html>"},  # a proxy, a web server
        {"json": {"error": "no route", "code": "not_found"}},  # no "key"
        {"json": {"error": "x", "code": "not_found", "key": "other"}},
        {"json": {"detail": "Not Found"}},
    ],
)
async def test_a_404_that_is_not_the_stores_is_an_error(autojump_clock, make, fake, body):
    fake.script = [lambda req, node: httpx.Response(404, **body)]
    with pytest.raises(TrioraftError) as info:
        await call(make().get, "k")
    assert info.value.status == 404
    assert "not a trioraft 'key not found'" in str(info.value)


async def test_the_stores_404_is_none(autojump_clock, make, fake):
    fake.script = [
        lambda req, node: httpx.Response(404, json={"error": "e", "code": "not_found", "key": "k"})
    ]
    assert await call(make().get, "k") is None


# ---------------------------------------------------------------- a dead cluster


async def test_every_endpoint_refusing_fails_fast(autojump_clock, make, fake):
    fake.down.update(URLS)
    client = make(timeout=30.0, unreachable_timeout=0.5)
    with pytest.raises(Unavailable, match="no node reachable: all 3 endpoint"):
        await call(client.put, "k", "v")
    assert fake.applied == 0
    # It did retry for the unreachable timeout (not once and give up), each node.
    assert {n for n, _ in fake.requests} == set(URLS)
    assert len(fake.requests) > 3


async def test_fail_fast_takes_the_unreachable_timeout_not_the_timeout(autojump_clock, fake):
    fake.down.update(URLS)
    async with AsyncClient(ENDPOINTS, transport=fake.transport(), timeout=30.0,
                           unreachable_timeout=0.7, rng=random.Random(1)) as client:
        start = trio.current_time()  # virtual time: the autojump clock
        with pytest.raises(Unavailable):
            await client.get("k")
        assert 0.7 <= trio.current_time() - start < 2.0


async def test_one_node_answering_means_no_fail_fast(autojump_clock, make, fake):
    # node1 answers "no leader"; the others refuse. That is an election, not a
    # dead cluster: keep trying until the deadline.
    fake.down.update({"node2", "node3"})
    fake.script = [lambda req, node: fake.error(503, "no_leader")] * 100_000
    client = make(endpoints=ENDPOINTS, timeout=0.3, unreachable_timeout=0.01)
    with pytest.raises(Unavailable) as info:
        await call(client.get, "k")
    assert info.value.code == "no_leader"
    assert "no node reachable" not in str(info.value)


async def test_a_down_endpoint_with_live_ones_is_no_error(autojump_clock, make, fake):
    fake.down.add("node1")
    assert await call(make(unreachable_timeout=0.001).put, "k", "v") == 1


# ---------------------------------------------------------------- transactions


async def test_txn_builder_sends_the_documented_body(autojump_clock, make, fake):
    fake.data["color"] = "blue"
    result = await call(
        make().txn()
        .compare("color", "==", "blue")
        .compare("lock", "absent")
        .success(TxnOp.put("color", "green"), TxnOp.get("x"))
        .failure(TxnOp.get("color"))
        .commit
    )
    assert result == TxnResult(
        succeeded=True,
        results=[{"key": "color", "value": "green", "index": 1}, {"key": "x", "value": None}],
    )
    assert fake.txn_bodies == [{
        "compare": [{"key": "color", "op": "==", "value": "blue"},
                    {"key": "lock", "op": "absent", "value": None}],
        "success": [{"op": "put", "key": "color", "value": "green"},
                    {"op": "get", "key": "x"}],
        "failure": [{"op": "get", "key": "color"}],
    }]  # fmt: skip
    assert len(fake.write_keys()) == 1  # one write, with an Idempotency-Key


async def test_txn_failure_branch(autojump_clock, make, fake):
    fake.data["color"] = "red"
    result = await call(
        make().txn().compare("color", "==", "blue")
        .success(TxnOp.delete("color")).failure(TxnOp.get("color")).commit
    )
    assert result.succeeded is False
    assert result.results == [{"key": "color", "value": "red"}]
    assert fake.data == {"color": "red"}


async def test_txn_is_retried_with_one_idempotency_key(autojump_clock, make, fake):
    def commit_but_time_out(request: httpx.Request, node: str) -> httpx.Response:
        fake.handle(request, node)
        return fake.error(504, "unknown_outcome")

    fake.script = [commit_but_time_out]
    result = await call(make().txn().success(TxnOp.put("k", "v")).commit)
    assert result.succeeded
    keys = fake.write_keys()
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert fake.applied == 1


def test_txn_ops_are_validated_locally():
    with pytest.raises(ValueError, match="non-empty"):
        TxnOp.put("", "v")
    with pytest.raises(TypeError):
        TxnOp.put("k", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compare op"):
        Client(ENDPOINTS).txn().compare("k", "<", "v")
    with pytest.raises(TypeError, match="TxnOp"):
        Client(ENDPOINTS).txn().success({"op": "put"})  # type: ignore[arg-type]
    assert TxnOp.cas("k", None, "v").body == {"op": "cas", "key": "k", "expected": None,
                                              "value": "v"}
    assert TxnOp.delete_prefix("p/").body == {"op": "delete_prefix", "prefix": "p/"}


# ---------------------------------------------------------------- paging


async def test_range_sends_the_cursor(autojump_clock, make, fake):
    fake.data.update({f"k{i}": str(i) for i in range(5)})
    page = await call(make().range, "k", 2, after="k1")
    assert page.items == [("k2", "2"), ("k3", "3")]
    assert page.more
    assert page.next_after == "k3"
    request = next(r for _, r in fake.requests if r.url.path == "/kv")
    assert request.url.params["after"] == "k1"


async def test_scan_pages_through_every_key(autojump_clock, make, fake):
    fake.data.update({f"k{i:03}": str(i) for i in range(25)})
    fake.data["other"] = "x"
    client = make()
    if isinstance(client, AsyncClient):
        items = [item async for item in client.scan("k", page_size=10)]
    else:
        items = list(client.scan("k", page_size=10))
    assert items == [(f"k{i:03}", str(i)) for i in range(25)]
    afters = [r.url.params.get("after") for _, r in fake.requests if r.url.path == "/kv"]
    assert afters == [None, "k009", "k019"]


async def test_a_server_ignoring_the_cursor_is_detected(autojump_clock, make, fake):
    fake.data.update({"a": "1", "b": "2"})
    fake.script = [lambda req, node: fake.respond(
        200, {"items": [{"key": "a", "value": "1"}], "more": True})]
    with pytest.raises(TrioraftError, match="ignored the range cursor"):
        await call(make().range, "", 1, after="a")


# ---------------------------------------------------------------- delete_prefix


async def test_delete_prefix(autojump_clock, make, fake):
    fake.data.update({"p/1": "a", "p/2": "b", "q": "c"})
    client = make()
    assert await call(client.delete_prefix, "p/") == 2
    assert fake.data == {"q": "c"}
    request = next(r for _, r in fake.requests if r.method == "DELETE")
    assert request.url.path == "/kv"
    assert request.url.params["prefix"] == "p/"
    assert request.headers["Idempotency-Key"].startswith(client.client_id + ":")
    with pytest.raises(ValueError, match="non-empty"):
        await call(client.delete_prefix, "")


# ---------------------------------------------------------------- asyncio


def test_async_client_runs_under_asyncio(fake):
    async def main() -> tuple[str | None, list[bool]]:
        async with AsyncClient(ENDPOINTS, transport=fake.transport()) as client:
            await client.put("k", "v")
            async with anyio.create_task_group() as tg:
                for i in range(16):
                    tg.start_soon(client.put, f"c{i}", str(i))
            statuses = await client.status()
            return await client.get("k"), [s.reachable for s in statuses]

    value, reachable = anyio.run(main, backend="asyncio")
    assert value == "v"
    assert reachable == [True, True, True]
    assert len(fake.data) == 17


def test_async_client_fails_fast_under_asyncio(fake):
    fake.down.update(URLS)

    async def main() -> float:
        async with AsyncClient(ENDPOINTS, transport=fake.transport(), timeout=30.0,
                               unreachable_timeout=0.05, retry_base=0.001) as client:
            start = time.monotonic()
            with pytest.raises(Unavailable, match="no node reachable"):
                await client.delete("k")
            return time.monotonic() - start

    assert anyio.run(main, backend="asyncio") < 30.0


# ---------------------------------------------------------------- write lanes


async def test_concurrent_writes_never_share_an_idempotency_client(autojump_clock, fake):
    # The server keeps the newest 64 results per client id: 100 concurrent writes
    # under one id would make the slowest ones "too old". Each concurrent write
    # gets a lane (a client id of its own) whose writes are strictly sequential.
    rng = random.Random(7)

    async def slow(request: httpx.Request) -> httpx.Response:
        await trio.sleep(rng.uniform(0, 0.05))
        return fake.handler(request)

    async with AsyncClient(ENDPOINTS, transport=httpx.MockTransport(slow)) as client:
        async def writer(t: int) -> None:
            for i in range(3):
                await client.put(f"k{t}/{i}", "v")

        async with trio.open_nursery() as nursery:
            for t in range(100):
                nursery.start_soon(writer, t)
    assert len(fake.data) == 300
    by_lane: dict[str, list[int]] = {}
    for key in fake.write_keys():
        lane, _, seq = key.rpartition(":")
        by_lane.setdefault(lane, []).append(int(seq))
    assert 1 < len(by_lane) <= 100
    assert client.client_id in by_lane
    for seqs in by_lane.values():
        assert seqs == list(range(1, len(seqs) + 1))  # sequential: one in flight at a time
