"""Membership figures (issue 12): real `trioraft serve` processes, fsync on.

    python tests/membership/bench_membership.py [--keys 100000] [--runs 3] [--out FILE]

1. **Add a learner and promote it** with `--keys` keys in the cluster: a
   three-node cluster is filled (transactions of 500 puts, 40-byte values),
   then a fourth node is started empty with `--join` and added through
   `POST /cluster/members` with promote: the time from the request to the
   learner's committed entry ("add"), and to the committed promotion (catch-up
   by snapshot or entries, then the change). The node's process start-up is
   not counted (it answers /health first). The same node is then removed,
   emptied and added again: `--runs` additions, medians reported.
2. **Write availability during each kind of change**: 4 clients write (every
   write retried with its Idempotency-Key until acknowledged, as
   `trioraft.testing.memberload` does) for 2 s before the change, during it,
   and 3 s after; per change kind: writes that never succeeded (must be 0),
   attempts refused (503: retried), and the p99 and max write latency over
   the window. Each kind `--runs` times, medians reported.

Prints a Markdown table; `--out` also writes the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from trioraft.testing.memberload import Load, run_clients
from trioraft.testing.procs import ProcCluster

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


async def fill(cluster: ProcCluster, keys: int) -> None:
    leader = await cluster.wait_for_leader()
    url = cluster.url(leader) + "/txn"
    value = "x" * 40
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        sem = trio.Semaphore(4)

        async def batch(start: int) -> None:
            async with sem:
                ops = [{"op": "put", "key": f"key{i:07d}", "value": value}
                       for i in range(start, min(keys, start + 500))]  # fmt: skip
                for _ in range(20):
                    r = await http.post(url, json={"success": ops})
                    if r.status_code == 200:
                        return
                    await trio.sleep(0.5)
                raise RuntimeError(f"fill failed: {r.status_code} {r.text}")

        async with trio.open_nursery() as nursery:
            for start in range(0, keys, 500):
                nursery.start_soon(batch, start)


async def add_timing(cluster: ProcCluster, name: str) -> dict[str, float]:
    await cluster.wait_serving(name)
    t0 = time.monotonic()
    r = await cluster.member_change("POST", "/cluster/members",
                                    {"name": name, "url": cluster.url(name), "promote": False})
    t_add = time.monotonic() - t0
    assert r.json()["voter"] is False
    r = await cluster.member_change("POST", f"/cluster/members/{name}/promote",
                                    {"wait_ms": 600_000, "timeout_ms": 10_000},
                                    timeout=620)  # fmt: skip
    t_total = time.monotonic() - t0
    return {"add_learner_s": t_add, "add_and_promote_s": t_total}


async def figure_add(base: Path, keys: int, runs: int,
                     serve_args: tuple[str, ...] = ()) -> list[dict[str, float]]:  # fmt: skip
    out = []
    async with ProcCluster(3, base, log_level="warning", extra_args=serve_args) as cluster:
        t0 = time.monotonic()
        await fill(cluster, keys)
        fill_s = time.monotonic() - t0
        cluster.add_node("node4")
        for run in range(runs):
            cluster.start("node4")
            timing = await add_timing(cluster, "node4")
            st = await cluster.status("node4")
            timing["fill_s"] = fill_s
            timing["snapshots_installed"] = (st or {}).get("stats", {}).get(
                "snapshots_installed", 0)
            out.append(timing)
            print(f"  add run {run + 1}: {timing}", file=sys.stderr)
            await cluster.member_remove("node4")
            with trio.fail_after(30):
                while cluster["node4"].running:  # noqa: ASYNC110 - a process exiting
                    await trio.sleep(0.1)
            cluster.wipe("node4")
    return out


KINDS = ("add+promote", "remove follower", "remove leader", "transfer", "wipe+readmit")


async def one_change(cluster: ProcCluster, kind: str, members: set[str], spare: str) -> None:
    leader = await cluster.wait_for_leader()
    follower = next(n for n in sorted(members) if n != leader)
    if kind == "add+promote":
        cluster.start(spare)
        await cluster.member_add(spare)
        members.add(spare)
    elif kind == "remove follower":
        members.discard(follower)
        await cluster.member_remove(follower)
    elif kind == "remove leader":
        members.discard(leader)
        await cluster.member_remove(leader)
    elif kind == "transfer":
        await cluster.member_change("POST", "/cluster/leader/transfer", {"to": None})
    elif kind == "wipe+readmit":
        cluster.kill(follower)
        cluster.wipe(follower)
        cluster.start(follower)
        with trio.fail_after(60):
            while True:
                body = await cluster.members()
                m = {x["name"]: x for x in body["members"]}
                if (follower in m and m[follower]["voter"] and m[follower]["member_id"]
                        != follower and not body["change_in_progress"]):  # fmt: skip
                    break
                await trio.sleep(0.1)


async def figure_availability(base: Path, runs: int) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for run in range(runs):
        for kind in KINDS:
            d = base / f"{kind.replace(' ', '-').replace('+', '-')}-{run}"
            async with ProcCluster(3, d, log_level="warning") as cluster:
                members = {"node1", "node2", "node3"}
                spare = "node4"
                cluster.add_node(spare)
                load, stop = Load(), trio.Event()

                def live(members: set[str] = members, cluster: ProcCluster = cluster) -> list[str]:
                    return [cluster.url(i) for i in sorted(members) if cluster[i].running]

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run_clients, load, live, stop)
                    await trio.sleep(2)
                    t0 = time.monotonic()
                    await one_change(cluster, kind, members, spare)
                    change_s = time.monotonic() - t0
                    await trio.sleep(3)
                    stop.set()
                lat = sorted(load.write_latencies)
                row = {"failed_writes": len(load.failed_writes), "writes": len(lat),
                       "refused_attempts": load.refused_attempts,
                       "unknown_attempts": load.unknown_attempts,
                       "p99_ms": load.p99_ms(), "max_ms": 1000 * lat[-1] if lat else 0,
                       "change_s": change_s}  # fmt: skip
                results[kind].append(row)
                print(f"  {kind} run {run + 1}: {row}", file=sys.stderr)
    return results


def med(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--snapshot-entries", type=int, default=None,
                    help="the nodes' --snapshot-entries for the add figure (small: the "
                    "learner catches up by InstallSnapshot rather than from the log)")
    ap.add_argument("--snapshot-catchup-entries", type=int, default=None,
                    help="the nodes' --snapshot-catchup-entries for the add figure (0: no "
                    "catch-up tail, so a learner always needs the snapshot)")
    ap.add_argument("--keep", action="store_true", help="keep the nodes' data and logs")
    ap.add_argument("--skip-add", action="store_true")
    ap.add_argument("--skip-availability", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="trioraft-membership-bench-"))
    raw: dict[str, Any] = {}
    try:
        if not args.skip_add:
            serve_args = tuple(
                f"--{flag}={value}" for flag, value in (
                    ("snapshot-entries", args.snapshot_entries),
                    ("snapshot-catchup-entries", args.snapshot_catchup_entries),
                ) if value is not None
            )
            raw["add"] = await figure_add(base / "add", args.keys, args.runs, serve_args)
        if not args.skip_availability:
            raw["availability"] = await figure_availability(base / "avail", args.runs)
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    if "add" in raw:
        rows = raw["add"]
        print(f"\nAdd a learner and promote it, {args.keys:,} keys in the cluster "
              f"(medians of {len(rows)}):\n")
        print("| learner's entry committed | learner caught up and promoted | fill time |")
        print("| --- | --- | --- |")
        print(f"| {med(rows, 'add_learner_s'):.2f} s | {med(rows, 'add_and_promote_s'):.2f} s "
              f"| {rows[0]['fill_s']:.1f} s |")
    if "availability" in raw:
        print(f"\nWrite availability during each change (4 clients, medians of {args.runs}):\n")
        print("| change | change took | failed writes | refused attempts (retried) | "
              "p99 write latency | max |")
        print("| --- | --- | --- | --- | --- | --- |")
        for kind, rows in raw["availability"].items():
            print(f"| {kind} | {med(rows, 'change_s'):.2f} s | "
                  f"{max(r['failed_writes'] for r in rows)} | "
                  f"{med(rows, 'refused_attempts'):.0f} | {med(rows, 'p99_ms'):.0f} ms | "
                  f"{med(rows, 'max_ms'):.0f} ms |")
    if args.out:
        args.out.write_text(json.dumps(raw, indent=1) + "\n")


if __name__ == "__main__":
    trio.run(main)
