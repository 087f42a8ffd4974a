"""Taking local snapshots: when to take one, and writing it without stalling the loop.

The sequence (docs/storage.md, "Taking a snapshot"), each step durable
before the next, so a crash anywhere leaves a consistent data dir:

1. `meta = core.snapshot_meta(applied)` and `kv.snapshot_chunks()`: the
   state captured in the driver task (cheap), encoded later a frame at a
   time, in slices of a couple of milliseconds on the loop, while entries
   keep being applied in between (`Offload.sliced`);
2. `storage.save_snapshot(meta, chunks, compact_to=0)`: the snapshot file,
   written from the encoded chunks (never joined into one copy), becomes
   the newest snapshot; the log keeps every entry. A crash after this
   restarts from the new snapshot with a longer tail;
3. in the driver task, `point = core.snapshot_taken(meta)`: the core now
   sends this snapshot to followers that need it (storage can open a
   reader on it) and drops its in-memory entries up to the compaction
   point it returns (the catch-up tail stays);
4. `storage.compact(point)`: stable storage drops the same entries. A crash
   before this just keeps more entries; restart rebuilds the core from the
   stored compaction point, so the tail survives restarts either way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio

from trioraft.config import NodeConfig
from trioraft.core import RaftCore, SnapshotMeta
from trioraft.kv import KVStateMachine
from trioraft.logs import event
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

    def due_at(self, core: RaftCore) -> int:
        """The applied index at which this node takes its next snapshot by entries.

        Every `snapshot_entries` (n) entries on average, but staggered: a
        node snapshots at indexes congruent to its phase modulo n, where the
        phase is its rank among the members' ids times n / members. The
        members of a cluster apply the same entries at nearly the same time,
        so without it they would all encode and write a snapshot at once,
        and on a small machine the CPU burst of all of them together stalled
        their loops (issue 11 #4, measured with a million keys); staggered,
        one at a time does. The gap between two snapshots stays between n/2
        and 3n/2 entries; the member ranked first snapshots at multiples of n.
        """
        n = self._config.snapshot_entries
        ids = sorted(core.configuration.ids)
        rank = ids.index(core.id) if core.id in ids else 0
        phase = rank * n // max(1, len(ids))
        last = core.log.snapshot.index
        due = last + n // 2
        due += (phase - due) % n
        return max(due, last + 1)

    def maybe_snapshot(self, core: RaftCore, kv: KVStateMachine) -> None:
        """Snapshot at a threshold of entries (`due_at`) or bytes since the last snapshot."""
        if self.snapshotting or (
            kv.applied_index < self.due_at(core)
            and self.bytes_since_snapshot < self._config.snapshot_bytes
        ):
            return
        try:
            # The configuration in force at the applied index, not the latest one.
            meta = core.snapshot_meta(kv.applied_index)
        except ValueError:
            return
        # Capture the state now (cheap); encode it in short slices and write it
        # off the event loop, so clients are not stalled by a large snapshot.
        chunks = kv.snapshot_chunks()
        self.snapshotting = True
        self.bytes_since_snapshot = 0
        self._spawn(self._write_snapshot, core, meta, chunks)

    async def _maintenance(self, fn: Callable[..., None], *args: Any) -> None:
        """A long storage call (a snapshot's file, compaction): in a thread of its own
        when the storage allows it (`concurrent_maintenance`), so log writes are not
        held up behind it (issue 11 #4); else through the storage thread."""
        if self._storage.concurrent_maintenance and not self._offload.inline:
            await self._offload.io(fn, *args)
        else:
            await self._offload.disk(fn, *args)

    async def _write_snapshot(
        self, core: RaftCore, meta: SnapshotMeta, chunks: Iterator[bytes]
    ) -> None:
        try:
            t0 = trio.current_time()
            # Encoded frame by frame on the loop, in slices (never in a thread:
            # see Offload.sliced); kept as a list of frames (storage writes them
            # one after the other: no joined copy).
            data: list[bytes] = await self._offload.sliced(chunks)
            size = sum(map(len, data))
            # A snapshot installed from the leader meanwhile may have overtaken
            # this one; storage refuses an older snapshot, and that is right.
            if meta.index <= core.log.snapshot.index:
                return
            try:
                await self._maintenance(self._storage.save_snapshot, meta, data, 0)
            except ValueError as exc:  # overtaken while waiting for the disk
                log.info("local snapshot at %d dropped: %s", meta.index, exc)
                return
            del data
            point: list[tuple[int, int]] = []
            done = trio.Event()

            def taken() -> None:
                # Driver task: the core records the snapshot and names the
                # compaction point (it keeps a catch-up tail before it).
                point.append(core.snapshot_taken(meta))
                done.set()

            await self._call_in_driver(taken)
            await done.wait()
            compacted = point[0][0]
            await self._maintenance(self._storage.compact, compacted)
            ms = round((trio.current_time() - t0) * 1000)
            self._stats["snapshots"] += 1
            self._stats["last_snapshot_bytes"] = size
            self._stats["last_snapshot_ms"] = ms
            event(log, "snapshot_taken", index=meta.index, term=meta.term, bytes=size, ms=ms,
                  compacted=compacted)  # fmt: skip
        finally:
            self.snapshotting = False
