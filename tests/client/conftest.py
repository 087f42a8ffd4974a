"""A fake three-node cluster behind httpx.MockTransport, speaking API.md §3-4."""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
import pytest

from trioraft.client import AsyncClient, Client

URLS = {
    "node1": "http://127.0.0.1:3001",
    "node2": "http://127.0.0.1:3002",
    "node3": "http://127.0.0.1:3003",
}
ENDPOINTS = list(URLS.values())

Interceptor = Callable[[httpx.Request, str], "httpx.Response | None"]


class FakeCluster:
    """Every node serves every request (as if it forwarded to the leader) and sends
    X-Raft-Leader. Writes are deduplicated by Idempotency-Key like the real server.

    `script` holds one-shot interceptors run before normal handling of /kv requests:
    each gets the request and the node id, and returns a response to send instead
    (or None).
    `down` holds node ids whose connections are refused.
    """

    def __init__(self, leader: str | None = "node2") -> None:
        self.urls = dict(URLS)
        self.leader = leader
        self.data: dict[str, str] = {}
        self.index = 0
        self.applied = 0  # how many writes changed state (dedup hits excluded)
        self.results: dict[str, httpx.Response] = {}
        self.requests: list[tuple[str, httpx.Request]] = []
        self.script: list[Interceptor] = []
        self.down: set[str] = set()
        self.txn_bodies: list[dict[str, object]] = []

    # -- plumbing

    def node_of(self, request: httpx.Request) -> str:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        for node_id, url in self.urls.items():
            if url == base:
                return node_id
        raise httpx.ConnectError(f"unknown host {base}", request=request)

    def handler(self, request: httpx.Request) -> httpx.Response:
        node = self.node_of(request)
        self.requests.append((node, request))
        if node in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if self.script and request.url.path != "/status":
            response = self.script.pop(0)(request, node)
            if response is not None:
                return response
        return self.handle(request, node)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def respond(self, status: int, body: object, **headers: str) -> httpx.Response:
        if self.leader is not None and not (
            isinstance(body, dict) and body.get("code") == "no_leader"
        ):
            headers.setdefault("X-Raft-Leader", self.leader)
        return httpx.Response(status, json=body, headers=headers)

    def error(self, status: int, code: str, **headers: str) -> httpx.Response:
        return self.respond(status, {"error": f"fake {code}", "code": code}, **headers)

    # -- the API

    def handle(self, request: httpx.Request, node: str) -> httpx.Response:
        path = request.url.raw_path.decode().split("?")[0]
        parts = path.split("/")
        if path == "/status":
            return self.respond(200, self.status(node))
        if path == "/txn":
            return self.txn(request)
        if parts[1] != "kv":
            return self.error(404, "not_found")
        if len(parts) == 2:
            query = parse_qs(request.url.query.decode(), keep_blank_values=True)
            prefix = query.get("prefix", [""])[0]
            if request.method == "DELETE":
                return self.delete_prefix(request, prefix)
            limit = int(query.get("limit", ["1000"])[0])
            after = query.get("after", [None])[0]
            keys = sorted(
                k for k in self.data if k.startswith(prefix) and (after is None or k > after)
            )
            items = [{"key": k, "value": self.data[k]} for k in keys[:limit]]
            return self.respond(200, {"items": items, "more": len(keys) > limit})
        key = unquote(parts[2])
        if request.method == "GET":
            if key not in self.data:
                return self.respond(404, {"error": "fake not found", "code": "not_found",
                                          "key": key})
            return self.respond(200, {"key": key, "value": self.data[key]})
        return self.write(request, key, cas=len(parts) == 4 and parts[3] == "cas")

    def write(self, request: httpx.Request, key: str, *, cas: bool) -> httpx.Response:
        idem = request.headers.get("Idempotency-Key")
        if idem is not None and idem in self.results:
            return self.results[idem]
        body = json.loads(request.content) if request.content else {}
        if cas:
            if self.data.get(key) != body["expected"]:
                response = self.respond(
                    409, {"ok": False, "current": self.data.get(key), "code": "cas_failed"}
                )
            else:
                self.apply(key, body["value"])
                response = self.respond(200, {"ok": True})
        elif request.method == "PUT":
            self.apply(key, body["value"])
            response = self.respond(200, {"key": key, "value": body["value"], "index": self.index})
        else:  # DELETE
            existed = key in self.data
            self.apply(key, None)
            response = self.respond(200, {"key": key, "deleted": existed})
        if idem is not None:
            self.results[idem] = response
        return response

    def delete_prefix(self, request: httpx.Request, prefix: str) -> httpx.Response:
        """The assumed contract of DELETE /kv?prefix=p: 200 {"deleted": n}."""
        idem = request.headers.get("Idempotency-Key")
        if idem is not None and idem in self.results:
            return self.results[idem]
        doomed = [k for k in self.data if k.startswith(prefix)]
        self.index += 1
        self.applied += 1
        for k in doomed:
            del self.data[k]
        response = self.respond(200, {"deleted": len(doomed)})
        if idem is not None:
            self.results[idem] = response
        return response

    def txn(self, request: httpx.Request) -> httpx.Response:
        """POST /txn for ==/exists/absent compares and put/get/delete ops."""
        idem = request.headers.get("Idempotency-Key")
        if idem is not None and idem in self.results:
            return self.results[idem]
        body = json.loads(request.content)
        self.txn_bodies.append(body)

        def holds(c: dict[str, object]) -> bool:
            current = self.data.get(str(c["key"]))
            return {"==": current == c.get("value"), "!=": current != c.get("value"),
                    "exists": current is not None, "absent": current is None}[str(c["op"])]

        succeeded = all(holds(c) for c in body["compare"])
        results: list[dict[str, object]] = []
        self.index += 1
        self.applied += 1
        for op in body["success" if succeeded else "failure"]:
            key = op["key"]
            if op["op"] == "put":
                self.data[key] = op["value"]
                results.append({"key": key, "value": op["value"], "index": self.index})
            elif op["op"] == "get":
                results.append({"key": key, "value": self.data.get(key)})
            else:
                results.append({"key": key, "deleted": self.data.pop(key, None) is not None})
        response = self.respond(200, {"succeeded": succeeded, "results": results})
        if idem is not None:
            self.results[idem] = response
        return response

    def apply(self, key: str, value: str | None) -> None:
        self.index += 1
        self.applied += 1
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value

    def status(self, node: str) -> dict[str, object]:
        return {
            "id": node,
            "role": "leader" if node == self.leader else "follower",
            "term": 3,
            "leader": self.leader,
            "commit_index": self.index,
            "applied_index": self.index,
            "last_log_index": self.index,
            "snapshot_index": 0,
            "members": {n: {"url": u, "voter": True} for n, u in self.urls.items()},
        }

    # -- what tests look at

    def nodes_asked(self) -> list[str]:
        return [node for node, _ in self.requests]

    def kv_requests(self) -> list[httpx.Request]:
        return [r for _, r in self.requests if r.url.path.startswith("/kv")]

    def write_keys(self) -> list[str | None]:
        return [r.headers.get("Idempotency-Key") for _, r in self.requests if r.method != "GET"]


@pytest.fixture
def fake() -> FakeCluster:
    return FakeCluster()


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a sync or async client method alike."""
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


@pytest.fixture(params=["sync", "async"])
async def make(request, fake) -> AsyncIterator[Callable[..., Any]]:
    made: list[Client | AsyncClient] = []

    def factory(endpoints: Any = ENDPOINTS, **kwargs: Any) -> Client | AsyncClient:
        kwargs.setdefault("rng", random.Random(1))
        kwargs.setdefault("retry_base", 0.001)
        kwargs.setdefault("retry_cap", 0.01)
        client: Client | AsyncClient
        if request.param == "sync":
            client = Client(endpoints, transport=fake.transport(), **kwargs)
        else:
            client = AsyncClient(endpoints, transport=fake.transport(), **kwargs)
        made.append(client)
        return client

    yield factory
    for client in made:
        await call(client.aclose if isinstance(client, AsyncClient) else client.close)
