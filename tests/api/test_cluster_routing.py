"""Any node serves any request (API.md §3): forwarding, redirects, read
consistency, X-Raft-Leader, and exactly-once with Idempotency-Key."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.api.api_helpers import assert_error, assert_ok
from tests.api.conftest import Cluster, assert_unchanged, quote_key


async def test_every_response_carries_the_leader_header(trio3: Cluster) -> None:
    leader = trio3.leader.id
    requests = [
        ("GET", "/status"), ("GET", "/debug"), ("GET", "/health"), ("GET", "/ready"),
        ("GET", "/kv"), ("GET", "/kv/absent"), ("GET", "/nowhere"), ("PATCH", "/kv/k"),
        ("PUT", "/kv/k"), ("GET", "/openapi.json"), ("POST", "/raft/request-vote"),
    ]
    for url in trio3.all_urls:
        for method, path in requests:
            r = await trio3.client.request(method, url + path)
            assert r.headers.get("X-Raft-Leader") == leader, (url, method, path, r.status_code)


async def test_follower_forwards_a_write_to_the_leader(trio3: Cluster) -> None:
    follower = trio3.follower_urls[0]
    body = assert_ok(await trio3.client.put(f"{follower}/kv/k", json={"value": "v"}))
    assert (body["key"], body["value"]) == ("k", "v")
    assert await trio3.read_everywhere("k") == {n.id: "v" for n in trio3.nodes}


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        ("POST", "/kv", {"key": "k", "value": "v"}),
        ("DELETE", "/kv/k", None),
        ("POST", "/kv/k/cas", {"expected": "old", "value": "v"}),
        ("POST", "/txn", {"success": [{"op": "put", "key": "k", "value": "v"}]}),
    ],
)
async def test_follower_forwards_every_write_route(trio3: Cluster, method, path, json) -> None:
    assert_ok(await trio3.client.put(f"{trio3.leader_url}/kv/k", json={"value": "old"}))
    r = await trio3.client.request(method, trio3.follower_urls[0] + path, json=json)
    assert_ok(r)
    expected = None if method == "DELETE" else "v"
    assert await trio3.read_everywhere("k") == {n.id: expected for n in trio3.nodes}


async def test_follower_relays_the_leaders_error(trio3: Cluster) -> None:
    assert_ok(await trio3.client.put(f"{trio3.leader_url}/kv/k", json={"value": "v"}))
    r = await trio3.client.post(f"{trio3.follower_urls[0]}/kv/k/cas",
                                json={"expected": "no", "value": "x"})
    body = assert_error(r, 409, "cas_failed")
    assert body["current"] == "v"


@pytest.mark.parametrize("key", ["q?x", "pct%", "sp ace", "ü/ñ", "a#b", "x&y=z"])
async def test_follower_forwards_keys_with_url_syntax_intact(trio3: Cluster, key: str) -> None:
    # Regression: the forwarded target was rebuilt from the decoded path, so
    # "q?x" reached the leader as key "q" with a query string.
    r = await trio3.client.put(f"{trio3.follower_urls[0]}/kv/{quote_key(key)}",
                               json={"value": "v"})
    assert assert_ok(r)["key"] == key
    assert await trio3.read_everywhere(key) == {n.id: "v" for n in trio3.nodes}
    items = assert_ok(await trio3.client.get(f"{trio3.leader_url}/kv"))["items"]
    assert items == [{"key": key, "value": "v"}]


async def test_redirect_true_on_a_follower_answers_307_to_the_leader(trio3: Cluster) -> None:
    before = await trio3.state()
    follower = trio3.follower_urls[0]
    r = await trio3.client.put(f"{follower}/kv/a%3Fb?redirect=true", json={"value": "v"})
    assert r.status_code == 307
    location = r.headers["Location"]
    assert location.startswith(trio3.leader_url + "/")
    parts = urlsplit(location)
    assert parts.path == "/kv/a%3Fb"
    assert parts.query == "redirect=true"
    assert r.headers["X-Raft-Leader"] == trio3.leader.id
    assert_unchanged(before, await trio3.state())  # nothing written by the redirect
    # Following it writes the key on the leader.
    body = assert_ok(await trio3.client.put(location, json={"value": "v"}))
    assert body["key"] == "a?b"


async def test_redirect_true_on_a_follower_redirects_linearizable_reads_only(
    trio3: Cluster,
) -> None:
    assert_ok(await trio3.client.put(f"{trio3.leader_url}/kv/r", json={"value": "1"}))
    follower = trio3.follower_urls[0]
    r = await trio3.client.get(f"{follower}/kv/r?redirect=true")
    assert r.status_code == 307
    assert r.headers["Location"] == f"{trio3.leader_url}/kv/r?redirect=true"
    assert assert_ok(await trio3.client.get(r.headers["Location"])) == {"key": "r", "value": "1"}
    await trio3.settle()
    stale = await trio3.client.get(f"{follower}/kv/r?redirect=true&consistency=stale")
    assert assert_ok(stale) == {"key": "r", "value": "1"}  # served locally, not redirected


async def test_redirect_true_on_the_leader_just_writes(trio3: Cluster) -> None:
    r = await trio3.client.put(f"{trio3.leader_url}/kv/k?redirect=true", json={"value": "v"})
    assert assert_ok(r)["value"] == "v"


async def test_follower_reads_are_linearizable_by_default(trio3: Cluster) -> None:
    for i in range(20):
        assert_ok(await trio3.client.put(f"{trio3.leader_url}/kv/k", json={"value": str(i)}))
        for follower in trio3.follower_urls:
            body = assert_ok(await trio3.client.get(f"{follower}/kv/k"))
            assert body["value"] == str(i)


async def test_follower_range_reads_are_linearizable_by_default(trio3: Cluster) -> None:
    for i in range(10):
        assert_ok(await trio3.client.put(f"{trio3.leader_url}/kv/r{i}", json={"value": "v"}))
        body = assert_ok(await trio3.client.get(f"{trio3.follower_urls[i % 2]}/kv",
                                                params={"prefix": "r"}))
        assert len(body["items"]) == i + 1


async def test_explicit_linearizable_consistency_is_accepted(trio3: Cluster) -> None:
    assert_ok(await trio3.client.put(f"{trio3.leader_url}/kv/k", json={"value": "v"}))
    r = await trio3.client.get(f"{trio3.follower_urls[0]}/kv/k",
                               params={"consistency": "linearizable"})
    assert assert_ok(r)["value"] == "v"


async def test_stale_reads_serve_the_local_state(trio3: Cluster) -> None:
    assert_ok(await trio3.client.put(f"{trio3.leader_url}/kv/k", json={"value": "v"}))
    await trio3.settle()
    for url in trio3.all_urls:
        r = await trio3.client.get(f"{url}/kv/k", params={"consistency": "stale"})
        assert assert_ok(r) == {"key": "k", "value": "v"}
        r = await trio3.client.get(f"{url}/kv", params={"consistency": "stale"})
        assert assert_ok(r)["items"] == [{"key": "k", "value": "v"}]


# ------------------------------------------------------------------ exactly once


async def test_idempotent_retry_returns_the_first_result_and_applies_once(
    trio3: Cluster,
) -> None:
    url = f"{trio3.leader_url}/kv/k"
    first = assert_ok(await trio3.client.put(url, json={"value": "v1"},
                                             headers={"Idempotency-Key": "c:1"}))
    assert_ok(await trio3.client.put(url, json={"value": "v2"}))
    before = await trio3.state()
    retry = assert_ok(await trio3.client.put(url, json={"value": "v1"},
                                             headers={"Idempotency-Key": "c:1"}))
    assert retry == first
    assert await trio3.read_everywhere("k") == {n.id: "v2" for n in trio3.nodes}
    after = await trio3.state()
    assert [n["items"] for n in after.values()] == [n["items"] for n in before.values()]


async def test_idempotent_retry_through_a_follower_returns_the_first_result(
    trio3: Cluster,
) -> None:
    first = assert_ok(await trio3.client.post(f"{trio3.leader_url}/kv", json={
        "key": "k", "value": "v1"}, headers={"Idempotency-Key": "client-7:42"}))
    assert_ok(await trio3.client.put(f"{trio3.leader_url}/kv/k", json={"value": "v2"}))
    retry = assert_ok(await trio3.client.post(f"{trio3.follower_urls[0]}/kv", json={
        "key": "k", "value": "v1"}, headers={"Idempotency-Key": "client-7:42"}))
    assert retry == first
    assert await trio3.read_everywhere("k") == {n.id: "v2" for n in trio3.nodes}


async def test_idempotent_cas_retry_is_not_reevaluated(trio3: Cluster) -> None:
    url = f"{trio3.leader_url}/kv/k/cas"
    h = {"Idempotency-Key": "c:5"}
    first = assert_ok(await trio3.client.post(url, json={"expected": None, "value": "a"},
                                              headers=h))
    assert first["ok"] is True
    retry = await trio3.client.post(url, json={"expected": None, "value": "a"}, headers=h)
    assert assert_ok(retry) == first  # not a 409: the first result, not a second try


@pytest.mark.parametrize("key", ["nocolon", ":1", "c:", "c:-1", "c:x", "c:1.5", "c:\uff11"])
async def test_malformed_idempotency_key_is_400_and_changes_nothing(
    trio3: Cluster, key: str
) -> None:
    before = await trio3.state()
    for url in trio3.all_urls:
        r = await trio3.client.put(f"{url}/kv/k", json={"value": "v"},
                                   headers={"Idempotency-Key": key.encode()})
        assert_error(r, 400, "bad_request")
    assert_unchanged(before, await trio3.state())
