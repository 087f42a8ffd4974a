"""Receiving a snapshot from the leader: stage its chunks, then hand it to the core."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from trioraft.core import InstallSnapshot, Message
from trioraft.node._offload import Offload
from trioraft.storage import Storage

__all__ = ["SnapshotReceiver"]


class SnapshotReceiver:
    """Chunks go to storage's staging; once all are there, the InstallSnapshot
    message goes to the driver, whose core decides whether to install it."""

    def __init__(
        self,
        storage: Storage,
        offload: Offload,
        current_term: Callable[[], int],
        deliver: Callable[[list[Message]], Awaitable[None]],
    ) -> None:
        self._storage = storage
        self._offload = offload
        self._current_term = current_term
        self._deliver = deliver

    async def receive_chunk(
        self, msg: InstallSnapshot, offset: int, data: bytes, done: bool
    ) -> None:
        """Stage a chunk; raises ValueError to refuse it (a stale term, out of order)."""
        if msg.term < self._current_term():
            raise ValueError("snapshot from a stale term")
        await self._offload.disk(self._storage.write_incoming_chunk, msg.meta, offset, data)
        if done:
            await self._deliver([msg])
