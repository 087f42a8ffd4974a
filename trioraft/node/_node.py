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
    _membership      names <-> member ids, peers following the configuration,
                     membership changes, removal
    _rpc             the course routes' synchronous bridge into the core
    _looplag         the loop-lag monitor
    _observer        the driver's metrics hooks and log events
    _offload         disk and CPU work off the event loop
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import trio

from trioraft.config import NodeConfig
from trioraft.core import (
    ConfChange,
    Message,
    NotLeader,
    ProposalDropped,
    RaftCore,
    RaftError,
    Role,
    TransferRefused,
)
from trioraft.errors import NoLeader, NoQuorum, Overloaded, ShuttingDown, UnknownOutcome
from trioraft.kv import InvalidCommand, KVStateMachine, TooLarge, decode_command, encode_results
from trioraft.metrics import metrics_of
from trioraft.node._driver import Call, Driver, Incoming
from trioraft.node._forward import Forwarder
from trioraft.node._looplag import LoopLagMonitor
from trioraft.node._membership import MembershipOps, NodeIdentity
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

    The transport's peers follow the configuration (`_membership`): the node
    adds and removes them (`transport.add_peer(member_id, url)`,
    `remove_peer`) as configurations are appended. `trioraft.server` builds a
    `StreamTransport`, tests a `MemoryNetwork` transport.

    `id` is the **member id** (the core's); `name` the operator's name (the
    `--id` flag), which /status, X-Raft-Leader and the course routes use.
    Without `identity` the node is a member of a static cluster of the
    configured members, member id = name (in-process tests, legacy dirs).
    With `wait_for_identity`, `run()` waits for `set_identity()` (the
    server decides it at start-up: bootstrap, join, or resume) before it
    recovers: meanwhile the node answers client requests with 503.
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
        identity: NodeIdentity | None = None,
        wait_for_identity: bool = False,
    ) -> None:
        # run_disk_inline: call storage (and snapshot restore) directly on the
        # event loop instead of in a worker thread. Only for in-memory storage
        # in tests under trio's MockClock (see trioraft.node._offload).
        # core_options: extra CoreConfig fields (tests: e.g. max_entries_per_msg).
        # The largest snapshot this node accepts from a leader is its storage's
        # bound (MemoryStorage / SqliteStorage `max_snapshot_bytes`).
        self.config = config
        self.id = config.id  # the member id, once set_identity has run
        self.name = config.id
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
        self.membership = MembershipOps(
            identity or NodeIdentity(config.id, config.id,
                                     static_voters=frozenset(config.members)),
            config.members, transport, self, election_max=election_max,
        )  # fmt: skip
        self._driver.on_ready = self.membership.sync
        self._driver.on_config_committed = self.membership.applied
        self._identity_set = trio.Event()
        if identity is not None:
            self.set_identity(identity)
        elif not wait_for_identity:
            self._identity_set.set()
        # Why the node is not running its core yet (None once it is).
        self.starting: str | None = "recovering" if wait_for_identity else None
        # What the start-up decided or is deciding (trioraft.bootstrap): the
        # nonce, expected names, state, bootstrap record; GET /raft/identity.
        self.startup_facts: dict[str, Any] = {}
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
    def leader_name(self) -> str | None:
        """The leader's name (X-Raft-Leader, /status), None when unknown."""
        return self.membership.roster.name_of(self.leader_id)

    @property
    def leader_url(self) -> str | None:
        return self.membership.roster.url_of(self.leader_id)

    def may_speak_as(self, name: str, member_id: str) -> bool:
        """May a peer authenticated as node `name` (e.g. by its TLS certificate) act as
        member `member_id`? Through the configurations this node knows (see
        `Roster.may_speak_as`): the hook for binding peer certificates to member ids."""
        return self.membership.roster.may_speak_as(name, member_id)

    @property
    def cluster_id(self) -> str:
        return self.membership.identity.cluster_id

    def set_identity(self, identity: NodeIdentity) -> None:
        """Who this node is (before `run` recovers; see the class docstring)."""
        if self.core is not None:
            raise RuntimeError("the identity is set before the node starts")
        self.id = identity.member_id
        self.membership.set_identity(identity)
        self._driver.set_identity(identity.member_id, identity.static_voters)
        self._forwarder._id = identity.member_id
        self._snapshot_sender._id = identity.member_id
        self._identity_set.set()

    @property
    def role(self) -> str:
        return self.core.role.value if self.core else "follower"

    @property
    def term(self) -> int:
        return self.core.term if self.core else 0

    @property
    def peer_ids(self) -> frozenset[str]:
        """The member ids of the other members of the latest configuration."""
        core = self.core
        if core is None:
            return frozenset()
        return core.configuration.ids - {self.id}

    @property
    def is_leader(self) -> bool:
        return self.core is not None and self.core.role is Role.LEADER

    def status(self) -> dict[str, Any]:
        c = self.core
        if c is None:
            return self._starting_status()
        raft = self._driver.raft_status()
        raft["leader"] = self.leader_name
        if "progress" in raft:  # keyed by name, like "members"
            raft["progress"] = {self.membership.roster.name_of(p): v
                                for p, v in raft["progress"].items()}  # fmt: skip
        members = self.membership.members_json(c)
        out: dict[str, Any] = {
            "id": self.name,
            **raft,
            "members": members,
            "member_id": self.id,
            "cluster_id": self.cluster_id,
            "learners": sorted(n for n, m in members.items() if not m["voter"]),
            "change_in_progress": not c.change_committed(),
            "last_change": self.membership.last_change,
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

    def _starting_status(self) -> dict[str, Any]:
        """/status before the core runs (waiting for the start-up decision)."""
        return {
            "id": self.name, "role": "follower", "term": 0, "leader": None,
            "commit_index": 0, "applied_index": 0, "last_log_index": 0,
            "snapshot_index": 0, "members": {}, "member_id": self.id,
            "cluster_id": self.cluster_id, "learners": [], "change_in_progress": False,
            "starting": self.starting or "starting", "keys": len(self.kv),
        }  # fmt: skip

    def debug(self) -> dict[str, Any]:
        """The course design's /debug fields."""
        c = self.core
        return {
            "nodeId": self.name,
            "state": c.role.value if c else "follower",
            "term": c.term if c else 0,
            "leaderId": self.leader_name,
            "logLength": c.log.last_index() if c else 0,
            "commitIndex": c.commit_index if c else 0,
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
        await self._identity_set.wait()
        await self._driver.recover()
        self.starting = None
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

    def spawn(self, fn: Any, *args: Any) -> None:
        """Run a task for as long as the node runs (e.g. a re-admission's steps)."""
        self._spawn(fn, *args)

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
        if self.core is None:
            raise NoLeader(f"this node is starting ({self.starting or 'recovering'})")
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

    async def encode_snapshot(self, chunks: Iterator[bytes]) -> list[bytes]:
        """Encode captured snapshot chunks (`kv.snapshot_chunks()`) in short slices
        on the loop, never stalling it (see trioraft.node._offload.Offload.sliced)."""
        return await self._offload.sliced(chunks)

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

    # ======================================================== membership (issue 12)
    async def propose_change(self, change: ConfChange, timeout: float | None = None) -> int:
        """Propose a membership change (leader only) and wait until it commits.

        Returns the index of its entry. Raises NotLeader or a MembershipError
        (refused: nothing changed), ProposalDropped (another leader's entry
        took its index: it never applies), or UnknownOutcome (not committed
        within `timeout`: it may yet).
        """
        if self.core is None:
            raise NoLeader(f"this node is starting ({self.starting or 'recovering'})")
        p = Proposal([b""])
        await self._driver.call(lambda: self._driver.propose_change(change, p))
        with trio.move_on_after(timeout or self.config.request_timeout_s):
            await p.slot.done.wait()
        if not p.slot.done.is_set():
            self._driver.pending.forget(p)
            p.give_up()
        outcome = p.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return p.index

    async def transfer_to(self, member_id: str | None, timeout: float) -> str | None:
        """Hand leadership to `member_id` (None: the most caught-up voter) and wait
        until someone else leads; returns the new leader's member id, or None if
        the transfer did not complete in `timeout`. Raises NotLeader, or
        TransferRefused (not another voter, not caught up, a transfer under
        way: nothing changed)."""
        target = member_id if member_id is not None else self._driver.best_transfer_target()
        if target is None:
            raise TransferRefused("no other voter is caught up")
        await self._in_driver(lambda: self._c.transfer_leadership(target))
        with trio.move_on_after(timeout):
            while self.is_leader or self.leader_id in (None, self.id):
                await self._leader_changed.wait()
        return self.leader_id if not self.is_leader else None

    def learn_seed(self, seed: Any) -> None:
        """Being admitted: a member reported a configuration that names us (the
        transport then accepts streams from its members). Any task."""
        self.membership.learn_seed(seed)
        core = self.core
        if core is not None:
            with contextlib.suppress(trio.WouldBlock):
                self._driver.post(Call(lambda: self.membership.sync(core)))

    async def _in_driver(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the driver task and wait for it; a RaftError it raises is re-raised."""
        done = trio.Event()
        failed: list[RaftError] = []

        def run() -> None:
            try:
                fn()
            except RaftError as exc:
                failed.append(exc)
            finally:
                done.set()

        await self._driver.call(run)
        await done.wait()
        if failed:
            raise failed[0]

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
