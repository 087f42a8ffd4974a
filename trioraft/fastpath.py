"""An ASGI fast path for the hottest client routes, in front of the Quart app.

`GET`, `PUT` and `DELETE /kv/{key}` (with no query, or only `consistency=`)
are served straight from the ASGI scope: Quart's per-request machinery
(request/response objects, contexts, routing, hooks) costs more than a
consensus write's own work on this stack. Everything else -- other routes,
other query parameters, anything unusual -- falls through to the Quart app,
which remains the reference implementation. Both call the same operations
(`api.write_op`, `api.get_op`) and the same error mapping (`api.map_error`),
so a request gets the same answer either way; tests/api runs against both.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from trioraft import kv
from trioraft.api import (
    LEADER_HEADER,
    MAX_BODY_BYTES,
    ApiError,
    check_key,
    check_request_id,
    get_op,
    map_error,
    write_op,
)
from trioraft.node import RaftNode

__all__ = ["FastPath"]

log = logging.getLogger("trioraft.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_QUERIES = {b"": "linearizable", b"consistency=linearizable": "linearizable",
            b"consistency=stale": "stale"}
_LEADER = LEADER_HEADER.lower().encode()


class _PutBody(msgspec.Struct):
    value: str


class FastPath:
    def __init__(self, app: Any, node: RaftNode) -> None:  # any ASGI app (e.g. QuartTrio)
        self.app: ASGIApp = app
        self.node = node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            method: str = scope["method"]
            query: bytes = scope["query_string"]
            if (
                path.startswith("/kv/")
                and len(path) > 4
                and path[4] != "/"
                and query in _QUERIES
                and (method == "GET" or (method in ("PUT", "DELETE") and not query))
            ):
                await self._serve(scope, receive, send, method, path[4:], _QUERIES[query])
                return
        await self.app(scope, receive, send)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, method: str, key: str, consistency: str
    ) -> None:
        node = self.node
        try:
            if method == "GET":
                status, body = await get_op(node, key, consistency)
            else:
                # Checks in the Quart routes' order, so errors come out the same.
                value: object = ""
                if method == "PUT":
                    value = _put_value(await _read_body(receive))
                check_key(key)
                if not isinstance(value, str):
                    raise ApiError(400, "bad_request", "field 'value' must be a string")
                rid = None
                for name, raw_value in scope["headers"]:
                    if name == b"idempotency-key":
                        rid = check_request_id(raw_value.decode("latin-1"))
                cmd: kv.Command = (
                    kv.Put(key, value, request_id=rid) if method == "PUT"
                    else kv.Delete(key, request_id=rid)
                )
                status, body = await write_op(node, cmd)
        except Exception as exc:  # the same mapping as the Quart app's handlers
            err = map_error(exc)
            if err.status == 500:
                log.exception("node=%s unhandled error in %s %s", node.id, method, scope["path"])
            status, body = err.status, {"error": err.message, "code": err.code, **err.extra}
        await self._respond(send, status, msgspec.json.encode(body), b"application/json")


    async def _respond(self, send: Send, status: int, payload: bytes, ctype: bytes) -> None:
        """Send one whole response, with the headers every answer of a node carries."""
        headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(payload))]
        lid = self.node.leader_id
        if lid is not None:
            headers.append((_LEADER, lid.encode()))
        if status == 503:
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


async def _read_body(receive: Receive, limit: int = MAX_BODY_BYTES) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ApiError(400, "bad_request", "the client went away")
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        if not msg.get("more_body"):
            if size > limit:
                # Read to the end first (as the Quart routes do), so the
                # client sees the 413 rather than a reset mid-upload.
                raise ApiError(413, "too_large", f"request body over {limit} bytes")
            return b"".join(chunks)


def _put_value(raw: bytes) -> object:
    """The "value" of a PUT body, with the Quart route's exact error messages."""
    if not raw:
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    try:
        return msgspec.json.decode(raw, type=_PutBody).value
    except msgspec.ValidationError:  # (a subclass of DecodeError: catch it first)
        pass
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ApiError(400, "bad_request", "the body is not valid JSON") from None
    # Valid JSON but not {"value": "..."}: say exactly what is wrong.
    body = msgspec.json.decode(raw)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    if "value" not in body:
        raise ApiError(400, "bad_request", "missing field 'value'")
    return body["value"]
