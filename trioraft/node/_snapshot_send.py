"""Sending snapshots to followers: one transfer per follower, through a storage reader.

The core asks for a transfer by emitting InstallSnapshot(meta). This module
opens a `SnapshotReader` on that snapshot (`Storage.open_snapshot_reader`),
which holds the file open for the whole transfer: newer snapshots taken
meanwhile never pull the data from under it (issue 11 #2). The reader's size
and CRC32 of the whole data go out with every chunk
(`SnapshotOffer(msg, size, checksum)`): with the snapshot's (index, term)
they name the transfer the follower stages and checks. The transport sends
the pieces in chunks with at most a window unacknowledged.

A failed transfer is reported to the core (it retries later), after a short
backoff that grows with consecutive failures to that follower (a follower
that refuses, e.g. because a transfer it already received still waits to be
installed, is not sent the first chunks again in a tight loop; the core
keeps the follower paused meanwhile). The end of a successful transfer is
reported too (the follower's InstallSnapshotResponse should follow: if it
was lost, the core retries sooner than its snapshot timeout).

At most one transfer per follower runs at a time: a second InstallSnapshot
for the same snapshot while one is in flight is ignored (a rejected
heartbeat during a transfer must not start another; the core pauses the
follower too), and one for a newer snapshot replaces the older transfer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from trioraft.core import InstallSnapshot, SnapshotMeta
from trioraft.logs import event
from trioraft.metrics import NodeMetrics
from trioraft.node._offload import Offload
from trioraft.storage import SnapshotReader, Storage
from trioraft.transport import LinkError, SnapshotOffer, Transport

__all__ = ["SnapshotSender"]

log = logging.getLogger("trioraft.node")

BACKOFF_MIN_S = 0.05
BACKOFF_MAX_S = 2.0


class SnapshotSender:
    def __init__(
        self,
        node_id: str,
        storage: Storage,
        offload: Offload,
        transport: Transport,
        report: Callable[[str, bool], Awaitable[None]],
        metrics: NodeMetrics,
    ) -> None:
        self._id = node_id
        self._storage = storage
        self._offload = offload
        self._transport = transport
        self._report = report
        self._metrics = metrics
        self._active: dict[str, tuple[SnapshotMeta, trio.CancelScope]] = {}
        self._failures: dict[str, int] = {}  # consecutive failed transfers, per follower
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
        peer, meta = msg.dst, msg.meta
        ok = False
        moved = 0  # bytes read for the follower so far
        t0 = trio.current_time()
        try:
            with scope:
                try:
                    # KeyError: the newest snapshot is another one (the core
                    # learns of it shortly and asks again with it).
                    reader: SnapshotReader = await self._offload.disk(
                        self._storage.open_snapshot_reader, meta
                    )
                except KeyError:
                    error = f"snapshot {meta.index} is no longer the newest"
                else:
                    try:

                        async def read(offset: int, size: int) -> bytes:
                            nonlocal moved
                            data = await self._offload.io(reader.read, offset, size)
                            moved = max(moved, offset + len(data))
                            return data

                        offer = SnapshotOffer(msg, reader.size, reader.checksum)
                        await self._transport.send_snapshot(offer, read)
                        ok = True
                    except LinkError as exc:
                        error = str(exc)
                    finally:
                        reader.close()
                if ok:
                    self._sent(msg, moved, trio.current_time() - t0)
                else:
                    n = self._failures[peer] = self._failures.get(peer, 0) + 1
                    self._failed(msg, moved, error, n)
                    # Back off before the core may ask again (it keeps the
                    # follower paused until we report).
                    await trio.sleep(min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (n - 1)))
        finally:
            if self._active.get(peer, (None, None))[1] is scope:
                del self._active[peer]
        if scope.cancelled_caught:
            return  # superseded by a newer snapshot's transfer (or the peer left)
        # Every chunk is out: the follower's answer should follow soon (the
        # core retries sooner if it was lost). Or it failed: retry later.
        await self._report(peer, ok)

    def _sent(self, msg: InstallSnapshot, nbytes: int, seconds: float) -> None:
        self.stats["sent"] += 1
        self._failures.pop(msg.dst, None)
        self._metrics.observe_snapshot_transfer("sent", msg.dst, nbytes, True)
        event(log, "snapshot_sent", peer=msg.dst, index=msg.meta.index, term=msg.meta.term,
              bytes=nbytes, seconds=round(seconds, 3))  # fmt: skip

    def _failed(self, msg: InstallSnapshot, nbytes: int, error: str, attempt: int) -> None:
        self.stats["failed"] += 1
        self._metrics.observe_snapshot_transfer("sent", msg.dst, nbytes, False)
        if attempt & (attempt - 1) == 0:
            # Failures in a row (a follower that stays down) are logged at
            # attempts 1, 2, 4, 8, ...: not a line every backoff period.
            event(log, "snapshot_send_failed", peer=msg.dst, index=msg.meta.index,
                  term=msg.meta.term, bytes=nbytes, error=error, attempt=attempt)  # fmt: skip
