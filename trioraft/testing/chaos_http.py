"""A lean HTTP/1.1 client for the chaos clients: one keep-alive connection per node.

Why not httpx: the harness process also runs the fault proxy, which carries every
byte between the nodes. With a couple of hundred httpx clients the harness's
event loop stalled for hundreds of milliseconds, the proxy with it, and the
nodes saw a network that stalled: elections with no fault injected, blamed on
the nodes. A request here costs a small fraction of httpx's CPU.

What an attempt can say (:func:`Conn.request`):

* ``(status, body)``: an answer;
* ``"fail"``: certainly never sent (the connection could not be opened);
* ``"unknown"``: anything else (reset, timeout, garbled answer): sent or not,
  applied or not, nobody knows.

A kept-alive connection the server has closed meanwhile (a restarted node) would
turn the next request into an "unknown"; so before reusing a connection the
client checks, without blocking, that nothing is readable on it (urllib3 does
the same), and opens a fresh one otherwise.
"""

from __future__ import annotations

import select
from typing import Literal

import trio

__all__ = ["Answer", "Conn", "Pool"]

Answer = tuple[int, bytes] | Literal["fail", "unknown"]

_MAX_RESPONSE = 64 << 20


class _Garbled(Exception):
    pass


class Conn:
    """One keep-alive connection to one node, for one task at a time."""

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._host_header = f"Host: {host}:{port}\r\n".encode()
        self._stream: trio.SocketStream | None = None
        self._buf = bytearray()

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        self._buf.clear()
        if stream is not None:
            await trio.aclose_forcefully(stream)

    def _stale(self) -> bool:
        """The server closed the idle connection (or sent something unasked)."""
        if self._stream is None:
            return False
        try:
            readable, _, _ = select.select([self._stream.socket.fileno()], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable) or bool(self._buf)

    async def request(
        self, method: str, target: str, body: bytes | None, seconds: float
    ) -> Answer:
        """One attempt, bounded by `seconds` in all (see the module docstring)."""
        if self._stale():
            await self.aclose()
        if self._stream is None:
            with trio.move_on_after(seconds) as scope:
                try:
                    self._stream = await trio.open_tcp_stream(self._host, self._port)
                except OSError:
                    return "fail"
            if scope.cancelled_caught or self._stream is None:
                return "fail"  # not connected in time: nothing was sent
        answer: Answer = "unknown"
        with trio.move_on_after(seconds):
            try:
                answer = await self._exchange(self._stream, method, target, body)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, _Garbled,
                    ValueError, IndexError):  # fmt: skip
                answer = "unknown"
        if answer == "unknown":
            # Cancelled, reset or garbled: the connection's state is unknown.
            with trio.CancelScope(shield=True):
                await self.aclose()
        return answer

    async def _fill(self, stream: trio.SocketStream) -> None:
        data = await stream.receive_some(65536)
        if not data:
            raise _Garbled("the server closed the connection")
        self._buf += data
        if len(self._buf) > _MAX_RESPONSE:
            raise _Garbled("response too large")

    async def _exchange(
        self, stream: trio.SocketStream, method: str, target: str, body: bytes | None
    ) -> tuple[int, bytes]:
        head = [method.encode(), b" ", target.encode(), b" HTTP/1.1\r\n", self._host_header]
        if body is not None:
            head += [b"Content-Type: application/json\r\nContent-Length: ",
                     str(len(body)).encode(), b"\r\n\r\n", body]  # fmt: skip
        else:
            head.append(b"\r\n")
        await stream.send_all(b"".join(head))
        buf = self._buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            await self._fill(stream)
        lines = bytes(buf[:end]).split(b"\r\n")
        del buf[: end + 4]
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = -1, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            payload = await self._chunked(stream)
        elif length >= 0:
            while len(buf) < length:
                await self._fill(stream)
            payload = bytes(buf[:length])
            del buf[:length]
        elif status in (204, 304) or 100 <= status < 200 or method == "HEAD":
            payload = b""
        else:
            raise _Garbled("a response without a length")
        if close:
            await self.aclose()
        return status, payload

    async def _chunked(self, stream: trio.SocketStream) -> bytes:
        buf = self._buf
        out = bytearray()
        while True:
            while (eol := buf.find(b"\r\n")) < 0:
                await self._fill(stream)
            size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
            del buf[: eol + 2]
            if size == 0:  # trailers, then an empty line
                while (end := buf.find(b"\r\n")) != 0:
                    if end < 0:
                        await self._fill(stream)
                    else:
                        del buf[: end + 2]
                del buf[:2]
                return bytes(out)
            while len(buf) < size + 2:
                await self._fill(stream)
            out += buf[:size]
            del buf[: size + 2]


class Pool:
    """One :class:`Conn` per node for one client task."""

    def __init__(self, ports: dict[str, int], host: str = "127.0.0.1") -> None:
        self._conns = {node: Conn(host, port) for node, port in ports.items()}

    async def request(
        self, node: str, method: str, target: str, body: bytes | None, seconds: float
    ) -> Answer:
        return await self._conns[node].request(method, target, body, seconds)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for conn in self._conns.values():
                await conn.aclose()
