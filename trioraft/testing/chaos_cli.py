"""The chaos run's command line: ``python -m trioraft.testing.chaos --help``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from trioraft.testing.chaos_clients import WORKLOADS
from trioraft.testing.chaos_config import SABOTAGE, ChaosConfig, ChaosResult
from trioraft.testing.nemesis import FAULTS, default_kinds

__all__ = ["WORKLOAD_DEFAULTS", "main", "parse_args", "report"]



WORKLOAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "mixed": {"clients": 8, "keys": 10, "value_bytes": "0", "prefill_bytes": 0,
              "snapshot_entries": 100, "snapshot_catchup_entries": 50, "wave_interval": 0.0},
    "write-heavy": {"clients": 256, "keys": 200, "value_bytes": "256-4096",
                    "prefill_bytes": 4 << 20, "snapshot_entries": 1000,
                    "snapshot_catchup_entries": 200, "wave_interval": 0.5},
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
    a("--faults", default=",".join(default_kinds()),
      help=f"comma-separated subset of {','.join(FAULTS)}; '' for none "
      f"[{','.join(default_kinds())}]")  # fmt: skip
    a("--fault-interval", default="1-4", metavar="MIN-MAX",
      help="seconds between nemesis steps [1-4]")  # fmt: skip
    a("--settle", type=float, default=5.0,
      help="seconds after the last fault before a period counts as healthy [5]")  # fmt: skip
    a("--healthy-tail", type=float, default=12.0,
      help="fault-free seconds at the end of the load [12]")  # fmt: skip
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
      "[50; write-heavy 200]")  # fmt: skip
    a("--membership", action="store_true",
      help="also change the membership: remove and re-add, wipe and re-admit, transfer "
      "leadership (trioraft.testing.nemesis_membership)")  # fmt: skip
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
        max_loop_lag_ms=args.max_loop_lag_ms, sabotage=sabotage, membership=args.membership,
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
    from trioraft.testing.chaos import run_chaos  # the runner imports this module

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
