"""Write forwarding: a follower relays client writes to the leader, batched.

Outcomes are definite where they can be: a write never handed to the network
is `NoLeader` (safe to retry); one that was is `UnknownOutcome` unless the
leader's answer arrived.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from trioraft.errors import NoLeader, Overloaded, ShuttingDown, UnknownOutcome
from trioraft.kv import decode_results
from trioraft.node._replies import Slot
from trioraft.transport import PeerLink

__all__ = ["Forwarder"]

FORWARD_BATCH = 512  # writes relayed to the leader in one request
FORWARD_INFLIGHT = 4  # forwarded batches in flight at once
QUEUE_SIZE = 10_000


@dataclass(eq=False)
class _Forward:
    """A write this follower relays to the leader, batched with others."""

    data: bytes
    slot: Slot = field(default_factory=Slot)
    sent: bool = False  # handed to the network: from then on the outcome may be unknown
    abandoned: bool = False  # the client gave up before it was sent: never send it


class Forwarder:
    def __init__(
        self,
        node_id: str,
        request_timeout: float,
        leader_wait: float,
        links: dict[str, PeerLink],
        leader_id: Callable[[], str | None],
        wait_for_leader: Callable[[float], Awaitable[str | None]],
        propose: Callable[[list[bytes]], Awaitable[list[Any]]],
    ) -> None:
        self._id = node_id
        self._timeout = request_timeout
        self._leader_wait = leader_wait
        self._links = links
        self._leader_id = leader_id
        self._wait_for_leader = wait_for_leader
        self._propose = propose
        self._send, self._recv = trio.open_memory_channel[_Forward](QUEUE_SIZE)
        self._inflight = trio.Semaphore(FORWARD_INFLIGHT)
        self.stopping = False

    async def forward(self, data: bytes, timeout: float | None = None) -> Any:
        """Relay one write to the leader (batched with concurrent ones); its result.

        Raises NoLeader (not sent, or refused before being appended: safe to
        retry), ProposalDropped, NoQuorum, or UnknownOutcome.
        """
        if self.stopping:
            raise ShuttingDown("the node is shutting down")
        f = _Forward(data)
        try:
            self._send.send_nowait(f)
        except trio.WouldBlock:
            raise Overloaded("the node's forwarding queue is full") from None
        with trio.move_on_after(timeout or self._timeout):
            await f.slot.done.wait()
        if not f.slot.done.is_set():
            if not f.sent:
                f.abandoned = True
                raise NoLeader("no leader could be reached in time")
            raise UnknownOutcome("the leader did not answer in time")
        if f.slot.error is not None:
            raise f.slot.error
        return f.slot.value

    async def run(self, nursery: trio.Nursery) -> None:
        """Drain forwarded writes into batches, several batches in flight."""
        async for first in self._recv:
            batch = [first]
            while len(batch) < FORWARD_BATCH:
                try:
                    batch.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            batch = [f for f in batch if not f.abandoned]
            if not batch:
                continue
            await self._inflight.acquire()
            nursery.start_soon(self._forward_batch, batch)

    async def _forward_batch(self, batch: list[_Forward]) -> None:
        try:
            leader = self._leader_id()
            if leader is None or leader == self._id:
                leader = await self._wait_for_leader(self._leader_wait)
            batch = [f for f in batch if not f.abandoned]
            if leader == self._id:
                # We became the leader meanwhile: propose directly.
                for f in batch:
                    f.sent = True
                try:
                    results = await self._propose([f.data for f in batch])
                except Exception as exc:  # settle every waiter with the same error
                    for f in batch:
                        f.slot.settle(error=exc)
                    return
                for f, r in zip(batch, results, strict=True):
                    f.slot.settle(r)
                return
            link = self._links.get(leader) if leader else None
            if link is None:
                for f in batch:
                    f.slot.settle(error=NoLeader("no leader is known"))
                return
            for f in batch:
                f.sent = True
            try:
                raw = await link.propose([f.data for f in batch], self._timeout)
                results = decode_results(raw)
                if len(results) != len(batch):
                    raise UnknownOutcome("the leader answered a different number of results")
            except Exception as exc:
                for f in batch:
                    f.slot.settle(error=exc)
                return
            for f, r in zip(batch, results, strict=True):
                f.slot.settle(r)
        finally:
            self._inflight.release()
