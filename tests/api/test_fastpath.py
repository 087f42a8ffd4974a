"""The ASGI fast path answers exactly as the Quart routes it stands in front of."""

from __future__ import annotations

import json
import os
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conftest import AppCapture, Cluster

# (method, path, JSON body or raw bytes, headers): requests whose answer does
# not depend on which of the two paths serves them first.
CASES: list[tuple[str, str, Any, dict[str, str]]] = [
    ("GET", "/kv/missing", None, {}),
    ("GET", "/kv/missing?consistency=stale", None, {}),
    ("GET", "/kv/present", None, {}),
    ("GET", "/kv/present?consistency=linearizable", None, {}),
    ("PUT", "/kv/k", b"not json", {}),
    ("PUT", "/kv/k", b"", {}),
    ("PUT", "/kv/k", b'{"value": "\xff"}', {}),
    ("PUT", "/kv/k", b"\xff\xfe", {}),
    ("PUT", "/kv/k", b"[1, 2]", {}),
    ("PUT", "/kv/k", {"nope": "x"}, {}),
    ("PUT", "/kv/k", {"value": 5}, {}),
    ("PUT", "/kv/k", {"value": None}, {}),
    ("PUT", "/kv/" + "k" * 1025, {"value": "v"}, {}),
    ("PUT", "/kv/k", {"value": "v" * (1024 * 1024 + 1)}, {}),
    ("PUT", "/kv/k", {"value": "v"}, {"Idempotency-Key": "no-seq"}),
    ("DELETE", "/kv/k", None, {"Idempotency-Key": "c:notanumber"}),
    ("DELETE", "/kv/" + "k" * 1025, None, {}),
    ("PUT", "/kv/" + "k" * 1025, {"value": 5}, {}),
    ("PUT", "/kv/k", b"nope", {"Idempotency-Key": "bad"}),
    ("PUT", "/kv/" + "k" * 1025, {"value": "v"}, {"Idempotency-Key": "bad"}),
    ("POST", "/raft/messages", b"\xff\x00", {}),
    ("POST", "/raft/propose", b"garbage", {}),
    ("POST", "/raft/propose", b"\x91\x01", {}),
]


async def _via_quart(capture: AppCapture, method: str, path: str, body: Any,
                     headers: dict[str, str]) -> tuple[int, Any]:
    client = capture.apps[0].test_client()
    kwargs: dict[str, Any] = {"headers": headers}
    if isinstance(body, bytes):
        kwargs["data"] = body
    elif body is not None:
        kwargs["json"] = body
    resp = await client.open(path, method=method, **kwargs)
    return resp.status_code, await resp.get_json()


@pytest.mark.parametrize(("method", "path", "body", "headers"), CASES,
                         ids=[f"{m} {p[:30]} {str(b)[:20]}" for m, p, b, _ in CASES])
async def test_fast_path_and_quart_give_the_same_answer(
    single: Cluster, capture: AppCapture, method: str, path: str, body: Any,
    headers: dict[str, str],
) -> None:
    await single.client.put(f"{single.leader_url}/kv/present", json={"value": "here"})
    url = single.leader_url + path
    kwargs: dict[str, Any] = {"headers": headers}
    if isinstance(body, bytes):
        kwargs["content"] = body
    elif body is not None:
        kwargs["json"] = body
    fast = await single.client.request(method, url, **kwargs)
    quart = await _via_quart(capture, method, path, body, headers)
    assert (fast.status_code, fast.json()) == quart


async def test_fast_path_writes_answer_like_the_routes(single: Cluster) -> None:
    r = await single.client.put(f"{single.leader_url}/kv/a", json={"value": "1"})
    assert r.status_code == 200
    assert set(r.json()) == {"key", "value", "index"}
    assert r.headers["X-Raft-Leader"] == single.leader.id
    d = await single.client.delete(f"{single.leader_url}/kv/a")
    assert d.json() == {"key": "a", "deleted": True}


# ------------------------------------------------- generated inputs (issue 10 #8)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3),
    max_leaves=8,
)
_bodies = st.one_of(
    st.builds(lambda v: as_json({"value": v}), st.text(max_size=20)),
    _json_values.map(lambda v: as_json(v)),
    _json_values.map(lambda v: as_json({"value": v})),
    st.binary(max_size=30),
    st.sampled_from([
        b"", b"{", b'{"value": "a", "value": 5}', b'{"value": "a", "value": "b"}',
        b'\xef\xbb\xbf{"value": "v"}', '{"value": "v"}'.encode("utf-16"),
        b'{"value": ' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"value": 1e999}',
        b'{"value": "\\ud800"}', b'{"value": "\\u0000"}', b'{"value": "' + b"v" * 3000 + b'"}',
    ]),
)
_ids = st.sampled_from([
    None, "c:1", "c:2", "d:9", "z:0001", "evil:99999999999999999999999999", "c:", "x",
    f"c:{2**63 - 1}", "caf\u00e9:1",
])


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, str, bytes | None, list[tuple[str, bytes]]]:
    method = draw(st.sampled_from(["GET", "PUT", "DELETE"]))
    raw_key = draw(st.one_of(
        st.binary(min_size=1, max_size=6),
        st.text(min_size=1, max_size=6).map(lambda t: t.encode("utf-8")),
        st.sampled_from([b"\xff", b"\xfe", b"a\xc3", b"k" * 1025, b"/x", b"a/b"]),
    ))
    # Writes never touch the keys that GETs read first, so order does not matter.
    key = {"PUT": b"p", "DELETE": b"d", "GET": b""}[method] + raw_key
    path = "/kv/" + "".join(f"%{b:02X}" for b in key)
    query = draw(st.sampled_from(["", "?consistency=stale"] if method == "GET" else [""]))
    headers: list[tuple[str, bytes]] = []
    for rid in draw(st.lists(_ids, max_size=2)):
        if rid is not None:
            headers.append(("Idempotency-Key", rid.encode("utf-8")))
    if draw(st.booleans()):
        headers.append(("Authorization", draw(st.sampled_from([b"Bearer x", b"\xff", b"", b"x"]))))
    body = draw(_bodies) if method == "PUT" else draw(st.none() | st.binary(max_size=8))
    return method, path + query, body, headers


def _normalise(status: int, body: Any) -> tuple[int, Any]:
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k != "index"}  # a second write's index
    return status, body


async def test_generated_requests_get_the_same_answer_from_both_paths(single: Cluster) -> None:
    """The fast path serves `GET/PUT/DELETE /kv/{key}` with no (or a consistency)
    query; the same request with one more query parameter goes to the Quart
    routes. Both must answer alike, byte for byte (bar a write's log index)."""
    client, base = single.client, single.leader_url

    async def both(request: tuple[str, str, bytes | None, list[tuple[str, bytes]]]) -> Any:
        method, target, body, headers = request
        answers = []
        for extra in ("", ("&" if "?" in target else "?") + "via=quart"):
            r = await client.request(method, base + target + extra, content=body,
                                     headers=headers)
            answers.append((r.status_code, r.content, r.headers.get("content-type")))
        return answers

    def explore() -> None:
        @settings(max_examples=int(os.environ.get("FASTPATH_EXAMPLES", "150")),
                  deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(_requests())
        def check(request: tuple[str, str, bytes | None, list[tuple[str, bytes]]]) -> None:
            (fs, fb, ft), (qs, qb, qt) = trio.from_thread.run(both, request)
            assert ft == qt, request
            fast = _normalise(fs, msgspec.json.decode(fb))
            slow = _normalise(qs, msgspec.json.decode(qb))
            assert fast == slow, request

        check()

    await trio.to_thread.run_sync(explore)
