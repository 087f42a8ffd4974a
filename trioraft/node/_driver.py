"""The driver: the one task that owns the core.

Its loop is the election/heartbeat timer: `with trio.move_on_at(core.deadline)`
around `inbox.receive()`; every step can move the deadline and the next turn
re-reads it. Whatever already waits in the inbox is stepped before the timer
is looked at (a heartbeat that arrived while the driver waited on the disk
resets the election timer; it must not be overtaken by a timeout).
Memory-channel receives are cancellation-atomic, so a timeout never loses a
message. Whatever queued while the driver was busy (typically
during an fsync) becomes one Ready: one fsync, one AppendEntries per peer.

Ready order (a correctness rule, see docs/architecture.md): persist hard state
and entries -> send -> apply -> advance. Only a leader's AppendEntries for a
term already on disk may go out before the fsync (`early_messages`).

Snapshots and storage (docs/storage.md, "How the runtime calls storage"):

- start-up: `load()`, `load_snapshot()` (the state machine restored from
  it), and the core rebuilt from the hard state, the newest snapshot, the
  stored *compaction point* and the entries after it (the catch-up tail
  survives a restart);
- a snapshot from the leader reaches the core only as an `OfferedSnapshot`
  (staged, checked whole and decoded by `_snapshot_recv`); an InstallSnapshot
  arriving as a plain message is dropped (it has no data here). If the next
  Ready carries it: `install_transfer(t, keep)`, swap the restored state
  machine in, then that Ready's `save()`. If the core declined it:
  `discard_transfer(t)`.

All of the runtime's use of the core is in this module.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from trioraft.config import NodeConfig
from trioraft.core import (
    ConfChange,
    Configuration,
    CoreConfig,
    EntryKind,
    InstallSnapshot,
    Message,
    NotLeader,
    ProposalDropped,
    RaftCore,
    RaftError,
    Ready,
    Role,
    SnapshotMeta,
)
from trioraft.errors import NoLeader
from trioraft.kv import KVStateMachine, Result
from trioraft.logs import event
from trioraft.metrics import NodeMetrics
from trioraft.node._observer import Observer
from trioraft.node._offload import Offload
from trioraft.node._reads import Read, Reads
from trioraft.node._replies import PendingWrites, Proposal
from trioraft.node._rpc import Rpc, RpcBridge
from trioraft.node._snapshot_recv import OfferedSnapshot, restore
from trioraft.node._snapshot_send import SnapshotSender
from trioraft.node._snapshotter import Snapshotter
from trioraft.storage import Storage
from trioraft.transport import Transport

__all__ = ["INBOX_SIZE", "Call", "Driver", "Incoming"]

log = logging.getLogger("trioraft.node")

INBOX_SIZE = 10_000


@dataclass(eq=False)
class Incoming:
    """Messages from peers."""

    msgs: list[Message]


@dataclass(eq=False)
class Call:
    """A function to run in the driver task (it may touch the core)."""

    fn: Callable[[], None]


class Driver:
    def __init__(
        self,
        config: NodeConfig,
        storage: Storage,
        offload: Offload,
        rng: random.Random,
        *,
        transport: Transport,
        rpc: RpcBridge,
        reads: Reads,
        stats: dict[str, Any],
        snapshotter: Snapshotter,
        snapshot_sender: SnapshotSender,
        metrics: NodeMetrics,
        core_options: dict[str, Any] | None = None,
    ) -> None:
        self.id = config.id
        self._storage = storage
        self._offload = offload
        self._rng = rng
        self._node_config = config
        self._core_options = core_options or {}
        # Until set_identity: a static cluster of the configured members, ids
        # = names (in-process tests; legacy data dirs).
        self.set_identity(config.id, frozenset(config.members))
        self._transport = transport
        self._snapshot_sender = snapshot_sender
        self._observe = Observer(metrics)  # metrics hooks and log events
        self._rpc = rpc
        self._reads = reads
        self._stats = stats
        self._snapshotter = snapshotter
        self.kv = KVStateMachine()
        self.core: RaftCore | None = None
        self.pending = PendingWrites()
        self.inbox_send, self._inbox = trio.open_memory_channel[Any](INBOX_SIZE)
        self.leader_changed = trio.Event()
        # Snapshots from the leader stepped into the core, until the Ready
        # that installs them (or the end of that turn: the core declined).
        self._offered: list[OfferedSnapshot] = []
        self._turn = 0  # one per turn of the loop (reads: see _reads)

    @property
    def c(self) -> RaftCore:
        assert self.core is not None, "node not started"
        return self.core

    # ------------------------------------------------ membership hooks (issue 12)
    # Kept apart from the recovery/persist paths: `trioraft.node._membership`
    # plugs in here, the driver knows nothing of names, URLs or removal.
    def set_identity(self, member_id: str, voters: frozenset[str]) -> None:
        """Before `recover`: this node's member id, and the voters to use when
        the stored log holds no configuration (legacy dirs; empty otherwise)."""
        config = self._node_config
        lo, hi = config.election_timeout_ms
        self.id = member_id
        self._core_config = CoreConfig(
            id=member_id,
            voters=voters,
            election_timeout=(lo / 1000, hi / 1000),
            heartbeat_interval=config.heartbeat_ms / 1000,
            snapshot_catchup_entries=config.snapshot_catchup_entries,
            **self._core_options,
        )

    # After every Ready (the core's latest configuration may have changed).
    on_ready: Callable[[RaftCore], None] = staticmethod(lambda core: None)
    # A configuration committed: (index, configuration).
    on_config_committed: Callable[[int, Configuration], None] = staticmethod(
        lambda index, cfg: None
    )

    def propose_change(self, change: ConfChange, p: Proposal) -> None:
        """Driver task only: append a membership change, settled like a write by
        its own entry (committed: None; overwritten: ProposalDropped). A refusal
        (NotLeader, a MembershipError) settles it at once: nothing changed."""
        if p.abandoned:
            return  # the proposer gave up before we got here: never propose it
        try:
            index, term = self.c.propose_change(change)
        except RaftError as exc:
            p.settle_all(exc)
            return
        self.pending.appended([p], index, term)

    # ================================================================ startup
    async def recover(self) -> None:
        state = await self._offload.disk(self._storage.load)
        snap = await self._offload.disk(self._storage.load_snapshot)
        if snap is not None:
            self.kv = await restore(self._offload, snap[1])
        compacted = state.compacted
        # The stored compaction point, not the snapshot's: the entries between
        # them are the catch-up tail, kept across restarts.
        self.core = RaftCore(
            self._core_config,
            self._rng,
            hard_state=state.hard_state,
            snapshot=state.snapshot,
            entries=state.entries,
            now=trio.current_time(),
            compacted=(compacted.index, compacted.term),
        )
        self._observe.role = self.core.role
        # The configuration in force at the snapshot is committed (the core's
        # base: the snapshot's, else the static voters); later CONFIG entries
        # report themselves as they are applied again.
        snap_cfg = state.snapshot.config
        self.on_config_committed(state.snapshot.index, snap_cfg if snap_cfg.members
                                 else Configuration.of_voters(self._core_config.voters))
        event(log, "recovered", term=state.hard_state.term, commit=state.hard_state.commit,
              snapshot=state.snapshot.index, compacted=compacted.index,
              last_index=self.core.log.last_index(), keys=len(self.kv))  # fmt: skip

    # ================================================================= loop
    async def run(self) -> None:
        core = self.c
        self.on_ready(core)  # the transport's peers, from the recovered configuration
        await self._process_ready()
        while True:
            self._turn += 1
            # Messages that queued while the driver was busy (an fsync slowed
            # by the disk, a snapshot being written) are stepped before the
            # timer is looked at: a heartbeat that arrived in time resets the
            # election timer. Before this, a follower whose disk stalled for
            # longer than its election timeout found its deadline passed,
            # campaigned with the leader's heartbeats still in its inbox, and
            # a healthy cluster changed leader (issue 11 #4, found with the
            # stall tracer in the 1M-key stability run).
            queued = self._inbox.statistics().current_buffer_used > 0
            with trio.move_on_at(math.inf if queued else core.deadline):
                item = await self._inbox.receive()
                proposals: list[Proposal] = []
                self._handle(item, proposals)
                # Drain whatever else queued up meanwhile: one Ready (one
                # fsync, one AppendEntries per peer) covers the whole batch.
                for _ in range(INBOX_SIZE):
                    try:
                        item = self._inbox.receive_nowait()
                    except trio.WouldBlock:
                        break
                    self._handle(item, proposals)
                self._propose(proposals)
            now = trio.current_time()
            if now >= core.deadline:
                core.handle_timeout(now)
            await self._process_ready()
            if self._observe.changes(core.term, core.role, core.leader_id):
                self.leader_changed.set()
                self.leader_changed = trio.Event()

    def _handle(self, item: object, proposals: list[Proposal]) -> None:
        core = self.c
        now = trio.current_time()
        match item:
            case Incoming(msgs=msgs):
                for m in msgs:
                    # A snapshot reaches the core only with its data, staged,
                    # checked and decoded (OfferedSnapshot): one arriving as a
                    # plain message has nothing here to install.
                    if not isinstance(m, InstallSnapshot):
                        core.step(m, now)
            case OfferedSnapshot(msg=msg):
                core.step(msg, now)
                self._offered.append(item)
            case Proposal():
                if not item.abandoned:
                    proposals.append(item)
            case Read():
                try:
                    core.read_index(item.ctx)
                    self._reads.started(item, core.term, core.leader_id, self._turn)
                except NotLeader:
                    item.slot.settle(error=NoLeader("no leader is known"))
            case Rpc():
                self._rpc.stepped(item)
                if not isinstance(item.msg, InstallSnapshot):
                    core.step(item.msg, now)
            case Call(fn=fn):
                fn()

    def _propose(self, proposals: list[Proposal]) -> None:
        if not proposals:
            return
        datas = [d for p in proposals for d in p.datas]
        try:
            first, term = self.c.propose(datas)
        except (NotLeader, ProposalDropped) as exc:
            for p in proposals:
                p.settle_all(exc)
            return
        self._stats["proposals"] += len(datas)
        self._stats["batches"] += 1
        self._observe.proposed(len(datas))
        self.pending.appended(proposals, first, term)

    async def _process_ready(self) -> None:
        core = self.c
        while core.has_ready():
            rd = core.ready()
            for m in rd.early_messages:  # a leader replicates while it persists
                self._route(m)
            await self._persist(rd)
            # Only now, with the votes and entries durable, may we answer anyone.
            for m in rd.messages:
                self._route(m)
            self._apply(rd)
            core.advance(rd)
            self.on_ready(core)
            self._reads.wake_applied(self.kv.applied_index)
            self._snapshotter.maybe_snapshot(core, self.kv)
        if self._offered:
            await self._discard_offered()

    # ---------------------------------------------------- persisting a Ready
    async def _persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            # Install first: entries after the snapshot that the core kept may
            # come with this very Ready's save() (docs/storage.md).
            await self._install(rd.snapshot, rd.snapshot_keep_entries)
        if rd.hard_state is not None or rd.entries:
            t0 = time.perf_counter()
            await self._offload.disk(self._storage.save, rd.hard_state, rd.entries)
            self._stats["fsyncs"] += 1
            self._observe.persisted(time.perf_counter() - t0, len(rd.entries))

    async def _install(self, meta: SnapshotMeta, keep_entries_after: bool) -> None:
        """The core took a snapshot from the leader: make it the node's, durably."""
        offered = next((o for o in self._offered if o.msg.meta == meta), None)
        if offered is None:
            # Only an OfferedSnapshot carries an InstallSnapshot into the core.
            raise RuntimeError(f"the core installs snapshot {meta.index} that was never offered")
        self._offered.remove(offered)
        # ValueError here would be a runtime bug (the transfer is finished and
        # newer than anything stored): it stops the node.
        await self._offload.disk(self._storage.install_transfer, offered.transfer,
                                 keep_entries_after)  # fmt: skip
        self.kv = offered.kv  # restored from exactly the bytes just installed
        self._stats["snapshots_installed"] = self._stats.get("snapshots_installed", 0) + 1
        event(log, "snapshot_installed", index=meta.index, term=meta.term, source=offered.src,
              bytes=offered.transfer.size, keys=len(self.kv))  # fmt: skip
        self.on_config_committed(meta.index, meta.config)

    async def _discard_offered(self) -> None:
        """Snapshots stepped this turn that the core declined: drop their staging."""
        declined, self._offered = self._offered, []
        for o in declined:
            await self._offload.disk(self._storage.discard_transfer, o.transfer)

    # ---------------------------------------------------- sending
    def _route(self, m: Message) -> None:
        if self._rpc.take_answer(m):
            return
        if isinstance(m, InstallSnapshot):
            self._snapshot_sender.start(m)  # the data follows in chunks, off this task
            return
        self._observe.sending(m)  # (a new ReadIndex round is counted)
        self._transport.send(m)  # never blocks; a full or missing stream drops it

    def report_snapshot(self, peer: str, ok: bool) -> None:
        """A transfer to `peer` failed (the core retries later) or sent its last
        chunk. Driver task only."""
        self.c.report_snapshot(peer, ok)

    def _apply(self, rd: Ready) -> None:
        t0 = time.perf_counter()
        applied = 0
        for e in rd.committed:
            if e.index <= self.kv.applied_index:
                continue  # already covered by an installed snapshot
            result: Result | None = None
            if e.kind is EntryKind.NORMAL:
                result = self.kv.apply(e.index, e.data)
                self._snapshotter.bytes_since_snapshot += len(e.data)
            else:
                self.kv.apply_noop(e.index)
                if e.kind is EntryKind.CONFIG:
                    with contextlib.suppress(ValueError):  # the core checked it on append
                        self.on_config_committed(e.index, Configuration.decode(e.data))
            self.pending.applied(e, result)
            applied += 1
        if applied:
            self._observe.applied(time.perf_counter() - t0, applied)
        c = self.c
        self._reads.answered(rd.read_states, c.term, c.leader_id, self._turn)

    # ====================================================== other calls into the core
    # (from other tasks: only reads of plain attributes, or functions posted
    # into the driver's inbox with `call`)

    async def call(self, fn: Callable[[], None]) -> None:
        """Run fn in the driver task (blocking if the inbox is full)."""
        await self.inbox_send.send(Call(fn))

    def post(self, item: object) -> None:
        """Queue a proposal, read or message; trio.WouldBlock if the inbox is full."""
        self.inbox_send.send_nowait(item)

    def retire(self) -> None:
        """Never campaign again (shutdown). Safe from any task: it only sets a flag."""
        if self.core is not None:
            self.core.retire()

    def best_transfer_target(self) -> str | None:
        """The most caught-up voter the core would hand leadership to, if we lead."""
        core = self.core
        if core is None or core.role is not Role.LEADER:
            return None
        # Learners are in `progress` too, but only a caught-up voter can take over.
        candidates = [p for p in core.progress if p in core.voters and core.caught_up(p)]
        if not candidates:
            return None
        return max(candidates, key=lambda p: core.progress[p].match_index)

    def transfer_leadership(self, target: str) -> None:
        """Driver task only (post it with `call`)."""
        with contextlib.suppress(RaftError):  # NotLeader, TransferRefused
            self.c.transfer_leadership(target)

    def raft_status(self) -> dict[str, Any]:
        """The core's part of /status."""
        c = self.c
        out: dict[str, Any] = {
            "role": c.role.value,
            "term": c.term,
            "leader": c.leader_id,
            "commit_index": c.commit_index,
            "applied_index": self.kv.applied_index,
            "last_log_index": c.log.last_index(),
            "snapshot_index": c.log.snapshot.index,
        }
        if c.role is Role.LEADER:
            out["progress"] = {
                p: {"match_index": pr.match_index, "next_index": pr.next_index,
                    "state": pr.state.value}
                for p, pr in sorted(c.progress.items())
            }
        return out
