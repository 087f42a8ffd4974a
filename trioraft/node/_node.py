"""RaftNode: the public face of the runtime, and where its parts are wired together.

    HTTP handlers --(inbox: proposals, reads, messages)--> driver task --> core
    driver: persist (storage thread) -> send (per-peer outboxes) -> apply -> advance
    per-peer replication tasks: drain an outbox, coalesce, send to the peer
    replies: a one-shot slot per request, settled when its entry is applied

Each role has its own module: `_driver` (the task that owns the core),
`_replies` (reply slots, settling proposals), `_reads` (ReadIndex, apply
waiters), `_replicate` (per-peer outboxes), `_snapshot_send` and
`_snapshot_recv`, `_snapshotter` (local snapshots), `_forward` (relayed
writes), `_rpc` (the course routes' bridge), `_offload` (threads).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import trio

from trioraft.config import NodeConfig
from trioraft.core import InstallSnapshot, Message, NotLeader, RaftCore, Role
from trioraft.errors import NoQuorum, Overloaded, ShuttingDown, UnknownOutcome
from trioraft.kv import KVStateMachine, encode_results
from trioraft.node._driver import Call, Driver, Incoming
from trioraft.node._forward import Forwarder
from trioraft.node._offload import Offload
from trioraft.node._reads import Reads
from trioraft.node._replicate import Outboxes
from trioraft.node._replies import Proposal
from trioraft.node._rpc import Rpc, RpcBridge
from trioraft.node._snapshot_recv import SnapshotReceiver
from trioraft.node._snapshot_send import send_snapshot
from trioraft.node._snapshotter import Snapshotter
from trioraft.storage import Storage
from trioraft.transport import PeerLink

__all__ = ["RaftNode", "open_node"]

log = logging.getLogger("trioraft.node")


class RaftNode:
    def __init__(
        self,
        config: NodeConfig,
        storage: Storage,
        links: dict[str, PeerLink],
        rng: random.Random | None = None,
        *,
        run_disk_inline: bool = False,
    ) -> None:
        # run_disk_inline: call storage (and snapshot restore) directly on the
        # event loop instead of in a worker thread. Only for in-memory storage
        # in tests under trio's MockClock (see trioraft.node._offload).
        self.config = config
        self.id = config.id
        self.members = config.members
        self.storage = storage
        self.links = links
        self._election_timeout = tuple(t / 1000 for t in config.election_timeout_ms)
        self._offload = Offload(inline=run_disk_inline)
        self.stats: dict[str, Any] = {"proposals": 0, "batches": 0, "fsyncs": 0, "snapshots": 0}
        self._rpc = RpcBridge()
        self._reads = Reads()
        self._outboxes = Outboxes(config.id, self._send_snapshot)
        self._snapshotter = Snapshotter(
            config, storage, self._offload, self.stats, self._spawn, self._call_in_driver
        )
        self._driver = Driver(
            config, storage, self._offload, rng or random.Random(),
            send=self._outboxes.send, rpc=self._rpc, reads=self._reads, stats=self.stats,
            snapshotter=self._snapshotter,
        )
        self._snapshot_receiver = SnapshotReceiver(
            storage, self._offload, lambda: self._c.term, self._deliver
        )
        self._forwarder = Forwarder(
            config.id, config.request_timeout_s, self._election_timeout[1] * 2, links,
            lambda: self.leader_id, self.wait_for_leader, self.propose,
        )
        self._stopping = False
        self._nursery: trio.Nursery | None = None
        self.started = trio.Event()

    # ================================================================ queries
    @property
    def core(self) -> RaftCore | None:
        return self._driver.core

    @property
    def _c(self) -> RaftCore:
        return self._driver.c

    @property
    def kv(self) -> KVStateMachine:
        return self._driver.kv

    @property
    def _leader_changed(self) -> trio.Event:
        return self._driver.leader_changed

    @property
    def _snapshotting(self) -> bool:
        return self._snapshotter.snapshotting

    @property
    def leader_id(self) -> str | None:
        return self.core.leader_id if self.core else None

    @property
    def leader_url(self) -> str | None:
        lid = self.leader_id
        return self.members.get(lid) if lid else None

    @property
    def role(self) -> str:
        return self.core.role.value if self.core else "follower"

    @property
    def term(self) -> int:
        return self.core.term if self.core else 0

    @property
    def peer_ids(self) -> frozenset[str]:
        """The other members of the configuration."""
        return frozenset(self.members) - {self.id}

    @property
    def is_leader(self) -> bool:
        return self.core is not None and self.core.role is Role.LEADER

    def status(self) -> dict[str, Any]:
        c = self._c
        out: dict[str, Any] = {
            "id": self.id,
            "role": c.role.value,
            "term": c.term,
            "leader": c.leader_id,
            "commit_index": c.commit_index,
            "applied_index": self.kv.applied_index,
            "last_log_index": c.log.last_index(),
            "snapshot_index": c.log.snapshot.index,
            "members": {
                m: {"url": url, "voter": m in c.voters} for m, url in sorted(self.members.items())
            },
            "keys": len(self.kv),
            "stats": dict(self.stats),
        }
        if c.role is Role.LEADER:
            out["progress"] = {
                p: {"match_index": pr.match_index, "next_index": pr.next_index,
                    "state": pr.state.value}
                for p, pr in sorted(c.progress.items())
            }
        return out

    def debug(self) -> dict[str, Any]:
        """The course design's /debug fields."""
        c = self._c
        return {
            "nodeId": self.id,
            "state": c.role.value,
            "term": c.term,
            "leaderId": c.leader_id,
            "logLength": c.log.last_index(),
            "commitIndex": c.commit_index,
            "stateMachine": dict(self.kv.items()),
        }

    def is_ready(self) -> bool:
        """A leader is known and this node has applied what it knows to be committed."""
        c = self.core
        return (
            c is not None and c.leader_id is not None and self.kv.applied_index >= c.commit_index
        )

    # ================================================================ running
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: the driver, replication and forwarding tasks."""
        await self._driver.recover()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._outboxes.start(nursery, self.links)
            nursery.start_soon(self._driver.run)
            nursery.start_soon(self._forwarder.run, nursery)
            self.started.set()
            task_status.started()

    def _spawn(self, fn: Any, *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    async def _call_in_driver(self, fn: Any) -> None:
        await self._driver.inbox_send.send(Call(fn))

    async def _deliver(self, msgs: list[Message]) -> None:
        await self._driver.inbox_send.send(Incoming(msgs))

    async def _send_snapshot(self, link: PeerLink, msg: InstallSnapshot) -> None:
        async def report_failure(peer: str) -> None:
            await self._call_in_driver(lambda: self._c.report_snapshot(peer, False))

        await send_snapshot(link, msg, self.storage, self._offload, report_failure)

    # ========================================================== inbound (peers)
    def receive_messages(self, msgs: list[Message]) -> None:
        """Hand peer messages to the driver; dropped (Raft re-sends) if it is swamped."""
        with contextlib.suppress(trio.WouldBlock):
            self._driver.inbox_send.send_nowait(Incoming(msgs))

    async def receive_snapshot_chunk(
        self, msg: InstallSnapshot, offset: int, data: bytes, done: bool
    ) -> None:
        """Stage a chunk; once all are on disk, the core decides whether to install."""
        await self._snapshot_receiver.receive_chunk(msg, offset, data, done)

    async def rpc(self, msg: Message, timeout: float = 1.0) -> Message | None:
        """Step a course-route request and return the core's direct answer (or None)."""
        item = Rpc(msg)
        await self._driver.inbox_send.send(item)
        with trio.move_on_after(timeout):
            await item.slot.done.wait()
        self._rpc.forget(item)
        return item.slot.value if item.slot.done.is_set() else None

    # ======================================================== client requests
    def _enqueue(self, item: object) -> None:
        if self._stopping:
            raise ShuttingDown("the node is shutting down")
        try:
            self._driver.inbox_send.send_nowait(item)
        except trio.WouldBlock:
            raise Overloaded("the node's request queue is full") from None

    async def propose(self, datas: list[bytes], timeout: float | None = None) -> list[Any]:
        """Replicate commands; return their state-machine results once applied here.

        Raises NotLeader (nothing was appended), ProposalDropped (appended, then
        overwritten: it will never apply), or UnknownOutcome (appended, fate
        unknown within the timeout).
        """
        p = Proposal(list(datas))
        self._enqueue(p)
        with trio.move_on_after(timeout or self.config.request_timeout_s):
            await p.slot.done.wait()
        if not p.slot.done.is_set():
            self._driver.pending.forget(p)
            if p.index:
                raise UnknownOutcome("the write was proposed but did not commit in time")
            # Fix: it is still queued in the inbox (the driver was busy, e.g.
            # on a slow disk). NoQuorum promises it never applies, so the
            # driver must drop it rather than append it later.
            p.abandoned = True
            raise NoQuorum("the write could not be proposed in time")
        if p.slot.error is not None:
            raise p.slot.error
        return list(p.slot.value)

    async def read_barrier(self, timeout: float | None = None) -> int:
        """Wait until a linearizable read may be served from the local state machine.

        ReadIndex: the leader confirms it still leads (a heartbeat quorum)
        and names its commit index; we wait until we have applied that far.
        Returns the read index.
        """
        r = self._reads.new()
        self._enqueue(r)
        deadline = trio.current_time() + (timeout or self.config.request_timeout_s)
        with trio.move_on_at(deadline):
            await r.slot.done.wait()
        if not r.slot.done.is_set():
            self._reads.forget(r)
            raise NoQuorum("leadership could not be confirmed by a majority in time")
        if r.slot.error is not None:
            raise r.slot.error
        index: int = r.slot.value
        with trio.move_on_at(deadline):
            await self.wait_applied(index)
            return index
        raise NoQuorum("this node could not catch up to the read index in time")

    async def wait_applied(self, index: int) -> None:
        await self._reads.wait_applied(index, self.kv.applied_index)

    async def wait_for_leader(self, timeout: float) -> str | None:
        with trio.move_on_after(timeout):
            while self.leader_id is None:
                await self._leader_changed.wait()
        return self.leader_id

    async def forward(self, data: bytes, timeout: float | None = None) -> Any:
        """Relay one write to the leader (batched with concurrent ones); its result.

        Raises NoLeader (not sent, or refused before being appended: safe to
        retry), ProposalDropped, NoQuorum, or UnknownOutcome.
        """
        return await self._forwarder.forward(data, timeout)

    async def propose_encoded(self, datas: list[bytes], timeout: float | None = None) -> bytes:
        """The leader's side of forwarding: propose, answer with encoded results."""
        return encode_results(await self.propose(datas, timeout))

    async def transfer_leadership(self, timeout: float) -> bool:
        """Hand leadership to the most caught-up peer (graceful shutdown)."""
        core = self.core
        if core is None or core.role is not Role.LEADER or not core.progress:
            return False
        target = max(core.progress, key=lambda p: core.progress[p].match_index)

        def start() -> None:
            with contextlib.suppress(NotLeader):
                core.transfer_leadership(target)

        await self._call_in_driver(start)
        with trio.move_on_after(timeout):
            while core.role is Role.LEADER:
                await self._leader_changed.wait()
        return core.role is not Role.LEADER

    def stop_accepting(self) -> None:
        """Shutdown has begun: refuse new requests, and never campaign again
        (a node on its way out must not start elections while it drains)."""
        self._stopping = True
        self._forwarder.stopping = True
        if self.core is not None:
            self.core.retire()


@contextlib.asynccontextmanager
async def open_node(
    config: NodeConfig, storage: Storage, links: dict[str, PeerLink], **kwargs: Any
) -> AsyncIterator[RaftNode]:
    """Run a RaftNode for the duration of the block; its tasks stop on exit.

    The node has recovered from `storage` by the time the block starts.
    """
    node = RaftNode(config, storage, links, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()
