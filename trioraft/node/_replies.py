"""Reply slots and the settlement of proposals by their log entries.

A request waits on a one-shot `Slot`; the driver settles it. A proposal is
settled when its entries are *applied*: same term -> its results; another
term at its index -> dropped (Log Matching: ours can then never commit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from trioraft.core import Entry
from trioraft.errors import ProposalDropped

__all__ = ["PendingWrites", "Proposal", "Slot"]


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


@dataclass(eq=False)
class Proposal:
    datas: list[bytes]
    slot: Slot = field(default_factory=Slot)
    index: int = 0  # set once appended
    term: int = 0
    # Set by propose() when it gave up before the driver took the proposal
    # from the inbox; the driver must then never append it (see propose()).
    abandoned: bool = False


class PendingWrites:
    """Proposals appended to the log, by log index, until their entries apply."""

    def __init__(self) -> None:
        self._by_index: dict[int, Proposal] = {}

    def appended(self, proposals: list[Proposal], first: int, term: int) -> None:
        i = first
        for p in proposals:
            p.index, p.term = i, term
            for k in range(len(p.datas)):
                self._by_index[i + k] = p
            i += len(p.datas)

    def forget(self, p: Proposal) -> None:
        """The proposer gave up waiting."""
        for k in range(len(p.datas)):
            self._by_index.pop(p.index + k, None)

    def applied(self, e: Entry, result: Any) -> None:
        p = self._by_index.pop(e.index, None)
        if p is None:
            return
        if e.term != p.term:
            # Another leader's entry took this index: ours was never committed
            # and never will be (Log Matching), so the client may retry.
            p.slot.settle(error=ProposalDropped("leadership changed before the write committed"))
            return
        results: list[Any] = p.slot.value or []
        results.append(result)
        if len(results) == len(p.datas):
            p.slot.settle(results)
        else:
            p.slot.value = results
