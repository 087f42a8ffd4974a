"""Jepsen-style chaos run: real ``trioraft serve`` processes, faults, and checks.

    python -m trioraft.testing.chaos --duration 60 --nodes 5 [--seed N]
        [--workload mixed|write-heavy] [--clients N] [--keys N] [--out DIR] [--keep]

What it does (see docs/verification.md for the why):

1. Starts N nodes (:class:`~trioraft.testing.procs.ProcCluster`, fsync on, small
   snapshot thresholds and catch-up tail). Their peer streams go through a
   :class:`~trioraft.testing.proxy.ProxyMesh`, so the run can partition, delay,
   break and slow down every link. Clients and the status poller talk to the
   nodes' real ports. With ``--prefill-bytes`` the state gets several MB of
   ballast first.
2. For ``--duration`` seconds, clients (:mod:`~trioraft.testing.chaos_clients`)
   do random get/put/cas/delete, one raw HTTP attempt per history operation,
   each value unique, while the nemesis (:mod:`~trioraft.testing.nemesis`)
   injects faults from its registry: kills, pauses, partitions, delay/loss and
   slow links. The last ``--healthy-tail`` seconds are fault-free. A watcher
   polls every node's ``/status`` meanwhile (:mod:`~trioraft.testing.chaos_watch`).
3. Then it heals everything, reads every key with linearizable reads (appended
   to the history, so a lost acknowledged write shows up as a violation), waits
   until all nodes converge on one state (which must equal those reads), and
   checks: linearizability; that no refused write took effect; that healthy
   periods had no election, no follower beyond ``--lag-bound`` and no silent
   node (:mod:`~trioraft.testing.chaos_checks`); and reports the worst loop lag.
4. Prints one summary line and exits 0 only if every check passed. A failing run
   keeps its directory and prints its path.

Every run is bounded: in time (``--duration`` plus bounded start and end phases),
in requests (``--max-ops``), and it stops only the processes it started, by pid.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from trioraft.testing import nemesis as _nemesis
from trioraft.testing.chaos_checks import (
    HealthReport,
    LoopLag,
    check_health,
    loop_lag,
    refused_writes_seen,
)
from trioraft.testing.chaos_clients import (
    WORKLOADS,
    ClientSpec,
    Recorder,
    Values,
    Waves,
    client,
    do_get,
    prefill,
)
from trioraft.testing.chaos_http import Pool
from trioraft.testing.chaos_watch import HarnessLag, StatusWatcher, converged_state
from trioraft.testing.linearizability import CheckResult, Operation, check, save_history
from trioraft.testing.nemesis import FAULTS, FaultEvent, Nemesis, NemesisConfig
from trioraft.testing.procs import ClusterTimeout, ProcCluster, free_port_range, pid_alive
from trioraft.testing.proxy import ProxyMesh
from trioraft.testing.proxy_remote import RemoteMesh

__all__ = ["FAULT_KINDS", "SABOTAGE", "ChaosConfig", "ChaosResult", "main", "parse_args",
           "run_chaos"]  # fmt: skip

NEMESIS_MODULES: tuple[str, ...] = ()
"""Modules that register more fault kinds on import (see trioraft.testing.nemesis)."""
for _module in NEMESIS_MODULES:
    importlib.import_module(_module)

FAULT_KINDS = _nemesis.default_kinds()
"""The default mix: every registered kind with ``default=True``."""

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
    faults: frozenset[str] = frozenset(FAULT_KINDS)
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
    healthy_tail: float = 10.0
    """The last seconds of the load are fault-free (0: faults until the end)."""
    quiet_chance: float = 0.3
    lag_bound: int = 2000
    """Entries a follower may be behind the leader's commit in a healthy period."""
    max_loop_lag_ms: float | None = None
    """Fail when a node's worst loop lag (pauses left out) is above this."""
    poll_interval: float = 0.25
    sabotage: frozenset[str] = frozenset()


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
            "clients": self.config.clients, "ops": len(self.history), **self.outcomes,
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
            "timings": self.timings, "problems": self.problems, "ok": self.ok, "out": str(self.out),
        }  # fmt: skip


# ------------------------------------------------------------------------- run


async def run_chaos(cfg: ChaosConfig) -> ChaosResult:
    """One chaos run (see the module docstring). Never leaves a process behind."""
    out = cfg.out
    if out.exists() and any(out.iterdir()):
        # Node data and logs from an earlier run would be part of this one.
        raise FileExistsError(f"the run directory {out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    keys = [f"k{i}" for i in range(cfg.keys)]
    ids = [f"n{i}" for i in range(1, cfg.nodes + 1)]
    values = Values(cfg.value_bytes)
    problems: list[str] = []
    res = ChaosResult(cfg, [], [], None, False, None, out, problems)
    last = trio.current_time()

    def mark(phase: str) -> None:
        nonlocal last
        now = trio.current_time()
        res.timings[phase] = round(now - last, 2)
        last = now

    rec = Recorder(cfg.max_ops)
    nem: Nemesis | None = None
    harness: HarnessLag | None = None
    cluster: ProcCluster | None = None
    mesh: RemoteMesh | None = None
    watcher: StatusWatcher | None = None
    end = 0.0
    try:
        async with trio.open_nursery() as background:
            mesh = await RemoteMesh.start(background, ids, cfg.seed, out / "proxy.log")
            base = free_port_range(cfg.nodes)
            cluster = ProcCluster(
                cfg.nodes, out, ids=ids, ports=range(base, base + cfg.nodes),
                election_timeout_ms=cfg.election_timeout_ms, heartbeat_ms=cfg.heartbeat_ms,
                log_level=cfg.log_level, http_timeout=1.0, extra_args=_node_args(cfg),
            )  # fmt: skip
            mesh.set_targets({i: n.port for i, n in cluster.nodes.items()})
            _route_peers_through(cluster, mesh)
            ports = {i: n.port for i, n in cluster.nodes.items()}
            await cluster.boot(timeout=30)
            mark("boot")
            if cfg.prefill_bytes:
                n = _ceil(cfg.prefill_bytes, cfg.prefill_value_bytes)
                res.prefilled = await prefill(ports, lambda: _leader(cluster), n,
                                              cfg.prefill_value_bytes)  # fmt: skip
            mark("prefill")
            rec.reset_clock()
            mesh.reset_clock()
            _save_run_info(out, cfg, cluster, mesh, rec.wall_t0)
            watcher = StatusWatcher(cluster, rec.now, cfg.poll_interval)
            await watcher.poll()
            background.start_soon(watcher.run)
            harness = HarnessLag(rec.now)
            background.start_soon(harness.run)
            nem = Nemesis(_nemesis_config(cfg), cluster, mesh, rec.now)
            faults_off = trio.Event()
            waves = Waves(cfg.wave_interval) if cfg.wave_interval > 0 else None
            spec = ClientSpec(cfg.seed, WORKLOADS[cfg.workload], cfg.client_timeout,
                              cfg.read_consistency, values,
                              0.05 if "refused" in cfg.sabotage else 0.0, waves)  # fmt: skip
            async with trio.open_nursery() as load:
                load.start_soon(nem.run, rec.stop, faults_off)
                if waves is not None:
                    load.start_soon(waves.run, rec.stop)
                for cid in range(cfg.clients):
                    load.start_soon(client, cid, spec, rec, ports, keys, watcher.leader_hint)
                with trio.move_on_after(max(0.0, cfg.duration - cfg.healthy_tail)):
                    await rec.stop.wait()
                faults_off.set()
                with trio.move_on_after(min(cfg.healthy_tail, cfg.duration)):
                    await rec.stop.wait()
                rec.stop.set()
                end = rec.now()
                # Clients finish their current attempt (bounded by their timeout).
                load.cancel_scope.deadline = trio.current_time() + 3 * cfg.client_timeout + 2
            mark("load")
            await nem.heal_all()
            res.converged, res.final_state = await _settle(rec, cluster, ports, keys, cfg,
                                                           values, problems)  # fmt: skip
            await watcher.poll()  # the nodes' loop lag at the end
            mark("final reads and convergence")
            res.network_lag = await mesh.fetch_lag()
            problems += [f"proxy: {e}" for e in mesh.errors]
            nem.check_crashes(restart=False)
            problems += [f"node crashed: {what}" for what in nem.crashes]
            background.cancel_scope.cancel()
    except ClusterTimeout as exc:
        problems.append(f"cluster: {str(exc).splitlines()[0]}")
    except trio.TooSlowError:
        problems.append("cluster: the prefill did not finish in time")
    finally:
        if mesh is not None:
            await mesh.aclose()
        if cluster is not None:
            with trio.CancelScope(shield=True):
                await cluster.aclose()
            leftovers = [p for n in cluster.nodes.values() for p in n.pids if pid_alive(p)]
            if leftovers:
                problems.append(f"processes left behind: {leftovers}")
        res.history, res.faults = rec.history, (nem.events if nem is not None else [])
        _save(out, rec, res.faults)
        if watcher is not None:
            watcher.save(out / "status.jsonl")
    mark("stop")
    res.check = await trio.to_thread.run_sync(
        lambda: check(rec.history, timeout=cfg.check_timeout)
    )
    if res.check.explanation:
        (out / "explanation.txt").write_text(res.check.explanation + "\n")
    mark("linearizability check")
    _judge(res, rec, watcher, end, ids)
    if harness is not None:
        res.harness_lag_ms = round(harness.worst * 1000, 1)
    res.log_errors = _log_errors(out, ids)
    return res


def _judge(
    res: ChaosResult, rec: Recorder, watcher: StatusWatcher | None, end: float, ids: list[str]
) -> None:
    """The checks besides linearizability; each violation is a problem."""
    cfg = res.config
    res.refused = refused_writes_seen(res.history, res.final_state)
    res.problems += res.refused
    res.max_inflight = max(rec.max_inflight.values(), default=0)
    if watcher is None:
        return
    events = [e for e in res.faults if e.t <= end]
    res.health = check_health(watcher.samples, events, ids, settle=cfg.settle, end=end,
                              lag_bound=cfg.lag_bound)  # fmt: skip
    res.problems += res.health.violations
    if not res.health.windows and cfg.healthy_tail >= cfg.settle + 2:
        res.problems.append("no healthy period was long enough to check")
    res.loop = loop_lag(watcher.samples, res.faults, res.health.windows)
    if cfg.max_loop_lag_ms is not None and res.loop.worst_ms > cfg.max_loop_lag_ms:
        res.problems.append(f"loop lag {res.loop.worst_ms:.0f} ms on {res.loop.node} at "
                            f"t={res.loop.t:.1f}s (limit {cfg.max_loop_lag_ms:g} ms)")  # fmt: skip
    res.stats = watcher.stats()


def _rng(seed: str) -> Any:
    import random

    return random.Random(seed)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _node_args(cfg: ChaosConfig) -> list[str]:
    args = []
    if cfg.snapshot_entries is not None:
        args.append(f"--snapshot-entries={cfg.snapshot_entries}")
    if cfg.snapshot_catchup_entries is not None:
        args.append(f"--snapshot-catchup-entries={cfg.snapshot_catchup_entries}")
    return args


def _nemesis_config(cfg: ChaosConfig) -> NemesisConfig:
    return NemesisConfig(seed=cfg.seed, faults=cfg.faults, fault_interval=cfg.fault_interval,
                         settle=cfg.settle, quiet_chance=cfg.quiet_chance,
                         sabotage=cfg.sabotage & {"stall", "lag"})  # fmt: skip


async def _leader(cluster: ProcCluster) -> str:
    return await cluster.wait_for_leader(30)


async def _final_reads(
    rec: Recorder, pool: Pool, cluster: ProcCluster, keys: list[str], seconds: float,
    values: Values,
) -> dict[str, str | None]:  # fmt: skip
    """A linearizable read of every key (through the leader), each appended to the history."""
    out: dict[str, str | None] = {}
    with trio.fail_after(60):
        for key in keys:
            while True:
                leader = await cluster.wait_for_leader(30)
                op = await do_get(rec, pool, "final", leader, key, seconds, values)
                if op.outcome == "ok":
                    out[key] = op.result
                    break
                await trio.sleep(0.2)
    return out


async def _settle(
    rec: Recorder, cluster: ProcCluster, ports: dict[str, int], keys: list[str],
    cfg: ChaosConfig, values: Values, problems: list[str],
) -> tuple[bool, dict[str, str | None] | None]:  # fmt: skip
    """After healing: final reads, convergence, and reads == converged state (decoded).

    A write a client gave up on may still land late (queued at a follower, held by
    a paused node or a slow link), so reads and state are compared and retaken
    until they agree, for up to a minute.
    """
    state: dict[str, str | None] | None = None
    diff: list[str] = []
    pool = Pool(ports)
    deadline = trio.current_time() + 60
    try:
        while True:
            try:
                await cluster.wait_for_leader(30)
                reads = await _final_reads(rec, pool, cluster, keys, cfg.client_timeout, values)
                raw = await converged_state(cluster, pool, timeout=30)
            except (ClusterTimeout, trio.TooSlowError) as exc:
                problems.append(f"no convergence after healing: {str(exc).splitlines()[0]}")
                return False, state
            state = {k: values.read(raw[k]) for k in keys if k in raw}
            expected = {k: v for k, v in reads.items() if v is not None}
            if state == expected:
                return True, state
            diff = [f"{k}: read {expected.get(k)!r}, state {state.get(k)!r}"
                    for k in keys if expected.get(k) != state.get(k)]  # fmt: skip
            if trio.current_time() > deadline:
                break
            await trio.sleep(1.0)
    finally:
        await pool.aclose()
    problems.append(f"the converged state never matched the final reads ({len(diff)} keys, "
                    f"e.g. {'; '.join(diff[:3])})")  # fmt: skip
    return False, state


def _log_errors(out: Path, ids: list[str]) -> list[str]:
    found = []
    for node_id in ids:
        try:
            text = (out / f"{node_id}.log").read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if " ERROR " in line or " CRITICAL " in line or "Traceback" in line:
                found.append(f"{node_id}: {line.strip()}")
    return found


def _save_run_info(
    out: Path, cfg: ChaosConfig, cluster: ProcCluster, mesh: ProxyMesh, wall_t0: float
) -> None:
    """run.json: the settings, and what maps history times (seconds since the load
    began) to the node logs' wall-clock times."""
    settings = {k: (sorted(v) if isinstance(v, frozenset) else str(v) if isinstance(v, Path)
                    else v) for k, v in asdict(cfg).items()}  # fmt: skip
    info = {
        **settings, "t0_unix": wall_t0,
        "t0_local": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall_t0)),
        "ports": {i: n.port for i, n in cluster.nodes.items()},
        "proxies": {f"{a}->{b}": link.port for (a, b), link in mesh.links.items()},
    }  # fmt: skip
    (out / "run.json").write_text(json.dumps(info, indent=1) + "\n")


def _save(out: Path, rec: Recorder, events: list[FaultEvent]) -> None:
    save_history(out / "history.jsonl", rec.history)
    with open(out / "attempts.jsonl", "w", encoding="utf-8") as f:
        for i, (node, status) in enumerate(rec.attempts):
            f.write(json.dumps({"i": i, "node": node, "status": status}) + "\n")
    with open(out / "faults.jsonl", "w", encoding="utf-8") as f:
        for ev in events:
            f.write(json.dumps(ev.to_dict()) + "\n")


def _route_peers_through(cluster: ProcCluster, mesh: ProxyMesh) -> None:
    """Point every node's ``--peer B=URL`` at the proxy for that ordered pair."""
    for a, node in cluster.nodes.items():
        routed = 0
        for k, arg in enumerate(node.argv):
            if arg.startswith("--peer="):
                b = arg[len("--peer=") :].partition("=")[0]
                node.argv[k] = f"--peer={b}={mesh.url(a, b)}"
                routed += 1
        if routed != len(cluster.nodes) - 1:
            raise RuntimeError(f"expected --peer=ID=URL flags in {node.argv}")


# ------------------------------------------------------------------ command line

WORKLOAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "mixed": {"clients": 8, "keys": 10, "value_bytes": "0", "prefill_bytes": 0,
              "snapshot_entries": 100, "snapshot_catchup_entries": 50, "wave_interval": 0.0},
    "write-heavy": {"clients": 256, "keys": 200, "value_bytes": "256-4096",
                    "prefill_bytes": 4 << 20, "snapshot_entries": 1000,
                    "snapshot_catchup_entries": 500, "wave_interval": 0.5},
}  # fmt: skip
"""Per workload, what an option not given on the command line means."""


def _default_out(seed: int) -> Path:
    return Path(".chaos") / f"{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}"


def _range(parser: argparse.ArgumentParser, text: str, what: str) -> tuple[float, float]:
    try:
        low, _, high = text.partition("-")
        lo, hi = float(low), float(high or low)
    except ValueError:
        parser.error(f"{what}: expected MIN-MAX, as 1-4")
    if not 0 <= lo <= hi:
        parser.error(f"{what}: expected 0 <= MIN <= MAX")
    return lo, hi


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trioraft.testing.chaos",
        description="Fault injection against real trioraft processes, with a "
        "linearizability check, a refused-write check and a healthy-period check. "
        "Exit status 0 only if every check passed.",
    )
    a = p.add_argument
    a("--duration", type=float, default=60.0, help="seconds of load, healthy tail included [60]")
    a("--nodes", type=int, default=5, help="cluster size [5]")
    a("--seed", type=int, default=None, help="nemesis/client seed [random]")
    a("--workload", choices=sorted(WORKLOADS), default="mixed",
      help="mixed: 40%% reads to random nodes; write-heavy: 90%% writes through "
      "followers, many clients, large values, several MB of state [mixed]")  # fmt: skip
    a("--clients", type=int, default=None, help="concurrent clients [mixed 8, write-heavy 256]")
    a("--keys", type=int, default=None, help="number of checked keys [10, write-heavy 200]")
    a("--value-bytes", default=None, metavar="MIN-MAX",
      help="size of written values [0: bare names; write-heavy 256-4096]")  # fmt: skip
    a("--prefill-bytes", type=int, default=None, metavar="N",
      help="ballast written before the load [0; write-heavy 4 MiB]")  # fmt: skip
    a("--wave-interval", type=float, default=None, metavar="S",
      help="clients send in waves every S seconds, one request each; 0: closed loop "
      "[mixed 0, write-heavy 0.5]")  # fmt: skip
    a("--out", type=Path, default=None, help="run directory [.chaos/<time>-seed<S>]")
    a("--keep", action="store_true", help="keep --out even when passing")
    a("--results", type=Path, default=None, metavar="FILE",
      help="append the run's figures to FILE as one JSON line")  # fmt: skip
    a("--client-timeout", type=float, default=2.0, help="seconds per HTTP attempt [2]")
    a("--max-ops", type=int, default=500_000, help="operation cap [500000]")
    a("--faults", default=",".join(FAULT_KINDS),
      help=f"comma-separated subset of {','.join(FAULTS)}; '' for none "
      f"[{','.join(FAULT_KINDS)}]")  # fmt: skip
    a("--fault-interval", default="1-4", metavar="MIN-MAX",
      help="seconds between nemesis steps [1-4]")  # fmt: skip
    a("--settle", type=float, default=5.0,
      help="seconds after the last fault before a period counts as healthy [5]")  # fmt: skip
    a("--healthy-tail", type=float, default=10.0,
      help="fault-free seconds at the end of the load [10]")  # fmt: skip
    a("--quiet-chance", type=float, default=0.3,
      help="chance that the nemesis rests after its last fault ends [0.3]")  # fmt: skip
    a("--lag-bound", type=int, default=2000,
      help="entries a follower may trail the leader in a healthy period [2000]")  # fmt: skip
    a("--max-loop-lag-ms", type=float, default=None,
      help="fail when a node's loop lag exceeds this [report only]")  # fmt: skip
    a("--election-timeout-ms", default=None, metavar="MIN-MAX")
    a("--heartbeat-ms", type=int, default=None)
    a("--log-level", default="info", help="the nodes' --log-level [info]")
    a("--snapshot-entries", type=int, default=None, metavar="N",
      help="the nodes' --snapshot-entries; 0: the server default [100; write-heavy 1000]")
    a("--snapshot-catchup-entries", type=int, default=None, metavar="N",
      help="the nodes' --snapshot-catchup-entries; -1: the server default "
      "[50; write-heavy 500]")  # fmt: skip
    a("--stale-reads", action="store_true",
      help="clients read with ?consistency=stale: a sanity check of the harness itself, "
      "which must then report VIOLATION")  # fmt: skip
    a("--sabotage", default="", metavar="KINDS",
      help=f"test only, comma-separated {','.join(SABOTAGE)}: a deliberately broken "
      "run that the checks must fail (see docs/verification.md)")  # fmt: skip
    return p


def parse_args(argv: Sequence[str] | None = None) -> ChaosConfig:
    parser = _parser()
    args = parser.parse_args(argv)
    d = WORKLOAD_DEFAULTS[args.workload]

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return d[name] if value is None else value

    clients, keys = pick("clients"), pick("keys")
    if args.nodes < 1 or clients < 1 or keys < 1 or args.duration <= 0:
        parser.error("--nodes, --clients, --keys and --duration must be positive")
    faults = frozenset(f.strip() for f in args.faults.split(",") if f.strip())
    if bad := faults - set(FAULTS):
        parser.error(f"unknown fault kinds: {sorted(bad)}")
    sabotage = frozenset(f.strip() for f in args.sabotage.split(",") if f.strip())
    if bad := sabotage - set(SABOTAGE):
        parser.error(f"unknown sabotage: {sorted(bad)}")
    interval = _range(parser, args.fault_interval, "--fault-interval")
    if interval[0] <= 0:
        parser.error("--fault-interval: expected 0 < MIN <= MAX")
    vb = _range(parser, str(pick("value_bytes")), "--value-bytes")
    snap, catchup = pick("snapshot_entries"), pick("snapshot_catchup_entries")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big") % 100_000
    return ChaosConfig(
        duration=args.duration, nodes=args.nodes, seed=seed, workload=args.workload,
        clients=clients, keys=keys, value_bytes=(int(vb[0]), int(vb[1])),
        prefill_bytes=pick("prefill_bytes"), out=args.out or _default_out(seed),
        keep=args.keep, client_timeout=args.client_timeout, max_ops=args.max_ops,
        wave_interval=pick("wave_interval"),
        faults=faults, election_timeout_ms=args.election_timeout_ms,
        heartbeat_ms=args.heartbeat_ms, log_level=args.log_level,
        read_consistency="stale" if args.stale_reads else "linearizable",
        snapshot_entries=snap or None, snapshot_catchup_entries=None if catchup < 0 else catchup,
        fault_interval=interval, settle=args.settle, healthy_tail=args.healthy_tail,
        quiet_chance=args.quiet_chance, lag_bound=args.lag_bound,
        max_loop_lag_ms=args.max_loop_lag_ms, sabotage=sabotage,
    )  # fmt: skip


def report(result: ChaosResult) -> str:
    """What a run prints before its summary line."""
    lines = []
    if result.check is not None and result.check.explanation:
        shown = result.check.explanation.splitlines()
        lines += shown[:40]
        if len(shown) > 40:
            lines.append(f"... {len(shown) - 40} more lines in {result.out / 'explanation.txt'}")
    lines += result.problems[:40]
    if len(result.problems) > 40:
        lines.append(f"... {len(result.problems) - 40} more problems")
    if result.log_errors:
        lines.append(f"chaos: {len(result.log_errors)} error line(s) in the node logs, "
                     f"first: {result.log_errors[0]}")  # fmt: skip
    if result.loop is not None:
        lines.append(f"chaos: worst loop lag {result.loop.worst_ms:.0f} ms ({result.loop.node} "
                     f"at t={result.loop.t:.1f}s), in healthy periods "
                     f"{result.loop.healthy_worst_ms:.0f} ms, at the end "
                     + ", ".join(f"{n}={v:.0f}" for n, v in sorted(result.loop.final.items()))
                     + f"; stats {result.stats}; most writes in flight at one node "
                     f"{result.max_inflight}")  # fmt: skip
    if not result.ok:
        lines.append(f"chaos: kept {result.out} (history.jsonl, attempts.jsonl, faults.jsonl, "
                     "status.jsonl, n*.log, n*/)")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    results = _parser().parse_args(argv).results
    notes = []
    if cfg.read_consistency == "stale":
        notes.append("clients read stale: expect VIOLATION")
    if cfg.sabotage:
        notes.append(f"sabotage {','.join(sorted(cfg.sabotage))}: expect failure")
    print(f"chaos: seed={cfg.seed} out={cfg.out}" + (f" ({'; '.join(notes)})" if notes else ""),
          flush=True)  # fmt: skip
    result = trio.run(run_chaos, cfg)
    if text := report(result):
        print(text)
    if results is not None:
        with open(results, "a", encoding="utf-8") as f:
            f.write(json.dumps(result.to_json()) + "\n")
    if result.ok and not cfg.keep:
        shutil.rmtree(cfg.out, ignore_errors=True)
    print(result.summary(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
