"""The load generator's HTTP clients: a minimal keep-alive client on Trio sockets
(the default, and the fast one) and an adapter over a shared ``httpx.AsyncClient``."""

from __future__ import annotations

import urllib.parse
from typing import Protocol

import httpx
import trio

__all__ = ["TRANSPORT_ERRORS", "Client", "ConnectionLost", "HttpxClient", "RawClient"]

_JSON = b"application/json"


class Client(Protocol):
    async def request(self, method: bytes, target: bytes, body: bytes | None) -> tuple[int, bytes]:
        """Send one request; return (status, body). Raises on transport failure."""
        ...

    async def aclose(self) -> None: ...


class ConnectionLost(Exception):
    pass


class RawClient:
    """One HTTP/1.1 keep-alive connection on a Trio socket, for one task at a time.

    Deliberately minimal: Content-Length or chunked response bodies, reconnects
    after ``Connection: close`` or any failure (the failed request is *not*
    retried: its outcome is unknown to us, so it is reported).
    """

    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http:// endpoints are supported, not {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._host_header = f"Host: {parts.netloc}\r\n".encode()
        self._prefix = parts.path.rstrip("/").encode()
        self._stream: trio.SocketStream | None = None
        self._buf = bytearray()

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        self._buf.clear()
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def _fill(self, stream: trio.SocketStream) -> None:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionLost("server closed the connection")
        self._buf += data

    async def request(self, method: bytes, target: bytes, body: bytes | None) -> tuple[int, bytes]:
        try:
            return await self._request(method, target, body)
        except BaseException:
            # Whatever happened (cancel, timeout, error), the stream's state is unknown.
            with trio.CancelScope(shield=True):
                await self.aclose()
            raise

    async def _request(self, method: bytes, target: bytes, body: bytes | None) -> tuple[int, bytes]:
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self._host, self._port)
        stream = self._stream
        head = [method, b" ", self._prefix, target, b" HTTP/1.1\r\n", self._host_header]
        if body is not None:
            head += [b"Content-Type: ", _JSON, b"\r\nContent-Length: ", str(len(body)).encode()]
            head += [b"\r\n\r\n", body]
        else:
            head.append(b"\r\n")
        await stream.send_all(b"".join(head))

        buf = self._buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            await self._fill(stream)
        lines = bytes(buf[:end]).split(b"\r\n")
        del buf[: end + 4]
        status = int(lines[0].split(b" ", 2)[1])
        length = -1
        chunked = close = False
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
            payload = await self._read_chunked(stream)
        elif length >= 0:
            while len(buf) < length:
                await self._fill(stream)
            payload = bytes(buf[:length])
            del buf[:length]
        elif status in (204, 304) or 100 <= status < 200 or method == b"HEAD":
            payload = b""
        else:  # body delimited by the end of the connection
            close = True
            try:
                while True:
                    await self._fill(stream)
            except ConnectionLost:
                pass
            payload = bytes(buf)
            buf.clear()
        if close:
            await self.aclose()
        return status, payload

    async def _read_chunked(self, stream: trio.SocketStream) -> bytes:
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


class HttpxClient:
    """Adapter over a shared ``httpx.AsyncClient`` (the pool is shared by all workers)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self._client = client
        self._base = base_url.rstrip("/")

    async def request(self, method: bytes, target: bytes, body: bytes | None) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"} if body is not None else None
        resp = await self._client.request(
            method.decode(), self._base + target.decode(), content=body, headers=headers
        )
        return resp.status_code, resp.content

    async def aclose(self) -> None:
        pass  # the shared pool is closed by run_load


#: What a failed request can raise from either client (counted as ``conn_error``).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ConnectionLost,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    httpx.HTTPError,
    ValueError,  # a garbled status line or header
    IndexError,
)
