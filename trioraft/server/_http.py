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
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
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

        async def bounded_receive() -> Message:
            nonlocal complete
            if complete:
                return await receive()
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
            await TCPServer(app, self.config, self.context, state, stream)  # type: ignore[arg-type]
        finally:
            self.connections -= 1

    async def drain(self) -> None:
        """Shutdown: idle keep-alive connections close now, busy ones after their response."""
        await self.context.terminated.set()

    async def stop(self) -> None:
        with contextlib.suppress(trio.ClosedResourceError):
            await self._lifespan.wait_for_shutdown()
