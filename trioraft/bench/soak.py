"""Soak: a long, bounded write load on a local cluster, watched from outside.

    python -m trioraft.bench.soak [--duration 600] [--keys 170000] [--via followers]
                                  [--snapshot-entries 1000] [--json FILE] [--plot FILE.png]

Starts a local fsync'd 3-node cluster with ``--snapshot-entries``, gives it a
state of ``--keys`` keys of ``--value-size`` bytes (about 20 MB with the
defaults) through ``POST /txn``, then writes for ``--duration`` seconds through
the followers (or the leader), overwriting those keys so the state keeps its
size. Meanwhile it polls every node's ``/status`` every ``--poll`` seconds and
reports, every ``--report-every`` seconds and at the end:

* elections (term increments) and leader changes,
* the worst event-loop lag the nodes report (``loop_lag_ms`` in ``/status``;
  said to be absent when a node does not report it) and the slowest ``/status``
  answer (an outside bound on a stalled loop),
* every follower's lag behind the leader (applied index), over time,
* every node's RSS over time (flat or growing?).

``--recovery`` then SIGKILLs a follower, restarts it on its data dir and times
its catch-up. Every process is stopped by PID at the end. Issue 11's "Done when"
soak is the default: 10 minutes, snapshots every 1,000 entries, ~20 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import trio

from ._fill import fill_keys
from ._load import LoadResult, LoadSpec, parse_mix, run_load
from ._procs import Processes, StartError, start_cluster, workdir
from ._watch import Poll, Watcher

__all__ = ["SoakSpec", "main", "run_soak"]


@dataclass(frozen=True, slots=True)
class SoakSpec:
    duration: float = 600.0
    keys: int = 170_000
    key_size: int = 16
    value_size: int = 100
    concurrency: int = 64
    via: Literal["followers", "leader", "all"] = "followers"
    snapshot_entries: int = 1000
    poll: float = 0.2
    report_every: float = 30.0
    recovery: bool = False
    extra_args: tuple[str, ...] = ()
    # Idle seconds between the fill and the measured writes. The nodes report
    # their worst loop lag over the last 10 s (`recent_max`): without a pause
    # longer than that, the first polls would charge the fill's large
    # transactions to the measured workload.
    settle: float = 0.0

    def __post_init__(self) -> None:
        if not (self.duration > 0 and self.keys >= 1 and self.concurrency >= 1):
            raise ValueError("duration > 0, keys >= 1 and concurrency >= 1 are needed")
        if not (self.poll > 0 and self.report_every > 0 and self.snapshot_entries >= 1):
            raise ValueError("poll and report-every must be > 0, snapshot-entries >= 1")


def _interval_line(
    polls: list[Poll], t0: float, t1: float, prev_applied: int | None
) -> tuple[dict[str, Any], int | None]:
    """One report interval: writes/s (from the leader's applied index), worst
    follower lag, terms, loop lag, RSS at its end."""
    ps = [p for p in polls if t0 <= p.t < t1]
    last = ps[-1] if ps else None
    lead = last.leader() if last else None
    applied = last.nodes[lead].applied if last and lead and lead in last.nodes else None
    rate = None
    if applied is not None and prev_applied is not None:
        rate = (applied - prev_applied) / (t1 - t0)
    elif applied is not None and len(ps) > 1 and ps[-1].t > ps[0].t:
        first = _applied_at(ps, ps[0].t)  # no earlier interval: rate over this one's polls
        rate = (applied - first) / (ps[-1].t - ps[0].t) if first is not None else None
    lags = [lag for p in ps for lag in p.follower_lag().values()]
    recent = [
        s.loop_lag_recent for p in ps for s in p.nodes.values() if s.loop_lag_recent is not None
    ]
    row = {
        "t": round(t1, 1),
        "applied_per_s": round(rate) if rate is not None else None,
        "term": last.max_term() if last else None,
        "leader": lead,
        "max_follower_lag": max(lags, default=None),
        "worst_recent_loop_lag_ms": max(recent, default=None),
        "worst_status_ms": round(
            max((s.status_ms for p in ps for s in p.nodes.values()), default=0.0), 1
        ),
        "rss_mib": {n: round(s.rss_mib) for n, s in last.nodes.items()} if last else {},
    }
    return row, applied if applied is not None else prev_applied


def _print_interval(row: dict[str, Any]) -> None:
    lag = row["worst_recent_loop_lag_ms"]
    print(
        f"{row['t']:7.1f}s  {row['applied_per_s'] or 0:6,}/s  term {row['term']}  "
        f"leader {row['leader']}  follower lag <= {row['max_follower_lag']}  "
        f"loop lag {lag if lag is not None else 'absent'}  "
        f"/status <= {row['worst_status_ms']} ms  "
        f"RSS MiB {' / '.join(str(v) for v in row['rss_mib'].values())}",
        flush=True,
    )


async def _load_and_watch(
    spec: SoakSpec, urls: tuple[str, ...], watcher: Watcher, quiet: bool
) -> tuple[LoadResult, list[dict[str, Any]]]:
    load = LoadSpec(
        endpoints=urls,
        concurrency=spec.concurrency,
        duration=spec.duration,
        keys=spec.keys,
        key_size=spec.key_size,
        value_size=spec.value_size,
        mix=parse_mix("write"),
        target=spec.via,
        timeout=30.0,
    )
    intervals: list[dict[str, Any]] = []

    async def report() -> None:
        t0, prev = 0.0, None
        while True:
            await trio.sleep(spec.report_every)
            t1 = time.monotonic() - watcher.started
            row, prev = _interval_line(watcher.polls, t0, t1, prev)
            intervals.append(row)
            if not quiet:
                _print_interval(row)
            t0 = t1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watcher.run)
        nursery.start_soon(report)
        result = await run_load(load)
        t1 = time.monotonic() - watcher.started
        t0 = intervals[-1]["t"] if intervals else 0.0
        if t1 - t0 > 0.5 * spec.report_every or not intervals:
            prev = None if not intervals else _applied_at(watcher.polls, t0)
            row, _ = _interval_line(watcher.polls, t0, t1 + 1e-6, prev)
            intervals.append(row)
            if not quiet:
                _print_interval(row)
        nursery.cancel_scope.cancel()
    return result, intervals


def _applied_at(polls: list[Poll], t: float) -> int | None:
    before = [p for p in polls if p.t <= t]
    if not before:
        return None
    lead = before[-1].leader()
    s = before[-1].nodes.get(lead) if lead else None
    return s.applied if s else None


def _recovery(procs: Processes, urls: tuple[str, ...], nodes: list[Any]) -> dict[str, Any]:
    """SIGKILL a follower, restart it on its data dir, time until it applied the
    leader's commit index as it was at the restart."""
    with httpx.Client(timeout=5, trust_env=False) as client:
        sts = [client.get(u + "/status").json() for u in urls]
        leader = sts[0]["leader"]
        k = next(i for i, st in enumerate(sts) if st["id"] != leader)
        lead_url = next(u for u, st in zip(urls, sts, strict=True) if st["id"] == leader)
        proc = nodes[k]
        cmd = [str(c) for c in proc.args]
        proc.kill()
        proc.wait()
        target = int(client.get(lead_url + "/status").json()["commit_index"])
        t0 = time.monotonic()
        nodes[k] = procs.start(f"restart-{k}-{int(t0)}", cmd)
        while time.monotonic() - t0 < 120:
            try:
                if int(client.get(urls[k] + "/status").json()["applied_index"]) >= target:
                    return {
                        "node": sts[k]["id"],
                        "index": target,
                        "seconds": round(time.monotonic() - t0, 2),
                    }
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.05)  # polling another process: nothing to wait on
    return {"node": sts[k]["id"], "index": target, "seconds": None}


def run_soak(spec: SoakSpec, work: Path, *, quiet: bool = False) -> dict[str, Any]:
    """Run one soak in ``work``; returns everything it measured (JSON-ready)."""
    procs = Processes(work)
    load_before = os.getloadavg()
    try:
        extra = ["--snapshot-entries", str(spec.snapshot_entries), *spec.extra_args]
        urls, nodes, _leader = start_cluster(procs, 3, work, extra=extra)
        names = {f"node{k + 1}": u for k, u in enumerate(urls)}
        pids = {f"node{k + 1}": p.pid for k, p in enumerate(nodes)}
        lead_url = trio.run(_leader_url, urls)
        t0 = time.monotonic()
        failed = trio.run(
            lambda: fill_keys(
                lead_url, spec.keys, key_size=spec.key_size, value_size=spec.value_size
            )
        )
        fill_s = time.monotonic() - t0
        if not quiet:
            print(
                f"soak: {spec.keys:,} keys written in {fill_s:.1f} s ({failed} failed txns); "
                f"{spec.duration:g} s of writes via {spec.via}, {spec.concurrency} clients, "
                f"snapshot every {spec.snapshot_entries} entries",
                flush=True,
            )
        if spec.settle > 0:
            time.sleep(spec.settle)
        watcher = Watcher(names, pids, spec.poll)
        result, intervals = trio.run(_load_and_watch, spec, urls, watcher, quiet)
        recovery = _recovery(procs, urls, nodes) if spec.recovery else None
    finally:
        procs.stop()
    pct = result.percentiles()
    return {
        "spec": asdict(spec),
        "machine_load": {"before": load_before[0], "after": os.getloadavg()[0]},
        "fill": {"keys": spec.keys, "seconds": round(fill_s, 1), "failed_txns": failed},
        "load": {
            "elapsed_s": round(result.elapsed, 1),
            "ok": result.ok,
            "errors": result.errors,
            "ops_per_s": round(result.ops_per_s, 1),
            "outcomes": result.outcomes,
            "latency_ms": {k: round(v, 2) for k, v in pct.items()},
            "timeline": result.timeline(1.0),
        },
        "cluster": watcher.summary(),
        "series": watcher.series(),
        "intervals": intervals,
        "recovery": recovery,
    }


async def _leader_url(urls: tuple[str, ...]) -> str:
    from ._discovery import find_targets

    targets, _ = await find_targets(urls, "leader", wait=30.0)
    return targets[0]


def describe(out: dict[str, Any]) -> str:
    """The end-of-run summary in a few lines."""
    c, ld = out["cluster"], out["load"]
    lag = (
        f"{c['worst_loop_lag_ms']} ms (worst recent {c['worst_recent_loop_lag_ms']} ms)"
        if c["loop_lag_reported"]
        else "absent (the nodes' /status has no loop_lag_ms)"
    )
    rss = ", ".join(
        f"{n} {v['first']:.0f} -> {v['last']:.0f} (max {v['max']:.0f})"
        for n, v in c["rss_mib"].items()
    )
    lines = [
        f"writes: {ld['ok']:,} ok, {ld['errors']:,} errors in {ld['elapsed_s']} s "
        f"({ld['ops_per_s']:,} /s; p50 {ld['latency_ms'].get('p50')} ms, "
        f"p99 {ld['latency_ms'].get('p99')} ms, max {ld['latency_ms'].get('max')} ms)",
        f"elections: {c['elections']} (term {c['first_term']} -> {c['last_term']}), "
        f"leader changes: {c['leader_changes']}",
        f"worst event-loop lag: {lag}; slowest /status answer {c['worst_status_ms']:.0f} ms",
        f"worst follower lag behind the leader: {c['max_follower_lag']} entries",
        f"RSS MiB (first -> last poll): {rss}",
        f"machine load average: {out['machine_load']['before']:.1f} before, "
        f"{out['machine_load']['after']:.1f} after (2 cores: above ~2, the nodes wait for CPU)",
    ]
    if out.get("recovery"):
        r = out["recovery"]
        lines.append(
            f"recovery: {r['node']} SIGKILLed and restarted, applied index "
            f"{r['index']} in {r['seconds']} s (process start included)"
        )
    return "\n".join(lines)


def add_soak_arguments(p: argparse.ArgumentParser, defaults: SoakSpec) -> None:
    d = defaults
    p.add_argument("--duration", type=float, default=d.duration, help="seconds of writes")
    p.add_argument("--keys", type=int, default=d.keys, help="keys in the state")
    p.add_argument("--value-size", type=int, default=d.value_size, help="bytes per value")
    p.add_argument("--concurrency", "-c", type=int, default=d.concurrency)
    p.add_argument("--via", choices=("followers", "leader", "all"), default=d.via)
    p.add_argument("--snapshot-entries", type=int, default=d.snapshot_entries)
    p.add_argument("--poll", type=float, default=d.poll, help="seconds between /status polls")
    p.add_argument("--report-every", type=float, default=d.report_every)
    p.add_argument("--settle", type=float, default=d.settle,
                   help="idle seconds between the fill and the measured writes (the nodes' "
                   "recent loop lag looks back 10 s)")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="save every figure here")
    p.add_argument("--plot", type=Path, default=None, help="save a PNG of it over time")


def spec_from(args: argparse.Namespace, **more: Any) -> SoakSpec:
    return SoakSpec(
        duration=args.duration,
        keys=args.keys,
        value_size=args.value_size,
        concurrency=args.concurrency,
        via=args.via,
        snapshot_entries=args.snapshot_entries,
        poll=args.poll,
        report_every=args.report_every,
        settle=args.settle,
        **more,
    )


def save(out: dict[str, Any], args: argparse.Namespace, title: str) -> None:
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))
    if args.plot is not None:
        from ._soak_plot import plot_soak

        plot_soak(out, args.plot, title)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trioraft.bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_soak_arguments(p, SoakSpec())
    p.add_argument("--recovery", action="store_true", help="then time a follower's restart")
    args = p.parse_args(argv)
    try:
        spec = spec_from(args, recovery=args.recovery)
    except ValueError as exc:
        p.error(str(exc))
    with workdir("trioraft-soak-") as work:
        try:
            out = run_soak(spec, work)
        except StartError as exc:
            print(f"soak: {exc}", file=sys.stderr)
            return 1
    print(describe(out))
    save(out, args, f"soak: {spec.duration:g} s via {spec.via}, {spec.keys:,} keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
