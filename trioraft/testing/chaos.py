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

import importlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import trio

from trioraft.testing import nemesis as _nemesis
from trioraft.testing import nemesis_membership
from trioraft.testing.chaos_checks import check_health, loop_lag, refused_writes_seen
from trioraft.testing.chaos_cli import main, parse_args, report
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
from trioraft.testing.chaos_config import SABOTAGE, ChaosConfig, ChaosResult
from trioraft.testing.chaos_http import Pool
from trioraft.testing.chaos_watch import HarnessLag, StatusWatcher, converged_state
from trioraft.testing.linearizability import check, save_history
from trioraft.testing.nemesis import FaultEvent, Nemesis, NemesisConfig
from trioraft.testing.procs import ClusterTimeout, ProcCluster, free_port_range, pid_alive
from trioraft.testing.proxy import ProxyMesh
from trioraft.testing.proxy_remote import RemoteMesh

__all__ = ["FAULT_KINDS", "NEMESIS_MODULES", "SABOTAGE", "ChaosConfig", "ChaosResult", "main",
           "parse_args", "report", "run_chaos"]  # fmt: skip

NEMESIS_MODULES: tuple[str, ...] = ()
"""Modules that register more fault kinds on import (see trioraft.testing.nemesis)."""
for _module in NEMESIS_MODULES:
    importlib.import_module(_module)

FAULT_KINDS = _nemesis.default_kinds()
"""The default mix: every registered kind with ``default=True``."""


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
            # Membership nemesis (issue 12): it changes members until the faults
            # stop; the heal empties the nodes it removed; after the load it adds
            # them back, so the run ends converged on the full membership.
            members = nemesis_membership.attach(cfg, cluster, nem) if cfg.membership else None
            async with trio.open_nursery() as load:
                load.start_soon(nem.run, rec.stop, faults_off)
                if members is not None:
                    load.start_soon(members.run_and_restore, faults_off)
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
            if members is not None:
                await members.after_heal()
                problems += [f"membership: {e}" for e in members.errors
                             if "could not be added back" in e]  # fmt: skip
                nem.log("note", "membership", members.summary())
                res.membership = dict(members.counts)
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
    _judge(res, rec, watcher, harness, end, ids)
    if harness is not None:
        res.harness_lag_ms = round(harness.worst * 1000, 1)
    res.log_errors = _log_errors(out, ids)
    return res


def _judge(
    res: ChaosResult, rec: Recorder, watcher: StatusWatcher | None, harness: HarnessLag | None,
    end: float, ids: list[str],
) -> None:
    """The checks besides linearizability; each violation is a problem."""
    cfg = res.config
    res.refused = refused_writes_seen(res.history, res.final_state)
    res.problems += res.refused
    res.max_inflight = max(rec.max_inflight.values(), default=0)
    if watcher is None:
        return
    events = [e for e in res.faults if e.t <= end]
    stalls = {"proxy": [(float(t), float(ms)) for t, ms in res.network_lag.get("stalls", [])],
              "clients": [(t, lag * 1000) for t, lag in harness.stalls] if harness else []}
    res.health = check_health(watcher.samples, events, ids, settle=cfg.settle, end=end,
                              lag_bound=cfg.lag_bound, harness_stalls=stalls)  # fmt: skip
    res.problems += res.health.violations
    if not res.health.windows and cfg.healthy_tail >= cfg.settle + 2:
        res.problems.append("no healthy period was long enough to check")
    res.loop = loop_lag(watcher.samples, res.faults, res.health.windows)
    if cfg.max_loop_lag_ms is not None and res.loop.worst_ms > cfg.max_loop_lag_ms:
        res.problems.append(f"loop lag {res.loop.worst_ms:.0f} ms on {res.loop.node} at "
                            f"t={res.loop.t:.1f}s (limit {cfg.max_loop_lag_ms:g} ms)")  # fmt: skip
    res.stats = watcher.stats()


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


if __name__ == "__main__":
    sys.exit(main())
