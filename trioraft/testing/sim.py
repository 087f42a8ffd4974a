"""Deterministic simulation of a Raft cluster: virtual time, a faulty network, crashes.

Every run is a pure function of its seed. The simulation drives real
`RaftCore`s exactly as the runtime does (persist -> send -> apply -> advance),
over a network that loses, delays, reorders and duplicates messages and can be
partitioned, and crashes nodes, which restart from what they had persisted.
After every step it checks Raft's safety properties:

- Election Safety: at most one leader per term;
- Log Matching: same (index, term) => same entry and same history before it;
- Leader Completeness: a new leader holds every entry committed before it;
- State Machine Safety: no two nodes apply different entries at an index;
- commit indexes never move back (per incarnation) and committed entries never change;
- applied <= committed on every node;
- ReadIndex: a read index is >= every index committed when the read began;
- a leader's match_index for a follower never moves back within its term;
- no write's answer contradicts its entry's fate: a write answered "dropped"
  is never applied anywhere, one answered "ok" is applied (the runtime's
  rule: each write -- relayed batches included -- is settled by its own entry).

Workload: clients propose at the leader or at followers, which relay their
writes to the leader in batches as the runtime does; some seeds have a slow
link (high latency, low bandwidth, FIFO) to one node, which is also down for
the last stretch of the faults; snapshots are taken every few entries and the
core keeps a catch-up tail (CoreConfig.snapshot_catchup_entries).

After the faults stop, proposals go on (sustained load) and every node must
apply what was committed shortly after within a bound *while they continue*
(issue 11: catching up must not need the writes to stop); then liveness: a
fresh proposal is applied on every node within a bounded virtual time.

Run many seeds: ``python -m trioraft.testing.sim --seeds 500``.
Replay one: ``python -m trioraft.testing.sim --seed 1234 [--nodes 5] [--unsafe X]``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import heapq
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trioraft.core import (
    AppendEntries,
    ConfChange,
    Configuration,
    CoreConfig,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Member,
    Message,
    NotLeader,
    ProposalDropped,
    RaftCore,
    RaftError,
    Ready,
    Role,
    SnapshotMeta,
)

__all__ = ["SafetyViolation", "SimConfig", "SimResult", "Simulation", "run_seed"]


class SafetyViolation(AssertionError):
    pass


@dataclass(frozen=True)
class SimConfig:
    nodes: int = 3
    fault_time: float = 2.0  # seconds of virtual time with faults
    liveness_time: float = 10.0  # bound for recovery after faults stop
    # Deliberately broken variants (teeth): core-level names from CoreConfig.unsafe,
    # plus "ack_before_persist" which the simulated runtime implements.
    unsafe: frozenset[str] = frozenset()
    snapshots: bool = True
    check_liveness: bool = True
    # Mean seconds between faults; small values give the leader churn of the
    # paper's Figure 8 (entries replicated to a minority, then a new leader).
    fault_interval: float = 0.2
    max_entries_per_msg: int | None = None  # None: drawn per seed from 1, 4, 64
    # Probability that a newly elected leader crashes before its first batch
    # leaves (the leader churn behind the paper's Figure 8).
    churn: float | None = None  # None: drawn per seed from 0, 0, 0.5
    # Probability that a leader crashes right after sending a batch (before it
    # applies anything): leaves entries on an arbitrary subset of followers.
    crash_after_send: float = 0.0
    drop: float | None = None  # message loss rate; None: drawn per seed
    # Probability, at each crash point of each Ready, that the node crashes
    # there: before persisting (the write is lost), between persisting and
    # sending (durable, unacknowledged), between sending and applying, and
    # right after a snapshot is written (before the log is compacted).
    crash_points: float = 0.0005
    # A slow link (high latency, low bandwidth) to one node; None: drawn per seed.
    slow_link: bool | None = None
    # Followers relay client writes to the leader in batches, as the runtime
    # does; None: drawn per seed.
    relay: bool | None = None
    # After the faults stop, proposals go on for this long, and every node must
    # apply what was committed `settle` seconds in within `converge_bound`
    # seconds more -- while the load continues (issue 11: catching up must not
    # need the writes to stop).
    load_time: float = 2.5
    load_interval: float = 0.020  # mean seconds between client requests meanwhile
    settle: float = 0.5
    converge_bound: float = 2.0
    # Membership changes under the faults (add learner, promote, remove --
    # the leader too --, transfer, wipe and re-admit); None: drawn per seed.
    membership: bool | None = None
    # The core's catch-up tail (CoreConfig.snapshot_catchup_entries); None:
    # drawn per seed (5,000 behind a slow link, else 4, 64 or 5,000 so that
    # InstallSnapshot is exercised too).
    catchup: int | None = None


# Broken variants the simulated runtime (not the core) implements.
SIM_UNSAFE = frozenset({"ack_before_persist", "settle_batch_by_first", "no_catchup_tail",
                        "wipe_keeps_id"})
CORE_UNSAFE = frozenset({"commit_old_terms", "vote_without_log_check", "no_truncate",
                         "match_moves_back", "two_changes", "change_before_commit"})


# SimConfig field -> the command-line flag that sets it (for replay commands).
_FLAGS = {
    "fault_time": "--fault-time",
    "fault_interval": "--fault-interval",
    "churn": "--churn",
    "max_entries_per_msg": "--max-entries",
    "crash_after_send": "--crash-after-send",
    "drop": "--drop",
    "crash_points": "--crash-points",
    "slow_link": "--slow-link",
    "relay": "--relay",
    "catchup": "--catchup",
    "membership": "--membership",
}


@dataclass
class SimResult:
    seed: int
    config: SimConfig
    steps: int = 0
    committed: int = 0
    faults: int = 0
    elections: int = 0
    reads: int = 0
    violation: str | None = None

    def replay_command(self) -> str:
        c = self.config
        cmd = f"python -m trioraft.testing.sim --seed {self.seed} --nodes {c.nodes}"
        cmd += "".join(f" --unsafe {u}" for u in sorted(c.unsafe))
        default = SimConfig()
        for name, flag in _FLAGS.items():
            if getattr(c, name) != getattr(default, name):
                cmd += f" {flag} {getattr(c, name)}"
        return cmd


@dataclass
class _Disk:
    """What a node has on stable storage: all that survives a crash."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    snapshot_data: tuple[bytes, ...] = ()  # the applied command digests it covers
    compacted: tuple[int, int] = (0, 0)  # the compaction point: entries start after it
    entries: list[Entry] = field(default_factory=list)

    def save(self, rd: Ready, snap_data: tuple[bytes, ...] | None) -> None:
        if rd.snapshot is not None:
            assert snap_data is not None
            self.snapshot = rd.snapshot
            self.snapshot_data = snap_data
            self.compacted = (rd.snapshot.index, rd.snapshot.term)
            if rd.snapshot_keep_entries:
                self.entries = [e for e in self.entries if e.index > rd.snapshot.index]
            else:
                self.entries = []
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first]
            self.entries.extend(rd.entries)


def _size(msg: Message, snap: tuple[bytes, ...] | None) -> int:
    """Bytes a message takes on the wire (roughly, for the slow link)."""
    if isinstance(msg, AppendEntries):
        return 64 + sum(len(e.data) + 24 for e in msg.entries)
    if isinstance(msg, InstallSnapshot):
        return 64 + 1000 * len(snap or ())  # the state: ~1 KB per applied write
    return 64


@functools.lru_cache(maxsize=1 << 16)
def _digest(e: Entry) -> bytes:
    return hashlib.blake2b(
        e.term.to_bytes(8, "big") + bytes([e.kind]) + e.data, digest_size=8
    ).digest()


class _Node:
    def __init__(self, sim: Simulation, node_id: str, joiner: bool = False) -> None:
        self.sim = sim
        self.id = node_id
        # A joiner starts empty and knows no configuration: it never votes or
        # counts until a membership change admits it (PLAN.md's identity rules).
        self.joiner = joiner
        self.disk = _Disk()
        self.up = True
        self.incarnation = 0
        self.timer_gen = 0
        self.core = self._boot()
        # Digests of applied entries, index i at position i-1 (the state machine).
        self.applied: list[bytes] = []
        self.deferred: list[Ready] = []  # "ack_before_persist": not yet on disk
        self.led_term = -1  # the last term we saw it lead (to check each new leader once)

    def _boot(self) -> RaftCore:
        max_entries = self.sim.config.max_entries_per_msg or self.sim.rng.choice(
            [16, 64] if self.sim.slow_node else [1, 4, 64]
        )
        cfg = CoreConfig(
            id=self.id,
            voters=frozenset() if self.joiner else frozenset(self.sim.initial_ids),
            unsafe=self.sim.config.unsafe & CORE_UNSAFE,
            snapshot_catchup_entries=(
                0 if "no_catchup_tail" in self.sim.config.unsafe else self.sim.catchup
            ),
            max_entries_per_msg=max_entries,
            # Only a deep enough pipeline keeps up with the load (bandwidth-
            # delay product): one-entry messages and slow links get 8 in
            # flight; elsewhere shallow pipelines are tried too.
            max_inflight=(
                8 if self.sim.slow_node or max_entries == 1 else self.sim.rng.choice([2, 8])
            ),
        )
        d = self.disk
        try:
            return RaftCore(
                cfg,
                random.Random(self.sim.rng.random()),
                hard_state=d.hard_state,
                snapshot=d.snapshot,
                entries=list(d.entries),
                now=self.sim.now,
                compacted=d.compacted,
            )
        except ValueError as exc:  # what it persisted does not fit together
            raise SafetyViolation(f"{self.id} cannot restart from its disk: {exc}") from None

    def crash(self) -> None:
        self.up = False
        self.deferred = []  # unpersisted writes are lost
        self.timer_gen += 1
        self.sim.forget_pending(self.id)  # its clients' answers are now unknown

    def restart(self) -> None:
        self.up = True
        self.incarnation += 1
        self.core = self._boot()
        self.applied = list(self.disk.snapshot_data)
        self.sim.commit_seen[self.id] = self.core.commit_index
        self.sim.checked.pop(self.id, None)
        self.sim.after_input(self)


class Simulation:
    def __init__(self, seed: int, config: SimConfig) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.now = 0.0
        self.initial_ids = [f"n{i}" for i in range(1, config.nodes + 1)]
        self.ids = list(self.initial_ids)  # the processes that exist (member ids)
        self.result = SimResult(seed, config)
        self._seq = 0
        self._events: list[tuple[float, int, str, Any]] = []
        # Network faults, drawn per seed.
        r = self.rng
        self.drop = r.choice([0.0, 0.01, 0.05, 0.15])
        if config.drop is not None:
            self.drop = config.drop
        self.churn = r.choice([0.0, 0.0, 0.5]) if config.churn is None else config.churn
        self.dup = r.choice([0.0, 0.02])
        self.delay = (0.0005, r.choice([0.002, 0.010, 0.030]))
        self.reorder = r.choice([0.0, 0.05])
        self.faulty = True
        self.blocked: set[tuple[str, str]] = set()  # (src, dst) pairs cut
        self.snapshot_every = r.choice([8, 25, 1000]) if config.snapshots else 10**9
        # A slow link to one node (30-60 ms each way, 20-80 KB/s), FIFO like TCP.
        slow = r.random() < 0.4 if config.slow_link is None else config.slow_link
        self.slow_node = r.choice(self.ids) if slow else None
        self.slow_latency = r.uniform(0.03, 0.06)
        self.slow_bandwidth = r.uniform(20_000, 80_000)  # bytes per second
        self.link_free: dict[tuple[str, str], float] = {}
        self.fifo: dict[tuple[str, str], float] = {}  # last delivery time per link
        self.relay = r.random() < 0.5 if config.relay is None else config.relay
        if self.slow_node and config.snapshots:
            self.snapshot_every = r.choice([8, 25])  # snapshots while it catches up
        self.catchup: int = (
            config.catchup if config.catchup is not None
            else 5000 if self.slow_node else r.choice([4, 64, 5000])
        )
        # Proposals and their answers (the fate check). A write is identified
        # by its data; each is proposed at most once.
        self.relay_buf: dict[str, list[bytes]] = {i: [] for i in self.ids}
        # (leader, index) -> (term, data, batch) awaiting the leader's apply.
        self.pending: dict[tuple[str, int], tuple[int, bytes, list[bytes]]] = {}
        self.answers: dict[bytes, str] = {}  # data -> "ok" | "dropped"
        self.committed_data: set[bytes] = set()
        self.matches: dict[tuple[str, int], dict[str, int]] = {}  # (leader, term) -> matches
        self.loading = True  # clients keep proposing
        self.checked: dict[str, int] = {}  # node -> commit index checked up to
        # Safety bookkeeping.
        self.leaders: dict[int, str] = {}
        self.entries_seen: dict[tuple[int, int], tuple[bytes, int | None]] = {}
        self.committed: dict[int, bytes] = {}  # index -> digest, once committed anywhere
        self.commit_seen: dict[str, int] = {}
        self.max_commit = 0
        self.pending_reads: dict[int, int] = {}  # ctx -> max commit when issued
        self._ctx = 0
        self._proposal = 0
        # Membership changes (issue 12): the operator adds, promotes, removes,
        # transfers leadership and wipes disks; a wiped node returns under a
        # fresh member id (a joiner) and is re-admitted by changes.
        self.membership = r.random() < 0.5 if config.membership is None else config.membership
        self.gone: set[str] = set()  # ids whose process (disk) is gone for good
        self.joiners: list[str] = []  # fresh ids waiting to be admitted
        self._fresh = 0
        self.nodes = {i: _Node(self, i) for i in self.ids}
        for n in self.nodes.values():
            self.commit_seen[n.id] = n.core.commit_index
            self._arm(n)
        self._nobody = _Node(self, "-")  # stands for a process that is gone
        self._nobody.up = False

    # ------------------------------------------------------------ event queue
    def _push(self, at: float, kind: str, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, payload))

    def _arm(self, n: _Node) -> None:
        n.timer_gen += 1
        self._push(n.core.deadline, "timer", (n.id, n.timer_gen))

    def send(self, src: _Node, msg: Message, snap: tuple[bytes, ...] | None) -> None:
        if (msg.src, msg.dst) in self.blocked or (self.faulty and self.rng.random() < self.drop):
            if isinstance(msg, InstallSnapshot):
                self._snapshot_report(src, msg, False, self.now + 0.05)
            return
        copies = 2 if self.faulty and self.rng.random() < self.dup else 1
        key = (msg.src, msg.dst)
        for _ in range(copies):
            lo, hi = self.delay
            d = lo + self.rng.random() * (hi - lo)
            at = self.now + d
            if self.faulty and self.rng.random() < self.reorder:
                at += self.rng.random() * 0.1  # overtaken by later messages
            else:
                # A link delivers in order (TCP-like) unless a fault reorders it.
                at = max(at, self.fifo.get(key, 0.0))
                self.fifo[key] = at
            if self.slow_node in (msg.src, msg.dst):
                # Serialised through the link at its bandwidth, then its latency.
                start = max(self.now, self.link_free.get(key, 0.0))
                self.link_free[key] = start + _size(msg, snap) / self.slow_bandwidth
                at = self.link_free[key] + self.slow_latency + d
            self._push(at, "msg", (msg, snap))
            if isinstance(msg, InstallSnapshot):
                self._snapshot_report(src, msg, True, at)

    def _snapshot_report(self, src: _Node, msg: InstallSnapshot, ok: bool, at: float) -> None:
        """The sender's runtime learns how its transfer went, as the real one
        does from its HTTP calls: failed (report_snapshot(dst, False)), or
        every chunk delivered (True; the follower's answer may still be lost)."""
        self._push(at, "snap_report", (src.id, src.incarnation, msg.dst, ok))

    # ------------------------------------------------------------ node driver
    def after_input(self, n: _Node) -> None:
        """Process every Ready the core has, as the runtime would."""
        unsafe_ack = "ack_before_persist" in self.config.unsafe
        while n.up and n.core.has_ready():
            rd = n.core.ready()
            snap_data = None
            if rd.snapshot is not None:
                snap_data = self._incoming_snapshot.get(n.id)
            self._check_ready(n, rd)
            if (
                self.faulty and n.core.role is Role.LEADER and n.led_term != n.core.term
                and self.rng.random() < self.churn
            ):
                # Leader churn: a brand-new leader's first batch is lost on the
                # wire and it dies right after persisting it, leaving its no-op
                # on its own disk only (the setup of the paper's Figure 8).
                n.disk.save(rd, snap_data)
                n.crash()
                self._push(self.now + self.rng.uniform(0.01, 0.3), "restart", n.id)
                return
            for m in rd.early_messages:  # a leader replicates while it persists
                self.send(n, m, n.disk.snapshot_data if isinstance(m, InstallSnapshot) else None)
            if self._crash_point(n):  # before the fsync: this Ready is lost
                return
            # 1. persist (fsync) -- or, broken, defer it and answer anyway.
            if unsafe_ack:
                n.deferred.append(rd)
                self._push(self.now + self.rng.random() * 0.02, "flush", (n.id, n.incarnation))
                if rd.snapshot is not None:
                    n.disk.save(Ready(snapshot=rd.snapshot,
                                      snapshot_keep_entries=rd.snapshot_keep_entries), snap_data)
            else:
                n.disk.save(rd, snap_data)
            if rd.snapshot is not None:
                assert snap_data is not None
                n.applied = list(snap_data)
            if self._crash_point(n):  # durable, but nobody was told
                return

            # 2. send
            for m in rd.messages:
                payload = None
                if isinstance(m, InstallSnapshot):
                    payload = n.disk.snapshot_data
                    assert m.meta == n.disk.snapshot
                self.send(n, m, payload)
            if (
                self.faulty and (rd.messages or rd.early_messages)
                and n.core.role is Role.LEADER
                and self.rng.random() < self.config.crash_after_send
            ):
                n.crash()
                self._push(self.now + self.rng.uniform(0.01, 0.3), "restart", n.id)
                return
            if self._crash_point(n):  # sent, not applied
                return
            # 3. apply
            for e in rd.committed:
                self._apply(n, e)
            for ctx, index in rd.read_states:
                self._check_read(n, ctx, index)
            n.core.advance(rd)
            self._check_node(n)
            # Snapshot and compact now and then, as the runtime does.
            core = n.core
            if core.applied_index - core.log.snapshot.index >= self.snapshot_every:
                # As the runtime does: meta from the core, write the snapshot,
                # tell the core, then compact stable storage to the point it names.
                idx = core.applied_index
                meta = core.snapshot_meta(idx)
                n.disk.snapshot = meta
                n.disk.snapshot_data = tuple(n.applied[:idx])
                if self._crash_point(n):  # snapshot durable, log not yet compacted
                    return
                point = core.snapshot_taken(meta)
                if self._crash_point(n):  # memory compacted, stable storage not yet
                    return
                n.disk.compacted = point
                n.disk.entries = [e for e in n.disk.entries if e.index > point[0]]
        self._arm(n)

    _incoming_snapshot: dict[str, tuple[bytes, ...]]

    def _crash_point(self, n: _Node) -> bool:
        if self.faulty and self.rng.random() < self.config.crash_points:
            n.crash()
            self._push(self.now + self.rng.uniform(0.01, 0.3), "restart", n.id)
            return True
        return False

    def _apply(self, n: _Node, e: Entry) -> None:
        d = _digest(e)
        assert e.index == len(n.applied) + 1, "applied out of order"
        # State Machine Safety: every node applies the same entry at an index.
        prev = self.committed.get(e.index)
        if prev is not None and prev != d:
            raise SafetyViolation(
                f"state machine safety: {n.id} applied a different entry at {e.index}"
            )
        self.committed[e.index] = d
        n.applied.append(d)
        if e.kind is EntryKind.NORMAL:
            self.committed_data.add(e.data)
            if self.answers.get(e.data) == "dropped":
                raise SafetyViolation(
                    f"answer contradicts fate: a write was answered 'dropped' but {n.id} "
                    f"applied it at {e.index}"
                )
        self._settle(n, e)

    # ------------------------------------------------------- proposals' fate
    def _settle(self, n: _Node, e: Entry) -> None:
        """The leader's runtime answers a write when it applies its index.

        The correct rule (issue 11 #1): each write is settled by its *own*
        entry -- applied with the term it was appended in: its result;
        another entry took the index: "dropped", for that write alone.
        """
        p = self.pending.pop((n.id, e.index), None)
        if p is None:
            return
        term, data, batch = p
        if e.term == term:
            self.answers.setdefault(data, "ok")
            return
        self._answer_dropped(data)
        if "settle_batch_by_first" in self.config.unsafe:
            # Broken (the old _settle_proposal): the whole batch is answered
            # 503 at its first replaced entry, although a prefix applied.
            for other in batch:
                if self.answers.get(other) == "ok" or other not in self.answers:
                    self.answers[other] = "dropped"
                    if other in self.committed_data:
                        raise SafetyViolation(
                            "answer contradicts fate: a write was answered 'dropped' but "
                            "was applied"
                        )

    def _answer_dropped(self, data: bytes) -> None:
        if data in self.committed_data:
            raise SafetyViolation(
                "answer contradicts fate: a write was answered 'dropped' but was applied"
            )
        self.answers[data] = "dropped"

    def forget_pending(self, node_id: str) -> None:
        """A crashed leader's runtime loses its reply slots: those answers are unknown."""
        for key in [k for k in self.pending if k[0] == node_id]:
            del self.pending[key]

    def _propose_batch(self, n: _Node, datas: list[bytes]) -> None:
        try:
            first, term = n.core.propose(datas)
        except (NotLeader, ProposalDropped):
            return  # refused before anything was appended: a definite "not applied"
        for i, d in enumerate(datas):
            self.pending[(n.id, first + i)] = (term, d, datas)
        self.after_input(n)

    # ------------------------------------------------------------------ checks
    def _check_ready(self, n: _Node, rd: Ready) -> None:
        log = n.core.log
        for e in rd.entries:
            prev_term = log.term_at(e.index - 1)
            key = (e.index, e.term)
            val = (_digest(e), prev_term)
            seen = self.entries_seen.get(key)
            if seen is None:
                self.entries_seen[key] = val
            elif seen[0] != val[0] or (
                seen[1] is not None and val[1] is not None and seen[1] != val[1]
            ):
                raise SafetyViolation(
                    f"log matching: {n.id} holds a different entry/history at "
                    f"index {e.index} term {e.term}"
                )

    def _check_node(self, n: _Node) -> None:
        core = n.core
        c = core.commit_index
        if c < self.commit_seen[n.id]:
            raise SafetyViolation(f"{n.id} commit index moved back {self.commit_seen[n.id]}->{c}")
        self.commit_seen[n.id] = c
        if c > self.max_commit:
            self.max_commit = c
            self._check_commit_is_durable(n, c)
        if core.applied_index > c:
            raise SafetyViolation(f"{n.id} applied {core.applied_index} > committed {c}")
        if core.role is Role.LEADER:
            other = self.leaders.setdefault(core.term, n.id)
            if other != n.id:
                raise SafetyViolation(f"election safety: {other} and {n.id} lead term {core.term}")
            if n.led_term != core.term:
                n.led_term = core.term
                self.result.elections += 1
                self._check_completeness(n)
                if self.membership and self.faulty:
                    # An operator retrying a change hits the new leader at once
                    # (before its no-op commits, sometimes).
                    self._push(self.now, "member", None)
            # A leader's match_index for a follower never moves back within its
            # term: the commit rule counts it.
            seen = self.matches.setdefault((n.id, core.term), {})
            for p, pr in core.progress.items():
                if pr.match_index < seen.get(p, 0):
                    raise SafetyViolation(
                        f"{n.id}'s match_index for {p} moved back {seen[p]}->{pr.match_index} "
                        f"in term {core.term}"
                    )
                seen[p] = pr.match_index
        # Committed entries never change, and the local log agrees with them.
        log = core.log
        # Entries newly committed since the last check (each is checked once
        # per incarnation: a committed entry can never change afterwards
        # without this check, or Log Matching's, seeing it).
        lo = max(log.offset + 1, c - 64, self.checked.get(n.id, 0) + 1)
        self.checked[n.id] = c
        for i in range(lo, c + 1):
            d = _digest(log.entry(i))
            prev = self.committed.get(i)
            if prev is None:
                self.committed[i] = d
            elif prev != d:
                raise SafetyViolation(f"{n.id} committed a different entry at index {i}")

    def _log_summary(self, n: _Node) -> tuple[int, int, int, int | None]:
        """(last term, last index, snapshot index, term at the checked index) as a
        node would vote after a crash-free timeout (its in-memory log) or, if
        down, after restarting (its disk)."""
        if n.up:
            log = n.core.log
            return log.last_term(), log.last_index(), log.snapshot.index, None
        d = n.disk
        last = d.entries[-1] if d.entries else None
        lt = last.term if last else d.compacted[1]
        li = last.index if last else d.compacted[0]
        return lt, li, d.snapshot.index, None

    def _holds(self, n: _Node, index: int, term: int) -> bool:
        if n.up:
            log = n.core.log
            return index <= log.snapshot.index or log.term_at(index) == term
        d = n.disk
        if index <= d.snapshot.index:
            return True
        return any(e.index == index and e.term == term for e in d.entries)

    def _config_of(self, n: _Node) -> Configuration:
        """The configuration a node would use now (down: after restarting from disk)."""
        if n.up:
            return n.core.configuration
        d = n.disk
        cfg = d.snapshot.config if d.snapshot.config.members else (
            Configuration() if n.joiner else Configuration.of_voters(self.initial_ids)
        )
        for e in d.entries:
            if e.index > d.snapshot.index and e.kind is EntryKind.CONFIG:
                cfg = Configuration.decode(e.data)
        return cfg

    def _check_commit_is_durable(self, n: _Node, index: int) -> None:
        """Commit safety: no node lacking a committed entry could win an election.

        Raft's Leader Completeness proof implies, for every reachable state,
        that a node missing a committed entry has a log less up to date than
        some member of every quorum. If a node lacking it could gather a
        quorum of votes now, some schedule would elect it and lose the entry:
        the commit was premature (this is what the paper's Figure 8 shows).
        Across membership changes: a candidate asks the voters of *its*
        configuration, a voter grants only to a voter of *its own*, and a
        process whose disk is gone votes for nobody.
        """
        term = n.core.log.term_at(index)
        if term is None:
            return
        summaries = {m.id: self._log_summary(m) for m in self.nodes.values()}
        configs = {m.id: self._config_of(m) for m in self.nodes.values()}
        for x in self.nodes.values():
            xcfg = configs[x.id]
            if x.id not in xcfg.voters or self._holds(x, index, term):
                continue
            xt, xi, _, _ = summaries[x.id]
            voters = sum(
                1 for y in xcfg.voters
                if y in summaries and (y == x.id or x.id in configs[y].voters)
                and (xt, xi) >= summaries[y][:2]
            )
            if voters >= len(xcfg.voters) // 2 + 1:
                raise SafetyViolation(
                    f"premature commit: {n.id} committed index {index} (term {term}) but "
                    f"{x.id}, which lacks it, could win an election with {voters} votes"
                )

    def _check_completeness(self, n: _Node) -> None:
        """Leader Completeness: a new leader's log holds every committed entry."""
        log = n.core.log
        for i, d in self.committed.items():
            if i <= log.snapshot.index:
                continue
            if i > log.last_index() or _digest(log.entry(i)) != d:
                raise SafetyViolation(
                    f"leader completeness: leader {n.id} of term {n.core.term} lacks "
                    f"committed entry {i}"
                )

    def _check_read(self, n: _Node, ctx: int, index: int) -> None:
        floor = self.pending_reads.pop(ctx, None)
        if floor is None or index < 0:
            return
        self.result.reads += 1
        if index < floor:
            raise SafetyViolation(
                f"stale read index: {n.id} got {index} but {floor} was committed when it began"
            )

    # ----------------------------------------------------------------- driving
    def _client(self) -> None:
        """A client proposes at a random node (followers refuse) or asks for a read."""
        leaders = [n for n in self.nodes.values() if n.up and n.core.role is Role.LEADER]
        if leaders and self.rng.random() < 0.7:
            n = self.rng.choice(leaders)  # a client that found the leader
        else:
            n = self.nodes[self.rng.choice(self.ids)]
        if not n.up:
            return
        if self.rng.random() < 0.25:
            self._ctx += 1
            try:
                n.core.read_index(self._ctx)
            except NotLeader:
                return
            self.pending_reads[self._ctx] = self.max_commit
        else:
            self._proposal += 1
            data = f"{self.seed}:{self._proposal}".encode()
            if n.core.role is Role.LEADER:
                self._propose_batch(n, [data])
            elif self.relay and n.core.leader_id is not None:
                # The follower's runtime relays it to the leader, batched with
                # other clients' writes (a burst of them: many clients).
                if not self.relay_buf[n.id]:
                    self._push(self.now + self.rng.uniform(0.005, 0.05), "relay", n.id)
                self.relay_buf[n.id].append(data)
                for _ in range(self.rng.randint(0, 7)):
                    self._proposal += 1
                    self.relay_buf[n.id].append(f"{self.seed}:{self._proposal}".encode())
            return
        self.after_input(n)

    def _relay(self, nid: str) -> None:
        """A follower sends its buffered writes to the leader it knows, as one batch."""
        n = self.nodes.get(nid, self._nobody)
        batch, self.relay_buf[nid] = self.relay_buf.get(nid, []), []
        leader = n.core.leader_id if n.up else None
        if not batch or leader is None or leader == nid or (nid, leader) in self.blocked:
            return  # not sent: the clients are told "no leader" (never applied)
        if self.faulty and self.rng.random() < self.drop:
            return  # lost: never proposed
        lo, hi = self.delay
        self._push(self.now + lo + self.rng.random() * (hi - lo), "relayed", (leader, batch))

    def _fault(self) -> None:
        r = self.rng
        self.result.faults += 1
        kind = r.choice(
            ["partition", "isolate_leader", "links", "ring", "crash", "crash_leader", "heal",
             "restart"]
        )
        if kind == "partition":
            ids = self.ids[:]
            r.shuffle(ids)
            cut = r.randint(1, len(ids) - 1)
            a, b = set(ids[:cut]), set(ids[cut:])
            self.blocked = {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
        elif kind == "links":
            # Random one-way link failures (asymmetric partitions).
            p = r.uniform(0.1, 0.5)
            self.blocked = {(a, b) for a in self.ids for b in self.ids if a != b and r.random() < p}
        elif kind == "ring":
            # Jepsen's "majorities ring": every node sees a majority (itself and
            # its nearest neighbours on a shuffled ring), but no two see the same.
            ids = self.ids[:]
            r.shuffle(ids)
            size = len(ids)
            d = 1 if size <= 5 else 2  # 5 nodes see 3, 7 see 5: a majority each
            pos = {x: i for i, x in enumerate(ids)}
            self.blocked = {
                (a, b) for a in ids for b in ids
                if min((pos[a] - pos[b]) % size, (pos[b] - pos[a]) % size) > d
            }
        elif kind == "isolate_leader":
            leaders = [n.id for n in self.nodes.values() if n.up and n.core.role is Role.LEADER]
            if leaders:
                lid = leaders[0]
                self.blocked = {(lid, x) for x in self.ids} | {(x, lid) for x in self.ids}
        elif kind in ("crash", "crash_leader"):
            up = [n for n in self.nodes.values() if n.up]
            if kind == "crash_leader":
                up = [n for n in up if n.core.role is Role.LEADER] or up
            if up:
                n = r.choice(up)
                n.crash()
                delay = r.uniform(0.25, 3.0) * self.config.fault_interval
                self._push(self.now + delay, "restart", n.id)
        elif kind == "heal":
            self.blocked = set()
        else:
            for n in self.nodes.values():
                if not n.up:
                    n.restart()

    # ------------------------------------------------------------- membership
    def _leader(self) -> _Node | None:
        leaders = [n for n in self.nodes.values() if n.up and n.core.role is Role.LEADER]
        return max(leaders, key=lambda n: n.core.term) if leaders else None

    def _new_process(self, joiner: bool, node_id: str | None = None) -> _Node:
        if node_id is None:
            self._fresh += 1
            node_id = f"j{self._fresh}"
        n = _Node(self, node_id, joiner=joiner)
        self.nodes[node_id] = n
        self.ids = list(self.nodes)
        self.relay_buf[node_id] = []
        self.commit_seen[node_id] = n.core.commit_index
        self.checked.pop(node_id, None)
        self._arm(n)
        return n

    def _operator(self) -> None:
        """An operator's membership action, at whoever leads now."""
        ld = self._leader()
        if ld is None:
            return
        core, r = ld.core, self.rng
        cfg = core.configuration
        voters = [v for v in sorted(cfg.voters) if v not in self.gone]
        ops: list[tuple[str, str]] = []
        ops += [("remove", m) for m in sorted(cfg.ids) if m in self.gone]  # a lost disk
        ops += [("add", j) for j in self.joiners]
        # An operator promotes caught-up learners (the core refuses others).
        ops += [("promote", m) for m in sorted(cfg.learners)
                if m not in self.gone and (core.caught_up(m) or r.random() < 0.2)]
        if len(cfg.voters) > 3:
            ops.append(("remove", r.choice(sorted(cfg.voters))))  # the leader, sometimes
        ops += [("remove", m) for m in sorted(cfg.learners)]
        if len(cfg.ids) < len(self.initial_ids) + 2:
            ops.append(("grow", ""))
        ops += [("transfer", v) for v in voters if v != ld.id]
        ops.append(("wipe", r.choice(sorted(cfg.ids))))
        op, target = r.choice(ops)
        # Operators' scripts run changes back to back (add then promote, or
        # two removals): the core must refuse the second while the first is
        # in flight. Sometimes a second change of the same kind follows.
        todo = [(op, target)]
        if op in ("remove", "promote") and r.random() < 0.5:
            todo += [o for o in ops if o[0] == op and o[1] != target][:1]
        for op, target in todo:
            self._change(ld, op, target)
        self.after_input(ld)

    def _change(self, ld: _Node, op: str, target: str) -> None:
        core = ld.core
        cfg = core.configuration
        if op in ("remove", "promote") and not self._keeps_live_quorum(cfg, op, target):
            return  # as etcd's strict reconfig check: never strand the cluster
        try:
            if op == "remove":
                core.propose_change(ConfChange.remove(target))
            elif op == "add":
                core.propose_change(ConfChange.add_learner(Member(target)))
                self.joiners.remove(target)
            elif op == "grow":
                self._fresh += 1
                core.propose_change(ConfChange.add_learner(Member(f"j{self._fresh}")))
                self._new_process(joiner=True, node_id=f"j{self._fresh}")
            elif op == "promote":
                core.propose_change(ConfChange.promote(target))
                if self.rng.random() < 0.3:
                    # The leader dies just after proposing: the change may
                    # reach a minority only (the setup of Ongaro's scenario).
                    self._push(self.now + self.rng.uniform(0.0, 0.01), "crash", ld.id)
            elif op == "transfer":
                core.transfer_leadership(target)
            else:
                self._wipe(target, cfg)
        except RaftError:
            pass  # refused: nothing changed (one change at a time, not caught up, ...)

    def _keeps_live_quorum(self, cfg: Configuration, op: str, target: str) -> bool:
        """Would the voters whose disks survive still be a quorum after the change?"""
        voters = set(cfg.voters)
        if op == "remove":
            voters.discard(target)
        else:
            voters.add(target)
        return len(voters - self.gone) >= len(voters) // 2 + 1

    def _wipe(self, target: str, cfg: Configuration) -> None:
        """A node loses its disk. It returns empty under a fresh member id and
        waits to be re-admitted -- or, broken ("wipe_keeps_id"), under its old
        id, as a voter that forgot its votes and acknowledged entries.

        Only while a quorum of the current configuration's voters keeps its
        disk (issue 12: nothing committed may be lost while fewer than a
        quorum lost their disks).
        """
        n = self.nodes.get(target)
        ld = self._leader()
        if n is None or n.core.role is Role.LEADER or ld is None or not ld.core.change_committed():
            # Not while a change is in flight: nodes may still use the previous
            # configuration, and a disk that is a quorum member there can be
            # what an election needs (found by the simulation, seed 1660 of
            # 2000: a removed leader stepped down before its removal committed).
            return
        lost = sum(1 for v in cfg.voters if v in self.gone) + (target in cfg.voters)
        if len(cfg.voters) - lost < len(cfg.voters) // 2 + 1:
            return
        n.crash()
        del self.nodes[target]
        self.ids = list(self.nodes)
        if "wipe_keeps_id" in self.config.unsafe and target in self.initial_ids:
            self._new_process(joiner=False, node_id=target)  # amnesia under its old id
            return
        self.gone.add(target)
        self.joiners.append(self._new_process(joiner=True).id)

    def run(self) -> SimResult:
        self._incoming_snapshot = {}
        cfg = self.config
        r = self.rng
        load_end = cfg.fault_time + (cfg.load_time if cfg.check_liveness else 0.0)
        t = 0.0
        while (t := t + r.expovariate(1 / 0.004)) < cfg.fault_time:
            self._push(t, "client", None)
        while (t := t + r.expovariate(1 / cfg.load_interval)) < load_end:
            self._push(t, "client", None)  # sustained, below what the links carry
        t = 0.0
        while (t := t + r.uniform(0.25, 1.75) * cfg.fault_interval) < cfg.fault_time:
            self._push(t, "fault", None)
        self._push(cfg.fault_time, "calm", None)
        if self.membership:
            t = 0.0
            while (t := t + r.uniform(0.01, 0.05)) < cfg.fault_time:
                self._push(t, "member", None)
        if self.slow_node is not None:
            # Issue 11 #2's case: the node behind the slow link is down for the
            # last stretch of the faults and must catch up under load after.
            self._push(cfg.fault_time - 0.8, "crash", self.slow_node)
        if cfg.check_liveness:
            self._push(cfg.fault_time + cfg.settle, "converge_target", None)
            self._push(cfg.fault_time + cfg.settle + cfg.converge_bound, "converge_check", None)
        try:
            self._loop(load_end)
            self.loading = False
            if cfg.check_liveness:
                self._liveness()
                self._check_fates()
        except SafetyViolation as exc:
            self.result.violation = str(exc)
        except AssertionError as exc:  # an invariant inside the core broke
            self.result.violation = f"invariant: {exc!r}"
        self.result.committed = max((n.core.commit_index for n in self.nodes.values()), default=0)
        return self.result

    def _loop(self, until: float) -> None:
        while self._events and self._events[0][0] <= until:
            at, _, kind, payload = heapq.heappop(self._events)
            self.now = max(self.now, at)
            self.result.steps += 1
            if kind == "timer":
                nid, gen = payload
                n = self.nodes.get(nid, self._nobody)
                if n.up and gen == n.timer_gen:
                    n.core.handle_timeout(self.now)
                    self.after_input(n)
            elif kind == "msg":
                msg, snap = payload
                dst = self.nodes.get(msg.dst)
                if dst is None:
                    continue
                n = dst
                if (
                    msg.src not in self.nodes and isinstance(msg, AppendEntries | InstallSnapshot)
                    and (type(msg.term) is not int or msg.term >= n.core.term)
                ):
                    # A stranger's leader messages at a current term: the core
                    # believes leader messages from any sender (a leader may be
                    # newer than our configuration); authenticating peers is
                    # the transport's job (issue 10), so they never get here.
                    continue
                if n.up and (msg.src, msg.dst) not in self.blocked:
                    if isinstance(msg, InstallSnapshot):
                        self._incoming_snapshot[n.id] = snap
                    n.core.step(msg, self.now)
                    self.after_input(n)
                    self._incoming_snapshot.pop(n.id, None)
            elif kind == "client":
                if self.loading:
                    self._client()
            elif kind == "relay":
                self._relay(payload)
            elif kind == "relayed":
                lid, batch = payload
                ld = self.nodes.get(lid, self._nobody)
                if ld.up and ld.core.role is Role.LEADER:
                    self._propose_batch(ld, batch)
            elif kind == "snap_report":
                nid, inc, dst_id, ok = payload
                n = self.nodes.get(nid, self._nobody)
                # Delivered to a node that is down or cut off: the transfer failed.
                ok = (ok and self.nodes.get(dst_id, self._nobody).up
                      and (nid, dst_id) not in self.blocked)
                if n.up and n.incarnation == inc:
                    n.core.report_snapshot(dst_id, ok)
                    self.after_input(n)
            elif kind == "converge_target":
                self._converge_target = max(
                    n.core.commit_index for n in self.nodes.values() if n.up
                )
            elif kind == "converge_check":
                self._check_converged()
            elif kind == "fault":
                self._fault()
            elif kind == "member":
                self._operator()
            elif kind == "crash":
                n = self.nodes.get(payload, self._nobody)
                if n.up:
                    n.crash()
                    if payload != self.slow_node:
                        self._push(self.now + self.rng.uniform(0.01, 0.3), "restart", n.id)
            elif kind == "restart":
                n = self.nodes.get(payload, self._nobody)
                if not n.up and n is not self._nobody:
                    n.restart()
            elif kind == "flush":
                nid, inc = payload
                n = self.nodes.get(nid, self._nobody)
                if n.up and n.incarnation == inc and n.deferred:
                    n.disk.save(n.deferred.pop(0), None)
            elif kind == "calm":
                self.faulty = False
                self.blocked = set()
                for n in self.nodes.values():
                    if not n.up:
                        n.restart()

    _converge_target = 0

    def _members(self) -> list[_Node]:
        """Processes that belong to the latest configuration (as the most
        advanced node sees it): they must all keep up. Removed nodes and
        joiners not yet admitted need not."""
        best = max(self.nodes.values(), key=lambda n: (n.core.commit_index, n.core.term))
        ids = best.core.configuration.ids
        return [n for n in self.nodes.values() if n.id in ids]

    def _check_converged(self) -> None:
        """Issue 11 #2: every node applies what was committed shortly after the
        faults stopped within a bound, *while proposals continue* (a follower
        behind a slow link must not need the writes to stop to catch up)."""
        target = self._converge_target
        for n in self._members():
            if n.core.applied_index < target:
                raise SafetyViolation(
                    f"liveness under load: {n.id} applied {n.core.applied_index} < {target} "
                    f"{self.config.converge_bound}s after it was committed, while proposals "
                    f"continued (slow link to {self.slow_node})"
                )

    def _check_fates(self) -> None:
        """No answer contradicts its write's fate, now that everything converged."""
        for data, answer in self.answers.items():
            applied = data in self.committed_data
            if answer == "ok" and not applied:
                raise SafetyViolation("answer contradicts fate: 'ok' for a write never applied")
            if answer == "dropped" and applied:
                raise SafetyViolation("answer contradicts fate: 'dropped' for an applied write")

    def inject(self, at: float, msg: Message) -> None:
        """Deliver `msg` (from a fake peer) at virtual time `at`."""
        self._push(at, "msg", (msg, None))

    def _liveness(self) -> None:
        """After the faults stop, a proposal must commit and apply everywhere."""
        deadline = self.now + self.config.liveness_time
        marker: int | None = None
        step = 0.05
        while self.now < deadline:
            self._loop(self.now + step)
            self.now += step
            if marker is None:
                leaders = [n for n in self.nodes.values() if n.core.role is Role.LEADER]
                for ld in leaders:
                    try:
                        marker, _ = ld.core.propose([b"liveness"])
                    except (NotLeader, ProposalDropped):
                        continue
                    self.after_input(ld)
                    break
            elif all(n.core.applied_index >= marker for n in self._members()):
                return
            elif not any(
                n.core.role is Role.LEADER and marker <= n.core.log.last_index()
                for n in self.nodes.values()
            ):
                marker = None  # no leader holds it (yet): propose again
        raise SafetyViolation(
            f"liveness: no proposal applied on every node within {self.config.liveness_time}s "
            "after the faults stopped"
        )


def run_seed(seed: int, config: SimConfig | None = None) -> SimResult:
    return Simulation(seed, config or SimConfig()).run()


def bench(entries: int = 200_000, batch: int = 100, nodes: int = 3) -> float:
    """Entries/s committed through `nodes` in-memory cores, no faults, instant delivery.

    Measures the core alone (no I/O): proposals in batches, every message
    delivered at once, storage a list append.
    """
    import time as _time  # the benchmark, not the simulation, reads a clock

    ids = [f"n{i}" for i in range(1, nodes + 1)]
    cores = {
        i: RaftCore(CoreConfig(id=i, voters=frozenset(ids)), random.Random(k))
        for k, i in enumerate(ids)
    }
    queue: list[Message] = []
    now = 0.0

    def process(c: RaftCore) -> None:
        while c.has_ready():
            rd = c.ready()
            queue.extend(rd.early_messages)
            queue.extend(rd.messages)
            c.advance(rd)

    leader = cores[ids[0]]
    leader.handle_timeout(10.0)
    process(leader)
    while leader.role is not Role.LEADER or queue:
        while queue:
            m = queue.pop(0)
            cores[m.dst].step(m, now)
            process(cores[m.dst])
    payload = [b"x" * 100] * batch
    start = _time.perf_counter()
    target = leader.commit_index + entries
    while leader.commit_index < target:
        leader.propose(payload)
        process(leader)
        while queue:
            m = queue.pop(0)
            cores[m.dst].step(m, now)
            process(cores[m.dst])
    elapsed = _time.perf_counter() - start
    return entries / elapsed


def _flag(text: str) -> bool:
    if text not in ("True", "False"):
        raise argparse.ArgumentTypeError("True or False")
    return text == "True"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trioraft.testing.sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--seed", type=int, help="replay exactly this seed")
    p.add_argument("--nodes", type=int, default=0, help="3, 5 or 7 (default: rotate)")
    p.add_argument("--fault-time", type=float, default=2.0)
    p.add_argument("--fault-interval", type=float, default=0.2)
    p.add_argument("--churn", type=float, default=None,
                   help="probability of crashing each new leader soon after election")
    p.add_argument("--max-entries", type=int, default=None, help="entries per AppendEntries")
    p.add_argument("--crash-after-send", type=float, default=0.0,
                   help="probability a leader crashes right after sending a batch")
    p.add_argument("--drop", type=float, default=None, help="message loss rate (default: drawn)")
    p.add_argument("--crash-points", type=float, default=SimConfig.crash_points,
                   help="probability of a crash at each crash point of each Ready")
    p.add_argument("--slow-link", type=_flag, default=None,
                   help="True/False: a slow link to one node (default: drawn per seed)")
    p.add_argument("--relay", type=_flag, default=None,
                   help="True/False: followers relay writes in batches (default: drawn)")
    p.add_argument("--membership", type=_flag, default=None,
                   help="True/False: membership changes and disk wipes (default: drawn)")
    p.add_argument("--catchup", type=int, default=None,
                   help="the core's catch-up tail in entries (default: drawn)")
    p.add_argument("--unsafe", action="append", default=[],
                   help="enable a deliberately broken variant (teeth)")
    p.add_argument("--bench", action="store_true",
                   help="measure entries/s through a fault-free 3-node in-memory cluster")
    a = p.parse_args(argv)
    if a.bench:
        rates = sorted(bench() for _ in range(3))
        print(f"sim bench: {rates[1]:,.0f} entries/s committed (median of 3; 3 nodes, "
              "batches of 100, 100-byte entries, no I/O)")
        return 0
    seeds = [a.seed] if a.seed is not None else range(a.first_seed, a.first_seed + a.seeds)
    violations = committed = steps = 0
    for s in seeds:
        nodes = a.nodes or (3, 5, 7)[s % 3]
        cfg = SimConfig(nodes=nodes, fault_time=a.fault_time, unsafe=frozenset(a.unsafe),
                        fault_interval=a.fault_interval, churn=a.churn,
                        max_entries_per_msg=a.max_entries,
                        crash_after_send=a.crash_after_send, drop=a.drop,
                        crash_points=a.crash_points, slow_link=a.slow_link, relay=a.relay,
                        catchup=a.catchup, membership=a.membership)
        res = run_seed(s, cfg)
        committed += res.committed
        steps += res.steps
        if res.violation:
            violations += 1
            print(f"seed {s}: VIOLATION: {res.violation}\n  replay: {res.replay_command()}",
                  flush=True)
    print(f"sim: {len(seeds)} seeds, {violations} violations, {committed} entries committed, "
          f"{steps} steps")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
