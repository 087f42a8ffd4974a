"""Linearizable reads (ReadIndex) waiting for their read index, and waiters on apply.

Read request ids (`ctx`) must never repeat across incarnations of a node: a
follower's ReadIndexRequest may be answered after the node restarted (the
leader answers on whatever stream it has to the node then), and an answer
matched on a reused id would hand a *new* read an *old* read index -- a stale
read. So each incarnation starts its ids at a random point of a 62-bit space
(two incarnations' ranges overlap with probability about n / 2**62 for n
reads), and ids still fit the wire's 63-bit range after 2**62 reads.

The core refuses a read with index -1 for three reasons: the leadership it
relied on changed (a new term or leader), the read was not confirmed within
`read_timeout` (a lost request or answer, no heartbeat quorum), or too many
reads were pending. Each read remembers the term and leader it started under
and the driver's turn, so its error says which: `NoLeader` ("leadership
changed during the read") only if term or leader did change; `Overloaded` if
it was refused in the very turn it was submitted (the pending-reads bound);
`NoQuorum` otherwise (not confirmed in time). All three mean "not served".
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

import trio

from trioraft.errors import NoLeader, NoQuorum, Overloaded
from trioraft.node._replies import Slot

__all__ = ["Read", "Reads"]


@dataclass(eq=False)
class Read:
    ctx: int
    slot: Slot = field(default_factory=Slot)
    # Where the read started: the core's (term, leader) and the driver's turn.
    term: int = 0
    leader: str | None = None
    turn: int = 0


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

    def started(self, r: Read, term: int, leader: str | None, turn: int) -> None:
        r.term, r.leader, r.turn = term, leader, turn
        self._reads[r.ctx] = r

    def forget(self, r: Read) -> None:
        self._reads.pop(r.ctx, None)

    def answered(
        self, read_states: list[tuple[int, int]], term: int, leader: str | None, turn: int
    ) -> None:
        """The core's answers (ctx, read index or -1), seen at (term, leader, turn)."""
        for ctx, index in read_states:
            r = self._reads.pop(ctx, None)
            if r is None:
                continue
            if index >= 0:
                r.slot.settle(index)
            elif (r.term, r.leader) != (term, leader):
                r.slot.settle(error=NoLeader("leadership changed during the read"))
            elif r.turn == turn:
                r.slot.settle(error=Overloaded("too many linearizable reads are pending"))
            else:
                r.slot.settle(error=NoQuorum(
                    "the leader could not confirm its leadership for the read in time"))

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
