"""The course routes' bridge: a request stepped into the core, its answer sent back in HTTP.

`/raft/request-vote` and `/raft/append-entries` answer synchronously (API.md
§5). The handler puts an `Rpc` into the driver's inbox; the driver steps the
message and, when the core's answer to that sender comes out of a Ready, hands
it to the waiting slot instead of the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trioraft.core import (
    AppendEntries,
    AppendEntriesResponse,
    Message,
    RequestVote,
    RequestVoteResponse,
)
from trioraft.node._replies import Slot

__all__ = ["Rpc", "RpcBridge"]

# Which request type each response answers.
_REQUEST_OF: dict[type, type] = {
    RequestVoteResponse: RequestVote,
    AppendEntriesResponse: AppendEntries,
}


@dataclass(eq=False)
class Rpc:
    """A message from a course JSON route, whose answer goes back in the HTTP response."""

    msg: Message
    slot: Slot = field(default_factory=Slot)


class RpcBridge:
    def __init__(self) -> None:
        self._waiting: dict[tuple[str, type], Rpc] = {}

    def stepped(self, rpc: Rpc) -> None:
        """The driver is about to step rpc.msg: its answer goes to rpc.slot."""
        self._waiting[(rpc.msg.src, type(rpc.msg))] = rpc

    def forget(self, rpc: Rpc) -> None:
        self._waiting.pop((rpc.msg.src, type(rpc.msg)), None)

    def take_answer(self, m: Message) -> bool:
        """If `m` answers a waiting course request, settle it and return True."""
        rpc = self._waiting.pop((m.dst, _REQUEST_OF.get(type(m), type(None))), None)
        if rpc is None:
            return False
        rpc.slot.settle(m)
        return True
