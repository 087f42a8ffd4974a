"""Receiving a snapshot from the leader: stage it, check it whole, then offer it to the core.

A transfer is identified by its sender, the snapshot's (index, term) and its
total size; chunks must arrive in order (offset 0 starts or restarts a
transfer, and abandons any other). Before the InstallSnapshot message
reaches the core, this module has checked that exactly `size` bytes were
staged and that their crc32 matches the sender's: a truncated or corrupted
transfer is refused here and never installed. A transfer above
`max_snapshot_bytes` is refused at its first chunk, so staging is bounded.
Once the core accepts it, the driver installs it through `install()`.

Storage is reached only through `SnapshotSink` (stage a chunk; install the
staged snapshot): today's Storage protocol is adapted by `StorageSink`; the
storage rework (per-transfer staging identified by index, term, size and
checksum) replaces only that adapter.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from trioraft.core import Message, SnapshotMeta
from trioraft.node._offload import Offload
from trioraft.storage import Storage
from trioraft.transport import SnapshotOffer

__all__ = ["DEFAULT_MAX_SNAPSHOT_BYTES", "SnapshotReceiver", "SnapshotSink", "StorageSink"]

DEFAULT_MAX_SNAPSHOT_BYTES = 8 << 30
AWAIT_INSTALL_S = 5.0


class SnapshotSink(Protocol):
    async def stage(self, meta: SnapshotMeta, offset: int, data: bytes) -> None: ...

    async def install(self, meta: SnapshotMeta, keep_entries_after: bool) -> bytes: ...


class StorageSink:
    """`SnapshotSink` over today's Storage protocol, through the storage thread."""

    def __init__(self, storage: Storage, offload: Offload) -> None:
        self._storage, self._offload = storage, offload

    async def stage(self, meta: SnapshotMeta, offset: int, data: bytes) -> None:
        await self._offload.disk(self._storage.write_incoming_chunk, meta, offset, data)

    async def install(self, meta: SnapshotMeta, keep_entries_after: bool) -> bytes:
        return await self._offload.disk(self._storage.install_incoming, meta, keep_entries_after)


class SnapshotReceiver:
    def __init__(
        self,
        sink: SnapshotSink,
        current_term: Callable[[], int],
        deliver: Callable[[list[Message]], Awaitable[None]],
        max_snapshot_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
    ) -> None:
        self._sink = sink
        self._current_term = current_term
        self._deliver = deliver
        self.max_snapshot_bytes = max_snapshot_bytes
        self._lock = trio.Lock()  # chunks of two senders never interleave in staging
        self._transfer: tuple[str, int, int, int] | None = None  # (src, index, term, size)
        self._staged = 0
        self._crc = 0
        # A complete transfer handed to the core, not installed yet: today's
        # storage has one staging area, so a new transfer must not overwrite
        # it before the driver installs it (or, if the core did not want it,
        # until this deadline). Per-transfer staging (the storage rework)
        # makes this unnecessary.
        self._awaiting_install: tuple[SnapshotMeta, float] | None = None

    async def install(self, meta: SnapshotMeta, keep_entries_after: bool) -> bytes:
        """Make the staged snapshot the node's (the driver calls this in its persist step)."""
        async with self._lock:
            self._awaiting_install = None
            return await self._sink.install(meta, keep_entries_after)

    async def chunk(
        self, src: str, offer: SnapshotOffer, offset: int, data: bytes, last: bool, crc: int
    ) -> None:
        """Stage one chunk; ValueError refuses the transfer (the sender reports failure)."""
        msg = offer.msg
        async with self._lock:
            if msg.term < self._current_term():
                raise ValueError("snapshot from a stale term")
            if offer.size > self.max_snapshot_bytes:
                raise ValueError(f"snapshot of {offer.size} bytes is over this node's limit "
                                 f"of {self.max_snapshot_bytes}")  # fmt: skip
            key = (src, msg.meta.index, msg.meta.term, offer.size)
            waiting = self._awaiting_install
            if waiting is not None and trio.current_time() < waiting[1]:
                raise ValueError("a received snapshot is waiting to be installed; retry later")
            if offset == 0:
                self._transfer, self._staged, self._crc = key, 0, 0
            elif key != self._transfer or offset != self._staged:
                self._transfer = None
                raise ValueError(f"chunk at {offset} of a transfer that is not in progress")
            end = offset + len(data)
            if end > offer.size or (last != (end == offer.size)):
                self._transfer = None
                raise ValueError(f"chunk ends at {end}, the snapshot has {offer.size} bytes")
            try:
                await self._sink.stage(msg.meta, offset, data)
            except ValueError:
                self._transfer = None
                raise
            self._staged = end
            self._crc = zlib.crc32(data, self._crc)
            if not last:
                return
            self._transfer = None
            if self._crc != crc:
                raise ValueError("the snapshot's checksum does not match its data")
            self._awaiting_install = (msg.meta, trio.current_time() + AWAIT_INSTALL_S)
        # Whole and intact: the core decides whether to install it.
        await self._deliver([msg])
