"""StreamTransport: one long-lived, authenticated, framed stream per pair of members.

Who dials: of two members, the one with the smaller member id dials the
other, and keeps redialling (exponential backoff, `backoff_min` doubling to
`backoff_max`, with jitter) whenever it has no open stream; the other only
accepts. So there is exactly one stream per pair, both directions share it,
and neither side ever has to break a tie between two half-open attempts. An
accepted stream from a peer replaces any older stream of that peer (the
peer restarted, or noticed first that the old one died).

Streams arrive at the node's own HTTP port: the server looks at the first
byte of every connection and hands the ones that start with the peer
preamble to `accept()` (see `trioraft.server`).

Peers can be added and removed while running (`add_peer`, `remove_peer`):
membership changes need no restart.

Peer TLS (`tls`, the context to dial with; `trioraft.tls.peer_client_context`):
every stream dialled is TLS (whatever the peer URL's scheme, which is for
clients), verified against the cluster CA and bound to the member's name
(`name_of`) by the handshake; streams accepted without a verified
certificate naming the claimed member are refused there.
"""

from __future__ import annotations

import logging
import random
import ssl
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trioraft.core import Message
from trioraft.errors import NoLeader
from trioraft.logs import event
from trioraft.tls import PEER_SNI, NameOf, TlsPeer, certificate_names, static_name_of
from trioraft.transport._conn import Connection, StreamConfig
from trioraft.transport._frames import FrameError
from trioraft.transport._handshake import HandshakeError, PeerAuth, PeerIdentity, accept, dial
from trioraft.transport._protocol import ChunkReader, Inbound, LinkError, RelayAnswer, SnapshotOffer
from trioraft.transport._reader import FrameReader

__all__ = ["StreamTransport", "peer_address", "probe_peer"]

log = logging.getLogger("trioraft.transport")


def peer_address(url: str) -> tuple[str, int]:
    """(host, port) of a peer URL, http:// or https:// (ValueError otherwise).

    The scheme says how *clients* reach the member; peer streams use TLS exactly
    when this node has peer TLS configured.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url}: a peer URL is http://HOST:PORT or https://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url}: bad port") from None
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def open_tls(
    stream: trio.abc.Stream, context: ssl.SSLContext
) -> tuple[trio.SSLStream[trio.abc.Stream], TlsPeer]:
    """A dialled stream inside TLS (handshake done) and the acceptor's certificate.

    The context trusts only the cluster CA, so a verified certificate is the
    cluster CA's; its names are checked by the peer handshake.
    """
    tls = trio.SSLStream(stream, context, server_hostname=PEER_SNI, https_compatible=True)
    await tls.do_handshake()
    return tls, TlsPeer(certificate_names(tls.getpeercert()), cluster_ca=True)


class _Peer:
    """What we know about one peer: where it is, and its current stream (if any)."""

    def __init__(self, member_id: str, url: str) -> None:
        self.id = member_id
        self.url = url
        self.address = peer_address(url)
        self.conn: Connection | None = None
        self.opened = trio.Event()  # set while a stream is open; replaced when it closes
        self.dial_scope: trio.CancelScope | None = None
        self.connects = 0  # streams opened, either way
        self.last_error: str | None = None
        # Raft messages sent while no stream was open, kept briefly: across a
        # reconnect they arrive late rather than never (the core does not
        # resend everything, e.g. a follower's ReadIndex request).
        self.parked: deque[tuple[float, Message]] = deque()
        self.parked_dropped = 0


class StreamTransport:
    """The production transport (see `trioraft.transport.Transport`)."""

    def __init__(
        self,
        member_id: str,
        peers: dict[str, str],
        *,
        token: str | None,
        cluster_id: str = "legacy",
        config: StreamConfig | None = None,
        rng: random.Random | None = None,
        open_stream: Callable[[str, int], Awaitable[trio.abc.Stream]] | None = None,
        tls: ssl.SSLContext | None = None,
        name_of: NameOf | None = None,
    ) -> None:
        # open_stream(host, port): how to reach a peer; trio.open_tcp_stream
        # unless a test wires transports together in memory.
        self._open_stream = open_stream or trio.open_tcp_stream
        self.id = member_id
        self.cluster_id = cluster_id
        self.config = config or StreamConfig()
        self._auth = PeerAuth(token, tls)
        # member id -> name, which a peer's TLS certificate must hold
        # (trioraft.tls.identity_error). Static clusters: the id is the name, for
        # the members we know; the membership runtime may set its own mapping.
        self.name_of: NameOf = name_of or self._static_name_of
        self._rng = rng or random.Random()
        self._peers: dict[str, _Peer] = {}
        for pid, url in peers.items():
            self._peers[pid] = _Peer(pid, url)
        self._nursery: trio.Nursery | None = None
        self._inbound: Inbound | None = None
        self._handshaking = 0  # accepted connections still in their handshake
        self.refused = 0

    # ================================================================ lifecycle
    async def run(
        self, inbound: Inbound, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._inbound = inbound
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for p in self._peers.values():
                    self._start_dialing(p)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def add_peer(self, member_id: str, url: str) -> None:
        if member_id == self.id:
            raise ValueError("a node is not its own peer")
        old = self._peers.get(member_id)
        if old is not None and old.url == url:
            return
        if old is not None:
            self.remove_peer(member_id)
        p = _Peer(member_id, url)
        self._peers[member_id] = p
        self._start_dialing(p)

    def remove_peer(self, member_id: str) -> None:
        p = self._peers.pop(member_id, None)
        if p is None:
            return
        if p.dial_scope is not None:
            p.dial_scope.cancel()
        if p.conn is not None:
            p.conn.close("the member was removed")

    @property
    def peer_ids(self) -> frozenset[str]:
        return frozenset(self._peers)

    def _static_name_of(self, member_id: str) -> str | None:
        return static_name_of(member_id) if member_id in self._peers else None

    def peer_name(self, member_id: str) -> str | None:
        """The name a peer's TLS certificate must hold to speak as `member_id`."""
        return self.name_of(member_id)

    def connected(self, member_id: str) -> bool:
        p = self._peers.get(member_id)
        return p is not None and p.conn is not None and p.conn.is_open

    # ================================================================ dialing
    def _start_dialing(self, p: _Peer) -> None:
        # The smaller member id dials; the other side waits for it.
        if self._nursery is None or not self.id < p.id:
            return
        p.dial_scope = trio.CancelScope()
        self._nursery.start_soon(self._dial_loop, p, p.dial_scope)

    async def _dial_loop(self, p: _Peer, scope: trio.CancelScope) -> None:
        cfg = self.config
        backoff = cfg.backoff_min
        with scope:
            while True:
                conn = await self._dial_once(p)
                if conn is None:
                    await trio.sleep(backoff * (0.5 + self._rng.random()))
                    backoff = min(backoff * 2, cfg.backoff_max)
                    continue
                backoff = cfg.backoff_min
                await self._serve(p, conn)
                if p.last_error is None:
                    # It ended after running normally: a short pause, not a storm.
                    await trio.sleep(cfg.backoff_min * self._rng.random())

    async def _dial_once(self, p: _Peer) -> Connection | None:
        cfg = self.config
        host, port = p.address
        stream: trio.abc.Stream | None = None
        ok = False
        try:
            with trio.fail_after(cfg.connect_timeout):
                stream = await self._open_stream(host, port)
            with trio.fail_after(cfg.handshake_timeout):
                tls_peer = None
                if self._auth.tls is not None:
                    stream, tls_peer = await open_tls(stream, self._auth.tls)
                reader = FrameReader(stream, cfg.max_frame)
                identity = await dial(stream, reader, auth=self._auth, cluster=self.cluster_id,
                                      local=self.id, peer=p.id, tls_peer=tls_peer,
                                      name_of=self.name_of)  # fmt: skip
            ok = True
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError,
                HandshakeError, FrameError) as exc:  # fmt: skip
            self._note_error(p, f"cannot open a stream to {p.url}: {_why(exc)}",
                             loud=isinstance(exc, HandshakeError))  # fmt: skip
            return None
        finally:
            if not ok and stream is not None:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
        assert self._inbound is not None
        return Connection(stream, reader, identity, self.id, self._inbound, cfg, dialed=True)

    def _note_error(self, p: _Peer, message: str, *, loud: bool) -> None:
        # Log a failure once, not every retry: a down peer is normal for a while.
        if message != p.last_error:
            (log.warning if loud else log.info)("node=%s peer %s: %s", self.id, p.id, message)
        p.last_error = message

    # ================================================================ accepting
    def accept(self, stream: trio.abc.Stream, tls_peer: TlsPeer | None = None) -> bool:
        """Take over a connection that arrived on our port starting with the peer preamble.

        `tls_peer`: the verified certificate it came with (None: plaintext or none).

        The stream is served in the transport's own tasks (so it lives and
        dies with the node, not with the HTTP server's connection handling);
        False if the transport is not running or too many connections are
        still in their handshake (each lasts at most `handshake_timeout`):
        the caller closes it.
        """
        if self._nursery is None or self._handshaking >= self.config.max_handshakes:
            self.refused += 1
            return False
        self._handshaking += 1
        self._nursery.start_soon(self._accept, stream, tls_peer)
        return True

    async def _accept(self, stream: trio.abc.Stream, tls_peer: TlsPeer | None) -> None:
        """Anything but a well-formed, authenticated handshake from a known peer is
        refused (and logged) without crashing anything."""
        cfg = self.config
        reader = FrameReader(stream, cfg.max_frame)
        ok = False
        try:
            if self._inbound is None:
                raise HandshakeError("not_ready", "this node is not running yet")
            with trio.fail_after(cfg.handshake_timeout):
                await reader.preamble()
                identity = await accept(
                    stream, reader, auth=self._auth, cluster=self.cluster_id, local=self.id,
                    is_peer=self._peers.__contains__, tls_peer=tls_peer, name_of=self.name_of,
                )
            ok = True
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError,
                HandshakeError, FrameError) as exc:  # fmt: skip
            self.refused += 1
            log.warning("node=%s refused a peer stream: %s", self.id, _why(exc))
            return
        finally:
            self._handshaking -= 1
            if not ok:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
        p = self._peers.get(identity.member_id)
        if p is None:  # removed during the handshake
            await trio.aclose_forcefully(stream)
            return
        conn = Connection(stream, reader, identity, self.id, self._inbound, cfg, dialed=False)
        await self._serve(p, conn)

    async def _serve(self, p: _Peer, conn: Connection) -> None:
        old, p.conn = p.conn, conn
        if old is not None:
            old.close("replaced by a newer stream")
        p.connects += 1
        if old is None:  # the peer was down (or never up): now it is reachable
            event(log, "peer_up", peer=p.id, stream="dialed" if conn.dialed else "accepted")
        p.last_error = None
        self._unpark(p, conn)
        p.opened.set()
        try:
            await conn.run()
        except Exception:
            # A bug in handling one stream (e.g. the second writer found by
            # chaos, tests/transport/test_conn_single_writer.py) must cost that
            # stream only, never the node: what a peer sends never stops it.
            # The dialer redials; Raft resends what was lost.
            conn.close_reason = conn.close_reason or "internal error"
            log.exception("node=%s stream to %s failed; closed", self.id, p.id)
        finally:
            if p.conn is conn:  # not replaced by a newer stream: the peer is gone
                p.conn = None
                p.opened = trio.Event()
                event(log, "peer_down", peer=p.id, reason=conn.close_reason)
            else:
                log.debug("node=%s stream to %s closed: %s", self.id, p.id, conn.close_reason)

    # ================================================================ sending
    def _conn(self, member_id: str) -> Connection | None:
        p = self._peers.get(member_id)
        if p is None or p.conn is None or not p.conn.is_open:
            return None
        return p.conn

    def send(self, msg: Message) -> None:
        conn = self._conn(msg.dst)
        if conn is not None:
            conn.send_raft(msg)
            return
        p = self._peers.get(msg.dst)
        if p is None:
            return
        # No stream right now: park it (bounded, briefly) for the next one.
        p.parked.append((trio.current_time(), msg))
        if len(p.parked) > self.config.park_messages:
            p.parked.popleft()
            p.parked_dropped += 1

    def _unpark(self, p: _Peer, conn: Connection) -> None:
        oldest = trio.current_time() - self.config.park_timeout
        while p.parked:
            when, msg = p.parked.popleft()
            if when >= oldest:
                conn.send_raft(msg)
            else:
                p.parked_dropped += 1

    async def relay_writes(self, dst: str, datas: list[bytes], timeout: float) -> RelayAnswer:
        conn = self._conn(dst)
        p = self._peers.get(dst)
        if conn is None and p is not None:
            # Between two streams (a reconnect): wait a little for the next.
            # Nothing has been sent meanwhile, so giving up is still NoLeader.
            with trio.move_on_after(min(timeout, self.config.park_timeout)):
                await p.opened.wait()
            conn = self._conn(dst)
        if conn is None:
            raise NoLeader(f"no stream to {dst} is open")
        return await conn.relay(datas, timeout)

    async def send_snapshot(self, offer: SnapshotOffer, read_chunk: ChunkReader) -> None:
        conn = self._conn(offer.msg.dst)
        if conn is None:
            raise LinkError(f"no stream to {offer.msg.dst} is open")
        await conn.send_snapshot(offer, read_chunk)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for pid, p in sorted(self._peers.items()):
            conn = p.conn
            entry: dict[str, Any] = {"url": p.url, "streams_opened": p.connects}
            if conn is not None and conn.is_open:
                entry.update(conn.status())
                entry["authenticated_by"] = conn.identity.authenticated_by
            else:
                entry["connected"] = False
                if p.last_error:
                    entry["last_error"] = p.last_error
            entry["parked"] = len(p.parked)
            entry["parked_dropped"] = p.parked_dropped
            out[pid] = entry
        return out


def _why(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    cause = exc.__cause__
    if isinstance(exc, trio.BrokenResourceError) and isinstance(cause, ssl.SSLError):
        # A TLS failure: say what the handshake said (unknown CA, expired, ...).
        if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
            return f"TLS: the peer's certificate: {cause.verify_message}"
        return f"TLS: {cause.reason or cause}"
    return str(exc) or type(exc).__name__


async def probe_peer(
    url: str,
    *,
    token: str | None,
    local: str,
    peer: str,
    cluster_id: str = "legacy",
    timeout: float = 5.0,
    tls: ssl.SSLContext | None = None,
) -> PeerIdentity:
    """Open a peer stream to `url` as member `local`, then close it: who answered.

    Raises HandshakeError with the refusal's code (e.g. "unauthorized",
    "unknown_member", "cluster_mismatch", "tls_required", "identity"). With `tls`
    (a `trioraft.tls.peer_client_context`) the stream runs inside TLS. For tests
    and diagnostics.
    """
    host, port = peer_address(url)
    with trio.fail_after(timeout):
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        async with stream:
            tls_peer = None
            if tls is not None:
                stream, tls_peer = await open_tls(stream, tls)
            reader = FrameReader(stream, 1 << 16)
            return await dial(stream, reader, auth=PeerAuth(token, tls), cluster=cluster_id,
                              local=local, peer=peer, tls_peer=tls_peer)  # fmt: skip
