"""Receiving a snapshot from the leader: stage it, check it whole, decode it, offer it.

A transfer is named by `SnapshotTransfer(meta, size, checksum)`: the sender
takes size and CRC32 from its storage reader and sends them with every chunk
(`SnapshotOffer`). Storage stages each transfer apart (`stage_chunk`: chunks
in order, offset 0 (re)starts it and abandons any other one *in progress*,
never a finished one; bounded by its configured maximum) and, after the last
chunk, `finish_transfer` checks the whole staged file's size and checksum
and hands back its data. The state machine is restored from that data (in
short slices on the loop) **before** the core sees the InstallSnapshot: data that does
not decode is discarded (`discard_transfer`) and refused to the sender, and
nothing in the data dir changed.

Only then does the InstallSnapshot reach the driver, as an `OfferedSnapshot`
holding the transfer and the restored state machine. The driver steps it
into the core; if the next Ready carries that snapshot, it installs the
transfer (`install_transfer`, then the Ready's `save`) and swaps the
restored machine in; if the core declined it, it discards the transfer.

Issue 11 #3: two transfers never share staging, and a finished transfer
waiting for the driver is never written again (storage refuses its chunks;
a retry of that very transfer is refused until it is installed or
discarded), so what was checked and decoded is exactly what gets installed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from trioraft.core import InstallSnapshot
from trioraft.kv import InvalidSnapshot, KVStateMachine
from trioraft.metrics import NodeMetrics
from trioraft.node._offload import Offload
from trioraft.storage import SnapshotTransfer, Storage
from trioraft.transport import SnapshotOffer

__all__ = ["OfferedSnapshot", "SnapshotReceiver", "restore"]


@dataclass(eq=False)
class OfferedSnapshot:
    """A whole, checked and decoded transfer, for the driver to offer the core."""

    src: str
    msg: InstallSnapshot
    transfer: SnapshotTransfer
    kv: KVStateMachine


async def restore(offload: Offload, data: bytes) -> KVStateMachine:
    """A fresh state machine restored from `data`, in slices (InvalidSnapshot).

    Decoded frame by frame on the loop, yielding to other tasks every
    couple of milliseconds (`Offload.sliced` says why not in a thread).

    No gc.freeze() afterwards: the restored keys and values live in dicts and
    tuples of strings, which the cyclic GC does not track, so a full
    collection after restoring 1M keys (116 MB) takes ~2 ms with or without
    it (measured on the 2-core dev machine).
    """
    kv = KVStateMachine()
    await offload.sliced(kv.restore_steps(data))
    return kv


class SnapshotReceiver:
    def __init__(
        self,
        storage: Storage,
        offload: Offload,
        current_term: Callable[[], int],
        offer: Callable[[OfferedSnapshot], Awaitable[None]],
        metrics: NodeMetrics,
    ) -> None:
        self._storage = storage
        self._offload = offload
        self._current_term = current_term
        self._offer = offer
        self._metrics = metrics
        self._lock = trio.Lock()  # one chunk at a time reaches storage

    async def chunk(
        self, src: str, offer: SnapshotOffer, offset: int, data: bytes, last: bool
    ) -> None:
        """Stage one chunk; ValueError refuses the transfer (the sender reports failure)."""
        msg = offer.msg
        t = SnapshotTransfer(msg.meta, offer.size, offer.checksum)
        try:
            async with self._lock:
                if msg.term < self._current_term():
                    raise ValueError("snapshot from a stale term")
                end = offset + len(data)
                if last != (end == offer.size):
                    raise ValueError(f"chunk ends at {end}, the snapshot has {offer.size} bytes")
                # ValueError: out of order, past the declared size or the
                # maximum, a transfer that already finished, ...
                await self._offload.disk(self._storage.stage_chunk, t, offset, data)
                if not last:
                    return
                # The whole staged file against the declared size and checksum
                # (a mismatch discards it and raises ValueError).
                whole = await self._offload.disk(self._storage.finish_transfer, t)
            try:
                kv = await restore(self._offload, whole)
            except InvalidSnapshot as exc:
                await self._offload.disk(self._storage.discard_transfer, t)
                raise ValueError(f"the snapshot does not decode: {exc}") from None
            del whole
        except ValueError:
            self._metrics.observe_snapshot_transfer("received", src, offset, False)
            raise
        self._metrics.observe_snapshot_transfer("received", src, offer.size, True)
        # Whole, intact and decodable: the core decides whether to install it.
        await self._offer(OfferedSnapshot(src, msg, t, kv))
