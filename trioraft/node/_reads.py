"""Linearizable reads (ReadIndex) waiting for their read index, and waiters on apply.

Read request ids (`ctx`) must never repeat across incarnations of a node: a
follower's ReadIndexRequest may be answered after the node restarted (the
leader answers on whatever stream it has to the node then), and an answer
matched on a reused id would hand a *new* read an *old* read index -- a stale
read. So each incarnation starts its ids at a random point of a 62-bit space
(two incarnations' ranges overlap with probability about n / 2**62 for n
reads), and ids still fit the wire's 63-bit range after 2**62 reads.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

import trio

from trioraft.errors import NoLeader
from trioraft.node._replies import Slot

__all__ = ["Read", "Reads"]


@dataclass(eq=False)
class Read:
    ctx: int
    slot: Slot = field(default_factory=Slot)


class Reads:
    """Reads awaiting their read index (by ctx), and tasks awaiting an applied index."""

    def __init__(self) -> None:
        # From the OS's randomness, not the node's seeded rng: ids never
        # influence the protocol, and seeded incarnations must differ anyway.
        self._ctx = itertools.count(random.SystemRandom().getrandbits(62) + 1)
        self._reads: dict[int, Read] = {}
        self._applied_waiters: list[tuple[int, int, trio.Event]] = []
        self._waiter_seq = itertools.count()

    def new(self) -> Read:
        return Read(next(self._ctx))

    def started(self, r: Read) -> None:
        self._reads[r.ctx] = r

    def forget(self, r: Read) -> None:
        self._reads.pop(r.ctx, None)

    def answered(self, read_states: list[tuple[int, int]]) -> None:
        for ctx, index in read_states:
            r = self._reads.pop(ctx, None)
            if r is None:
                continue
            if index < 0:
                r.slot.settle(error=NoLeader("leadership changed during the read"))
            else:
                r.slot.settle(index)

    async def wait_applied(self, index: int, applied: int) -> None:
        if applied >= index:
            return
        ev = trio.Event()
        heapq.heappush(self._applied_waiters, (index, next(self._waiter_seq), ev))
        await ev.wait()

    def wake_applied(self, applied: int) -> None:
        w = self._applied_waiters
        while w and w[0][0] <= applied:
            heapq.heappop(w)[2].set()
