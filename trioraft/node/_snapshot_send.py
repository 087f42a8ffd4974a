"""Sending a snapshot to a follower: read it from storage in chunks, push them to the peer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from trioraft.core import InstallSnapshot
from trioraft.node._offload import Offload
from trioraft.storage import Storage
from trioraft.transport import LinkError, PeerLink

__all__ = ["SNAPSHOT_CHUNK", "send_snapshot"]

log = logging.getLogger("trioraft.node")

SNAPSHOT_CHUNK = 1 << 20


async def send_snapshot(
    link: PeerLink,
    msg: InstallSnapshot,
    storage: Storage,
    offload: Offload,
    report_failure: Callable[[str], Awaitable[None]],
) -> None:
    """Stream snapshot `msg.meta` to `msg.dst`; on failure, tell the core (it retries later)."""
    offset = 0
    try:
        while True:
            chunk = await offload.disk(
                storage.read_snapshot_chunk, msg.meta, offset, SNAPSHOT_CHUNK
            )
            nxt = await offload.disk(storage.read_snapshot_chunk, msg.meta, offset + len(chunk), 1)
            done = not nxt
            await link.send_snapshot_chunk(msg, offset, chunk, done)
            offset += len(chunk)
            if done:
                return
    except (LinkError, KeyError) as exc:
        log.info("node=%s snapshot to %s failed: %r", msg.src, msg.dst, exc)
        await report_failure(msg.dst)
