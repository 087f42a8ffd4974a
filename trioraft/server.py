"""`trioraft serve`: one node = one Trio nursery holding the Raft runtime and hypercorn.

Shutdown (SIGTERM/SIGINT): stop taking new client requests, hand leadership to
the most caught-up peer if we lead (so the cluster does not wait out an
election timeout), let hypercorn drain in-flight requests, then cancel the
node's tasks and close storage under a shielded timeout. Nothing acknowledged
is lost: acknowledgement only ever follows an fsync.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import hypercorn.trio
import trio
import trio.lowlevel
from hypercorn.config import Config

from trioraft.api import create_app
from trioraft.config import NodeConfig, format_host_port
from trioraft.fastpath import FastPath
from trioraft.node import RaftNode
from trioraft.observability import instrument
from trioraft.storage import DataDirLocked, StorageCorrupt, open_storage
from trioraft.transport import HttpPeerLink, PeerLink

__all__ = ["hypercorn_config", "serve"]

log = logging.getLogger("trioraft.server")


def hypercorn_config(bind: str) -> Config:
    """The hypercorn settings every node (and the bench's echo ceiling) serves with."""
    config = Config()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 75.0  # clients and peers hold connections between bursts
    config.keep_alive_max_requests = 1_000_000  # the default (1000) forces reconnect storms
    # On SIGTERM hypercorn waits this long for connections to close; idle
    # keep-alive connections (peers, client pools) would hold every shutdown
    # for the full time. In-flight requests settle well within it.
    config.graceful_timeout = 2.0
    config.backlog = 1024
    config.include_server_header = False
    return config


async def serve(
    config: NodeConfig, *, task_status: trio.TaskStatus[RaftNode] = trio.TASK_STATUS_IGNORED
) -> None:
    try:
        storage = await trio.to_thread.run_sync(open_storage, config.data_dir, config.fsync)
    except (StorageCorrupt, DataDirLocked) as exc:
        print(f"trioraft: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    links: dict[str, PeerLink] = {
        p: HttpPeerLink(url, config.cluster_token) for p, url in config.peers.items()
    }
    node = RaftNode(config, storage, links)
    # An ASGI app (hypercorn types it narrowly); `instrument` times every request.
    app: Any = instrument(FastPath(create_app(node), node), node)
    hconf = hypercorn_config(format_host_port(config.listen_host, config.listen_port))
    stop = trio.Event()
    http_stop = trio.Event()
    bind_error = ""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, stop)
            await nursery.start(node.run)

            http_done = trio.Event()

            async def http(
                *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
            ) -> None:
                try:
                    await hypercorn.trio.serve(
                        app, hconf, shutdown_trigger=http_stop.wait, task_status=task_status
                    )
                finally:
                    http_done.set()
                    stop.set()

            try:
                await nursery.start(http)
            except* OSError as group:  # e.g. the port is taken: one line, not a traceback
                bind_error = f"cannot listen on {hconf.bind[0]}: {_leaf(group)}"
            if bind_error:
                nursery.cancel_scope.cancel()
            else:
                log.warning("node %s serving on %s (advertised %s)", config.id,
                            hconf.bind[0], config.advertise_url)
                task_status.started(node)
                await stop.wait()
                node.stop_accepting()
                await node.transfer_leadership(config.election_timeout_ms[1] / 1000)
                http_stop.set()  # hypercorn stops accepting and drains in-flight requests
                with trio.move_on_after(hconf.graceful_timeout + 1):
                    await http_done.wait()
                nursery.cancel_scope.cancel()
    finally:
        for link in links.values():
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await link.aclose()
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await trio.to_thread.run_sync(storage.close)
        log.warning("node %s stopped", config.id)
    if bind_error:
        print(f"trioraft: {bind_error}", file=sys.stderr)
        raise SystemExit(1)


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _wait_http_done(ev: trio.Event) -> None:
    # hypercorn returns from serve() once drained; the outer nursery notices.
    await trio.lowlevel.checkpoint()


async def _watch_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            stop.set()
            return
