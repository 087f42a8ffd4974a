"""Bounded soak: memory and disk stay flat over many writes; recovery time.

    python -m trioraft.bench.soak [--writes 200000] [--keys 10000] [--snapshot-entries 5000]

Starts a local fsync'd 3-node cluster, writes in rounds (64 clients), and after
each round samples every node's RSS, log length beyond the snapshot
(last_log_index - snapshot_index) and data-dir size. Then it SIGKILLs a
follower, restarts it on its data dir and times its recovery (until it has
applied the leader's commit index). Stops every process it started, by PID.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

from trioraft.bench._load import LoadSpec, run_load
from trioraft.bench.matrix import Processes, start_cluster

__all__ = ["main"]


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _du_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / (1 << 20)


def _status(url: str) -> dict[str, object]:
    r = httpx.get(url + "/status", timeout=5)
    return dict(r.json())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trioraft.bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--writes", type=int, default=200_000)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--snapshot-entries", type=int, default=5000)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="trioraft-soak-") as tmp:
        root = Path(tmp)
        procs = Processes(root)
        try:
            urls, started, leader = start_cluster(
                procs, 3, root, extra=["--snapshot-entries", str(a.snapshot_entries)]
            )
            per_round = a.writes // a.rounds
            print(f"soak: {a.writes} writes over {a.keys} keys, snapshot every "
                  f"{a.snapshot_entries} entries, {a.concurrency} clients")
            print("round  writes  ops/s   log-beyond-snapshot  rss MiB (per node)     data MiB"
                  "  snapshot (bytes, ms)")
            done = 0
            for rnd in range(1, a.rounds + 1):
                spec = LoadSpec(endpoints=urls, concurrency=a.concurrency, duration=600,
                                requests=per_round, keys=a.keys, target="leader", seed=rnd)
                res = trio.run(run_load, spec)
                done += res.outcomes.get("200", 0)
                logs = []
                snap = ""
                for u in urls:
                    st = _status(u)
                    logs.append(int(st["last_log_index"]) - int(st["snapshot_index"]))  # type: ignore[call-overload]
                    stats = st.get("stats") or {}
                    if isinstance(stats, dict) and "last_snapshot_bytes" in stats and not snap:
                        snap = f"{stats['last_snapshot_bytes']}, {stats['last_snapshot_ms']}"
                rss = [f"{_rss_mib(pr.pid):.0f}" for pr in started]
                data = sum(_du_mib(d) for d in root.iterdir() if d.is_dir())
                print(f"{rnd:5d}  {done:6d}  {res.ops_per_s:6.0f}   {max(logs):18d}  "
                      f"{' / '.join(rss):22s} {data:8.1f}  {snap}", flush=True)
            # Recovery: SIGKILL a follower, restart it, time until it caught up.
            st = _status(urls[0])
            leader = str(st["leader"])
            victim = next(i for i, u in enumerate(urls) if _status(u)["id"] != leader)
            proc = started[victim]
            cmd = list(proc.args)  # type: ignore[arg-type]
            proc.kill()
            proc.wait()
            t0 = time.monotonic()
            started[victim] = procs.start(f"restart-{victim}", [str(c) for c in cmd])
            target = int(_status(next(u for u in urls if _status_ok(u) and
                                      _status(u)["id"] == leader))["commit_index"])  # type: ignore[call-overload]
            while True:
                if _status_ok(urls[victim]):
                    s = _status(urls[victim])
                    if int(s["applied_index"]) >= target:  # type: ignore[call-overload]
                        break
                time.sleep(0.05)
                if time.monotonic() - t0 > 120:
                    print("recovery: not caught up within 120 s")
                    return 1
            print(f"recovery: follower restarted and applied index {target} in "
                  f"{time.monotonic() - t0:.2f} s (process start included)")
        finally:
            procs.stop()
    return 0


def _status_ok(url: str) -> bool:
    try:
        return httpx.get(url + "/status", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())

