"""The chaos run's checks besides linearizability, as pure functions of what it recorded.

* :func:`check_health` -- the **healthy-period check**. A healthy period starts
  ``settle`` seconds after the last fault ended (and every node answers
  ``/status`` again) and lasts until the next fault starts. In it:

  - no election: no node reports a term above the highest term any node reported
    before the period began (pre-vote rounds do not raise terms, so a higher
    term is a real election: a stall, a lost heartbeat, a disruptive node);
  - every follower stays within ``lag_bound`` entries of the leader (its applied
    index against the leader's commit index, in the same polling round): a
    follower behind must catch up *while the load goes on*;
  - every node answers ``/status`` (none silent for ``silent_limit`` seconds).

* :func:`loop_lag` -- the worst stall any node's ``loop_lag_ms`` reported, overall
  and in healthy periods, each dated by the poll at which it first showed. A
  SIGSTOP'd process oversleeps by the whole pause, so what shows right after a
  recorded pause is left out.

* :func:`refused_writes_seen` -- answers must never contradict outcomes: a write
  refused with 4xx or 503 (or a cas refused with 409) never takes effect, so its
  value (unique to that request) must never be read, by a client, by the final
  reads, or in any node's final state (issue 11 #1 was a 503 for a write that
  had applied).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trioraft.testing.linearizability import Operation
from trioraft.testing.nemesis import FaultEvent

__all__ = [
    "LOOP_LAG_WINDOW",
    "HealthReport",
    "LoopLag",
    "Sample",
    "Window",
    "check_health",
    "fault_free_spans",
    "loop_lag",
    "refused_writes_seen",
]

LOOP_LAG_WINDOW = 10.0
"""Seconds covered by a node's ``loop_lag_ms.recent_max`` (LoopLagMonitor.window)."""


@dataclass(frozen=True)
class Sample:
    """One node's ``/status`` in one polling round (``ok=False``: no answer)."""

    t: float
    round: int
    node: str
    ok: bool
    term: int = 0
    role: str = ""
    leader: str | None = None
    commit: int = 0
    applied: int = 0
    lag_recent_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "round": self.round, "node": self.node, "ok": self.ok,
                "term": self.term, "role": self.role, "leader": self.leader,
                "commit": self.commit, "applied": self.applied,
                "lag_recent_ms": self.lag_recent_ms}  # fmt: skip

    @classmethod
    def from_status(cls, t: float, rnd: int, node: str, st: Mapping[str, Any] | None) -> Sample:
        if not st:
            return cls(t, rnd, node, False)
        lag = st.get("loop_lag_ms")
        recent = lag.get("recent_max") if isinstance(lag, dict) else None
        return cls(t, rnd, node, True, int(st.get("term", 0)), str(st.get("role", "")),
                   st.get("leader"), int(st.get("commit_index", 0)),
                   int(st.get("applied_index", 0)),
                   float(recent) if isinstance(recent, (int, float)) else None)  # fmt: skip


@dataclass
class Window:
    """One healthy period and what was seen in it."""

    start: float
    end: float
    elections: int = 0
    terms: tuple[int, int] = (0, 0)  # (the highest before, the highest seen)
    max_lag: int = 0
    max_lag_node: str = ""
    silent: dict[str, float] = field(default_factory=dict)  # node -> longest silence
    rounds: int = 0

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class HealthReport:
    windows: list[Window]
    violations: list[str]

    @property
    def healthy_seconds(self) -> float:
        return sum(w.seconds for w in self.windows)

    @property
    def elections(self) -> int:
        return sum(w.elections for w in self.windows)

    @property
    def max_lag(self) -> int:
        return max((w.max_lag for w in self.windows), default=0)


def fault_free_spans(events: Sequence[FaultEvent], end: float) -> list[tuple[float, float]]:
    """[begin, end) stretches of the run with no fault active: from the moment the
    last active fault ended (or a heal, or t=0) to the next fault's start. A crash
    (a node exiting on its own, restarted by the nemesis) interrupts a stretch too.
    A heal undoes the nemesis' faults, not a membership operation in progress (the
    membership nemesis ends its own with a "stop"): a removal still running after
    the heal keeps the stretch from starting."""
    spans: list[tuple[float, float]] = []
    active = 0
    members = 0  # membership operations in progress
    begin: float | None = 0.0

    def busy() -> bool:
        return active > 0 or members > 0

    for ev in sorted(events, key=lambda e: e.t):
        if ev.action == "start":
            if not busy() and begin is not None and ev.t > begin:
                spans.append((begin, ev.t))
            if ev.kind == "membership":
                members += 1
            else:
                active += 1
            begin = None
        elif ev.action == "stop":
            if ev.kind == "membership":
                members = max(0, members - 1)
            else:
                active = max(0, active - 1)
            if not busy():
                begin = ev.t
        elif ev.action == "heal":  # every nemesis fault undone at once
            active = 0
            if not busy() and begin is None:
                begin = ev.t
        elif ev.action == "crash":
            if not busy() and begin is not None and ev.t > begin:
                spans.append((begin, ev.t))
            if not busy():
                begin = ev.t
    if not busy() and begin is not None and end > begin:
        spans.append((begin, end))
    return spans


def _rounds(samples: Iterable[Sample]) -> dict[int, list[Sample]]:
    out: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        out[s.round].append(s)
    return out


def check_health(
    samples: Sequence[Sample], events: Sequence[FaultEvent], nodes: Sequence[str], *,
    settle: float, end: float, lag_bound: int, silent_limit: float = 3.0,
    min_window: float = 1.0, harness_stalls: Mapping[str, Sequence[tuple[float, float]]] = {},
) -> HealthReport:  # fmt: skip
    """The healthy-period check (module docstring). `end`: when the load stopped.

    `harness_stalls`: the test harness's own stalls, (t, ms) by process ("proxy",
    "clients"); a violation says how long they stalled in its period, since a stalled
    proxy is a stalled network. (It is still a violation: the evidence decides.)"""
    rounds = _rounds(samples)
    order = sorted(rounds, key=lambda r: max(s.t for s in rounds[r]))
    windows: list[Window] = []
    violations: list[str] = []
    for begin, stop in fault_free_spans(events, end):
        # Settle from the moment every node answers again (restarted processes
        # take a while to start): a slow start is not an election in a healthy period.
        up_at = _all_answered_since(order, rounds, nodes, begin)
        if up_at is None:
            up_at = begin
        start = max(begin, up_at) + settle
        if stop - start < min_window:
            continue
        w = Window(start, stop)
        before = [s.term for s in samples if s.ok and s.t <= start]
        baseline = max(before, default=0)
        seen_terms: set[int] = set()
        last_answer: dict[str, float] = dict.fromkeys(nodes, start)
        for r in order:
            rs = rounds[r]
            t = max(s.t for s in rs)
            if not start < t <= stop:
                continue
            w.rounds += 1
            for s in rs:
                if s.ok:
                    if s.term > baseline:
                        seen_terms.add(s.term)
                    last_answer[s.node] = s.t
                else:
                    gap = s.t - last_answer.get(s.node, start)
                    w.silent[s.node] = max(w.silent.get(s.node, 0.0), gap)
            leaders = [s for s in rs if s.ok and s.role == "leader"]
            if leaders:
                lead = max(leaders, key=lambda s: s.term)
                for s in rs:
                    if s.ok and s.node != lead.node and lead.commit - s.applied > w.max_lag:
                        w.max_lag, w.max_lag_node = lead.commit - s.applied, s.node
        # Each election round raises the term by one; a poll may miss a round's term.
        w.elections = max(seen_terms, default=baseline) - baseline
        w.terms = (baseline, max(seen_terms, default=baseline))
        where = f"healthy period {w.start:.1f}-{w.end:.1f}s"
        stalled = {who: max((ms for t, ms in st if w.start <= t <= w.end), default=0.0)
                   for who, st in harness_stalls.items()}  # fmt: skip
        note = ", ".join(f"the {who} process stalled up to {ms:.0f} ms"
                         for who, ms in stalled.items() if ms)  # fmt: skip
        note = f" (meanwhile {note})" if note else ""
        if w.elections:
            violations.append(f"{where}: {w.elections} election(s), term {baseline} -> "
                              f"{w.terms[1]} with no fault active{note}")  # fmt: skip
        if w.max_lag > lag_bound:
            violations.append(f"{where}: follower {w.max_lag_node} was {w.max_lag} entries "
                              f"behind the leader (bound {lag_bound}){note}")  # fmt: skip
        for node, gap in sorted(w.silent.items()):
            if gap > silent_limit:
                violations.append(f"{where}: {node} did not answer /status for {gap:.1f}s")
        windows.append(w)
    return HealthReport(windows, violations)


def _all_answered_since(
    order: Sequence[int], rounds: Mapping[int, list[Sample]], nodes: Sequence[str], t0: float
) -> float | None:
    """When every node had answered at least once after t0 (None: never)."""
    pending = set(nodes)
    for r in order:
        for s in rounds[r]:
            if s.ok and s.t >= t0:
                pending.discard(s.node)
        if not pending:
            return max(s.t for s in rounds[r])
    return None


@dataclass(frozen=True)
class LoopLag:
    worst_ms: float
    node: str
    t: float
    healthy_worst_ms: float
    final: dict[str, float]
    """Each node's ``recent_max`` in the last round that reached it."""


def loop_lag(
    samples: Sequence[Sample], events: Sequence[FaultEvent], windows: Sequence[Window]
) -> LoopLag:
    """The worst loop lag the nodes reported (module docstring).

    ``recent_max`` is a sliding maximum over the node's last 10 s, so a stall is
    dated by the poll at which that maximum *rose* (a new, larger stall happened
    since the previous poll); a stall smaller than one still in the window goes
    unseen, the worst one never does. A SIGSTOP'd process oversleeps by the whole
    pause: a rise seen at the first answer after a recorded pause (however late that
    answer comes) is left out (test-only hidden stalls, logged as "sabotage", are
    real stalls: they stay in).
    """
    paused: dict[str, list[tuple[float, float]]] = defaultdict(list)
    started: dict[tuple[str, str], float] = {}
    for ev in sorted(events, key=lambda e: e.t):
        for node in ev.nodes:
            if ev.kind == "pause" and ev.action == "start":
                started[ev.detail, node] = ev.t
            elif ev.kind == "pause" and ev.action == "stop":
                paused[node].append((started.pop((ev.detail, node), 0.0), ev.t))
    for (_detail, node), t in started.items():  # never undone: until the final heal
        paused[node].append((t, float("inf")))

    def tainted(s: Sample, since: float) -> bool:
        """A pause of this node overlaps (since, s.t]: the rise may be the pause."""
        return any(a <= s.t and b >= since for a, b in paused[s.node])

    worst = (0.0, "", 0.0)
    healthy = 0.0
    final: dict[str, float] = {}
    previous: dict[str, tuple[float, float]] = {}  # node -> (time, recent_max) last answer
    for s in sorted(samples, key=lambda s: s.t):
        if not s.ok or s.lag_recent_ms is None:
            continue
        final[s.node] = s.lag_recent_ms
        since, before = previous.get(s.node, (-1.0, 0.0))
        previous[s.node] = (s.t, s.lag_recent_ms)
        if s.lag_recent_ms <= before or tainted(s, since):
            continue
        if s.lag_recent_ms > worst[0]:
            worst = (s.lag_recent_ms, s.node, s.t)
        if any(w.start <= s.t <= w.end for w in windows):
            healthy = max(healthy, s.lag_recent_ms)
    return LoopLag(worst[0], worst[1], worst[2], healthy, final)


def refused_writes_seen(
    history: Sequence[Operation], final_state: Mapping[str, str | None] | None = None,
    final_states: Mapping[str, Mapping[str, str | None]] | None = None,
) -> list[str]:  # fmt: skip
    """Values written only by refused requests, found anywhere they could be read.

    `final_state` / `final_states` (node -> state): converged values, already decoded
    to the history's value names."""
    refused: dict[tuple[str, str], Operation] = {}
    for op in history:
        if op.kind not in ("put", "cas") or op.value is None:
            continue
        if op.outcome == "fail" or (op.kind == "cas" and op.outcome == "ok" and op.ok is False):
            refused[op.key, op.value] = op
    if not refused:
        return []
    found: list[str] = []

    def what(op: Operation) -> str:
        answer = "409" if op.outcome == "ok" else "refused (4xx/503/no connection)"
        return (f"{op.kind} {op.key}={op.value!r} by client {op.client} at "
                f"t={op.call:.3f}, answered {answer}")  # fmt: skip

    for op in history:
        if op.kind != "get" or op.outcome != "ok" or op.result is None:
            continue
        if (w := refused.get((op.key, op.result))) is not None:
            found.append(f"a refused write took effect: {what(w)}; read by client "
                         f"{op.client} at t={op.call:.3f}-{op.ret:.3f}")  # fmt: skip
    states = dict(final_states or {})
    if final_state is not None:
        states["converged state"] = final_state
    for where, state in states.items():
        for key, value in state.items():
            if value is not None and (w := refused.get((key, value))) is not None:
                found.append(f"a refused write took effect: {what(w)}; in {where}")
    return found
