"""Healthy-cluster stability: ``python -m trioraft.bench.stability``.

Issue 11 item 4's benchmark. No faults are injected; what is measured is whether
a healthy 3-node cluster stays quiet while it takes snapshots under load:

1. **Frequent snapshots**: ``--keys`` keys (~3.5 MB of state with the defaults),
   ``--snapshot-entries 500``, then ``--duration`` seconds (2 minutes) of writes via
   the leader. Target: no election.
2. **1M keys** (``--big-keys``, 0 to skip): the same with a state of a million keys
   and snapshots every ``--big-snapshot-entries``, for ``--big-duration`` seconds.
   Target: the worst event-loop lag a node reports is at most 20 ms.

Both report elections (term increments), leader changes, the worst loop lag the
nodes report in ``/status`` (``loop_lag_ms``; reported as absent when they have no
such field) and the slowest ``/status`` answer seen from outside, follower lag and
RSS. Benchmarks, never tests: nothing here fails because a target is missed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from ._procs import StartError, workdir
from .soak import SoakSpec, add_soak_arguments, describe, run_soak, save, spec_from

__all__ = ["main"]

DEFAULTS = SoakSpec(
    duration=120.0,
    keys=30_000,
    concurrency=16,
    via="leader",
    snapshot_entries=500,
    poll=0.1,
    report_every=20.0,
    settle=11.0,  # the fill's loop lag has left the nodes' 10 s window
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trioraft.bench.stability",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_soak_arguments(p, DEFAULTS)
    p.add_argument("--big-keys", type=int, default=1_000_000, help="0 skips the 1M-key run")
    p.add_argument("--big-duration", type=float, default=60.0)
    p.add_argument("--big-snapshot-entries", type=int, default=5000)
    args = p.parse_args(argv)
    try:
        spec = spec_from(args)
    except ValueError as exc:
        p.error(str(exc))
    runs: list[tuple[str, SoakSpec]] = [("frequent snapshots", spec)]
    if args.big_keys > 0:
        big = replace(
            spec,
            keys=args.big_keys,
            duration=args.big_duration,
            snapshot_entries=args.big_snapshot_entries,
        )
        runs.append((f"{args.big_keys:,} keys", big))
    results: dict[str, Any] = {}
    for name, s in runs:
        print(
            f"== {name}: {s.keys:,} keys, snapshot every {s.snapshot_entries} entries, "
            f"{s.duration:g} s of writes via {s.via}, {s.concurrency} clients",
            flush=True,
        )
        with workdir("trioraft-stability-") as work:
            try:
                out = run_soak(s, work)
            except StartError as exc:
                print(f"stability: {exc}", file=sys.stderr)
                return 1
        print(describe(out), flush=True)
        results[name] = out
    for i, (name, out) in enumerate(results.items()):
        ns = argparse.Namespace(json=_suffixed(args.json, i), plot=_suffixed(args.plot, i))
        save(out, ns, f"stability, {name}")
    return 0


def _suffixed(path: Path | None, i: int) -> Path | None:
    if path is None or i == 0:
        return path
    return path.with_name(f"{path.stem}-{i + 1}{path.suffix}")


if __name__ == "__main__":
    sys.exit(main())
