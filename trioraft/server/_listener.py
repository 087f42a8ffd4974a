"""One port for clients and peers: the first byte of a connection says which it is.

Like etcd's cmux, the node's port carries both protocols. A peer stream
opens with a preamble whose first byte is NUL, which no HTTP request (a
method token), HTTP/2 preface or TLS record can start with; every other
connection is HTTP, handed to hypercorn with the byte(s) already read put
back in front (`PrefixedStream`). Keeping one port keeps API.md's
`--peer ID=URL` and the compose files unchanged, and puts TLS termination in
our hands:

- With TLS configured (`trioraft.tls.ServerTls`), a connection whose first
  byte is 0x16 (a TLS handshake record) is unwrapped first -- the handshake
  bounded by `classify_timeout` -- and the same first-byte rule applies
  inside. The verified client certificate (`TlsPeer`) goes along with the
  connection: to the transport for a peer stream (the handshake binds it to
  a member), into the ASGI scope (`trioraft.tls_peer`) for HTTP, where the
  course routes `/raft/*` check it.
- A plaintext HTTP connection to a node that serves HTTPS gets a `400`
  (`https_required`) and is closed: a token must not travel in clear because
  a client used `http://`. A plaintext peer stream to a node with peer TLS
  is handed to the transport, which refuses it with a clear error frame.

Limits, so that no client can make the node unreachable to its peers:

- HTTP connections (including ones not yet classified) are capped at
  `max_http_connections`, by default well below the process's file
  descriptor limit. Beyond it a connection gets an immediate `503` (JSON,
  `Retry-After: 1`, `Connection: close`) without a byte of it being read.
- Peer streams do not count against that cap (there is one per member);
  the transport caps the connections still in their handshake.
- A connection that sends nothing for `classify_timeout` is closed.
- `saturated_since` tells the node how long the cap has been reached without
  pause: /ready reports that, and a leader hands off its leadership when it
  lasts (see `trioraft.server`).
- `accept()` failing for lack of file descriptors is survived (a pause and
  a retry) and counts as saturation.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import resource
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from trioraft.tls import ServerTls, TlsPeer, tls_peer_of

__all__ = [
    "Listener",
    "ListenerLimits",
    "PrefixedStream",
    "TlsPrefixedStream",
    "default_max_connections",
]

log = logging.getLogger("trioraft.server")

_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_OVERLOADED = (
    b'{"error":"the node has too many open connections; retry shortly","code":"overloaded"}'
)
_OVERLOADED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(_OVERLOADED)
    + _OVERLOADED
)
_HTTPS_REQUIRED = (
    b'{"error":"this node serves HTTPS on this port: use an https:// URL",'
    b'"code":"https_required"}'
)
_HTTPS_REQUIRED_RESPONSE = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(_HTTPS_REQUIRED)
    + _HTTPS_REQUIRED
)
_CERT_REQUIRED = (
    b'{"error":"this node requires a client certificate (signed by the CA it names in '
    b'--tls-client-ca)","code":"client_certificate_required"}'
)
_CERT_REQUIRED_RESPONSE = (
    b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(_CERT_REQUIRED)
    + _CERT_REQUIRED
)
_TLS_HANDSHAKE = 0x16  # the content type of a TLS handshake record


def default_max_connections(reserve: int = 128) -> int:
    """HTTP connections allowed: the fd limit minus a reserve for peers, storage, logs."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 10_000
    return max(16, min(10_000, soft - reserve))


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    max_http_connections: int = 0  # 0: default_max_connections()
    classify_timeout: float = 10.0  # seconds until the first byte


class PrefixedStream(trio.abc.HalfCloseableStream):
    """A socket stream with some already-received bytes put back in front.

    Exposes `.socket` (hypercorn's TCPServer reads the addresses from it). A
    write that cannot finish in `write_timeout` (a client that stopped
    reading) breaks the stream instead of blocking its task forever.
    """

    def __init__(
        self, stream: trio.SocketStream, prefix: bytes, write_timeout: float = 30.0
    ) -> None:
        self._stream = stream
        self._prefix = prefix
        self.socket = stream.socket
        self._write_timeout = write_timeout

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # A bare cancel scope rather than fail_after (a generator-based context
        # manager): this runs once per response.
        with trio.CancelScope(deadline=trio.current_time() + self._write_timeout) as scope:
            await self._stream.send_all(data)
        if scope.cancelled_caught:
            raise trio.BrokenResourceError("the peer stopped reading")

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        # Shielded: hypercorn closes a connection (send_eof, then aclose) from
        # whichever task noticed, which can be the app's task just as the app
        # cancels itself (Quart on a disconnect). Cancelled inside send_eof,
        # aclose never ran and the socket leaked, open, forever.
        with trio.CancelScope(shield=True):
            await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


class TlsPrefixedStream(trio.abc.Stream):
    """A TLS stream (handshake done) with its first decrypted bytes put back in front.

    Looks enough like a `trio.SSLStream` for hypercorn's TCPServer to serve it as
    HTTPS (`do_handshake`, `selected_alpn_protocol`, `transport_stream.socket`);
    it has no `send_eof` (TLS has none), which hypercorn expects of TLS.
    """

    def __init__(self, stream: trio.SSLStream[PrefixedStream], prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix
        self.transport_stream = stream.transport_stream

    async def do_handshake(self) -> None:
        await trio.lowlevel.checkpoint()  # done by the listener already

    def selected_alpn_protocol(self) -> str | None:
        protocol: str | None = self._stream.selected_alpn_protocol()
        return protocol

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # The transport (a PrefixedStream) bounds each write by its write timeout.
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


class Listener:
    """Accepts on the node's port and routes each connection by its first byte."""

    def __init__(
        self,
        listeners: list[trio.SocketListener],
        *,
        serve_http: Callable[[trio.abc.Stream, TlsPeer | None], Awaitable[None]],
        accept_peer: Callable[[trio.abc.Stream, TlsPeer | None], bool],
        limits: ListenerLimits,
        tls: ServerTls | None = None,
    ) -> None:
        self.listeners = listeners
        self._serve_http = serve_http
        self._accept_peer = accept_peer
        self.limits = limits
        self.tls = tls
        self.max_http = limits.max_http_connections or default_max_connections()
        self.http = 0  # HTTP (or not yet classified) connections open
        self.refused = 0
        self.saturated_since: float | None = None
        self.tls_handshakes_failed = 0
        self.plaintext_refused = 0  # plaintext HTTP on an HTTPS port

    @property
    def addresses(self) -> list[tuple[str, int]]:
        out = []
        for lst in self.listeners:
            name = lst.socket.getsockname()
            out.append((name[0], name[1]))
        return out

    def saturated_for(self) -> float:
        if self.saturated_since is None:
            return 0.0
        return trio.current_time() - self.saturated_since

    def status(self) -> dict[str, Any]:
        out = {"http_connections": self.http, "max_http_connections": self.max_http,
               "refused_connections": self.refused,
               "saturated_for_s": round(self.saturated_for(), 1)}  # fmt: skip
        if self.tls is not None:
            out["tls_handshakes_failed"] = self.tls_handshakes_failed
            out["plaintext_refused"] = self.plaintext_refused
        return out

    def _saturated(self, yes: bool) -> None:
        if yes and self.saturated_since is None:
            self.saturated_since = trio.current_time()
            log.warning("connection limit reached (%d HTTP connections): refusing new ones",
                        self.max_http)  # fmt: skip
        elif not yes and self.saturated_since is not None:
            log.warning("below the connection limit again after %.1f s", self.saturated_for())
            self.saturated_since = None

    async def serve(self, nursery: trio.Nursery) -> None:
        """Accept until cancelled; connections are served in `nursery`."""
        async with trio.open_nursery() as accepting:
            for lst in self.listeners:
                accepting.start_soon(self._accept_loop, lst, nursery)

    async def close(self) -> None:
        for lst in self.listeners:
            await lst.aclose()

    async def _accept_loop(self, lst: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await lst.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_CAPACITY_ERRNOS:
                    self._saturated(True)
                    log.error("accept failed: %s; pausing 100 ms", exc)
                    await trio.sleep(0.1)
                    continue
                raise
            if self.http >= self.max_http:
                self._saturated(True)
                self.refused += 1
                nursery.start_soon(self._refuse, stream)
                continue
            self.http += 1
            self._saturated(self.http >= self.max_http)
            nursery.start_soon(self._handle, stream)

    async def _refuse(self, stream: trio.SocketStream) -> None:
        # Answer without reading anything: a definite 503, then close.
        with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError, OSError):
            await stream.send_all(_OVERLOADED_RESPONSE)
        await trio.aclose_forcefully(stream)

    async def _first_bytes(self, stream: trio.abc.ReceiveStream) -> bytes:
        """What arrives first (b"": nothing within `classify_timeout`, or closed)."""
        with trio.move_on_after(self.limits.classify_timeout):
            try:
                return bytes(await stream.receive_some(1 << 16))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return b""
        return b""

    async def _unwrap_tls(
        self, raw: PrefixedStream, tls: ServerTls
    ) -> tuple[TlsPrefixedStream, TlsPeer | None, bytes] | None:
        """The TLS handshake (bounded by `classify_timeout`) and the first bytes inside:
        (the stream with those bytes put back, the verified certificate, the bytes)."""
        ssl_stream = trio.SSLStream(raw, tls.context, server_side=True, https_compatible=True)
        try:
            with trio.fail_after(self.limits.classify_timeout):
                await ssl_stream.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError) as exc:
            self.tls_handshakes_failed += 1
            cause = exc.__cause__ or exc
            log.info("TLS handshake failed: %s", getattr(cause, "reason", None) or cause)
            # trio drops the alert OpenSSL wrote (e.g. "unknown ca"); send it, so
            # the client learns why (trio's private attribute; best effort).
            outgoing = getattr(ssl_stream, "_outgoing", None)
            alert = outgoing.read() if isinstance(outgoing, ssl.MemoryBIO) else b""
            if alert:
                with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError,
                                                                OSError):  # fmt: skip
                    await raw.send_all(alert)
            return None
        # The SSLObject (trio's private attribute): the verified chain is read
        # from it. Without it the certificate cannot count as the cluster CA's
        # where another CA is trusted too (tls_peer_of fails closed).
        peer = tls_peer_of(getattr(ssl_stream, "_ssl_object", ssl_stream), tls)
        inner = await self._first_bytes(ssl_stream)
        if not inner:
            return None
        return TlsPrefixedStream(ssl_stream, inner), peer, inner

    async def _handle(self, stream: trio.SocketStream) -> None:
        http = True
        handed_over = False
        try:
            first = await self._first_bytes(stream)
            if not first:
                return
            conn: trio.abc.Stream = PrefixedStream(stream, first)
            peer: TlsPeer | None = None
            tls = self.tls
            if tls is not None and first[0] == _TLS_HANDSHAKE:
                unwrapped = await self._unwrap_tls(PrefixedStream(stream, first), tls)
                if unwrapped is None:
                    return
                conn, peer, first = unwrapped
                if peer is None and tls.client_cert_required and first[0] != 0:
                    # HTTP without the certificate this node requires: say so (over
                    # TLS), read nothing more. (A peer stream is refused by the
                    # transport, which says so in its own protocol.)
                    with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError,
                                                                    OSError):  # fmt: skip
                        await conn.send_all(_CERT_REQUIRED_RESPONSE)
                    return
            elif tls is not None and tls.https and first[0] != 0:
                # Plaintext HTTP to an HTTPS port: say so, read nothing more.
                self.plaintext_refused += 1
                with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError,
                                                                OSError):  # fmt: skip
                    await stream.send_all(_HTTPS_REQUIRED_RESPONSE)
                return
            if first[0] == 0:  # the peer preamble starts with NUL; HTTP never does
                http = False
                self.http -= 1
                handed_over = self._accept_peer(conn, peer)
                return
            await self._serve_http(conn, peer)
        except Exception:  # one connection's failure never takes the server down
            log.exception("error serving a connection")
        finally:
            if not handed_over:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
            if http:
                self.http -= 1
                if self.http < self.max_http:
                    self._saturated(False)
