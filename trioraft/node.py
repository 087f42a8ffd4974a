"""The Trio runtime around the sans-IO core: one driver task, storage, peers, replies.

Shape (see docs/architecture.md):

    HTTP handlers --(inbox: proposals, reads, messages)--> driver task --> core
    driver: persist (storage thread) -> send (per-peer outboxes) -> apply -> advance
    per-peer replication tasks: drain an outbox, coalesce, POST to the peer
    replies: a one-shot slot per request, settled when its entry is applied

One task (the driver) owns the core, so the core needs no locks. Its loop is
the election/heartbeat timer: `with trio.move_on_at(core.deadline)` around
`inbox.receive()`; every step can move the deadline and the next turn re-reads
it. Memory-channel receives are cancellation-atomic, so a timeout never loses
a message.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from trioraft.config import NodeConfig
from trioraft.core import (
    AppendEntries,
    AppendEntriesResponse,
    CoreConfig,
    Entry,
    EntryKind,
    InstallSnapshot,
    Message,
    NotLeader,
    RaftCore,
    RaftError,
    Ready,
    RequestVote,
    RequestVoteResponse,
    Role,
    SnapshotMeta,
)
from trioraft.errors import (
    NoLeader,
    NoQuorum,
    Overloaded,
    ProposalDropped,
    ShuttingDown,
    UnknownOutcome,
)
from trioraft.kv import KVStateMachine, Result, decode_results, encode_results
from trioraft.storage import Storage
from trioraft.transport import LinkError, PeerLink

__all__ = ["RaftNode", "open_node"]

log = logging.getLogger("trioraft.node")
T = TypeVar("T")

INBOX_SIZE = 10_000
OUTBOX_SIZE = 1_000
MAX_BATCH_MESSAGES = 256
SNAPSHOT_CHUNK = 1 << 20
FORWARD_BATCH = 512  # writes relayed to the leader in one request
FORWARD_INFLIGHT = 4  # forwarded batches in flight at once


@dataclass(eq=False)
class _Slot:
    """A one-shot reply: settled once, by the driver, with a value or an error."""

    done: trio.Event = field(default_factory=trio.Event)
    value: Any = None
    error: BaseException | None = None

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.value, self.error = value, error
            self.done.set()


@dataclass(eq=False)
class _Proposal:
    datas: list[bytes]
    slot: _Slot = field(default_factory=_Slot)
    index: int = 0  # set once appended
    term: int = 0
    # Set by propose() when it gave up before the driver took the proposal
    # from the inbox; the driver must then never append it (see propose()).
    abandoned: bool = False


@dataclass(eq=False)
class _Read:
    ctx: int
    slot: _Slot = field(default_factory=_Slot)


@dataclass(eq=False)
class _Incoming:
    msgs: list[Message]


@dataclass(eq=False)
class _Call:
    fn: Callable[[], None]


@dataclass(eq=False)
class _Forward:
    """A write this follower relays to the leader, batched with others."""

    data: bytes
    slot: _Slot = field(default_factory=_Slot)
    sent: bool = False  # handed to the network: from then on the outcome may be unknown
    abandoned: bool = False  # the client gave up before it was sent: never send it


@dataclass(eq=False)
class _Rpc:
    """A message from a course JSON route, whose answer goes back in the HTTP response."""

    msg: Message
    slot: _Slot = field(default_factory=_Slot)


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
        # in tests under trio's MockClock: with autojump, virtual time may jump
        # (and elections fire) while the loop waits for a worker thread, which
        # makes a "disk write" take arbitrary virtual time. Never for real disks.
        self._run_disk_inline = run_disk_inline
        self.config = config
        self.id = config.id
        self.members = config.members
        self.storage = storage
        self.links = links
        self._rng = rng or random.Random()
        lo, hi = config.election_timeout_ms
        self._election_timeout = (lo / 1000, hi / 1000)
        self._core_config = CoreConfig(
            id=config.id,
            voters=frozenset(self.members),
            election_timeout=self._election_timeout,
            heartbeat_interval=config.heartbeat_ms / 1000,
            snapshot_catchup_entries=config.snapshot_catchup_entries,
        )
        self.kv = KVStateMachine()
        self.core: RaftCore | None = None
        self._inbox_send, self._inbox = trio.open_memory_channel[Any](INBOX_SIZE)
        self._fwd_send, self._fwd_recv = trio.open_memory_channel[_Forward](INBOX_SIZE)
        self._fwd_inflight = trio.Semaphore(FORWARD_INFLIGHT)
        self._outboxes: dict[str, trio.MemorySendChannel[Message]] = {}
        self._disk = trio.CapacityLimiter(1)  # one storage call at a time, off the loop
        self._pending: dict[int, _Proposal] = {}  # log index -> proposal awaiting apply
        self._reads: dict[int, _Read] = {}  # ctx -> read awaiting its read index
        self._rpcs: dict[tuple[str, type], _Rpc] = {}
        self._ctx = itertools.count(1)
        self._applied_waiters: list[tuple[int, int, trio.Event]] = []
        self._waiter_seq = itertools.count()
        self._leader_changed = trio.Event()
        self._last_leader: str | None = None
        self._snapshotting = False
        self._bytes_since_snapshot = 0
        self._stopping = False
        self.started = trio.Event()
        self.stats = {"proposals": 0, "batches": 0, "fsyncs": 0, "snapshots": 0}

    # ================================================================ queries
    @property
    def _c(self) -> RaftCore:
        assert self.core is not None, "node not started"
        return self.core

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

    # ================================================================ startup
    async def _run_disk(self, fn: Callable[..., T], *args: Any) -> T:
        # Blocking disk work (fsync) runs in a worker thread, one call at a time.
        if self._run_disk_inline:
            # Same cancellation semantics as to_thread.run_sync (not abandoned
            # on cancel): a cancel is honoured before the call, never after it
            # has started, so a started write always completes and reports back.
            await trio.lowlevel.checkpoint_if_cancelled()
            result = fn(*args)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return result
        return await trio.to_thread.run_sync(fn, *args, limiter=self._disk)

    async def _run_cpu(self, fn: Callable[..., T], *args: Any) -> T:
        # CPU-heavy work (restoring a snapshot) off the loop, unless inline (tests).
        if self._run_disk_inline:
            await trio.lowlevel.checkpoint_if_cancelled()
            result = fn(*args)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return result
        return await trio.to_thread.run_sync(fn, *args)

    async def _recover(self) -> None:
        state = await self._run_disk(self.storage.load)
        snap = await self._run_disk(self.storage.load_snapshot)
        if snap is not None:
            _, data = snap
            kv = KVStateMachine()
            await self._run_cpu(kv.restore, data)
            self.kv = kv
        self.core = RaftCore(
            self._core_config,
            self._rng,
            hard_state=state.hard_state,
            snapshot=state.snapshot,
            entries=state.entries,
            now=trio.current_time(),
        )
        log.info(
            "node=%s recovered term=%d snapshot=%d entries=%d commit=%d", self.id,
            state.hard_state.term, state.snapshot.index, len(state.entries),
            state.hard_state.commit,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: the driver plus one replication task per peer."""
        await self._recover()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for peer, link in self.links.items():
                send, recv = trio.open_memory_channel[Message](OUTBOX_SIZE)
                self._outboxes[peer] = send
                nursery.start_soon(self._replicate, peer, link, recv)
            nursery.start_soon(self._drive)
            nursery.start_soon(self._forwarder)
            self.started.set()
            task_status.started()

    # ================================================================= driver
    async def _drive(self) -> None:
        core = self._c
        await self._process_ready()
        while True:
            with trio.move_on_at(core.deadline):
                item = await self._inbox.receive()
                proposals: list[_Proposal] = []
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
            if core.leader_id != self._last_leader:
                self._last_leader = core.leader_id
                log.info("node=%s term=%d leader=%s role=%s", self.id, core.term,
                         core.leader_id, core.role.value)
                self._leader_changed.set()
                self._leader_changed = trio.Event()

    def _handle(self, item: object, proposals: list[_Proposal]) -> None:
        core = self._c
        now = trio.current_time()
        match item:
            case _Incoming(msgs=msgs):
                for m in msgs:
                    core.step(m, now)
            case _Proposal():
                if not item.abandoned:
                    proposals.append(item)
            case _Read():
                try:
                    core.read_index(item.ctx)
                    self._reads[item.ctx] = item
                except NotLeader:
                    item.slot.settle(error=NoLeader("no leader is known"))
            case _Rpc():
                self._rpcs[(item.msg.src, type(item.msg))] = item
                core.step(item.msg, now)
            case _Call(fn=fn):
                fn()

    def _propose(self, proposals: list[_Proposal]) -> None:
        if not proposals:
            return
        core = self._c
        datas = [d for p in proposals for d in p.datas]
        try:
            first, term = core.propose(datas)
        except NotLeader as exc:
            for p in proposals:
                p.slot.settle(error=exc)
            return
        except ProposalDropped as exc:
            for p in proposals:
                p.slot.settle(error=exc)
            return
        self.stats["proposals"] += len(datas)
        self.stats["batches"] += 1
        i = first
        for p in proposals:
            p.index, p.term = i, term
            for k in range(len(p.datas)):
                self._pending[i + k] = p
            i += len(p.datas)

    async def _process_ready(self) -> None:
        core = self._c
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
            self._wake_applied()
            self._maybe_snapshot()

    async def _persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            data = await self._run_disk(
                self.storage.install_incoming, rd.snapshot, rd.snapshot_keep_entries
            )
            kv = KVStateMachine()
            await self._run_cpu(kv.restore, data)
            self.kv = kv
            self.stats["snapshots_installed"] = self.stats.get("snapshots_installed", 0) + 1
            log.info("node=%s installed snapshot index=%d", self.id, rd.snapshot.index)
        if rd.hard_state is not None or rd.entries:
            await self._run_disk(self.storage.save, rd.hard_state, rd.entries)
            self.stats["fsyncs"] += 1

    def _route(self, m: Message) -> None:
        rpc = self._rpcs.pop((m.dst, _REQUEST_OF.get(type(m), type(None))), None)
        if rpc is not None:
            rpc.slot.settle(m)
            return
        out = self._outboxes.get(m.dst)
        if out is None:
            return
        # A slow peer never blocks the driver; Raft re-sends what is lost.
        with contextlib.suppress(trio.WouldBlock):
            out.send_nowait(m)

    def _apply(self, rd: Ready) -> None:
        for e in rd.committed:
            if e.index <= self.kv.applied_index:
                continue  # already covered by an installed snapshot
            result: Result | None = None
            if e.kind is EntryKind.NORMAL:
                result = self.kv.apply(e.index, e.data)
                self._bytes_since_snapshot += len(e.data)
            else:
                self.kv.apply_noop(e.index)
            self._settle_proposal(e, result)
        for ctx, index in rd.read_states:
            r = self._reads.pop(ctx, None)
            if r is None:
                continue
            if index < 0:
                r.slot.settle(error=NoLeader("leadership changed during the read"))
            else:
                r.slot.settle(index)

    def _settle_proposal(self, e: Entry, result: Result | None) -> None:
        p = self._pending.pop(e.index, None)
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

    def _wake_applied(self) -> None:
        applied = self.kv.applied_index
        w = self._applied_waiters
        while w and w[0][0] <= applied:
            heapq.heappop(w)[2].set()

    def _maybe_snapshot(self) -> None:
        """Snapshot at a threshold of entries or bytes since the last snapshot."""
        core = self._c
        if self._snapshotting or (
            self.kv.applied_index - core.log.snapshot.index < self.config.snapshot_entries
            and self._bytes_since_snapshot < self.config.snapshot_bytes
        ):
            return
        try:
            # The configuration in force at `index`, not the latest one.
            meta = core.snapshot_meta(self.kv.applied_index)
        except ValueError:
            return
        # Copy the state now (cheap); encode and write it off the event loop,
        # so clients are not stalled by a large snapshot.
        encode = self.kv.snapshot_later()
        self._snapshotting = True
        self._bytes_since_snapshot = 0
        self._spawn(self._write_snapshot, meta, encode)

    async def _write_snapshot(self, meta: SnapshotMeta, encode: Callable[[], bytes]) -> None:
        try:
            t0 = trio.current_time()
            data = await self._run_cpu(encode)
            # A snapshot installed from the leader meanwhile may have overtaken
            # this one; storage refuses an older snapshot, and that is right.
            if meta.index <= self._c.log.snapshot.index:
                self._snapshotting = False
                return
            try:
                await self._run_disk(self.storage.save_snapshot, meta, data)
            except ValueError as exc:  # overtaken while waiting for the disk
                log.info("node=%s local snapshot at %d dropped: %s", self.id, meta.index, exc)
                self._snapshotting = False
                return
            self.stats["snapshots"] += 1
            self.stats["last_snapshot_bytes"] = len(data)
            self.stats["last_snapshot_ms"] = round((trio.current_time() - t0) * 1000)
            log.info("node=%s snapshot index=%d bytes=%d ms=%d", self.id, meta.index,
                     len(data), self.stats["last_snapshot_ms"])

            def compact() -> None:
                # The core keeps a catch-up tail and names the compaction
                # point; this storage already compacted to meta.index itself.
                self._c.snapshot_taken(meta)
                self._snapshotting = False

            await self._inbox_send.send(_Call(compact))
        except BaseException:
            self._snapshotting = False
            raise

    _nursery: trio.Nursery | None = None

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    # ============================================================ replication
    async def _replicate(
        self, peer: str, link: PeerLink, outbox: trio.MemoryReceiveChannel[Message]
    ) -> None:
        """Drain this peer's outbox, coalescing queued messages into one request."""
        async for first in outbox:
            batch = [first]
            while len(batch) < MAX_BATCH_MESSAGES:
                try:
                    batch.append(outbox.receive_nowait())
                except trio.WouldBlock:
                    break
            # Annotated: mypy narrows the comprehension to "Message minus
            # InstallSnapshot", and PeerLink takes list[Message] (invariant).
            msgs: list[Message] = [m for m in batch if not isinstance(m, InstallSnapshot)]
            if msgs:
                try:
                    await link.send_messages(msgs)
                except LinkError as exc:
                    log.debug("node=%s to %s: %s", self.id, peer, exc)
            for m in batch:
                if isinstance(m, InstallSnapshot):
                    await self._send_snapshot(link, m)

    async def _send_snapshot(self, link: PeerLink, msg: InstallSnapshot) -> None:
        offset = 0
        try:
            while True:
                chunk = await self._run_disk(
                    self.storage.read_snapshot_chunk, msg.meta, offset, SNAPSHOT_CHUNK
                )
                nxt = await self._run_disk(
                    self.storage.read_snapshot_chunk, msg.meta, offset + len(chunk), 1
                )
                done = not nxt
                await link.send_snapshot_chunk(msg, offset, chunk, done)
                offset += len(chunk)
                if done:
                    # Every chunk is out: the follower's answer follows.
                    await self._inbox_send.send(
                        _Call(lambda: self._c.report_snapshot(msg.dst, True))
                    )
                    return
        except (LinkError, KeyError) as exc:
            log.info("node=%s snapshot to %s failed: %r", self.id, msg.dst, exc)
            await self._inbox_send.send(_Call(lambda: self._c.report_snapshot(msg.dst, False)))

    # ========================================================== inbound (peers)
    def receive_messages(self, msgs: list[Message]) -> None:
        """Hand peer messages to the driver; dropped (Raft re-sends) if it is swamped."""
        with contextlib.suppress(trio.WouldBlock):
            self._inbox_send.send_nowait(_Incoming(msgs))

    async def receive_snapshot_chunk(
        self, msg: InstallSnapshot, offset: int, data: bytes, done: bool
    ) -> None:
        """Stage a chunk; once all are on disk, the core decides whether to install."""
        if msg.term < self._c.term:
            raise ValueError("snapshot from a stale term")
        await self._run_disk(self.storage.write_incoming_chunk, msg.meta, offset, data)
        if done:
            await self._inbox_send.send(_Incoming([msg]))

    async def rpc(self, msg: Message, timeout: float = 1.0) -> Message | None:
        """Step a course-route request and return the core's direct answer (or None)."""
        item = _Rpc(msg)
        await self._inbox_send.send(item)
        with trio.move_on_after(timeout):
            await item.slot.done.wait()
        self._rpcs.pop((msg.src, type(msg)), None)
        return item.slot.value if item.slot.done.is_set() else None

    # ======================================================== client requests
    def _enqueue(self, item: object) -> None:
        if self._stopping:
            raise ShuttingDown("the node is shutting down")
        try:
            self._inbox_send.send_nowait(item)
        except trio.WouldBlock:
            raise Overloaded("the node's request queue is full") from None

    async def propose(self, datas: list[bytes], timeout: float | None = None) -> list[Any]:
        """Replicate commands; return their state-machine results once applied here.

        Raises NotLeader (nothing was appended), ProposalDropped (appended, then
        overwritten: it will never apply), or UnknownOutcome (appended, fate
        unknown within the timeout).
        """
        p = _Proposal(list(datas))
        self._enqueue(p)
        with trio.move_on_after(timeout or self.config.request_timeout_s):
            await p.slot.done.wait()
        if not p.slot.done.is_set():
            for k in range(len(p.datas)):
                self._pending.pop(p.index + k, None)
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
        r = _Read(next(self._ctx))
        self._enqueue(r)
        deadline = trio.current_time() + (timeout or self.config.request_timeout_s)
        with trio.move_on_at(deadline):
            await r.slot.done.wait()
        if not r.slot.done.is_set():
            self._reads.pop(r.ctx, None)
            raise NoQuorum("leadership could not be confirmed by a majority in time")
        if r.slot.error is not None:
            raise r.slot.error
        index: int = r.slot.value
        with trio.move_on_at(deadline):
            await self.wait_applied(index)
            return index
        raise NoQuorum("this node could not catch up to the read index in time")

    async def wait_applied(self, index: int) -> None:
        if self.kv.applied_index >= index:
            return
        ev = trio.Event()
        heapq.heappush(self._applied_waiters, (index, next(self._waiter_seq), ev))
        await ev.wait()

    async def wait_for_leader(self, timeout: float) -> str | None:
        with trio.move_on_after(timeout):
            while self.leader_id is None:
                await self._leader_changed.wait()
        return self.leader_id

    # ------------------------------------------------------ forwarding writes
    async def forward(self, data: bytes, timeout: float | None = None) -> Any:
        """Relay one write to the leader (batched with concurrent ones); its result.

        Raises NoLeader (not sent, or refused before being appended: safe to
        retry), ProposalDropped, NoQuorum, or UnknownOutcome.
        """
        if self._stopping:
            raise ShuttingDown("the node is shutting down")
        f = _Forward(data)
        try:
            self._fwd_send.send_nowait(f)
        except trio.WouldBlock:
            raise Overloaded("the node's forwarding queue is full") from None
        with trio.move_on_after(timeout or self.config.request_timeout_s):
            await f.slot.done.wait()
        if not f.slot.done.is_set():
            if not f.sent:
                f.abandoned = True
                raise NoLeader("no leader could be reached in time")
            raise UnknownOutcome("the leader did not answer in time")
        if f.slot.error is not None:
            raise f.slot.error
        return f.slot.value

    async def _forwarder(self) -> None:
        """Drain forwarded writes into batches, several batches in flight."""
        assert self._nursery is not None
        async for first in self._fwd_recv:
            batch = [first]
            while len(batch) < FORWARD_BATCH:
                try:
                    batch.append(self._fwd_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            batch = [f for f in batch if not f.abandoned]
            if not batch:
                continue
            await self._fwd_inflight.acquire()
            self._nursery.start_soon(self._forward_batch, batch)

    async def _forward_batch(self, batch: list[_Forward]) -> None:
        try:
            leader = self.leader_id
            if leader is None or leader == self.id:
                leader = await self.wait_for_leader(self._election_timeout[1] * 2)
            batch = [f for f in batch if not f.abandoned]
            if leader == self.id:
                # We became the leader meanwhile: propose directly.
                for f in batch:
                    f.sent = True
                try:
                    results = await self.propose([f.data for f in batch])
                except Exception as exc:  # settle every waiter with the same error
                    for f in batch:
                        f.slot.settle(error=exc)
                    return
                for f, r in zip(batch, results, strict=True):
                    f.slot.settle(r)
                return
            link = self.links.get(leader) if leader else None
            if link is None:
                for f in batch:
                    f.slot.settle(error=NoLeader("no leader is known"))
                return
            for f in batch:
                f.sent = True
            try:
                raw = await link.propose([f.data for f in batch], self.config.request_timeout_s)
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
            self._fwd_inflight.release()

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
            with contextlib.suppress(RaftError):  # NotLeader, TransferRefused
                core.transfer_leadership(target)

        await self._inbox_send.send(_Call(start))
        with trio.move_on_after(timeout):
            while core.role is Role.LEADER:
                await self._leader_changed.wait()
        return core.role is not Role.LEADER

    def stop_accepting(self) -> None:
        """Shutdown has begun: refuse new requests, and never campaign again
        (a node on its way out must not start elections while it drains)."""
        self._stopping = True
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


# Course routes answer synchronously: which request type each response answers.
_REQUEST_OF: dict[type, type] = {
    RequestVoteResponse: RequestVote,
    AppendEntriesResponse: AppendEntries,
}
