"""An in-process network for tests: the `Transport` contract, with fault knobs.

    net = MemoryNetwork(random.Random(seed))
    transport = net.transport("n1", ["n2", "n3"])   # what RaftNode("n1") is given
    net.partition({"n1"}, {"n2", "n3"}); net.heal()
    net.drop_rate = 0.1; net.delay = 0.02
    net.slow_link("n1", "n3", delay=0.03, bandwidth=500_000)  # one slow follower

Faults act per direction (src, dst), as on a real network: a blocked or
unlucky message is lost (Raft resends); a delayed one arrives `delay`
seconds later, in order. A slow link (`slow_link` / `set_link`) adds its own
latency and a bandwidth (bytes per second): a message or snapshot chunk of n
bytes takes n / bandwidth seconds more, and Raft messages on a link stay in
order. Raft messages and snapshot chunks are timed separately (the stream
transport lets Raft traffic pass a transfer), so bandwidth bounds each.
Relayed writes and snapshot chunks keep the stream transport's outcomes:
not delivered -> `NoLeader` / `LinkError`; delivered and the answer lost (a
partition meanwhile, the leader crashed, a timeout) -> `UnknownOutcome`.
A node's transport is on the network only while its `run()` runs: a crashed
node (its tasks cancelled) receives nothing, and the requests it was serving
end with it.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from trioraft.core import AppendEntries, Message
from trioraft.errors import NoLeader, UnknownOutcome
from trioraft.transport._protocol import (
    ChunkReader,
    Inbound,
    LinkError,
    RelayAnswer,
    SnapshotOffer,
)

__all__ = ["Link", "MemoryNetwork", "MemoryTransport"]

SNAPSHOT_CHUNK = 256 << 10


@dataclass(frozen=True, slots=True)
class Link:
    """One direction's extra latency (seconds) and bandwidth (bytes/s, None: unlimited)."""

    delay: float = 0.0
    bandwidth: float | None = None

    def transit(self, nbytes: int) -> float:
        """Seconds this link adds to a message of `nbytes`."""
        return self.delay + (nbytes / self.bandwidth if self.bandwidth else 0.0)


def message_size(msg: Message) -> int:
    """About what `msg` takes on the wire (for bandwidth limits)."""
    if isinstance(msg, AppendEntries):
        return 64 + sum(16 + len(e.data) for e in msg.entries)
    return 64


class MemoryNetwork:
    """An in-process network between nodes, with fault knobs for tests."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.nodes: dict[str, MemoryTransport] = {}  # the running ones
        self.blocked: set[tuple[str, str]] = set()
        self.drop_rate = 0.0
        self.delay = 0.0  # seconds added to each delivery
        self.rng = rng or random.Random(0)
        # A test's own rule: a Raft message for which it returns False is lost.
        self.filter: Callable[[Message], bool] | None = None
        self.links: dict[tuple[str, str], Link] = {}  # slow links, per direction

    def set_link(
        self, src: str, dst: str, delay: float = 0.0, bandwidth: float | None = None
    ) -> None:
        """Give the direction src -> dst extra latency and a bandwidth limit."""
        if delay < 0 or (bandwidth is not None and bandwidth <= 0):
            raise ValueError("a link's delay must be >= 0 and its bandwidth > 0")
        self.links[(src, dst)] = Link(delay, bandwidth)

    def slow_link(self, a: str, b: str, delay: float = 0.0, bandwidth: float | None = None) -> None:
        """`set_link` both ways between a and b."""
        self.set_link(a, b, delay, bandwidth)
        self.set_link(b, a, delay, bandwidth)

    def link(self, src: str, dst: str) -> Link:
        return self.links.get((src, dst), _NO_LINK)

    def transit(self, src: str, dst: str, nbytes: int) -> float:
        """Seconds a message of `nbytes` from src to dst spends on the network."""
        return self.delay + self.link(src, dst).transit(nbytes)

    def transport(self, member_id: str, peers: Iterable[str]) -> MemoryTransport:
        return MemoryTransport(self, member_id, peers)

    def partition(self, *groups: set[str]) -> None:
        """Cut every link between different groups."""
        self.blocked = {
            (a, b) for g in groups for h in groups if g is not h for a in g for b in h
        }

    def isolate(self, node_id: str) -> None:
        others = {n for t in self.nodes.values() for n in (t.id, *t.peers)} - {node_id}
        self.partition({node_id}, others)

    def heal(self) -> None:
        self.blocked = set()

    def reachable(self, src: str, dst: str) -> MemoryTransport | None:
        """The transport of `dst` if a message from `src` gets there now."""
        if (src, dst) in self.blocked:
            return None
        return self.nodes.get(dst)

    def lost(self) -> bool:
        return self.drop_rate > 0 and self.rng.random() < self.drop_rate


_NO_LINK = Link()


class MemoryTransport:
    def __init__(self, net: MemoryNetwork, member_id: str, peers: Iterable[str]) -> None:
        self._net = net
        self.id = member_id
        self.peers: set[str] = set(peers) - {member_id}
        self._inbound: Inbound | None = None
        self._nursery: trio.Nursery | None = None
        self.stopped = trio.Event()
        # Delayed deliveries, in order, per destination.
        self._delayed: dict[str, deque[tuple[float, Message]]] = {}
        self._delay_wake: dict[str, trio.Event] = {}

    # ================================================================ lifecycle
    async def run(
        self, inbound: Inbound, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self._inbound = inbound
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._net.nodes[self.id] = self
                task_status.started()
                await trio.sleep_forever()
        finally:
            if self._net.nodes.get(self.id) is self:
                del self._net.nodes[self.id]
            self._nursery = None
            self.stopped.set()

    def add_peer(self, member_id: str, url: str) -> None:
        if member_id != self.id:
            self.peers.add(member_id)

    def remove_peer(self, member_id: str) -> None:
        self.peers.discard(member_id)

    def status(self) -> dict[str, Any]:
        return {p: {"connected": self._net.reachable(self.id, p) is not None}
                for p in sorted(self.peers)}  # fmt: skip

    def peer_name(self, member_id: str) -> str | None:
        return member_id if member_id in self.peers else None  # in-process: id == name

    # ================================================================ messages
    def _target(self, dst: str) -> MemoryTransport | None:
        if dst not in self.peers or self._nursery is None:
            return None
        target = self._net.reachable(self.id, dst)
        if target is None or self.id not in target.peers or target._inbound is None:
            return None
        return target

    def send(self, msg: Message) -> None:
        if self._target(msg.dst) is None or self._net.lost():
            return
        if self._net.filter is not None and not self._net.filter(msg):
            return
        transit = self._net.transit(self.id, msg.dst, message_size(msg))
        queue = self._delayed.setdefault(msg.dst, deque())
        if not transit and not queue:
            self._deliver(msg)
            return
        due = trio.current_time() + transit
        if queue:
            due = max(due, queue[-1][0])  # in order on a link, like a stream
        queue.append((due, msg))
        if msg.dst not in self._delay_wake:
            assert self._nursery is not None
            self._delay_wake[msg.dst] = trio.Event()
            self._nursery.start_soon(self._delay_task, msg.dst)
        self._delay_wake[msg.dst].set()

    def _deliver(self, msg: Message) -> None:
        target = self._target(msg.dst)  # checked again on arrival (a partition meanwhile)
        if target is not None and target._inbound is not None:
            target._inbound.deliver(self.id, [msg])

    async def _delay_task(self, dst: str) -> None:
        queue = self._delayed[dst]
        while True:
            while not queue:
                self._delay_wake[dst] = trio.Event()
                await self._delay_wake[dst].wait()
            due, msg = queue[0]
            await trio.sleep_until(due)
            queue.popleft()
            self._deliver(msg)

    # ================================================================ requests
    async def _hop(self, dst: str, nbytes: int = 64, back: bool = False) -> None:
        src, dst = (dst, self.id) if back else (self.id, dst)
        transit = self._net.transit(src, dst, nbytes)
        if transit:
            await trio.sleep(transit)

    async def _call(
        self, target: MemoryTransport, fn: Callable[[Inbound], Awaitable[Any]], timeout: float
    ) -> tuple[bool, Any]:
        """Run fn in the target's tasks (it dies if the target crashes); (answered, value)."""
        result: list[Any] = []
        failure: list[BaseException] = []
        done = trio.Event()

        async def serve() -> None:
            assert target._inbound is not None
            try:
                result.append(await fn(target._inbound))
            except ValueError as exc:
                failure.append(exc)
            finally:
                done.set()

        if target._nursery is None:
            return False, None
        target._nursery.start_soon(serve)

        async def wait_stop() -> None:
            await target.stopped.wait()
            nursery.cancel_scope.cancel()

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_stop)
                await done.wait()
                nursery.cancel_scope.cancel()
        if failure:
            raise failure[0]
        return bool(result), result[0] if result else None

    async def relay_writes(self, dst: str, datas: list[bytes], timeout: float) -> RelayAnswer:
        target = self._target(dst)
        if target is None or self._net.lost():
            raise NoLeader(f"{dst} cannot be reached")
        deadline = trio.current_time() + timeout
        await self._hop(dst, 64 + sum(len(d) + 8 for d in datas))
        target = self._target(dst)
        if target is None:
            raise NoLeader(f"{dst} cannot be reached")
        # From here on the writes reached the leader: the outcome can only be
        # unknown if the answer does not make it back.
        answered, answer = await self._call(
            target, lambda inbound: inbound.relayed_writes(self.id, datas, timeout),
            max(0.0, deadline - trio.current_time()),
        )
        if answered:
            await self._hop(dst, 64 + len(answer.results), back=True)
        if not answered or self._net.reachable(dst, self.id) is None or self._net.lost():
            raise UnknownOutcome(f"{dst} did not answer the relayed writes")
        assert isinstance(answer, RelayAnswer)
        return answer

    async def send_snapshot(self, offer: SnapshotOffer, read_chunk: ChunkReader) -> None:
        dst = offer.msg.dst
        offset = 0
        while True:
            n = min(SNAPSHOT_CHUNK, offer.size - offset)
            data = await read_chunk(offset, n) if n else b""
            if len(data) != n:
                raise LinkError(f"snapshot data ended at {offset + len(data)} of {offer.size}")
            last = offset + n >= offer.size
            target = self._target(dst)
            if target is None or self._net.lost():
                raise LinkError(f"{self.id} -> {dst}: unreachable")
            await self._hop(dst, 64 + len(data))

            def chunk(inbound: Inbound, offset: int = offset, data: bytes = data,
                      last: bool = last) -> Awaitable[None]:  # fmt: skip
                return inbound.snapshot_chunk(self.id, offer, offset, data, last)

            try:
                answered, _ = await self._call(target, chunk, 60.0)
            except ValueError as exc:
                raise LinkError(f"{dst} refused the snapshot: {exc}") from None
            if not answered:
                raise LinkError(f"{self.id} -> {dst}: the transfer broke off")
            offset += n
            if last:
                return
