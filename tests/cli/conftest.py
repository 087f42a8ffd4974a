"""A fake single-node cluster behind httpx.MockTransport, for the CLI tests."""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from trioraft import cli
from trioraft.client import Client


class FakeNode:
    """One node that is its own leader; enough of API.md §3-4 for the CLI."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.forced: list[httpx.Response] = []
        self.endpoints_seen: list[tuple[str, ...]] = []
        self.requests: list[httpx.Request] = []
        self.status_extra: dict[str, Any] = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.forced and request.url.path != "/status":
            return self.forced.pop(0)
        headers = {"X-Raft-Leader": "node1"}
        self.requests.append(request)
        parts = request.url.raw_path.decode().split("?")[0].split("/")
        if parts[1] == "status":
            member = {"url": "http://127.0.0.1:3001", "voter": True}
            body = {"id": "node1", "role": "leader", "term": 2, "leader": "node1",
                    "commit_index": 5, "applied_index": 5, "last_log_index": 5,
                    "snapshot_index": 0, "members": {"node1": member},
                    **self.status_extra}  # fmt: skip
            return httpx.Response(200, json=body, headers=headers)
        if len(parts) == 2:
            params = request.url.params
            prefix = params.get("prefix", "")
            if request.method == "DELETE":
                doomed = [k for k in self.data if k.startswith(prefix)]
                for k in doomed:
                    del self.data[k]
                return httpx.Response(200, json={"deleted": len(doomed)}, headers=headers)
            after, limit = params.get("after"), int(params.get("limit", "1000"))
            keys = sorted(k for k in self.data
                          if k.startswith(prefix) and (after is None or k > after))
            items = [{"key": k, "value": self.data[k]} for k in keys[:limit]]
            return httpx.Response(200, json={"items": items, "more": len(keys) > limit},
                                  headers=headers)
        key = unquote(parts[2])
        body = json.loads(request.content) if request.content else {}
        if len(parts) == 4:
            if self.data.get(key) != body["expected"]:
                return httpx.Response(409, json={"ok": False, "code": "cas_failed"})
            if body["value"] is None:
                self.data.pop(key, None)
            else:
                self.data[key] = body["value"]
            return httpx.Response(200, json={"ok": True}, headers=headers)
        if request.method == "GET":
            if key not in self.data:
                return httpx.Response(404, json={"error": "no", "code": "not_found", "key": key})
            return httpx.Response(200, json={"key": key, "value": self.data[key]})
        if request.method == "PUT":
            self.data[key] = body["value"]
            return httpx.Response(200, json={"key": key, "value": body["value"], "index": 7})
        existed = self.data.pop(key, None) is not None
        return httpx.Response(200, json={"key": key, "deleted": existed})


@pytest.fixture
def node(monkeypatch) -> FakeNode:
    fake = FakeNode()

    def make_client(endpoints: tuple[str, ...], **kwargs: Any) -> Client:
        fake.endpoints_seen.append(endpoints)
        return Client(
            endpoints, transport=httpx.MockTransport(fake.handler), retry_base=0.001, **kwargs
        )

    monkeypatch.setattr(cli, "Client", make_client)
    return fake


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
