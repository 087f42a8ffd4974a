"""Blocking work off the event loop: storage calls (one at a time), reads of an open
snapshot (`io`, any number at once) and CPU-heavy calls.

Storage calls block on fsync, so they run in a worker thread, serialised by a
capacity limiter of one (the Storage protocol promises nothing about
concurrent calls). In tests on in-memory storage under trio's MockClock they
may run inline instead: with autojump, virtual time may jump (and elections
fire) while the loop waits for a worker thread, which would make a "disk
write" take arbitrary virtual time. Never inline for real disks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

__all__ = ["Offload"]

T = TypeVar("T")


class Offload:
    def __init__(self, *, inline: bool) -> None:
        self.inline = inline
        self._disk = trio.CapacityLimiter(1)

    async def _run_inline(self, fn: Callable[..., T], *args: Any) -> T:
        # Same cancellation semantics as to_thread.run_sync (not abandoned on
        # cancel): a cancel is honoured before the call, never after it has
        # started, so a started write always completes and reports back.
        await trio.lowlevel.checkpoint_if_cancelled()
        result = fn(*args)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    async def disk(self, fn: Callable[..., T], *args: Any) -> T:
        """A storage call: in the storage thread, one call at a time."""
        if self.inline:
            return await self._run_inline(fn, *args)
        return await trio.to_thread.run_sync(fn, *args, limiter=self._disk)

    async def cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """CPU-heavy work (encoding or restoring a snapshot) off the loop."""
        if self.inline:
            return await self._run_inline(fn, *args)
        return await trio.to_thread.run_sync(fn, *args)

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """A blocking read that needs no storage lock (`SnapshotReader.read`): in a
        thread of its own, so a transfer never waits behind an fsync, nor an fsync
        behind a transfer."""
        return await self.cpu(fn, *args)
