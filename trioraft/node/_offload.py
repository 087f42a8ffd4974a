"""Blocking work off the event loop: storage calls (one at a time), reads of an open
snapshot (`io`, any number at once) and CPU-heavy calls; and long Python
computations *on* the loop, in slices (`sliced`).

Storage calls block on fsync, so they run in a worker thread, serialised by a
capacity limiter of one (the Storage protocol promises nothing about
concurrent calls). In tests on in-memory storage under trio's MockClock they
may run inline instead: with autojump, virtual time may jump (and elections
fire) while the loop waits for a worker thread, which would make a "disk
write" take arbitrary virtual time. Never inline for real disks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import trio
import trio.lowlevel

__all__ = ["SLICE", "Offload"]

T = TypeVar("T")

# The longest a sliced computation runs before it lets the loop run other tasks.
SLICE = 0.002


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
        """Blocking work that releases the GIL, off the loop (for Python work, `sliced`)."""
        if self.inline:
            return await self._run_inline(fn, *args)
        return await trio.to_thread.run_sync(fn, *args)

    async def sliced(self, steps: Iterator[T], budget: float = SLICE) -> list[T]:
        """Run a computation given as short steps in this task, in slices of `budget`.

        For pure-Python work (encoding or decoding a snapshot): a worker
        thread gives it no parallelism, since it holds the GIL, and costs
        the loop far more than the work itself. After each system call that
        released the GIL (every send, recv and epoll wait), the loop thread
        waits for the busy thread to give the GIL back, up to the switch
        interval (5 ms) each time; measured with a million-key snapshot
        encoded in a thread, the loop went 150-260 ms at a time without
        running, and followers started elections (issue 11 #4, the stall
        tracer in `_looplag` named the encoder). Here the loop runs the steps
        itself and yields to every other task at least every `budget`
        seconds, so no stall is longer than `budget` plus one step (a
        snapshot frame: under a millisecond).

        Inline (tests on MockClock) it yields after every step instead, so a
        run does not depend on how fast the machine is. Cancellable between
        steps; the steps' results, in order.
        """
        out: list[T] = []
        clock = time.perf_counter
        deadline = clock() + budget
        for item in steps:
            out.append(item)
            if self.inline or clock() >= deadline:
                await trio.lowlevel.checkpoint()
                deadline = clock() + budget
        return out

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking I/O that needs no storage lock (`SnapshotReader.read`, a storage's
        concurrent `save_snapshot`): in a thread of its own, so a transfer or a
        snapshot's file never waits behind an fsync, nor an fsync behind them."""
        return await self.cpu(fn, *args)
