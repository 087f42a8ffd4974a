"""RaftNode: the public face of the runtime, and where its parts are wired together.

    HTTP handlers --(inbox: proposals, reads, messages)--> driver task --> core
    driver: persist (storage thread) -> send (transport) -> apply -> advance
    transport: one stream per peer; arriving traffic comes back through the
               node's `Inbound` methods (deliver, relayed_writes, snapshot_chunk)
    replies: a one-shot slot per request, each write settled by its own entry

The roles, one module each:

    _driver          the one task that owns the core; all Ready processing
    _replies         reply slots; settling each write by its own log entry
    _reads           ReadIndex reads and waiters on the applied index
    _forward         relaying client writes to the leader (followers)
    _snapshot_send   snapshot transfers to followers (one per follower, each
                     through a storage reader that keeps its snapshot alive)
    _snapshot_recv   staging, checking and decoding a transfer from the leader
    _snapshotter     taking local snapshots without stalling the loop
    _rpc             the course routes' synchronous bridge into the core
    _looplag         the loop-lag monitor
    _observer        the driver's metrics hooks and log events
    _offload         disk and CPU work off the event loop
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import trio

from trioraft.config import NodeConfig
from trioraft.core import Message, NotLeader, ProposalDropped, RaftCore, RaftError, Role
from trioraft.errors import NoLeader, NoQuorum, Overloaded, ShuttingDown, UnknownOutcome
from trioraft.kv import InvalidCommand, KVStateMachine, TooLarge, decode_command, encode_results
from trioraft.metrics import metrics_of
from trioraft.node._driver import Driver, Incoming
from trioraft.node._forward import Forwarder
from trioraft.node._looplag import LoopLagMonitor
from trioraft.node._offload import Offload
from trioraft.node._reads import Reads
from trioraft.node._replies import Proposal
from trioraft.node._rpc import Rpc, RpcBridge
from trioraft.node._snapshot_recv import OfferedSnapshot, SnapshotReceiver
from trioraft.node._snapshot_send import SnapshotSender
from trioraft.node._snapshotter import Snapshotter
from trioraft.storage import Storage
from trioraft.transport import Inbound, RelayAnswer, RelayCode, SnapshotOffer, Transport

__all__ = ["RaftNode", "open_node"]

log = logging.getLogger("trioraft.node")

# What each runtime error means for a relayed write (see RelayCode).
_CODE_OF: list[tuple[type[BaseException], RelayCode]] = [
    (UnknownOutcome, RelayCode.UNKNOWN),
    (NoQuorum, RelayCode.NO_QUORUM),
    (Overloaded, RelayCode.OVERLOADED),
    (ShuttingDown, RelayCode.SHUTTING_DOWN),
    (NoLeader, RelayCode.NOT_LEADER),
]


def _relay_code(exc: BaseException) -> RelayCode:
    if isinstance(exc, ProposalDropped):
        return RelayCode.DROPPED
    if isinstance(exc, NotLeader):
        return RelayCode.NOT_LEADER
    for cls, code in _CODE_OF:
        if isinstance(exc, cls):
            return code
    return RelayCode.UNKNOWN


class RaftNode:
    """One member of a cluster: give it a config, its storage and its transport.

    The transport's peers must be the other members (their member ids);
    `trioraft.server` builds a `StreamTransport`, tests a `MemoryNetwork`
    transport. Membership changes add and remove peers on the transport
    (`transport.add_peer(member_id, url)`, `transport.remove_peer(member_id)`).
    """

    def __init__(
        self,
        config: NodeConfig,
        storage: Storage,
        transport: Transport,
        rng: random.Random | None = None,
        *,
        run_disk_inline: bool = False,
        loop_lag: LoopLagMonitor | None = None,
        core_options: dict[str, Any] | None = None,
    ) -> None:
        # run_disk_inline: call storage (and snapshot restore) directly on the
        # event loop instead of in a worker thread. Only for in-memory storage
        # in tests under trio's MockClock (see trioraft.node._offload).
        # core_options: extra CoreConfig fields (tests: e.g. max_entries_per_msg).
        # The largest snapshot this node accepts from a leader is its storage's
        # bound (MemoryStorage / SqliteStorage `max_snapshot_bytes`).
        self.config = config
        self.id = config.id
        self.members = config.members
        self.storage = storage
        self.transport = transport
        self.loop_lag = loop_lag
        election_max = config.election_timeout_ms[1] / 1000
        self._offload = Offload(inline=run_disk_inline)
        self.stats: dict[str, Any] = {"proposals": 0, "batches": 0, "fsyncs": 0, "snapshots": 0}
        # The node's Prometheus registry (trioraft.metrics): the runtime's hooks.
        self.metrics = metrics_of(self)
        self._rpc = RpcBridge()
        self._reads = Reads()
        self._snapshotter = Snapshotter(
            config, storage, self._offload, self.stats, self._spawn, self._call_in_driver
        )
        self._snapshot_sender = SnapshotSender(
            config.id, storage, self._offload, transport, self._report_snapshot, self.metrics
        )
        self._snapshot_receiver = SnapshotReceiver(
            storage, self._offload, lambda: self._c.term, self._offer_snapshot, self.metrics
        )
        self._driver = Driver(
            config, storage, self._offload, rng or random.Random(),
            transport=transport, rpc=self._rpc, reads=self._reads, stats=self.stats,
            snapshotter=self._snapshotter, snapshot_sender=self._snapshot_sender,
            metrics=self.metrics, core_options=core_options,
        )
        self._forwarder = Forwarder(
            config.id, config.request_timeout_s, election_max * 2, transport,
            lambda: self.leader_id, self.wait_for_leader, self.propose_each,
        )
        self._stopping = False
        self._nursery: trio.Nursery | None = None
        self.started = trio.Event()
        # Set by whoever serves the node (trioraft.server): extra /status
        # sections, and checks that make /ready fail (a reason, or None).
        self.status_sections: dict[str, Callable[[], dict[str, Any]]] = {}
        self.health_checks: list[Callable[[], str | None]] = []

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
            **self._driver.raft_status(),
            "members": {
                m: {"url": url, "voter": m in c.voters} for m, url in sorted(self.members.items())
            },
            "keys": len(self.kv),
            "stats": {**self.stats, "snapshots_sent": self._snapshot_sender.stats["sent"],
                      "snapshots_send_failed": self._snapshot_sender.stats["failed"]},
            "peers": self.transport.status(),
        }
        if self.loop_lag is not None:
            out["loop_lag_ms"] = self.loop_lag.status()
        for name, section in self.status_sections.items():
            out[name] = section()
        # Keep "progress" (leaders only) last, where it always was.
        if "progress" in out:
            out["progress"] = out.pop("progress")
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
        """A leader is known, this node has applied what it knows to be committed, and
        nothing keeps it from serving (e.g. it is at its connection limit)."""
        c = self.core
        return (
            c is not None
            and c.leader_id is not None
            and self.kv.applied_index >= c.commit_index
            and not any(check() for check in self.health_checks)
        )

    # ================================================================ running
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: the transport, the driver, snapshot and forwarding tasks."""
        await self._driver.recover()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.transport.run, self)
            await nursery.start(self._snapshot_sender.run)
            nursery.start_soon(self._driver.run)
            nursery.start_soon(self._forwarder.run, nursery)
            self.started.set()
            task_status.started()

    def _spawn(self, fn: Any, *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    async def _call_in_driver(self, fn: Any) -> None:
        await self._driver.call(fn)

    async def _offer_snapshot(self, offered: OfferedSnapshot) -> None:
        await self._driver.inbox_send.send(offered)

    async def _report_snapshot(self, peer: str, ok: bool) -> None:
        await self._driver.call(lambda: self._driver.report_snapshot(peer, ok))

    # ======================================================== Inbound (peers)
    def deliver(self, src: str, msgs: list[Message]) -> None:
        """Raft messages from a peer, to the driver; dropped (Raft resends) if it is swamped."""
        with contextlib.suppress(trio.WouldBlock):
            self._driver.post(Incoming(msgs))

    async def relayed_writes(self, src: str, datas: list[bytes], timeout: float) -> RelayAnswer:
        """A follower's batch of client writes: propose them, one outcome per write.

        Each write is validated as a client's would be (a buggy or hostile
        peer cannot append what the API would refuse).
        """
        codes = [int(RelayCode.OK)] * len(datas)
        valid: list[int] = []
        for k, data in enumerate(datas):
            try:
                decode_command(data)
            except (InvalidCommand, TooLarge):
                codes[k] = RelayCode.INVALID
            else:
                valid.append(k)
        outcomes = await self.propose_each([datas[k] for k in valid], timeout) if valid else []
        results = []
        for k, outcome in zip(valid, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                codes[k] = _relay_code(outcome)
            else:
                results.append(outcome)
        return RelayAnswer(tuple(codes), encode_results(results) if results else b"")

    async def snapshot_chunk(
        self, src: str, offer: SnapshotOffer, offset: int, data: bytes, last: bool
    ) -> None:
        await self._snapshot_receiver.chunk(src, offer, offset, data, last)

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
            self._driver.post(item)
        except trio.WouldBlock:
            raise Overloaded("the node's request queue is full") from None

    async def propose_each(self, datas: list[bytes], timeout: float | None = None) -> list[Any]:
        """Replicate commands; per command, its state-machine result or the error that
        says its fate (each settled by its own log entry, see `_replies`):

        NotLeader / NoQuorum / Overloaded / ShuttingDown: never appended, never
        applies; ProposalDropped: appended, then overwritten, never applies;
        UnknownOutcome: appended, fate unknown within the timeout.
        """
        p = Proposal(list(datas))
        try:
            self._enqueue(p)
        except RaftError as exc:
            return [exc] * len(datas)
        with trio.move_on_after(timeout or self.config.request_timeout_s):
            await p.slot.done.wait()
        if not p.slot.done.is_set():
            # Exactly this proposal's pending writes go; the open ones are
            # unknown if appended, or dropped before the driver appends them.
            self._driver.pending.forget(p)
            p.give_up()
        return list(p.outcomes)

    async def propose(self, datas: list[bytes], timeout: float | None = None) -> list[Any]:
        """Replicate commands; their results once applied here, or the first error
        (for a single command: exactly its fate, see `propose_each`)."""
        outcomes = await self.propose_each(datas, timeout)
        for o in outcomes:
            if isinstance(o, BaseException):
                raise o
        return outcomes

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

    async def transfer_leadership(self, timeout: float) -> bool:
        """Hand leadership to the most caught-up peer (graceful shutdown)."""
        target = self._driver.best_transfer_target()
        if target is None:
            return False
        await self._driver.call(lambda: self._driver.transfer_leadership(target))
        with trio.move_on_after(timeout):
            while self.is_leader:
                await self._leader_changed.wait()
        return not self.is_leader

    def stop_accepting(self) -> None:
        """Shutdown has begun: refuse new requests, and never campaign again
        (a node on its way out must not start elections while it drains)."""
        self._stopping = True
        self._forwarder.stopping = True
        self._driver.retire()


@contextlib.asynccontextmanager
async def open_node(
    config: NodeConfig, storage: Storage, transport: Transport, **kwargs: Any
) -> AsyncIterator[RaftNode]:
    """Run a RaftNode for the duration of the block; its tasks stop on exit.

    The node has recovered from `storage` by the time the block starts.
    """
    node = RaftNode(config, storage, transport, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()


if TYPE_CHECKING:
    # Static proof that a node is what its transport delivers to.
    def _inbound(node: RaftNode) -> Inbound:
        return node
