"""The course's peer routes (API.md §5): garbage is a JSON 400; with a cluster
token, a request without it (or with a wrong one) is 401 and changes nothing;
the course JSON forms work. Nodes talk to each other over peer streams
(tests/node/test_stream_*), so the old msgpack routes are gone. Also: a crash
in one request is a JSON 500 without a traceback, and the node keeps serving."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.api.api_helpers import assert_error, assert_no_traceback, assert_ok
from tests.api.conftest import TOKEN, Cluster, assert_unchanged
from trioraft.transport import TOKEN_HEADER

GARBAGE = [b"", b"\x00\xff\xfe garbage \x81", b"{", b"[1, 2, 3]", b'{"term": "x"}', b"null",
           b'{"term": 4611686018427387904, "candidateId": "node2", "lastLogIndex": 0, '
           b'"lastLogTerm": 0, "leaderId": "node2", "prevLogIndex": 0, "prevLogTerm": 0, '
           b'"leaderCommit": 0}',
           b'{"term": 1, "candidateId": "' + b"x" * 129 + b'", "lastLogIndex": 0, '
           b'"lastLogTerm": 0, "leaderId": "' + b"x" * 129 + b'", "prevLogIndex": 0, '
           b'"prevLogTerm": 0, "leaderCommit": 0}']
RAFT_ROUTES = ["/raft/request-vote", "/raft/append-entries"]
GONE_ROUTES = ["/raft/messages", "/raft/snapshot", "/raft/propose"]


def vote(term: int, candidate: str = "node2", **more: Any) -> dict[str, Any]:
    return {"term": term, "candidateId": candidate, "lastLogIndex": 0, "lastLogTerm": 0,
            **more}


def append(term: int, leader: str = "node2", **more: Any) -> dict[str, Any]:
    return {"term": term, "leaderId": leader, "prevLogIndex": 0, "prevLogTerm": 0,
            "leaderCommit": 0, **more}


async def raft_state(c: Cluster) -> list[tuple[int, int, int, str | None]]:
    out = []
    for url in c.all_urls:
        s = assert_ok(await c.client.get(f"{url}/status"))
        out.append((s["term"], s["last_log_index"], s["commit_index"], s["leader"]))
    return out


# ------------------------------------------------------------------ garbage


@pytest.mark.parametrize("route", RAFT_ROUTES)
@pytest.mark.parametrize("body", GARBAGE, ids=range(len(GARBAGE)))
async def test_garbage_on_a_raft_route_is_400_json(
    trio3: Cluster, route: str, body: bytes
) -> None:
    before = await trio3.state()
    for url in trio3.all_urls:
        r = await trio3.client.post(url + route, content=body)
        assert_error(r, 400, "bad_request")
    assert_unchanged(before, await trio3.state())


@pytest.mark.parametrize("route", GONE_ROUTES)
async def test_the_old_msgpack_peer_routes_are_gone(trio3: Cluster, route: str) -> None:
    before = await trio3.state()
    r = await trio3.client.post(trio3.leader_url + route, content=b"\x91\x01")
    assert_error(r, 404, "not_found")
    assert_unchanged(before, await trio3.state())


async def test_an_entry_above_the_messages_term_is_400(trio3: Cluster) -> None:
    body = append(1, entries=[{"index": 1, "term": 2, "command": "x"}])
    r = await trio3.client.post(f"{trio3.follower_urls[0]}/raft/append-entries", json=body)
    assert_error(r, 400, "bad_request")


async def test_append_entries_with_non_contiguous_entries_is_400(trio3: Cluster) -> None:
    body = append(1, entries=[{"index": 5, "term": 1, "command": "x"}])
    r = await trio3.client.post(f"{trio3.follower_urls[0]}/raft/append-entries", json=body)
    assert_error(r, 400, "bad_request")


# ------------------------------------------------------------------ course JSON forms


async def test_course_request_vote_with_a_stale_term_is_refused(trio3: Cluster) -> None:
    before = await trio3.state()
    for node_id, url in trio3.urls.items():
        r = await trio3.client.post(f"{url}/raft/request-vote", json=vote(0))
        body = assert_ok(r)
        assert body == {"term": body["term"], "voteGranted": False}
        assert body["term"] >= before[node_id]["term"] >= 1
    assert_unchanged(before, await trio3.state())


async def test_course_append_entries_with_a_stale_term_is_refused(trio3: Cluster) -> None:
    before = await trio3.state()
    for node_id, url in trio3.urls.items():
        r = await trio3.client.post(f"{url}/raft/append-entries", json=append(0))
        body = assert_ok(r)
        assert body["term"] >= before[node_id]["term"] >= 1
        assert body["success"] is False
    assert_unchanged(before, await trio3.state())


# ------------------------------------------------------------------ cluster token


@pytest.mark.parametrize(
    "headers",
    [{}, {TOKEN_HEADER: "wrong"}, {TOKEN_HEADER: ""}, {"Authorization": "Bearer wrong"},
     {TOKEN_HEADER: TOKEN + "x"}, {"Authorization": TOKEN}],
    ids=["none", "wrong", "empty", "wrong-bearer", "prefix", "no-bearer-scheme"],
)
@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/raft/request-vote", vote(1000)),
        ("/raft/append-entries", append(1000)),
    ],
)
async def test_raft_route_without_the_right_token_is_401_and_changes_nothing(
    secured: Cluster, headers: dict[str, str], route: str, body: dict[str, Any] | None
) -> None:
    before = await secured.state()
    r = await secured.client.post(secured.leader_url + route, json=body, headers=headers,
                                  content=None if body is not None else b"\x93\x01\x02")
    assert_error(r, 401, "unauthorized")
    assert_unchanged(before, await secured.state())
    assert secured.leader.is_leader


async def test_raft_route_with_the_token_is_accepted(secured: Cluster) -> None:
    before = await raft_state(secured)
    r = await secured.client.post(f"{secured.leader_url}/raft/request-vote", json=vote(0),
                                  headers={TOKEN_HEADER: TOKEN})
    assert assert_ok(r) == {"term": before[0][0], "voteGranted": False}
    assert await raft_state(secured) == before


async def test_raft_route_accepts_the_token_as_a_bearer(secured: Cluster) -> None:
    r = await secured.client.post(f"{secured.leader_url}/raft/request-vote", json=vote(0),
                                  headers={"Authorization": f"Bearer {TOKEN}"})
    assert assert_ok(r)["voteGranted"] is False


async def test_with_the_token_garbage_is_400(secured: Cluster) -> None:
    for route in RAFT_ROUTES:
        r = await secured.client.post(secured.leader_url + route, content=b"\xff\x00",
                                      headers={TOKEN_HEADER: TOKEN})
        assert_error(r, 400, "bad_request")


async def test_the_token_does_not_guard_the_client_api(secured: Cluster) -> None:
    assert_ok(await secured.client.put(f"{secured.leader_url}/kv/k", json={"value": "v"}))
    assert_ok(await secured.client.get(f"{secured.leader_url}/kv/k"))


# ------------------------------------------------------------------ crashes


async def test_a_crash_in_a_request_is_a_500_without_traceback(
    single: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> dict[str, Any]:
        raise RuntimeError("secret internals /etc/passwd")

    node = single.leader
    node.status = boom  # type: ignore[method-assign]
    try:
        r = await single.client.get(f"{single.leader_url}/status")
    finally:
        del node.status
    assert r.status_code == 500
    body = r.json()
    assert set(body) == {"error", "code"}
    assert body["code"] == "internal"
    assert "secret" not in r.text
    assert_no_traceback(r)
    assert any("unhandled error" in rec.getMessage() for rec in caplog.records)
    # The node keeps serving.
    assert assert_ok(await single.client.get(f"{single.leader_url}/status"))["role"] == "leader"
    assert_ok(await single.client.put(f"{single.leader_url}/kv/k", json={"value": "v"}))


async def test_the_token_is_checked_before_the_body_is_read(secured: Cluster) -> None:
    # A sender without the token announces 100 MB and sends none of it: the
    # answer is a 401 at once, not a wait for (or a buffer of) the body.
    host, port = secured.leader_url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            b"POST /raft/append-entries HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
        )
        with trio.fail_after(5):
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await stream.receive_some(4096)
                assert chunk, "connection closed without an answer"
                head += chunk
    assert head.startswith(b"HTTP/1.1 401"), head[:200]
