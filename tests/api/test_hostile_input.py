"""Issue 10 over HTTP: each finding sends its hostile input to a real node and
asserts the answer is a definite 4xx, the node keeps serving and nothing
changed. (The kv-level halves are in tests/kv/test_kv_hostile.py.)"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

from tests.api.api_helpers import assert_error, assert_ok
from tests.api.conftest import AppCapture, Cluster, make_configs, start_cluster

MiB = 1024 * 1024
POISON = "evil:99999999999999999999999999"

WRITES: list[tuple[str, str, dict[str, Any]]] = [
    ("PUT", "/kv/k", {"json": {"value": "v"}}),
    ("POST", "/kv", {"json": {"key": "k", "value": "v"}}),
    ("DELETE", "/kv/k", {}),
    ("POST", "/kv/k/cas", {"json": {"expected": None, "value": "v"}}),
    ("POST", "/txn", {"json": {"success": [{"op": "put", "key": "k", "value": "v"}]}}),
    ("DELETE", "/kv?prefix=k", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), WRITES,
                         ids=[f"{m} {p}" for m, p, _ in WRITES])
async def test_a_poison_idempotency_key_is_refused_on_every_write_route(
    single: Cluster, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    before = await single.state()
    for rid in (POISON, f"c:{2**63}", "z:0001", "z:+1", "caf\u00e9:1"):
        headers = {"Idempotency-Key": rid.encode("utf-8")}
        r = await single.client.request(method, single.leader_url + path, headers=headers,
                                        **kwargs)
        assert_error(r, 400, "bad_request")
    assert (await single.state())["node1"] == before["node1"]


async def test_the_largest_sequence_number_is_accepted(single: Cluster) -> None:
    r = await single.client.put(f"{single.leader_url}/kv/k", json={"value": "v"},
                                headers={"Idempotency-Key": f"c:{2**63 - 1}"})
    assert assert_ok(r)["key"] == "k"


async def test_a_key_reused_for_another_command_kind_is_refused(single: Cluster) -> None:
    base = single.leader_url
    headers = {"Idempotency-Key": "c:7"}
    assert_ok(await single.client.delete(f"{base}/kv/a", headers=headers))
    r = await single.client.post(f"{base}/kv/a/cas", json={"expected": None, "value": "x"},
                                 headers=headers)
    body = assert_error(r, 400, "bad_request")
    assert "already used" in body["error"]
    assert_error(await single.client.get(f"{base}/kv/a"), 404, "not_found")


async def test_a_txn_whose_reads_exceed_the_result_bound_is_413_and_changes_nothing(
    single: Cluster,
) -> None:
    base = single.leader_url
    assert_ok(await single.client.put(f"{base}/kv/big", json={"value": "v" * MiB}))
    ops = [{"op": "put", "key": "x", "value": "1"}] + [{"op": "get", "key": "big"}] * 5
    r = await single.client.post(f"{base}/txn", json={"success": ops},
                                 headers={"Idempotency-Key": "c:1"})
    assert_error(r, 413, "too_large")
    assert_error(await single.client.get(f"{base}/kv/x"), 404, "not_found")
    # The id was not used up: the same request id may carry a smaller txn.
    r = await single.client.post(f"{base}/txn", json={"success": ops[:2]},
                                 headers={"Idempotency-Key": "c:1"})
    assert assert_ok(r)["succeeded"] is True


# ------------------------------------------------ bodies: limit before reading


def _raw_exchange(url: str, payload: bytes, *, then: bytes = b"", pause: float = 0.0,
                  timeout: float = 5.0) -> bytes:
    """Send raw bytes, optionally more after a pause; read until close or timeout."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as s:
        s.sendall(payload)
        if then:
            import time

            time.sleep(pause)
            with contextlib.suppress(OSError):  # the server may have closed already
                s.sendall(then)
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            data += b"<TIMEOUT>"
        except ConnectionResetError:  # we wrote after the server closed: it did close
            data += b"<RESET>"
        return data


@pytest.mark.parametrize("path", ["/kv/k", "/txn", "/kv", "/kv/k/cas"])
async def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(
    single: Cluster, path: str
) -> None:
    # Only the headers and 10 bytes go out: the 413 must not wait for the rest.
    method = b"PUT" if path == "/kv/k" else b"POST"
    head = b"%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (
        method, path.encode(), 5 * MiB)
    data = await trio.to_thread.run_sync(_raw_exchange, single.leader_url, head + b"x" * 10)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert b'"too_large"' in data
    assert b"connection: close" in data.lower()


async def test_a_chunked_body_is_cut_off_at_the_limit(single: Cluster) -> None:
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(40))  # 2.5 MiB
    head = b"PUT /kv/k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    data = await trio.to_thread.run_sync(_raw_exchange, single.leader_url, head + body)
    assert data.startswith(b"HTTP/1.1 413"), data[:200]


@pytest.mark.parametrize(("first", "route"), [
    (b"GET /health", "Quart"),
    (b"GET /kv/a", "fast path"),
    (b"OPTIONS /health", "Quart"),
    (b"POST /nowhere", "404"),
    (b"GET /nowhere", "404"),
    (b"DELETE /kv/a", "fast path"),
])
async def test_a_body_on_any_route_never_hangs_the_connection(
    single: Cluster, first: bytes, route: str
) -> None:
    # The body arrives after the answer went out: the next request on the
    # connection is answered, or the first answer said Connection: close.
    body = b'{"value": "v"}'
    head = first + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    second = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    data = await trio.to_thread.run_sync(
        lambda: _raw_exchange(single.leader_url, head, then=body + second, pause=0.3))
    assert b"<TIMEOUT>" not in data, (route, data[-300:])
    answers = re.findall(rb"HTTP/1.1 \d+", data)
    assert len(answers) == 2 or b"connection: close" in data.lower(), (route, data[:300])


# --------------------------------------------------- one decoder, both paths


@pytest.mark.parametrize(("path", "method"), [("/kv/k", "PUT"), ("/kv", "POST")])
@pytest.mark.parametrize("content", [
    b'{"value": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"value": 1e99999}',
    b'{"value": ' + b"9" * 5000 + b"}",
    b'\xef\xbb\xbf{"value": "v"}',
    '{"value": "v"}'.encode("utf-16"),
], ids=["deep", "huge-float", "huge-int", "bom", "utf-16"])
async def test_odd_json_is_a_400_on_the_fast_path_and_the_routes(
    single: Cluster, path: str, method: str, content: bytes
) -> None:
    r = await single.client.request(method, single.leader_url + path, content=content)
    assert_error(r, 400, "bad_request")


@pytest.mark.parametrize("path", ["/kv/%FF", "/kv/%FE", "/kv/a%C3", "/kv/%ED%A0%80"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_a_path_that_is_not_utf8_is_a_400_not_another_key(
    single: Cluster, path: str, method: str
) -> None:
    kwargs = {"json": {"value": "v"}} if method == "PUT" else {}
    r = await single.client.request(method, single.leader_url + path, **kwargs)
    assert_error(r, 400, "bad_request")
    assert len(single.leader.kv) == 0


async def test_a_repeated_idempotency_key_header_is_a_400(single: Cluster) -> None:
    headers = [("Idempotency-Key", "c:1"), ("Idempotency-Key", "c:2")]
    for method, path, kwargs in WRITES[:3]:
        r = await single.client.request(method, single.leader_url + path, headers=headers,
                                        **kwargs)
        assert_error(r, 400, "bad_request")


async def test_a_percent_decoded_path_cannot_forge_a_log_line(
    single: Cluster, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(key: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(single.leader.kv, "get", broken)
    base = single.leader_url
    with caplog.at_level(logging.ERROR, logger="trioraft.api"):
        # the fast path, then the Quart routes (another query sends it there;
        # their path converter never matches a newline, so CR there)
        for url in (f"{base}/kv/a%0A2030-01-01 CRITICAL forged%1B[31m",
                    f"{base}/kv/a%0D2030-01-01 CRITICAL forged%1B[31m?x=1"):
            r = await single.client.get(url)
            assert_error(r, 500, "internal")
    records = [r for r in caplog.records if r.name == "trioraft.api"]
    assert len(records) == 2
    for record in records:
        line = record.getMessage()
        assert "\n" not in line
        assert "\r" not in line
        assert "\x1b" not in line
        assert "2030" in line


# --------------------------------------------------------------- /debug


async def test_debug_is_bounded_and_points_to_paged_reads(single: Cluster) -> None:
    base = single.leader_url
    ops = [{"op": "put", "key": f"k{i:03d}", "value": "v"} for i in range(150)]
    assert_ok(await single.client.post(f"{base}/txn", json={"success": ops}))
    body = assert_ok(await single.client.get(f"{base}/debug"))
    assert len(body["stateMachine"]) == 100
    assert list(body["stateMachine"])[:2] == ["k000", "k001"]
    assert body["stateMachineKeys"] == 150
    assert body["stateMachineTruncated"] is True
    assert "after=" in body["note"]
    big = "v" * (60 * 1024)
    for key in ("a", "b"):
        assert_ok(await single.client.put(f"{base}/kv/{key}", json={"value": big}))
    body = assert_ok(await single.client.get(f"{base}/debug"))
    assert list(body["stateMachine"]) == ["a"]  # 64 KiB of characters at most


async def test_range_pages_with_after(single: Cluster) -> None:
    base = single.leader_url
    ops = [{"op": "put", "key": f"p/{i}", "value": "v"} for i in range(5)]
    assert_ok(await single.client.post(f"{base}/txn", json={"success": ops}))
    page = assert_ok(await single.client.get(f"{base}/kv", params={"prefix": "p/", "limit": 2,
                                                                    "after": "p/1"}))
    assert [i["key"] for i in page["items"]] == ["p/2", "p/3"]
    assert page["more"] is True


async def test_delete_prefix_over_http_and_in_a_txn(trio3: Cluster) -> None:
    base = trio3.follower_urls[0]  # forwarded like any write
    ops = [{"op": "put", "key": k, "value": "v"} for k in ("a/1", "a/2", "ab", "b")]
    assert_ok(await trio3.client.post(f"{base}/txn", json={"success": ops}))
    r = await trio3.client.delete(f"{base}/kv", params={"prefix": "a/"},
                                  headers={"Idempotency-Key": "c:1"})
    assert assert_ok(r) == {"prefix": "a/", "deleted": 2}
    again = await trio3.client.delete(f"{base}/kv", params={"prefix": "a/"},
                                      headers={"Idempotency-Key": "c:1"})
    assert assert_ok(again) == {"prefix": "a/", "deleted": 2}  # replayed, not re-run
    r = await trio3.client.post(f"{base}/txn", json={"success": [
        {"op": "delete_prefix", "prefix": "a"}, {"op": "get", "key": "b"}]})
    assert assert_ok(r)["results"] == [{"prefix": "a", "deleted": 1},
                                       {"key": "b", "value": "v"}]
    assert (await trio3.read_everywhere("ab")) == {n.id: None for n in trio3.nodes}


# ------------------------------------------------------- client auth


READ, WRITE = "r3ad-token", "wr1te-token"


@pytest.fixture
async def guarded(data_root, capture: AppCapture):
    configs = [replace(c, client_tokens=(("read", READ), ("write", WRITE)), cluster_token="peer")
               for c in make_configs(3, data_root)]
    async with start_cluster(configs, capture) as cluster:
        yield cluster


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_client_tokens_guard_reads_and_writes_by_role(guarded: Cluster) -> None:
    c = guarded.client
    for base in guarded.all_urls:
        for headers in ({}, bearer("wrong"), bearer("peer"), {"Authorization": READ},
                        [("Authorization", f"Bearer {READ}")] * 2):
            r = await c.put(f"{base}/kv/k", json={"value": "v"}, headers=headers)
            assert_error(r, 401, "unauthorized")
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert_error(await c.get(f"{base}/kv/k", headers=headers), 401, "unauthorized")
            assert_error(await c.get(f"{base}/debug", headers=headers), 401, "unauthorized")
        r = await c.put(f"{base}/kv/k", json={"value": "v"}, headers=bearer(READ))
        assert_error(r, 403, "forbidden")
        assert_error(await c.delete(f"{base}/kv?prefix=k", headers=bearer(READ)), 403,
                     "forbidden")
        assert_ok(await c.put(f"{base}/kv/k", json={"value": "v"}, headers=bearer(WRITE)))
        assert assert_ok(await c.get(f"{base}/kv/k", headers=bearer(READ)))["value"] == "v"
        assert_ok(await c.get(f"{base}/kv", headers=bearer(WRITE)))
        assert_ok(await c.get(f"{base}/debug", headers=bearer(READ)))
        for open_path in ("/status", "/health", "/openapi.json"):
            assert_ok(await c.get(base + open_path))
        assert (await c.get(f"{base}/ready")).status_code in (200, 503)


async def test_auth_is_checked_before_a_body_is_read(guarded: Cluster) -> None:
    head = b"PUT /kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (100 * MiB)
    data = await trio.to_thread.run_sync(_raw_exchange, guarded.leader_url, head)
    assert data.startswith(b"HTTP/1.1 401"), data[:200]


async def test_a_client_token_is_no_peer_credential(guarded: Cluster) -> None:
    vote = {"term": 99, "candidateId": "x", "lastLogIndex": 0, "lastLogTerm": 0}
    for route in ("/raft/request-vote", "/raft/append-entries"):
        r = await guarded.client.post(f"{guarded.leader_url}{route}", json=vote,
                                      headers=bearer(WRITE))
        assert r.status_code == 401, route
