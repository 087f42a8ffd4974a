"""A small HTTP/1.1 keep-alive client on Trio sockets, for node-to-node traffic.

Why not httpx: its connection pool degrades sharply beyond a few dozen
concurrent requests on Trio (measured in docs/performance.md), and peer
traffic is always one small request at a time on a long-lived connection.
This client keeps a pool of idle connections per origin, sends one request per
connection at a time, and never retries on its own: a request that failed
after its bytes may have left has an unknown outcome, and only the caller
knows whether retrying is safe.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable

import trio

__all__ = ["ConnectError", "HttpPool", "RequestError", "Response"]


class RequestError(Exception):
    """The request failed; it may have reached the server (outcome unknown)."""


class ConnectError(RequestError):
    """No connection could be made: the request certainly did not arrive."""


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status = status
        self.headers = headers  # lower-cased names
        self.body = body

    def header(self, name: str) -> str | None:
        v = self.headers.get(name.lower().encode())
        return v.decode("latin-1") if v is not None else None


class _Conn:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def fill(self) -> None:
        data = await self.stream.receive_some(1 << 16)
        if not data:
            raise RequestError("connection closed by peer")
        self.buf += data


class HttpPool:
    """Keep-alive connections to one origin (scheme://host:port)."""

    def __init__(self, base_url: str, max_idle: int = 64) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http:// URLs are supported, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._host_header = parts.netloc.encode()
        self._idle: list[_Conn] = []
        self._max_idle = max_idle

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for c in idle:
            await trio.aclose_forcefully(c.stream)

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Response:
        """Send one request; raise ConnectError (not sent) or RequestError (maybe sent)."""
        conn = self._idle.pop() if self._idle else None
        fresh = conn is None
        if conn is None:
            try:
                stream = await trio.open_tcp_stream(self._host, self._port)
            except OSError as exc:
                raise ConnectError(f"cannot connect to {self.base_url}: {exc}") from None
            conn = _Conn(stream)
        ok = False
        try:
            resp, keep = await self._exchange(conn, method, target, body, headers)
            ok = True
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if not fresh:
                # A pooled connection the server had already closed: nothing
                # was processed if we could not even read a status line, but
                # we cannot be sure, so report it as a possibly-sent failure.
                raise RequestError(f"{self.base_url}: {exc!r}") from None
            raise RequestError(f"{self.base_url}: {exc!r}") from None
        finally:
            if not ok:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(conn.stream)
        if keep and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            await trio.aclose_forcefully(conn.stream)
        return resp

    async def _exchange(
        self,
        conn: _Conn,
        method: str,
        target: str,
        body: bytes | None,
        headers: Iterable[tuple[str, str]],
    ) -> tuple[Response, bool]:
        head = [f"{method} {target} HTTP/1.1\r\n".encode(), b"Host: ", self._host_header, b"\r\n"]
        for k, v in headers:
            head.append(f"{k}: {v}\r\n".encode("latin-1"))
        payload = body or b""
        if body is not None or method in ("POST", "PUT"):
            head.append(b"Content-Length: %d\r\n" % len(payload))
        head.append(b"\r\n")
        await conn.stream.send_all(b"".join(head) + payload)
        buf = conn.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            await conn.fill()
        lines = bytes(buf[:end]).split(b"\r\n")
        del buf[: end + 4]
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise RequestError(f"bad status line from {self.base_url}") from None
        hdrs: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            hdrs[name.strip().lower()] = value.strip()
        keep = b"close" not in hdrs.get(b"connection", b"").lower()
        if b"chunked" in hdrs.get(b"transfer-encoding", b"").lower():
            data = await self._read_chunked(conn)
        elif b"content-length" in hdrs:
            n = int(hdrs[b"content-length"])
            while len(buf) < n:
                await conn.fill()
            data = bytes(buf[:n])
            del buf[:n]
        elif status in (204, 304) or status < 200 or method == "HEAD":
            data = b""
        else:
            keep = False
            try:
                while True:
                    await conn.fill()
            except RequestError:
                pass
            data = bytes(buf)
            buf.clear()
        return Response(status, hdrs, data), keep

    @staticmethod
    async def _read_chunked(conn: _Conn) -> bytes:
        buf = conn.buf
        out = bytearray()
        while True:
            while (eol := buf.find(b"\r\n")) < 0:
                await conn.fill()
            size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
            del buf[: eol + 2]
            if size == 0:
                while (end := buf.find(b"\r\n")) != 0:
                    if end < 0:
                        await conn.fill()
                    else:
                        del buf[: end + 2]
                del buf[:2]
                return bytes(out)
            while len(buf) < size + 2:
                await conn.fill()
            out += buf[:size]
            del buf[: size + 2]
