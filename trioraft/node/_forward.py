"""Write forwarding: a follower relays client writes to the leader over the peer stream.

Concurrent writes are batched (up to `FORWARD_BATCH` writes or
`FORWARD_BATCH_BYTES`), a few batches in flight. Each write gets its own
outcome, as the leader reports it (one code per write):

- never handed to the stream (no leader, no stream, still queued when the
  stream broke or the client's time ran out) -> `NoLeader`: safe to retry;
- handed to the stream and no answer (the stream broke, the leader went
  silent) -> `UnknownOutcome`;
- answered: applied -> its result; overwritten by another leader ->
  `ProposalDropped`; never appended -> `NoLeader`/`NoQuorum`/...
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from trioraft.errors import (
    NoLeader,
    NoQuorum,
    Overloaded,
    ProposalDropped,
    ShuttingDown,
    UnknownOutcome,
)
from trioraft.kv import InvalidCommand, decode_results
from trioraft.node._replies import Slot
from trioraft.transport import RelayAnswer, RelayCode, Transport

__all__ = ["Forwarder", "outcomes_from_answer"]

FORWARD_BATCH = 512  # writes relayed to the leader in one request
FORWARD_BATCH_BYTES = 4 << 20  # ... or this many bytes of commands (one bigger write goes alone)
FORWARD_INFLIGHT = 4  # forwarded batches in flight at once
QUEUE_SIZE = 10_000

_ERRORS: dict[int, Callable[[], Exception]] = {
    RelayCode.DROPPED: lambda: ProposalDropped("leadership changed before the write committed"),
    RelayCode.NOT_LEADER: lambda: NoLeader("the node we took for the leader does not lead"),
    RelayCode.NO_QUORUM: lambda: NoQuorum("the leader could not propose the write in time"),
    RelayCode.UNKNOWN: lambda: UnknownOutcome("the write did not commit in time on the leader"),
    RelayCode.INVALID: lambda: InvalidCommand("the leader refused the write as malformed"),
    RelayCode.OVERLOADED: lambda: Overloaded("the leader is overloaded"),
    RelayCode.SHUTTING_DOWN: lambda: ShuttingDown("the leader is shutting down"),
}


def outcomes_from_answer(answer: RelayAnswer) -> list[Any]:
    """Per write: its result (code OK) or the error its code stands for."""
    try:
        results = iter(decode_results(answer.results) if answer.results else [])
    except ValueError:
        return [UnknownOutcome("the leader's answer could not be decoded")] * len(answer.codes)
    out: list[Any] = []
    for code in answer.codes:
        if code == RelayCode.OK:
            out.append(next(results, UnknownOutcome("the leader's answer lacks a result")))
        else:
            make = _ERRORS.get(code)
            out.append(make() if make else UnknownOutcome(f"unknown outcome code {code}"))
    return out


@dataclass(eq=False)
class _Forward:
    """A write this follower relays to the leader, batched with others."""

    data: bytes
    deadline: float
    slot: Slot = field(default_factory=Slot)
    abandoned: bool = False  # the client gave up before it was handed on: never send it
    handed: bool = False  # handed to the stream (or proposed here): the outcome may be unknown


class Forwarder:
    def __init__(
        self,
        node_id: str,
        request_timeout: float,
        leader_wait: float,
        transport: Transport,
        leader_id: Callable[[], str | None],
        wait_for_leader: Callable[[float], Awaitable[str | None]],
        propose_each: Callable[[list[bytes], float], Awaitable[list[Any]]],
    ) -> None:
        self._id = node_id
        self._timeout = request_timeout
        self._leader_wait = leader_wait
        self._transport = transport
        self._leader_id = leader_id
        self._wait_for_leader = wait_for_leader
        self._propose_each = propose_each
        self._send, self._recv = trio.open_memory_channel[_Forward](QUEUE_SIZE)
        self._inflight = trio.Semaphore(FORWARD_INFLIGHT)
        self.stopping = False

    async def forward(self, data: bytes, timeout: float | None = None) -> Any:
        """Relay one write to the leader (batched with concurrent ones); its result."""
        if self.stopping:
            raise ShuttingDown("the node is shutting down")
        f = _Forward(data, trio.current_time() + (timeout or self._timeout))
        try:
            self._send.send_nowait(f)
        except trio.WouldBlock:
            raise Overloaded("the node's forwarding queue is full") from None
        with trio.move_on_at(f.deadline):
            await f.slot.done.wait()
        if not f.slot.done.is_set():
            if not f.handed:
                f.abandoned = True  # the batch drops it before handing the others on
                raise NoLeader("no leader could be reached in time")
            raise UnknownOutcome("the leader did not answer in time")
        if f.slot.error is not None:
            raise f.slot.error
        return f.slot.value

    async def run(self, nursery: trio.Nursery) -> None:
        """Drain forwarded writes into batches, several batches in flight."""
        async for first in self._recv:
            batch = [first]
            size = len(first.data)
            while len(batch) < FORWARD_BATCH and size < FORWARD_BATCH_BYTES:
                try:
                    f = self._recv.receive_nowait()
                except trio.WouldBlock:
                    break
                if size + len(f.data) > FORWARD_BATCH_BYTES:
                    # Too big for this batch: it starts the next one.
                    batch = [b for b in batch if not b.abandoned]
                    if batch:
                        await self._launch(nursery, batch)
                    batch, size = [f], len(f.data)
                    continue
                batch.append(f)
                size += len(f.data)
            batch = [f for f in batch if not f.abandoned]
            if batch:
                await self._launch(nursery, batch)

    async def _launch(self, nursery: trio.Nursery, batch: list[_Forward]) -> None:
        await self._inflight.acquire()
        nursery.start_soon(self._forward_batch, batch)

    async def _forward_batch(self, batch: list[_Forward]) -> None:
        try:
            leader = self._leader_id()
            if leader is None:
                leader = await self._wait_for_leader(self._leader_wait)
            # Writes whose client gave up meanwhile were answered NoLeader:
            # they must never leave this node now.
            batch = [f for f in batch if not f.abandoned]
            if not batch:
                return
            for f in batch:
                f.handed = True
            remaining = max(0.001, max(f.deadline for f in batch) - trio.current_time())
            datas = [f.data for f in batch]
            outcomes: list[Any]
            if leader is None:
                outcomes = [NoLeader("no leader is known")] * len(batch)
            elif leader == self._id:
                # We lead (now): propose directly.
                outcomes = await self._propose_each(datas, remaining)
            else:
                try:
                    answer = await self._transport.relay_writes(leader, datas, remaining)
                except (NoLeader, UnknownOutcome) as exc:
                    outcomes = [exc] * len(batch)
                else:
                    outcomes = outcomes_from_answer(answer)
            for f, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    f.slot.settle(error=outcome)
                else:
                    f.slot.settle(outcome)
        finally:
            for f in batch:  # never leave a waiter hanging, whatever happened
                f.slot.settle(error=UnknownOutcome("the relayed write was interrupted")
                              if f.handed else NoLeader("the relayed write was not sent"))
            self._inflight.release()
