"""The simulation's model: its settings, a node's disk and process, and the state
every part of the simulation shares (declared for the type checker)."""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trioraft.core import (
    AppendEntries,
    CoreConfig,
    Entry,
    HardState,
    InstallSnapshot,
    Message,
    RaftCore,
    Ready,
    SnapshotMeta,
)

__all__ = ["SafetyViolation", "SimConfig", "SimResult", "SimState"]


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


# Broken variants the simulated runtime (not the core) implements.
SIM_UNSAFE = frozenset({"ack_before_persist", "settle_batch_by_first", "no_catchup_tail",
                        "wipe_keeps_id"})


CORE_UNSAFE = frozenset({"commit_old_terms", "vote_without_log_check", "no_truncate",
                         "match_moves_back", "two_changes", "change_before_commit"})


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
    def __init__(self, sim: SimState, node_id: str, joiner: bool = False) -> None:
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



class SimState:
    """What the parts of `Simulation` (checks, workload and faults) share.

    Declared for the type checker only: empty at run time, so it never
    shadows anything.
    """

    if TYPE_CHECKING:
        seed: int
        config: SimConfig
        rng: random.Random
        now: float
        initial_ids: list[str]
        ids: list[str]
        result: SimResult
        drop: float
        delay: tuple[float, float]
        faulty: bool
        blocked: set[tuple[str, str]]
        relay: bool
        relay_buf: dict[str, list[bytes]]
        pending: dict[tuple[str, int], tuple[int, bytes, list[bytes]]]
        answers: dict[bytes, str]
        committed_data: set[bytes]
        matches: dict[tuple[str, int], dict[str, int]]
        checked: dict[str, int]
        leaders: dict[int, str]
        entries_seen: dict[tuple[int, int], tuple[bytes, int | None]]
        committed: dict[int, bytes]
        commit_seen: dict[str, int]
        max_commit: int
        pending_reads: dict[int, int]
        _ctx: int
        _proposal: int
        membership: bool
        gone: set[str]
        joiners: list[str]
        _fresh: int
        nodes: dict[str, _Node]
        _nobody: _Node
        slow_node: str | None
        _converge_target: int
        catchup: int

        def forget_pending(self, node_id: str) -> None: ...
        def _push(self, at: float, kind: str, payload: Any) -> None: ...
        def _arm(self, n: _Node) -> None: ...
        def after_input(self, n: _Node) -> None: ...
        def _leader(self) -> _Node | None: ...
        def _propose_batch(self, n: _Node, datas: list[bytes]) -> None: ...
        def _settle(self, n: _Node, e: Entry) -> None: ...
