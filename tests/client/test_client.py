"""Client and AsyncClient: the same behaviours, checked against a fake cluster.

Every test runs twice, once per flavour. Tests run on trio's autojump clock, so
retry sleeps cost no real time; the sync client uses tiny backoffs instead.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest
import trio

from tests.client.conftest import call
from trioraft.client import (
    AsyncClient,
    BadRequest,
    Client,
    RangePage,
    TooLarge,
    TrioraftError,
    Unavailable,
    UnknownOutcome,
    normalize_endpoints,
)

# The fake cluster (conftest.py) serves these three nodes.
URLS = {
    "node1": "http://127.0.0.1:3001",
    "node2": "http://127.0.0.1:3002",
    "node3": "http://127.0.0.1:3003",
}
ENDPOINTS = list(URLS.values())


# ---------------------------------------------------------------- the operations


async def test_put_then_get(autojump_clock, make, fake):
    client = make()
    assert await call(client.put, "greeting", "hello") == 1
    assert await call(client.get, "greeting") == "hello"
    assert fake.data == {"greeting": "hello"}


async def test_get_of_absent_key_is_none(autojump_clock, make):
    assert await call(make().get, "nope") is None


async def test_delete_reports_whether_the_key_existed(autojump_clock, make, fake):
    client = make()
    fake.data["k"] = "v"
    assert await call(client.delete, "k") is True
    assert await call(client.delete, "k") is False
    assert fake.data == {}


async def test_cas_succeeds_and_fails(autojump_clock, make, fake):
    client = make()
    fake.data["k"] = "old"
    assert await call(client.cas, "k", "wrong", "new") is False
    assert await call(client.cas, "k", "old", "new") is True
    assert fake.data["k"] == "new"


async def test_cas_absent_and_delete_forms_send_null(autojump_clock, make, fake):
    client = make()
    assert await call(client.cas, "k", None, "first") is True
    assert await call(client.cas, "k", None, "again") is False
    assert await call(client.cas, "k", "first", None) is True
    assert "k" not in fake.data
    bodies = [r.content for _, r in fake.requests if r.url.path.endswith("/cas")]
    assert bodies[0] == b'{"expected":null,"value":"first"}'
    assert bodies[2] == b'{"expected":"first","value":null}'


async def test_range(autojump_clock, make, fake):
    fake.data.update({"a1": "x", "a2": "y", "a3": "z", "b": "w"})
    page = await call(make().range, "a", 2)
    assert page == RangePage(items=[("a1", "x"), ("a2", "y")], more=True)
    request = next(r for _, r in fake.requests if r.url.path == "/kv")
    assert request.url.params["prefix"] == "a"
    assert request.url.params["limit"] == "2"


async def test_keys_are_percent_encoded(autojump_clock, make, fake):
    client = make()
    key = "dir/sub key?#%é"
    await call(client.put, key, "v")
    assert await call(client.get, key) == "v"
    _, request = fake.requests[-1]
    assert request.url.raw_path.startswith(b"/kv/dir%2Fsub%20key%3F%23%25%C3%A9")
    assert fake.data == {key: "v"}


async def test_empty_key_is_rejected_locally(autojump_clock, make, fake):
    with pytest.raises(ValueError, match="non-empty"):
        await call(make().get, "")
    assert fake.requests == []


async def test_reads_ask_for_their_consistency(autojump_clock, make, fake):
    client = make()
    await call(client.get, "k")
    await call(client.get, "k", consistency="stale")
    params = [r.url.params.get("consistency") for _, r in fake.requests if "/kv/" in r.url.path]
    assert params == ["linearizable", "stale"]
    with pytest.raises(ValueError, match="consistency"):
        await call(client.get, "k", consistency="eventual")


# ---------------------------------------------------------------- leader discovery


async def test_finds_the_leader_and_then_talks_to_it_directly(autojump_clock, make, fake):
    client = make()
    await call(client.put, "a", "1")
    # node1 answered (forwarding) and named node2; /status told where node2 is.
    assert fake.nodes_asked() == ["node1", "node1"]
    assert client.leader_url == URLS["node2"]
    await call(client.put, "b", "2")
    await call(client.get, "b")
    assert fake.nodes_asked()[2:] == ["node2", "node2"]


async def test_follows_a_leader_change(autojump_clock, make, fake):
    client = make()
    await call(client.put, "a", "1")
    fake.leader = "node3"
    await call(client.put, "b", "2")  # node2 answers, naming node3
    await call(client.put, "c", "3")
    assert fake.nodes_asked()[-1] == "node3"
    assert client.leader_url == URLS["node3"]


async def test_stale_reads_do_not_chase_the_leader(autojump_clock, make, fake):
    client = make(endpoints=[URLS["node3"]])
    await call(client.get, "k", consistency="stale")
    assert set(fake.nodes_asked()) == {"node3"}


async def test_an_unreachable_advertised_leader_url_is_given_up(autojump_clock, make, fake):
    # As with containers: members advertise names the client cannot resolve.
    fake.urls["node2"] = "http://node2:3000"
    fake.down.add("node2")
    client = make()
    await call(client.put, "a", "1")
    assert client.leader_url == "http://node2:3000"
    await call(client.put, "b", "2")  # refused, then node1 forwards
    assert client.leader_url is None
    await call(client.put, "c", "3")
    assert fake.nodes_asked().count("node2") == 1
    assert fake.data == {"a": "1", "b": "2", "c": "3"}


# ---------------------------------------------------------------- retries and exactly-once


async def test_writes_carry_distinct_idempotency_keys(autojump_clock, make, fake):
    client = make()
    for i in range(3):
        await call(client.put, "k", str(i))
    assert re.fullmatch(r"[0-9a-f]{32}", client.client_id)
    assert fake.write_keys() == [f"{client.client_id}:{n}" for n in (1, 2, 3)]


async def test_two_clients_have_different_ids(autojump_clock, make):
    assert make().client_id != make().client_id


async def test_503_is_retried_with_the_same_key(autojump_clock, make, fake):
    fake.script = [lambda req, node: fake.error(503, "no_leader", **{"Retry-After": "0"})] * 3
    client = make()
    assert await call(client.put, "k", "v") == 1
    keys = fake.write_keys()
    assert len(keys) == 4
    assert len(set(keys)) == 1
    assert fake.applied == 1


async def test_503_moves_on_to_another_node(autojump_clock, make, fake):
    fake.script = [lambda req, node: fake.error(503, "no_leader")]
    client = make()
    await call(client.get, "k")
    assert fake.nodes_asked()[:2] == ["node1", "node2"]


async def test_504_is_retried_with_the_same_key_and_applied_once(autojump_clock, make, fake):
    def commit_but_time_out(request: httpx.Request, node: str) -> httpx.Response:
        fake.handle(request, node)  # the write does commit ...
        return fake.error(504, "unknown_outcome")  # ... but the answer is lost

    fake.script = [commit_but_time_out]
    client = make()
    assert await call(client.put, "k", "v") == 1
    keys = fake.write_keys()
    assert len(keys) == 2
    assert keys[0] == keys[1]
    assert fake.applied == 1


async def test_a_lost_connection_after_sending_is_retried_with_the_same_key(
    autojump_clock, make, fake
):
    def read_timeout(request: httpx.Request, node: str) -> None:
        fake.handle(request, node)
        raise httpx.ReadTimeout("timed out", request=request)

    fake.script = [read_timeout]
    client = make()
    assert await call(client.delete, "k") is False
    assert len(set(fake.write_keys())) == 1
    assert fake.applied == 1


async def test_a_down_node_is_skipped(autojump_clock, make, fake):
    fake.down.add("node1")
    client = make()
    assert await call(client.put, "k", "v") == 1
    assert fake.nodes_asked()[:2] == ["node1", "node2"]


async def test_nothing_reachable_is_unavailable(autojump_clock, make, fake):
    fake.down.update(URLS)
    client = make(timeout=0.05)
    with pytest.raises(Unavailable) as info:
        await call(client.put, "k", "v")
    assert info.value.code == "unavailable"
    assert fake.applied == 0
    assert len(fake.requests) > 3  # it kept trying until the deadline


async def test_no_leader_until_the_deadline_is_unavailable(autojump_clock, make, fake):
    fake.script = [lambda req, node: fake.error(503, "no_quorum")] * 100_000
    with pytest.raises(Unavailable) as info:
        await call(make(timeout=0.05).get, "k")
    assert info.value.code == "no_quorum"
    assert 3 < len(fake.kv_requests()) < 100  # backs off once every node said no


async def test_504_until_the_deadline_is_unknown_outcome(autojump_clock, make, fake):
    fake.script = [lambda req, node: fake.error(504, "unknown_outcome")] * 100_000
    with pytest.raises(UnknownOutcome) as info:
        await call(make(timeout=0.05).put, "k", "v")
    assert info.value.code == "unknown_outcome"
    assert len(set(fake.write_keys())) == 1


async def test_refused_connections_alone_are_not_an_unknown_outcome(autojump_clock, make, fake):
    fake.down.update(URLS)
    with pytest.raises(Unavailable):
        await call(make(timeout=0.05).delete, "k")


@pytest.mark.parametrize(
    ("status", "code", "error"), [(400, "bad_request", BadRequest), (413, "too_large", TooLarge)]
)
async def test_client_errors_are_raised_without_retry(
    autojump_clock, make, fake, status, code, error
):
    fake.script = [lambda req, node: fake.error(status, code)]
    with pytest.raises(error) as info:
        await call(make().put, "k", "v")
    assert info.value.code == code
    assert info.value.status == status
    assert len(fake.kv_requests()) == 1


async def test_unexpected_status_is_a_trioraft_error(autojump_clock, make, fake):
    fake.script = [lambda req, node: httpx.Response(500, text="boom")]
    with pytest.raises(TrioraftError) as info:
        await call(make().get, "k")
    assert info.value.status == 500


async def test_retry_after_is_honoured(autojump_clock, make, fake):
    fake.script = [lambda req, node: fake.error(503, "no_leader", **{"Retry-After": "0.1"})] * 3
    client = make(endpoints=[URLS["node1"]], retry_cap=1.0)
    now = trio.current_time if isinstance(client, AsyncClient) else time.monotonic
    start = now()
    await call(client.get, "k")
    assert now() - start >= 0.3


# ---------------------------------------------------------------- status


async def test_status_lists_endpoints_and_discovered_members(autojump_clock, make, fake):
    fake.down.add("node3")
    results = await call(make(endpoints=[URLS["node1"]]).status)
    assert [r.url for r in results] == [URLS["node1"], URLS["node2"], URLS["node3"]]
    assert [r.reachable for r in results] == [True, True, False]
    assert results[1].status["role"] == "leader"
    assert results[2].error is not None


async def test_status_when_nothing_answers(autojump_clock, make, fake):
    fake.down.update(URLS)
    results = await call(make().status)
    assert [r.reachable for r in results] == [False, False, False]


# ---------------------------------------------------------------- endpoints


def test_normalize_endpoints():
    assert normalize_endpoints("127.0.0.1:1, http://h:2/ ,,http://h:2") == (
        "http://127.0.0.1:1",
        "http://h:2",
    )
    with pytest.raises(ValueError, match="no endpoints"):
        normalize_endpoints(" , ")
    with pytest.raises(ValueError, match="not an http"):
        normalize_endpoints("ftp://h:1")


def test_sync_client_is_a_context_manager(fake):
    with Client(ENDPOINTS, transport=fake.transport()) as client:
        client.put("k", "v")
        assert client.get("k") == "v"


async def test_async_client_is_an_async_context_manager(fake):
    async with AsyncClient(ENDPOINTS, transport=fake.transport()) as client:
        await client.put("k", "v")
        assert await client.get("k") == "v"


async def test_async_client_serves_concurrent_tasks(fake):
    async with (
        AsyncClient(ENDPOINTS, transport=fake.transport()) as client,
        trio.open_nursery() as nursery,
    ):
        for i in range(20):
            nursery.start_soon(client.put, f"k{i}", str(i))
    assert len(fake.data) == 20
    assert len(set(fake.write_keys())) == 20
