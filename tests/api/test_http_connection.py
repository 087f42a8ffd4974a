"""The node's HTTP connection handler (`trioraft.server._http`): what it writes, and when
it lets a connection go.

Driven through `HttpServer.handle` over an in-memory stream that records every
`send_all`, so "one write per response" is observed directly, and over real
loopback sockets for the keep-alive and drain rules.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import h11
import trio
import trio.testing

from trioraft.server import HttpServer, hypercorn_config, serve_asgi

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _FakeSocket:
    family = socket.AF_INET

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 40000)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 8080)


class RecordingStream(trio.abc.HalfCloseableStream):
    """The server's end of an in-memory connection; remembers each `send_all`."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self._inner = inner
        self.socket = _FakeSocket()
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self._inner.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self._inner.aclose()


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        msg = await receive()
        await send({"type": "lifespan.startup.complete"})
        msg = await receive()
        if msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    if scope["path"] == "/slow":
        await trio.sleep(float(body or b"0.3"))
    if scope["path"] == "/chunks":  # a streamed body: each chunk goes out as it comes
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def _request(path: str, body: bytes = b"", *, close: bool = False) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


async def _responses(client: trio.abc.Stream, n: int) -> list[tuple[int, bytes]]:
    conn = h11.Connection(h11.CLIENT)
    # h11 needs to have "sent" requests to parse responses to them.
    out: list[tuple[int, bytes]] = []
    status, body = 0, b""
    for _ in range(n):
        conn.send(h11.Request(method="POST", target="/", headers=[("Host", "x"),
                                                                   ("Content-Length", "0")]))
        conn.send(h11.EndOfMessage())
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await client.receive_some(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status, body = event.status_code, b""
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                out.append((status, body))
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
    return out


async def test_each_response_is_one_write_and_pipelined_requests_are_answered_in_order() -> None:
    server = HttpServer(echo_app, hypercorn_config("127.0.0.1:0"))
    client, server_end = trio.testing.memory_stream_pair()
    stream = RecordingStream(server_end)
    released = trio.Event()

    async def handle() -> None:
        await server.handle(stream)
        released.set()

    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        nursery.start_soon(handle)
        await client.send_all(_request("/a", b"first") + _request("/b", b"second")
                              + _request("/c", b""))  # fmt: skip
        got = await _responses(client, 3)
        assert got == [(200, b"first"), (200, b"second"), (200, b"")]
        # Head and body of each response in one write (hypercorn alone makes
        # three: head, body, and an empty end of message).
        assert len(stream.writes) == 3
        assert all(w.startswith(b"HTTP/1.1 200 ") for w in stream.writes)
        assert stream.writes[0].endswith(b"\r\n\r\nfirst")
        await client.aclose()
        # The connection is let go once the client closes (hypercorn's keep-alive
        # timer task alone held it, and its socket, for keep_alive_timeout).
        with trio.fail_after(5):
            await released.wait()
        assert server.connections == 0
        nursery.cancel_scope.cancel()


async def test_a_streamed_body_goes_out_chunk_by_chunk() -> None:
    server = HttpServer(echo_app, hypercorn_config("127.0.0.1:0"))
    client, server_end = trio.testing.memory_stream_pair()
    stream = RecordingStream(server_end)
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        nursery.start_soon(server.handle, stream)
        await client.send_all(_request("/chunks"))
        got = await _responses(client, 1)
        assert got == [(200, b"one,two,three")]
        # The head rides with the first chunk; later chunks are not held back.
        assert stream.writes[0].startswith(b"HTTP/1.1 200 ")
        assert stream.writes[0].endswith(b"one,\r\n")
        assert [w for w in stream.writes[1:] if w] == [b"4\r\ntwo,\r\n", b"5\r\nthree\r\n",
                                                        b"0\r\n\r\n"]  # fmt: skip
        nursery.cancel_scope.cancel()


async def _open(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def _closed_by_server(stream: trio.abc.ReceiveStream, within: float) -> bool:
    with trio.move_on_after(within):
        while True:
            try:
                if not await stream.receive_some(65536):
                    return True
            except trio.BrokenResourceError:
                return True
    return False


async def test_keep_alive_closes_idle_connections_never_busy_ones() -> None:
    async with trio.open_nursery() as nursery:
        serve = functools.partial(serve_asgi, keep_alive_timeout=0.3)
        port = await nursery.start(serve, echo_app, "127.0.0.1", 0)
        # (A connection that sends nothing at all is the listener's: it is
        # closed after its classify_timeout.)
        async with await _open(port) as used:
            await used.send_all(_request("/a", b"x"))
            assert await _responses(used, 1) == [(200, b"x")]
            assert await _closed_by_server(used, 5.0)  # idle after a response: closed
        async with await _open(port) as busy:
            start = trio.current_time()
            await busy.send_all(_request("/slow", b"1.0"))  # a request running > 3 timeouts
            assert await _responses(busy, 1) == [(200, b"1.0")]
            assert trio.current_time() - start >= 1.0
            # Still open after the slow request; idle again now, so it closes.
            await busy.send_all(_request("/a", b"y"))
            assert await _responses(busy, 1) == [(200, b"y")]
            assert await _closed_by_server(busy, 5.0)
        nursery.cancel_scope.cancel()


async def test_drain_closes_idle_connections_at_once_and_busy_ones_after_their_answer() -> None:
    server = HttpServer(echo_app, hypercorn_config("127.0.0.1:0", keep_alive_timeout=60))
    idle_client, idle_end = trio.testing.memory_stream_pair()
    busy_client, busy_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        await server.start(nursery)
        nursery.start_soon(server.handle, RecordingStream(idle_end))
        nursery.start_soon(server.handle, RecordingStream(busy_end))
        await idle_client.send_all(_request("/a", b"x"))
        assert await _responses(idle_client, 1) == [(200, b"x")]
        await busy_client.send_all(_request("/slow", b"0.5"))
        await trio.sleep(0.1)
        await server.drain()
        assert await _closed_by_server(idle_client, 1.0)
        assert await _responses(busy_client, 1) == [(200, b"0.5")]
        assert await _closed_by_server(busy_client, 1.0)
        nursery.cancel_scope.cancel()
