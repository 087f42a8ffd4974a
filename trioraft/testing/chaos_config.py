"""The chaos run's settings and its result (the figures every report is made of)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trioraft.testing import nemesis as _nemesis
from trioraft.testing.chaos_checks import HealthReport, LoopLag
from trioraft.testing.linearizability import CheckResult, Operation
from trioraft.testing.nemesis import FaultEvent

__all__ = ["SABOTAGE", "ChaosConfig", "ChaosResult"]

SABOTAGE = ("stall", "lag", "refused")
"""Test-only broken variants, each one a check must catch (tests/chaos): ``stall``
SIGSTOPs the leader for 2 s in healthy periods without recording it (elections);
``lag`` isolates a follower for 3 s likewise (lag bound); ``refused`` records 5 %
of acknowledged puts as refused (the refused-write check)."""


@dataclass(frozen=True)
class ChaosConfig:
    duration: float = 60.0
    """Seconds of client load, the healthy tail included."""
    nodes: int = 5
    seed: int = 0
    workload: str = "mixed"
    clients: int = 8
    keys: int = 10
    value_bytes: tuple[int, int] = (0, 0)
    """Size range of written values ((0, 0): bare unique names)."""
    prefill_bytes: int = 0
    """Ballast written before the load (keys b00000...), so states are several MB."""
    prefill_value_bytes: int = 2048
    out: Path = Path(".chaos")
    """The run's directory: node data and logs, history.jsonl, faults.jsonl, ..."""
    keep: bool = False
    """Keep `out` even when the run passes."""
    client_timeout: float = 2.0
    """Seconds before a client gives up on one HTTP attempt (outcome unknown)."""
    wave_interval: float = 0.0
    """> 0: clients send in waves, one request each per interval (see chaos_clients.Waves);
    0: each client sends its next request as soon as the last one is answered."""
    fault_interval: tuple[float, float] = (1.0, 4.0)
    max_ops: int = 500_000
    election_timeout_ms: str | None = None
    heartbeat_ms: int | None = None
    faults: frozenset[str] = field(default_factory=lambda: frozenset(_nemesis.default_kinds()))
    """Fault kinds the nemesis may use (default: every registered kind's default mix)."""
    check_timeout: float = 120.0
    """Seconds of linearizability search per key before the verdict is 'undecided'."""
    log_level: str = "info"
    snapshot_entries: int | None = 100
    """The nodes' ``--snapshot-entries`` (None: the server default). Small, so
    snapshots, log compaction and InstallSnapshot happen under faults."""
    snapshot_catchup_entries: int | None = 50
    """The nodes' ``--snapshot-catchup-entries`` (None: the server default, 5000):
    small, so a follower that fell behind needs a snapshot."""
    read_consistency: str = "linearizable"
    """``stale`` is the harness's own sanity check: it must end in VIOLATION."""
    settle: float = 5.0
    """Seconds after the last fault (and every node answering) before 'healthy'."""
    healthy_tail: float = 12.0
    """The last seconds of the load are fault-free (0: faults until the end)."""
    quiet_chance: float = 0.3
    lag_bound: int = 2000
    """Entries a follower may be behind the leader's commit in a healthy period."""
    max_loop_lag_ms: float | None = None
    """Fail when a node's worst loop lag (pauses left out) is above this."""
    poll_interval: float = 0.25
    sabotage: frozenset[str] = frozenset()
    membership: bool = False
    """Also change the membership (remove/add, wipe-and-readmit, transfer):
    trioraft.testing.nemesis_membership."""


@dataclass
class ChaosResult:
    config: ChaosConfig
    history: list[Operation]
    faults: list[FaultEvent]
    check: CheckResult | None
    converged: bool
    final_state: dict[str, str | None] | None
    out: Path
    problems: list[str] = field(default_factory=list)
    """Everything that went wrong besides the verdict (each one fails the run)."""
    log_errors: list[str] = field(default_factory=list)
    """ERROR/CRITICAL/Traceback lines from the node logs (reported, not a failure)."""
    health: HealthReport | None = None
    refused: list[str] = field(default_factory=list)
    loop: LoopLag | None = None
    stats: dict[str, int] = field(default_factory=dict)
    max_inflight: int = 0
    """Most writes in flight at once at one follower (an upper bound on relayed batches)."""
    prefilled: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per phase of the run."""
    harness_lag_ms: float = 0.0
    """The harness's (clients') own worst loop lag."""
    network_lag: dict[str, Any] = field(default_factory=dict)
    membership: dict[str, int] = field(default_factory=dict)
    """Membership operations done (``--membership``), by kind."""
    """The proxy process's loop lag: ``worst_ms`` and ``stalls`` [(t, ms)] above 50 ms."""

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(op.outcome for op in self.history)

    @property
    def fault_counts(self) -> dict[str, int]:
        return _nemesis.counts(self.faults)

    @property
    def verdict(self) -> str:
        if self.check is None:
            return "unchecked"
        return {True: "linearizable", False: "VIOLATION", None: "undecided"}[self.check.ok]

    @property
    def ok(self) -> bool:
        return self.verdict == "linearizable" and self.converged and not self.problems

    def summary(self) -> str:
        o, f = self.outcomes, self.fault_counts
        h, lag = self.health, self.loop
        healthy = (f" healthy={h.healthy_seconds:.0f}s/{len(h.windows)} "
                   f"elections_healthy={h.elections} max_follower_lag={h.max_lag}"
                   if h else "")  # fmt: skip
        loop = f" worst_loop_lag={lag.worst_ms:.0f}ms" if lag else ""
        loop += (f" network_lag={self.network_lag.get('worst_ms', 0):.0f}ms"
                 f" harness_lag={self.harness_lag_ms:.0f}ms")  # fmt: skip
        return (
            f"chaos: seed={self.config.seed} nodes={self.config.nodes} "
            f"workload={self.config.workload} duration={self.config.duration:g}s "
            f"ops={len(self.history)} (ok={o['ok']}, fail={o['fail']}, "
            f"unknown={o['unknown']}) faults={sum(f.values())} ("
            + ", ".join(f"{k}={v}" for k, v in f.items())
            + f") verdict={self.verdict} converged={'yes' if self.converged else 'no'}"
            + f" refused_seen={len(self.refused)}{healthy}{loop}"
        )

    def to_json(self) -> dict[str, Any]:
        h, lag = self.health, self.loop
        return {
            "seed": self.config.seed, "nodes": self.config.nodes,
            "workload": self.config.workload, "duration": self.config.duration,
            "clients": self.config.clients, "ops": len(self.history),
            "outcomes": dict(self.outcomes),
            "faults": self.fault_counts, "verdict": self.verdict,
            "converged": self.converged, "refused_seen": len(self.refused),
            "healthy_seconds": round(h.healthy_seconds, 1) if h else None,
            "healthy_windows": len(h.windows) if h else None,
            "elections_healthy": h.elections if h else None,
            "max_follower_lag": h.max_lag if h else None,
            "worst_loop_lag_ms": lag.worst_ms if lag else None,
            "worst_loop_lag_node": lag.node if lag else None,
            "healthy_loop_lag_ms": lag.healthy_worst_ms if lag else None,
            "final_loop_lag_ms": lag.final if lag else None, "stats": self.stats,
            "harness_lag_ms": self.harness_lag_ms,
            "network_lag_ms": self.network_lag.get("worst_ms"),
            "max_inflight_at_a_follower": self.max_inflight, "prefilled_bytes": self.prefilled,
            "membership": self.membership,
            "timings": self.timings, "problems": self.problems, "ok": self.ok, "out": str(self.out),
        }  # fmt: skip
