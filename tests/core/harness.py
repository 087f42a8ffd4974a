"""A hand-driven cluster of RaftCores for scripted scenarios (the paper's figures).

Messages are queued, not delivered, until a test says so; each node persists
to a dict that survives `crash()` exactly as a disk would.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from trioraft.core import (
    CoreConfig,
    Entry,
    EntryKind,
    HardState,
    Message,
    RaftCore,
    RequestVote,
    RequestVoteResponse,
    Role,
    SnapshotMeta,
)


@dataclass
class Disk:
    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)


def log_of(terms: Iterable[int]) -> list[Entry]:
    """A log with the given terms at indexes 1, 2, ..."""
    return [Entry(i, t, EntryKind.NORMAL, f"{i}@{t}".encode()) for i, t in enumerate(terms, 1)]


class Cluster:
    def __init__(self, ids: list[str], **config: object) -> None:
        self.ids = ids
        self.config = config
        self.now = 0.0
        self.disks = {i: Disk() for i in ids}
        self.cores: dict[str, RaftCore | None] = {}
        self.queue: list[Message] = []
        self.joiners: set[str] = set()
        self.applied: dict[str, list[Entry]] = {i: [] for i in ids}
        self.read_states: dict[str, list[tuple[int, int]]] = {i: [] for i in ids}
        for i in ids:
            self.boot(i)

    def join(self, node: str) -> RaftCore:
        """A new, empty node that knows no configuration (a joiner)."""
        self.disks[node] = Disk()
        self.applied[node] = []
        self.read_states[node] = []
        self.joiners.add(node)
        return self.boot(node)

    def boot(self, node: str) -> RaftCore:
        d = self.disks[node]
        voters = frozenset() if node in self.joiners else frozenset(self.ids)
        cfg = CoreConfig(id=node, voters=voters, **self.config)  # type: ignore[arg-type]
        core = RaftCore(
            cfg, random.Random(node), d.hard_state, d.snapshot, list(d.entries), self.now
        )
        self.cores[node] = core
        self.applied[node] = [e for e in self.applied[node] if e.index <= d.snapshot.index]
        return core

    def core(self, node: str) -> RaftCore:
        c = self.cores[node]
        assert c is not None, f"{node} is down"
        return c

    def set_log(self, node: str, terms: list[int], term: int) -> None:
        self.disks[node] = Disk(HardState(term=term), log_of(terms))
        self.boot(node)

    def crash(self, node: str) -> None:
        self.cores[node] = None
        self.queue = [m for m in self.queue if m.src != node]

    def process(self, node: str) -> None:
        core = self.core(node)
        while core.has_ready():
            rd = core.ready()
            d = self.disks[node]
            if rd.snapshot is not None:
                d.snapshot = rd.snapshot
                keep = rd.snapshot_keep_entries
                d.entries = [e for e in d.entries if keep and e.index > rd.snapshot.index]
            if rd.hard_state is not None:
                d.hard_state = rd.hard_state
            if rd.entries:
                first = rd.entries[0].index
                d.entries = [e for e in d.entries if e.index < first] + rd.entries
            self.queue.extend(rd.early_messages)
            self.queue.extend(rd.messages)
            self.applied[node].extend(rd.committed)
            self.read_states[node].extend(rd.read_states)
            core.advance(rd)

    def deliver(
        self,
        allow: Callable[[Message], bool] = lambda m: True,
        keep: Callable[[Message], bool] = lambda m: False,
        max_steps: int = 10_000,
    ) -> None:
        """Deliver queued messages (and their consequences) that `allow` admits.

        Messages `keep` selects stay queued; the rest are dropped.
        """
        steps = 0
        kept: list[Message] = []
        while self.queue and steps < max_steps:
            steps += 1
            m = self.queue.pop(0)
            core = self.cores.get(m.dst)
            if keep(m):
                kept.append(m)
                continue
            if core is None or not allow(m):
                continue
            core.step(m, self.now)
            self.process(m.dst)
        self.queue = kept + self.queue

    def elect(self, node: str, allow: Callable[[Message], bool] = lambda m: True) -> None:
        """Let `node`'s election timer fire and deliver the votes `allow` admits.

        Everything else the election produces (the new leader's appends) stays queued.
        """
        core = self.core(node)
        for _ in range(3):  # a first attempt may only teach it a newer term
            self.now += 10.0  # past everyone's election timeout and leases
            core.handle_timeout(self.now)
            self.process(node)
            self.deliver(allow, keep=lambda m: not isinstance(m, RequestVote | RequestVoteResponse))
            if core.role is Role.LEADER:
                break
        assert core.role is Role.LEADER, f"{node} did not win: {core.role}"

    def tick(self, node: str) -> None:
        """Let `node`'s next timer fire (a leader's heartbeat re-sends lost probes)."""
        core = self.core(node)
        self.now = max(self.now, core.deadline)
        core.handle_timeout(self.now)
        self.process(node)

    def propose(self, node: str, data: bytes) -> int:
        index, _ = self.core(node).propose([data])
        self.process(node)
        return index

    def terms(self, node: str) -> list[int]:
        return [e.term for e in self.core(node).log.entries]


def between(*nodes: str) -> Callable[[Message], bool]:
    """Admit only messages among `nodes`."""
    s = set(nodes)
    return lambda m: m.src in s and m.dst in s
