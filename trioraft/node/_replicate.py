"""Per-peer outboxes and replication tasks: a slow peer never blocks the driver.

Each follower has its own bounded outbox and a task that drains it,
coalescing whatever queued into one request; a full outbox drops the message
(Raft re-sends: heartbeats and probes recover the follower).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import trio

from trioraft.core import InstallSnapshot, Message
from trioraft.transport import LinkError, PeerLink

__all__ = ["OUTBOX_SIZE", "Outboxes"]

log = logging.getLogger("trioraft.node")

OUTBOX_SIZE = 1_000
MAX_BATCH_MESSAGES = 256


class Outboxes:
    def __init__(
        self, node_id: str, send_snapshot: Callable[[PeerLink, InstallSnapshot], Awaitable[None]],
    ) -> None:
        self._id = node_id
        self._send_snapshot = send_snapshot
        self._outboxes: dict[str, trio.MemorySendChannel[Message]] = {}

    def start(self, nursery: trio.Nursery, links: dict[str, PeerLink]) -> None:
        for peer, link in links.items():
            send, recv = trio.open_memory_channel[Message](OUTBOX_SIZE)
            self._outboxes[peer] = send
            nursery.start_soon(self._replicate, peer, link, recv)

    def send(self, m: Message) -> None:
        out = self._outboxes.get(m.dst)
        if out is None:
            return
        # A slow peer never blocks the driver; Raft re-sends what is lost.
        with contextlib.suppress(trio.WouldBlock):
            out.send_nowait(m)

    async def _replicate(
        self, peer: str, link: PeerLink, outbox: trio.MemoryReceiveChannel[Message]
    ) -> None:
        """Drain this peer's outbox, coalescing queued messages into one request."""
        async for first in outbox:
            batch = [first]
            while len(batch) < MAX_BATCH_MESSAGES:
                try:
                    batch.append(outbox.receive_nowait())
                except trio.WouldBlock:
                    break
            # Annotated: mypy narrows the comprehension to "Message minus
            # InstallSnapshot", and PeerLink takes list[Message] (invariant).
            msgs: list[Message] = [m for m in batch if not isinstance(m, InstallSnapshot)]
            if msgs:
                try:
                    await link.send_messages(msgs)
                except LinkError as exc:
                    log.debug("node=%s to %s: %s", self._id, peer, exc)
            for m in batch:
                if isinstance(m, InstallSnapshot):
                    await self._send_snapshot(link, m)
