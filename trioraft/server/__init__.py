"""`trioraft serve`: one node = one Trio nursery holding the Raft runtime, its peer
streams and the HTTP server, all on the node's one port.

    listener (trioraft.server._listener): accepts on --listen; the first byte
      of each connection routes it: NUL -> a peer stream (StreamTransport),
      anything else -> HTTP (hypercorn's trio connection handler, _http.py);
      with TLS configured, a TLS handshake first, then the same rule inside
    node (trioraft.node.RaftNode): the runtime; its transport's dial loops
    loop-lag monitor; signal watcher

Shutdown (SIGTERM/SIGINT): stop taking new client requests, hand leadership to
the most caught-up peer if we lead (so the cluster does not wait out an
election timeout), stop accepting, let in-flight HTTP requests drain, then
cancel the node's tasks (its peer streams close with it) and close storage
under a shielded timeout. Nothing acknowledged is lost: acknowledgement only
ever follows an fsync.
"""

from __future__ import annotations

import logging
import signal
import ssl
import sys
from dataclasses import dataclass, field
from typing import Any

import trio
from hypercorn.config import Config

from trioraft.api import create_app
from trioraft.config import NodeConfig, format_host_port
from trioraft.fastpath import FastPath
from trioraft.logs import event
from trioraft.node import LoopLagMonitor, RaftNode
from trioraft.observability import instrument
from trioraft.server import _startup
from trioraft.server._http import BodyDeadline, HttpServer
from trioraft.server._listener import Listener, ListenerLimits, PrefixedStream
from trioraft.storage import DataDirLocked, StorageCorrupt, open_storage
from trioraft.tls import ServerTls, TlsError, peer_client_context, server_tls
from trioraft.transport import StreamConfig, StreamTransport, peer_address

__all__ = [
    "HttpServer",
    "Listener",
    "ListenerLimits",
    "PrefixedStream",
    "ServerOptions",
    "hypercorn_config",
    "serve",
    "serve_asgi",
]

log = logging.getLogger("trioraft.server")


@dataclass(frozen=True)
class ServerOptions:
    """Limits and timings of the server around a node (tests shorten them)."""

    listener: ListenerLimits = field(default_factory=ListenerLimits)
    stream: StreamConfig = field(default_factory=StreamConfig)
    keep_alive_timeout: float = 75.0  # idle HTTP keep-alive connections close after this
    body_timeout: float = 30.0  # a request body must arrive within this
    # A leader that has refused connections (at its limit) for this long hands
    # its leadership to a follower: a leader clients cannot reach must not lead.
    saturated_stepdown_s: float = 10.0
    loop_lag_interval: float = 0.01
    loop_lag_threshold: float = 0.05


def hypercorn_config(bind: str, keep_alive_timeout: float = 75.0) -> Config:
    """The hypercorn settings every node (and the bench's echo ceiling) serves with."""
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = keep_alive_timeout  # clients hold connections between bursts
    config.keep_alive_max_requests = 1_000_000  # the default (1000) forces reconnect storms
    # On SIGTERM in-flight requests get this long to finish; idle keep-alive
    # connections close at once (they would otherwise hold every shutdown).
    config.graceful_timeout = 2.0
    config.backlog = 1024
    config.include_server_header = False
    return config


def _check_peer_urls(config: NodeConfig) -> str | None:
    for peer, url in config.peers.items():
        try:
            peer_address(url)
        except ValueError as exc:
            return f"--peer {peer}={url}: {exc}"
    return None


# ---------------------------------------------------------------- TLS


def node_tls(config: NodeConfig) -> tuple[ServerTls | None, ssl.SSLContext | None]:
    """(what the listener terminates TLS with, the context peers are dialled with) from
    the node's configuration; (None, None) without TLS. TlsError if a file is unusable
    (already checked when the configuration was parsed; files can change since)."""
    peer = config.peer_tls_files
    listener_tls = server_tls(
        cert=config.tls_cert, key=config.tls_key, client_ca=config.tls_client_ca,
        peer_cert=peer[0] if peer else None, peer_key=peer[1] if peer else None,
        peer_ca=peer[2] if peer else None,
    )  # fmt: skip
    return listener_tls, peer_client_context(*peer) if peer else None


def _describe_tls(config: NodeConfig) -> str:
    """"; clients: HTTPS, peers: mutual TLS" for the start-up line; "" without TLS."""
    if not config.https and config.peer_tls_files is None:
        return ""
    parts = ["; clients: HTTPS" if config.https else "; clients: plain HTTP"]
    if config.tls_client_ca is not None:
        parts[0] += " with client certificates"
    parts.append("peers: mutual TLS" if config.peer_tls_files else "peers: no TLS")
    return ", ".join(parts)


# ---------------------------------------------------------------- serve


async def serve(
    config: NodeConfig,
    *,
    options: ServerOptions | None = None,
    task_status: trio.TaskStatus[RaftNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    opts = options or ServerOptions()
    if (problem := _check_peer_urls(config)) is not None:
        print(f"trioraft: {problem}", file=sys.stderr)
        raise SystemExit(2)
    try:
        tls = node_tls(config)
    except TlsError as exc:
        print(f"trioraft: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        storage = await trio.to_thread.run_sync(open_storage, config.data_dir, config.fsync)
    except (StorageCorrupt, DataDirLocked) as exc:
        print(f"trioraft: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    bind = format_host_port(config.listen_host, config.listen_port)
    bind_error = ""
    exit_code = 0
    try:
        # Identity first (issue 12): a data dir that belongs to another node,
        # or to a removed member, never gets as far as listening.
        try:
            plan = await trio.to_thread.run_sync(_startup.plan, config, storage)
        except (_startup.Refused, StorageCorrupt) as exc:
            print(f"trioraft: {exc}", file=sys.stderr)
            log.error("node %s refuses to start: %s", config.id, exc)
            exit_code = 1
            return
        if plan.warning:
            log.warning("node %s: %s", config.id, plan.warning)
        try:
            sockets = await trio.open_tcp_listeners(
                config.listen_port, host=config.listen_host, backlog=1024
            )
        except OSError as exc:  # e.g. the port is taken: one line, not a traceback
            bind_error = f"cannot listen on {bind}: {exc}"
        else:
            try:
                exit_code = await _serve_on(config, opts, storage, sockets, plan, tls,
                                            task_status)  # fmt: skip
            finally:
                for sock in sockets:
                    sock.socket.close()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await trio.to_thread.run_sync(storage.close)
        event(log, "node_stopped", logging.WARNING, id=config.id)
        if exit_code:
            raise SystemExit(exit_code)
    if bind_error:
        print(f"trioraft: {bind_error}", file=sys.stderr)
        raise SystemExit(1)


async def _serve_on(
    config: NodeConfig,
    opts: ServerOptions,
    storage: Any,
    sockets: list[trio.SocketListener],
    plan: _startup.Plan,
    tls: tuple[ServerTls | None, ssl.SSLContext | None],
    task_status: trio.TaskStatus[RaftNode],
) -> int:
    listener_tls, peer_tls = tls
    ident = plan.identity
    # The transport's peers follow the configuration (trioraft.node._membership);
    # its member id and cluster id are known now, or once the start-up decides.
    transport = StreamTransport(
        ident.member_id if ident else config.id, {}, token=config.cluster_token,
        cluster_id=ident.cluster_id if ident else "pending", config=opts.stream,
        tls=peer_tls, name_of=lambda member_id: node.membership.peer_name(member_id),
    )  # fmt: skip
    loop_lag = LoopLagMonitor(opts.loop_lag_interval, opts.loop_lag_threshold)
    node = RaftNode(config, storage, transport, loop_lag=loop_lag, identity=ident,
                    wait_for_identity=ident is None)  # fmt: skip
    node.startup_facts.update(_startup.facts(config, plan, "empty" if ident is None else
                                             "member"))  # fmt: skip
    node.membership.on_removed = _startup.removal_notifier(config, node)
    quart_app = create_app(node)
    # Quart times out a body it waits for with a 408 (then drains for up to
    # 1 s, see api._drain_body); the middleware is the backstop for the fast
    # path (which answers a cut-off body with a 400), and must not cut into
    # Quart's answer.
    quart_app.config["BODY_TIMEOUT"] = opts.body_timeout
    deadline = BodyDeadline(FastPath(quart_app, node), opts.body_timeout + 2.0)
    app = instrument(deadline, node)  # request histograms (trioraft.metrics)
    hconf = hypercorn_config(format_host_port(config.listen_host, config.listen_port),
                             opts.keep_alive_timeout)  # fmt: skip
    http = HttpServer(app, hconf)
    listener = Listener(sockets, serve_http=http.handle, accept_peer=transport.accept,
                        limits=opts.listener, tls=listener_tls)  # fmt: skip
    node.health_checks.append(
        lambda: "the node is at its connection limit" if listener.saturated_since else None
    )
    node.status_sections["server"] = lambda: {
        **listener.status(), "bodies_timed_out": deadline.timed_out,
        "peer_streams_refused": transport.refused,
    }
    stop = trio.Event()
    exit_code = 0

    def stop_with(code: int, message: str) -> None:
        """The node stops itself (removed, or its data dir is foreign): say why."""
        nonlocal exit_code
        exit_code = code
        (log.warning if code == 0 else log.error)("node %s stops: %s", config.id, message)
        if code:
            print(f"trioraft: {message}", file=sys.stderr)
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_signals, stop)
        nursery.start_soon(loop_lag.run)
        if ident is not None:
            await nursery.start(node.run)
        else:
            # Serve HTTP (503s, and GET /raft/identity for the peers deciding
            # with us) while deciding; the node recovers once it is decided.
            nursery.start_soon(node.run)
            nursery.start_soon(_startup.decide_and_start, config, storage, node, transport,
                               plan)  # fmt: skip
        nursery.start_soon(_startup.watch, config, node, stop_with)
        await http.start(nursery)
        async with trio.open_nursery() as connections:
            accepting = trio.CancelScope()

            async def accept() -> None:
                with accepting:
                    await listener.serve(connections)

            nursery.start_soon(accept)
            nursery.start_soon(_step_down_when_saturated, node, listener, opts)
            addresses = ", ".join(format_host_port(h, p) for h, p in listener.addresses)
            event(log, "node_started", logging.WARNING, id=config.id, listen=addresses,
                  advertised=config.advertise_url, peers=len(config.peers),
                  tls=_describe_tls(config).strip(" ,;()") or "off")  # fmt: skip
            task_status.started(node)
            await stop.wait()
            node.stop_accepting()
            await node.transfer_leadership(config.election_timeout_ms[1] / 1000)
            accepting.cancel()
            await listener.close()
            await http.drain()  # idle keep-alive connections close; busy ones finish
            connections.cancel_scope.deadline = trio.current_time() + hconf.graceful_timeout
        with trio.move_on_after(1):
            await http.stop()
        nursery.cancel_scope.cancel()
    return exit_code


async def serve_asgi(
    app: Any,
    host: str,
    port: int,
    *,
    keep_alive_timeout: float = 75.0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve any ASGI app exactly as a node serves its HTTP API (our listener,
    hypercorn's trio connection handler, the node's hypercorn settings), with no
    peer streams; reports the bound port. For the benchmark's echo ceiling."""
    hconf = hypercorn_config(format_host_port(host, port), keep_alive_timeout)
    http = HttpServer(app, hconf)
    sockets = await trio.open_tcp_listeners(port, host=host, backlog=1024)
    listener = Listener(sockets, serve_http=http.handle, accept_peer=lambda _s, _p: False,
                        limits=ListenerLimits())  # fmt: skip
    try:
        async with trio.open_nursery() as nursery:
            await http.start(nursery)
            async with trio.open_nursery() as connections:
                nursery.start_soon(listener.serve, connections)
                task_status.started(listener.addresses[0][1])
                await trio.sleep_forever()
    finally:
        for sock in sockets:
            sock.socket.close()


async def _step_down_when_saturated(
    node: RaftNode, listener: Listener, opts: ServerOptions
) -> None:
    """A leader its clients cannot reach (at the connection limit for a while) hands over."""
    last = -1e9
    while True:
        await trio.sleep(1.0)
        now = trio.current_time()
        if (
            node.is_leader
            and listener.saturated_for() >= opts.saturated_stepdown_s
            and now - last >= 6 * opts.saturated_stepdown_s
        ):
            last = now
            log.warning("node %s has refused connections for %.0f s: handing over leadership",
                        node.id, listener.saturated_for())  # fmt: skip
            await node.transfer_leadership(node.config.election_timeout_ms[1] / 1000)


async def _watch_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return
