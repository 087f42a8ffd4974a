"""Taking local snapshots: when to take one, and writing it without stalling the loop."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from trioraft.config import NodeConfig
from trioraft.core import RaftCore, SnapshotMeta
from trioraft.kv import KVStateMachine
from trioraft.node._offload import Offload
from trioraft.storage import Storage

__all__ = ["Snapshotter"]

log = logging.getLogger("trioraft.node")


class Snapshotter:
    """Decides when to snapshot (entries or bytes since the last one) and saves it.

    `call_in_driver(fn)` runs fn in the driver task (the only one that may
    touch the core): that is where the in-memory log is compacted.
    """

    def __init__(
        self,
        config: NodeConfig,
        storage: Storage,
        offload: Offload,
        stats: dict[str, Any],
        spawn: Callable[..., None],
        call_in_driver: Callable[[Callable[[], None]], Awaitable[None]],
    ) -> None:
        self._config = config
        self._storage = storage
        self._offload = offload
        self._stats = stats
        self._spawn = spawn
        self._call_in_driver = call_in_driver
        self.snapshotting = False
        self.bytes_since_snapshot = 0

    def maybe_snapshot(self, core: RaftCore, kv: KVStateMachine) -> None:
        """Snapshot at a threshold of entries or bytes since the last snapshot."""
        if self.snapshotting or (
            kv.applied_index - core.log.snapshot.index < self._config.snapshot_entries
            and self.bytes_since_snapshot < self._config.snapshot_bytes
        ):
            return
        try:
            # The configuration in force at the applied index, not the latest one.
            meta = core.snapshot_meta(kv.applied_index)
        except ValueError:
            return
        # Copy the state now (cheap); encode and write it off the event loop,
        # so clients are not stalled by a large snapshot.
        encode = kv.snapshot_later()
        self.snapshotting = True
        self.bytes_since_snapshot = 0
        self._spawn(self._write_snapshot, core, meta, encode)

    async def _write_snapshot(
        self, core: RaftCore, meta: SnapshotMeta, encode: Callable[[], bytes]
    ) -> None:
        node_id = self._config.id
        try:
            t0 = trio.current_time()
            data = await self._offload.cpu(encode)
            # A snapshot installed from the leader meanwhile may have overtaken
            # this one; storage refuses an older snapshot, and that is right.
            if meta.index <= core.log.snapshot.index:
                self.snapshotting = False
                return
            try:
                await self._offload.disk(self._storage.save_snapshot, meta, data)
            except ValueError as exc:  # overtaken while waiting for the disk
                log.info("node=%s local snapshot at %d dropped: %s", node_id, meta.index, exc)
                self.snapshotting = False
                return
            self._stats["snapshots"] += 1
            self._stats["last_snapshot_bytes"] = len(data)
            self._stats["last_snapshot_ms"] = round((trio.current_time() - t0) * 1000)
            log.info("node=%s snapshot index=%d bytes=%d ms=%d", node_id, meta.index,
                     len(data), self._stats["last_snapshot_ms"])

            def compact() -> None:
                # The core keeps a catch-up tail and names the compaction
                # point; this storage already compacted to meta.index itself.
                core.snapshot_taken(meta)
                self.snapshotting = False

            await self._call_in_driver(compact)
        except BaseException:
            self.snapshotting = False
            raise
