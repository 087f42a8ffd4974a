"""Sending snapshots to followers: one transfer per follower, flow-controlled by the transport.

The core asks for a transfer by emitting InstallSnapshot(meta). This module
reads the snapshot through a narrow `SnapshotSource` (open a reader for a
snapshot, read pieces of it, close it) and hands the pieces to
`Transport.send_snapshot`, which sends them in chunks with at most a window
unacknowledged. A failed transfer is reported to the core (it retries later); so is the
end of a successful one (the follower's InstallSnapshotResponse should
follow: if it was lost, the core retries sooner than its snapshot timeout).

At most one transfer per follower runs at a time: a second InstallSnapshot
for the same snapshot while one is in flight is ignored (a rejected
heartbeat during a transfer must not start another), and one for a newer
snapshot replaces the older transfer.

`StorageSnapshots` adapts today's Storage API (which serves only the newest
snapshot, so a newer snapshot taken meanwhile fails the transfer with
KeyError and the core retries with it). The storage rework (readers that
keep their file alive until closed, transfers identified by index, term,
size and checksum) replaces only that adapter.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import trio

from trioraft.core import InstallSnapshot, SnapshotMeta
from trioraft.node._offload import Offload
from trioraft.storage import Storage
from trioraft.transport import LinkError, SnapshotOffer, Transport

__all__ = ["SnapshotReader", "SnapshotSender", "SnapshotSource", "StorageSnapshots"]

log = logging.getLogger("trioraft.node")


class SnapshotReader(Protocol):
    size: int

    async def read(self, offset: int, size: int) -> bytes: ...


class SnapshotSource(Protocol):
    def open(self, meta: SnapshotMeta) -> AbstractAsyncContextManager[SnapshotReader]:
        """A reader of snapshot `meta`, kept usable until closed; KeyError if it is gone."""
        ...


class _StorageReader:
    def __init__(self, storage: Storage, offload: Offload, meta: SnapshotMeta, size: int) -> None:
        self._storage, self._offload, self._meta, self.size = storage, offload, meta, size

    async def read(self, offset: int, size: int) -> bytes:
        # KeyError if the snapshot is no longer the newest (today's Storage API).
        return await self._offload.disk(self._storage.read_snapshot_chunk, self._meta, offset,
                                        size)  # fmt: skip


class StorageSnapshots:
    """`SnapshotSource` over today's Storage protocol."""

    def __init__(self, storage: Storage, offload: Offload) -> None:
        self._storage, self._offload = storage, offload

    @asynccontextmanager
    async def open(self, meta: SnapshotMeta) -> AsyncIterator[SnapshotReader]:
        size = await self._offload.disk(self._storage.snapshot_size)
        reader = _StorageReader(self._storage, self._offload, meta, size)
        await reader.read(0, 0)  # KeyError now if `meta` is not the snapshot we hold
        yield reader


class SnapshotSender:
    def __init__(
        self,
        node_id: str,
        source: SnapshotSource,
        transport: Transport,
        report: Callable[[str, bool], Awaitable[None]],
    ) -> None:
        self._id = node_id
        self._source = source
        self._transport = transport
        self._report = report
        self._active: dict[str, tuple[SnapshotMeta, trio.CancelScope]] = {}
        self._nursery: trio.Nursery | None = None
        self.stats = {"sent": 0, "failed": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def start(self, msg: InstallSnapshot) -> None:
        """Start sending `msg.meta` to `msg.dst`, unless that transfer is already running."""
        active = self._active.get(msg.dst)
        if active is not None:
            meta, scope = active
            if meta == msg.meta:
                return  # already on its way: never two identical transfers
            scope.cancel()  # a newer snapshot supersedes it
        if self._nursery is None:
            return
        scope = trio.CancelScope()
        self._active[msg.dst] = (msg.meta, scope)
        self._nursery.start_soon(self._send, msg, scope)

    def cancel(self, peer: str) -> None:
        active = self._active.pop(peer, None)
        if active is not None:
            active[1].cancel()

    async def _send(self, msg: InstallSnapshot, scope: trio.CancelScope) -> None:
        ok = False
        try:
            with scope:
                async with self._source.open(msg.meta) as reader:
                    await self._transport.send_snapshot(SnapshotOffer(msg, reader.size),
                                                        reader.read)  # fmt: skip
                ok = True
                self.stats["sent"] += 1
                log.info("node=%s snapshot %d sent to %s", self._id, msg.meta.index, msg.dst)
        except (LinkError, KeyError) as exc:
            log.info("node=%s snapshot %d to %s failed: %s", self._id, msg.meta.index, msg.dst,
                     exc)  # fmt: skip
        finally:
            if self._active.get(msg.dst, (None, None))[1] is scope:
                del self._active[msg.dst]
        if ok:
            # Every chunk is out: the follower's answer should follow soon
            # (the core retries sooner if it was lost).
            await self._report(msg.dst, True)
        elif not scope.cancelled_caught:
            self.stats["failed"] += 1
            await self._report(msg.dst, False)
