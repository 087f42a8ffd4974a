"""HTTP on the node's port: hypercorn's trio connection handler, fed by our listener.

`hypercorn.trio.serve()` owns its listening sockets, so it cannot share a
port with the peer streams. This module does what its `worker_serve` does --
the ASGI lifespan, a `WorkerContext`, one `TCPServer` per connection, and a
graceful drain on shutdown -- but takes its connections from
`trioraft.server._listener`, which has already looked at their first byte.

It uses hypercorn internals (`hypercorn.trio.tcp_server.TCPServer`,
`hypercorn.trio.lifespan.Lifespan`, `hypercorn.trio.worker_context`), so the
dependency is pinned to a minor version (pyproject.toml);
tests/api/test_serve_lifecycle.py fails loudly if their shape changes.

`BodyDeadline` (ASGI middleware) bounds how long a request body may take: a
body that never ends (a short Content-Length, an endless chunked body) ends
as a client disconnect after `body_timeout`, so the handler answers and
hypercorn closes the connection instead of holding it forever. (Slow
*headers* are already bounded: hypercorn's keep-alive timer runs until a
request's headers are complete.)

`TLS_PEER_SCOPE_KEY`: every HTTP request of a connection carries that
connection's verified client certificate (`trioraft.tls.TlsPeer`, or None)
in its ASGI scope under this key; the course routes `/raft/*` check it.

`_Connection` is hypercorn's `TCPServer` with a cheaper per-request path
(issue 13: the client path's cost is mostly per request, not per byte).
hypercorn 0.18 writes every response as three `send_all` calls (head, body,
an empty end-of-message), each under a lock and a shielded cancel scope,
each a trip through Trio's scheduler; and it starts a new keep-alive timer
task after every response and cancels it at the next request. Here:

- the response head is held until the first body write, and both go out in
  one `send_all` (one system call, one trip through the scheduler); an empty
  write is no write. ASGI itself says a response starts with its first body
  message, and nothing is held past that message or past a close;
- one keep-alive watcher per connection reads a timestamp instead of being
  restarted per request: the same rule (an idle connection closes after
  `keep_alive_timeout`, or at once when the server drains; a busy one is
  never closed by it), and it ends with the connection's reading, so a
  connection the client closed is released at once instead of after the
  keep-alive timeout (hypercorn's timer task kept it, and its socket, open
  that long);
- no per-receive timeout scope when hypercorn's `read_timeout` is unset
  (the node's settings never set it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import h11
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import wrap_app

from trioraft.tls import TlsPeer

__all__ = ["TLS_PEER_SCOPE_KEY", "BodyDeadline", "HttpServer"]

TLS_PEER_SCOPE_KEY = "trioraft.tls_peer"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyDeadline:
    """ASGI middleware: a request's whole body must arrive within `timeout` seconds."""

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout
        self.timed_out = 0  # bodies cut off, for /status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = trio.current_time() + self.timeout
        complete = False
        # hypercorn hands each request a memory channel's receive: what has
        # already arrived is taken without a timeout scope (most bodies).
        receive_nowait = getattr(getattr(receive, "__self__", None), "receive_nowait", None)

        async def bounded_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            if receive_nowait is not None:
                try:
                    msg: Message = receive_nowait()
                except trio.WouldBlock:
                    pass
                else:
                    if msg["type"] != "http.request" or not msg.get("more_body", False):
                        complete = True
                    return msg
            with trio.move_on_at(deadline):
                msg = await receive()  # a memory channel: cancelling loses nothing
                if msg["type"] != "http.request" or not msg.get("more_body", False):
                    complete = True
                return msg
            self.timed_out += 1
            complete = True
            return {"type": "http.disconnect"}

        await self.app(scope, bounded_receive, send)


class _WithTlsPeer:
    """hypercorn's app wrapper, plus the connection's certificate in each request's scope."""

    def __init__(self, app: Any, peer: TlsPeer | None) -> None:
        self.app = app
        self.peer = peer

    async def __call__(self, scope: Scope, receive: Receive, send: Send,
                       sync_spawn: Any, call_soon: Any) -> None:  # fmt: skip
        scope[TLS_PEER_SCOPE_KEY] = self.peer
        await self.app(scope, receive, send, sync_spawn, call_soon)


class _KeepAlive:
    """Stands in for hypercorn's keep-alive timer (`TrioSingleTask`): one watcher task per
    connection, and `restart`/`stop` (called at each idle/busy change) only note the time."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.idle_since: float | None = None  # None: a request is in progress
        self._scope: trio.CancelScope | None = None

    async def restart(self, task_group: Any, action: Any) -> None:  # hypercorn's signature
        self.idle_since = trio.current_time()
        if self._scope is None:
            self._scope = trio.CancelScope()
            task_group._nursery.start_soon(self._watch, self._scope)

    async def stop(self) -> None:
        self.idle_since = None

    def end(self) -> None:
        """The connection stopped reading: nothing is left to time out."""
        if self._scope is not None:
            self._scope.cancel()

    async def _watch(self, scope: trio.CancelScope) -> None:
        conn = self._conn
        keep = conn.config.keep_alive_timeout
        with scope:
            while True:
                since = self.idle_since
                deadline = (since if since is not None else trio.current_time()) + keep
                with trio.move_on_at(deadline):
                    await conn.context.terminated.wait()
                    # The server drains: an idle connection closes now; a busy one
                    # closes after its response (hypercorn checks `terminated`).
                    if self.idle_since is None:
                        return
                    break
                since = self.idle_since
                if since is not None and trio.current_time() >= since + keep:
                    break  # idle for keep_alive_timeout
        if not scope.cancelled_caught:
            with trio.CancelScope(shield=True):
                await conn._initiate_server_close()


class _Connection(TCPServer):
    """hypercorn's per-connection server, with one write per response (module docstring)."""

    def __init__(self, app: Any, config: Config, context: WorkerContext, state: Any,
                 stream: Any) -> None:  # fmt: skip
        super().__init__(app, config, context, state, stream)
        self._keep_alive = _KeepAlive(self)
        self.idle_task = self._keep_alive  # type: ignore[assignment]
        self._held: list[bytes] = []  # a response head, until its body's first write
        self._body_started = False  # this response's body has begun going out

    def _sending_body(self) -> bool:
        """Is an HTTP/1.1 response's head out (in h11's books) and its body still to end?"""
        inner = getattr(getattr(self, "protocol", None), "protocol", None)
        if not isinstance(inner, H11Protocol):
            return False  # HTTP/2 (or not started): every write goes out as it comes
        conn = inner.connection
        return isinstance(conn, h11.Connection) and conn.our_state is h11.SEND_BODY

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            data = event.data
            in_body = self._sending_body()
            if self._held:
                self._held.append(data)
                data = b"".join(self._held)
                self._held.clear()
            elif in_body and not self._body_started and data:
                self._held.append(data)  # a response head: it goes with the body's first write
                return
            self._body_started = in_body
            if data:
                await self._write(data)
        elif isinstance(event, Closed):
            await self._flush()
            await self._close()
            await self.protocol.handle(Closed())
        elif isinstance(event, Updated):
            await self._flush()
            if event.idle:
                await self._keep_alive.restart(self._task_group, None)
            else:
                await self._keep_alive.stop()

    async def _flush(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        # hypercorn's protocol_send, minus the checkpoint of an uncontended lock.
        lock = self.send_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            with trio.CancelScope(shield=True):
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self.protocol.handle(Closed())
        finally:
            lock.release()

    async def _read_data(self) -> None:
        try:
            if self.config.read_timeout:
                await super()._read_data()
                return
            while True:
                try:
                    data = await self.stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                await self.protocol.handle(RawData(bytes(data)))
                if data == b"":
                    break
            await self.protocol.handle(Closed())
        finally:
            self._keep_alive.end()


class HttpServer:
    """Serves HTTP connections handed to `handle()`; `drain()` on shutdown."""

    def __init__(self, app: Any, config: Config) -> None:
        self.config = config
        self.app = wrap_app(app, config.wsgi_max_body_size, None)
        self.context = WorkerContext(None)
        self._lifespan_state: dict[str, Any] = {}
        self._lifespan = Lifespan(self.app, config, self._lifespan_state)
        self.connections = 0

    async def start(self, nursery: trio.Nursery) -> None:
        """Run the app's lifespan startup (in `nursery`, which must outlive serving)."""
        await nursery.start(self._lifespan.handle_lifespan)
        # ClosedResourceError: the app returned at once from the lifespan
        # scope (it has no lifespan support), which is allowed.
        with contextlib.suppress(trio.ClosedResourceError):
            await self._lifespan.wait_for_startup()

    async def handle(self, stream: trio.abc.Stream, peer: TlsPeer | None = None) -> None:
        """Serve one connection until it closes; `peer`: its verified client certificate."""
        self.connections += 1
        try:
            state = ConnectionState(self._lifespan_state.copy())
            app = _WithTlsPeer(self.app, peer)
            await _Connection(app, self.config, self.context, state, stream)
        finally:
            self.connections -= 1

    async def drain(self) -> None:
        """Shutdown: idle keep-alive connections close now, busy ones after their response."""
        await self.context.terminated.set()

    async def stop(self) -> None:
        with contextlib.suppress(trio.ClosedResourceError):
            await self._lifespan.wait_for_shutdown()
