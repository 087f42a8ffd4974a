"""The ASGI fast path answers exactly as the Quart routes it stands in front of."""

from __future__ import annotations

from typing import Any

import pytest

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
