"""Reply slots, and the settlement of each proposed write by its own log entry.

A request waits on a one-shot `Slot`; the driver settles it. A proposal is a
batch of writes (one client write, or up to hundreds relayed by a follower)
appended at consecutive indexes in one term. **Each write is settled by its
own entry**, when that index is applied:

- the applied entry has the write's term: it *is* the write -> its result;
- it has another term: another leader's entry took the index, so ours can
  never commit (Log Matching: at most one entry per index is ever committed)
  -> `ProposalDropped` for that write alone.

So a batch that commits only in part answers each write truthfully: the
applied prefix gets its results, the rest 503 (issue 11 #1). The proposal's
slot settles once every write has an outcome, or the proposer stops waiting
(`forget`): the writes still open are then `UnknownOutcome` if appended
(they may yet commit) or `NoQuorum` if never appended (the driver will not
append them: `abandoned`).

Pending writes are keyed by (index, term) and removed by identity: one
proposal's cleanup can never remove another's (a node that led in term t,
lost its uncommitted tail, and leads again in t+2 can have two proposals
for the same index; the old code, keyed by index alone, let the old one's
timeout delete the new one's slot, so a committed write was answered 504).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from trioraft.core import Entry
from trioraft.errors import NoQuorum, ProposalDropped, UnknownOutcome

__all__ = ["UNSET", "PendingWrites", "Proposal", "Slot"]


@dataclass(eq=False)
class Slot:
    """A one-shot reply: settled once, by the driver, with a value or an error."""

    done: trio.Event = field(default_factory=trio.Event)
    value: Any = None
    error: BaseException | None = None

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.value, self.error = value, error
            self.done.set()


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@dataclass(eq=False)
class Proposal:
    """A batch of writes proposed together; `outcomes[k]` is write k's result or error."""

    datas: list[bytes]
    slot: Slot = field(default_factory=Slot)
    index: int = 0  # of the first write, once appended
    term: int = 0
    # Set by the proposer when it gave up before the driver took the proposal
    # from the inbox; the driver must then never append it.
    abandoned: bool = False
    outcomes: list[Any] = field(default_factory=list)
    _open: int = 0

    def __post_init__(self) -> None:
        self.outcomes = [UNSET] * len(self.datas)
        self._open = len(self.datas)

    def settle_one(self, k: int, outcome: Any) -> None:
        if self.outcomes[k] is UNSET:
            self.outcomes[k] = outcome
            self._open -= 1
            if self._open == 0:
                self.slot.settle(self.outcomes)

    def settle_all(self, error: BaseException) -> None:
        """Every write still open gets `error` (e.g. NotLeader: none was appended)."""
        for k in range(len(self.datas)):
            self.settle_one(k, error)

    def give_up(self) -> None:
        """The proposer stops waiting: open writes become unknown, or never-appended."""
        if self.index:
            self.settle_all(UnknownOutcome("the write was proposed but did not commit in time"))
        else:
            self.abandoned = True
            self.settle_all(NoQuorum("the write could not be proposed in time"))


class PendingWrites:
    """Appended writes waiting for their entries to apply, by log index."""

    def __init__(self) -> None:
        self._by_index: dict[int, list[tuple[Proposal, int]]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_index.values())

    def appended(self, proposals: list[Proposal], first: int, term: int) -> None:
        i = first
        for p in proposals:
            p.index, p.term = i, term
            for k in range(len(p.datas)):
                self._by_index.setdefault(i + k, []).append((p, k))
            i += len(p.datas)

    def forget(self, p: Proposal) -> None:
        """Remove exactly `p`'s writes (never another proposal's at the same index)."""
        if not p.index:
            return
        for k in range(len(p.datas)):
            waiting = self._by_index.get(p.index + k)
            if waiting is None:
                continue
            waiting[:] = [(q, j) for q, j in waiting if q is not p]
            if not waiting:
                del self._by_index[p.index + k]

    def applied(self, e: Entry, result: Any) -> None:
        """Entry `e` was applied with `result` (None for a no-op or config entry)."""
        waiting = self._by_index.pop(e.index, None)
        if waiting is None:
            return
        for p, k in waiting:
            if p.term == e.term:
                p.settle_one(k, result)
            else:
                # Another leader's entry took this index: ours was never
                # committed and never will be (Log Matching), so the client
                # may retry.
                p.settle_one(k, ProposalDropped("leadership changed before the write committed"))
