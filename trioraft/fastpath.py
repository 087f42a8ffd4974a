"""An ASGI fast path for the hottest client routes, in front of the Quart app.

`GET`, `PUT` and `DELETE /kv/{key}` (with no query, or only `consistency=`)
are served straight from the ASGI scope: Quart's per-request machinery
(request/response objects, contexts, routing, hooks) costs more than a
consensus write's own work on this stack. Everything else -- other routes,
other query parameters, anything unusual -- falls through to the Quart app,
which remains the reference implementation. Both call the same operations
(`api.write_op`, `api.get_op`) and the same error mapping (`api.map_error`),
so a request gets the same answer either way; tests/api runs against both.

Every request also passes two guards here, before either path sees it:

* `boundary.precheck` (client auth, Content-Length against the route's limit,
  a UTF-8 path): its refusals are answered at once, nothing read;
* `KeepAliveGuard`: a response that goes out while the request body is still
  arriving says ``Connection: close``, so the connection closes after it.
  (hypercorn 0.18 otherwise leaves such a keep-alive connection stuck: a GET
  with a body, an early 401/404/413, and the next request on it never got an
  answer.)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec
import trio

from trioraft import kv
from trioraft.api import (
    LEADER_HEADER,
    ApiError,
    check_key,
    check_request_id,
    client_auth,
    error_headers,
    get_op,
    map_error,
    write_op,
)
from trioraft.auth import ClientAuth
from trioraft.boundary import (
    MAX_BODY_BYTES,
    RequestHeaders,
    decode_json,
    loggable,
    precheck_scanned,
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
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")
_CLOSE_TIMEOUT_S = 5.0


class _PutBody(msgspec.Struct):
    value: str


class KeepAliveGuard:
    """Tracks whether the request body has fully arrived; closes the connection if not.

    Wraps one request's `receive` and `send`: a response started before the
    last body message was received gets ``Connection: close``. (The fast path's
    own routes track this themselves, without the wrappers.)
    """

    def __init__(self, complete: bool, receive: Receive, send: Send) -> None:
        self._receive, self._send = receive, send
        self.closing = False  # a response went out before the body was complete
        self.complete = complete

    async def receive(self) -> Message:
        msg = await self._receive()
        if msg["type"] != "http.request" or not msg.get("more_body"):
            self.complete = True
        return msg

    async def send(self, msg: Message) -> None:
        if self.closing and msg["type"] == "http.response.body" and not msg.get("more_body"):
            await _send_last_and_close(self._send, msg)
            return
        if msg["type"] == "http.response.start" and not self.complete:
            self.closing = True
            msg = {**msg, "headers": [*msg.get("headers", []), _CLOSE]}
        await self._send(msg)


async def _send_last_and_close(send: Send, msg: Message) -> None:
    # The last message makes hypercorn close the connection, from inside this
    # call. Quart-trio cancels its request nursery as soon as hypercorn reports
    # the disconnect, which would abort that close half-way (the socket then
    # stays open: the hang the guard exists for). So it runs shielded, bounded
    # in time.
    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT_S):
        await send(msg)


class FastPath:
    def __init__(  # any ASGI app (e.g. QuartTrio)
        self, app: Any, node: RaftNode, auth: ClientAuth | None = None
    ) -> None:
        self.app: ASGIApp = app
        self.node = node
        self.auth = auth if auth is not None else client_auth(node)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method: str = scope["method"]
        headers = RequestHeaders(scope["headers"])
        complete = not headers.body_expected
        try:
            precheck_scanned(method, path, scope.get("raw_path"), headers, self.auth)
        except Exception as exc:
            err = map_error(exc)
            body = msgspec.json.encode({"error": err.message, "code": err.code, **err.extra})
            await self._respond(send, err.status, body, closing=not complete)
            return
        scope["trioraft.prechecked"] = True  # (the scope is this request's own)
        query: bytes = scope["query_string"]
        if (
            path.startswith("/kv/")
            and len(path) > 4
            and query in _QUERIES
            and (method == "GET" or (method in ("PUT", "DELETE") and not query))
        ):
            await self._serve(scope, receive, send, method, path[4:], _QUERIES[query], headers)
            return
        guard = KeepAliveGuard(complete, receive, send)
        await self.app(scope, guard.receive, guard.send)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, method: str, key: str,
        consistency: str, headers: RequestHeaders,
    ) -> None:  # fmt: skip
        node = self.node
        complete = not headers.body_expected
        try:
            if method == "GET":
                status, body = await get_op(node, key, consistency)
            else:
                # Checks in the Quart routes' order, so errors come out the same.
                value: object = ""
                if method == "PUT":
                    raw = await _read_body(receive)
                    complete = True
                    value = _put_value(raw)
                check_key(key)
                if not isinstance(value, str):
                    raise ApiError(400, "bad_request", "field 'value' must be a string")
                rid = check_request_id(headers.single_idempotency_key())
                cmd: kv.Command = (
                    kv.Put(key, value, request_id=rid) if method == "PUT"
                    else kv.Delete(key, request_id=rid)
                )
                status, body = await write_op(node, cmd)
        except Exception as exc:  # the same mapping as the Quart app's handlers
            err = map_error(exc)
            if err.status == 500:
                log.exception("node=%s unhandled error in %s %s", node.id, method,
                              loggable(scope["path"]))
            status, body = err.status, {"error": err.message, "code": err.code, **err.extra}
        await self._respond(send, status, msgspec.json.encode(body), closing=not complete)

    async def _respond(self, send: Send, status: int, payload: bytes, *, closing: bool) -> None:
        """Send one whole JSON response, with the headers every answer of a node carries;
        `closing`: the request body has not all arrived, so the connection closes after."""
        headers = [_JSON, (b"content-length", b"%d" % len(payload))]
        lid = self.node.leader_name  # a name, not a member id (issue 12)
        if lid is not None:
            headers.append((_LEADER, lid.encode()))
        if status >= 400:
            headers += _error_headers(status)
        if closing:
            headers.append(_CLOSE)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        body = {"type": "http.response.body", "body": payload}
        if closing:
            await _send_last_and_close(send, body)
        else:
            await send(body)


@functools.cache  # one entry per status code the node answers with
def _error_headers(status: int) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k.lower().encode(), v.encode()) for k, v in error_headers(status).items())


async def _read_body(receive: Receive, limit: int = MAX_BODY_BYTES) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ApiError(400, "bad_request", "the client went away")
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            # Stop reading: the answer goes out now, and the KeepAliveGuard
            # closes the connection behind it (the rest is never read).
            raise ApiError(413, "too_large", f"request body over {limit} bytes")
        chunks.append(chunk)
        if not msg.get("more_body"):
            return b"".join(chunks)


def _put_value(raw: bytes) -> object:
    """The "value" of a PUT body, with the Quart route's exact error messages."""
    if not raw:
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    try:
        return msgspec.json.decode(raw, type=_PutBody).value
    except Exception:  # anything unusual: decode it as the Quart route does, below
        pass
    body = decode_json(raw)  # the one decoder of the Quart routes: same errors
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    if "value" not in body:
        raise ApiError(400, "bad_request", "missing field 'value'")
    return body["value"]
