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
import heapq
import random
import sys
from collections.abc import Sequence
from typing import Any

from trioraft.core import (
    AppendEntries,
    CoreConfig,
    InstallSnapshot,
    Message,
    NotLeader,
    ProposalDropped,
    RaftCore,
    Ready,
    Role,
)
from trioraft.testing._sim_checks import Checks
from trioraft.testing._sim_model import (
    CORE_UNSAFE,
    SIM_UNSAFE,
    SafetyViolation,
    SimConfig,
    SimResult,
    _Node,
    _size,
)
from trioraft.testing._sim_ops import Operations

__all__ = [
    "CORE_UNSAFE",
    "SIM_UNSAFE",
    "SafetyViolation",
    "SimConfig",
    "SimResult",
    "Simulation",
    "run_seed",
]


class Simulation(Checks, Operations):
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
