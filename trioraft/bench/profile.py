"""Where a node's CPU goes under load: ``python -m trioraft.bench.profile``.

Starts a local fsync'd 3-node cluster, runs ``--mix`` at ``--concurrency`` clients
via the leader, and meanwhile samples the leader and one follower with py-spy
(``pip install py-spy``; sampling another process needs ptrace rights, e.g. root
or ``kernel.yama.ptrace_scope=0``). It prints, per node, the functions with the
most samples on CPU (self time) and the share of samples under each top-level
package (inclusive), and can keep the raw collapsed stacks (``--keep DIR``) for a
flame graph. Bounded like every bench tool: one load of ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import Counter
from pathlib import Path

import trio

from ._load import LoadSpec, parse_mix, run_load
from ._procs import Processes, StartError, start_cluster, workdir

__all__ = ["main", "summarize"]


#: Leaf frames where a thread waits rather than runs: py-spy's own idle detection
#: does not work in every sandbox, so samples are classified by where they stop.
IDLE_LEAVES = (
    "EpollIOManager.get_events",  # the Trio loop waiting for I/O or a timer
    "WorkerThread._work",  # a worker thread waiting for a job
    "Condition.wait",
    "Event.wait",
)
#: The commit (fsync) of a storage transaction: mostly waiting on the disk.
FSYNC_LEAVES = ("SqliteStorage._tx (_sqlite.py:187)",)


def summarize(
    collapsed: str, top: int = 20
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """From py-spy's raw (collapsed) output: samples on CPU, the top functions by
    self samples, and samples by package (a stack counts once per package in it).
    Samples stopped in a wait (:data:`IDLE_LEAVES`) are left out; those in the
    storage commit (fsync) are counted under one ``[fsync/commit]`` line."""
    total = 0
    leaf: Counter[str] = Counter()
    package: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        n = int(count_text)
        frames = stack.split(";")
        last = _short(frames[-1])
        if last.startswith(IDLE_LEAVES):
            continue
        total += n
        leaf["[fsync/commit, mostly disk wait]" if last in FSYNC_LEAVES else last] += n
        for pkg in {_package(f) for f in frames} - {None}:
            package[str(pkg)] += n
    return total, leaf.most_common(top), package.most_common(top)


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py:123)"
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1]}" if where else name


def _package(frame: str) -> str | None:
    # py-spy names files relative to sys.path: "trio/_core/_run.py", "trioraft/node.py"
    _, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    if not path or path.startswith("<"):
        return None
    parts = path.split("/")
    if parts[0] == "trioraft" and len(parts) > 1:
        return "trioraft." + parts[1].removesuffix(".py")
    return parts[0].removesuffix(".py")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m trioraft.bench.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--concurrency", "-c", type=int, default=1)
    p.add_argument("--mix", default="write", help="operations, as for trioraft bench")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of load (and sampling)")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--keep", type=Path, default=None, help="save the collapsed stacks here")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("profile: py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    with workdir("trioraft-profile-") as work:
        procs = Processes(work)
        try:
            urls, nodes, leader = start_cluster(procs, 3, work)
            ids = [f"node{k + 1}" for k in range(3)]
            lead = ids.index(leader)
            follower = next(k for k in range(3) if k != lead)
            targets = {
                f"leader ({leader})": nodes[lead].pid,
                f"follower ({ids[follower]})": nodes[follower].pid,
            }
            spec = LoadSpec(
                endpoints=urls,
                concurrency=args.concurrency,
                target="leader",
                mix=parse_mix(args.mix),
                duration=args.duration + 2,
                warmup=1.0,
            )
            spies = {}
            for name, pid in targets.items():
                out = work / f"{pid}.txt"
                cmd = [
                    spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(args.rate),
                    "--duration",
                    str(int(args.duration)),
                    "--format",
                    "raw",
                    "--idle",
                    "--nonblocking",
                    "--output",
                    str(out),
                ]
                spies[name] = (procs.start(f"py-spy-{pid}", cmd), out)
            result = trio.run(run_load, spec)
            for proc, _ in spies.values():
                proc.wait(timeout=args.duration + 30)
            print(
                f"load: {args.mix} at c={args.concurrency}: {result.ops_per_s:,.0f} ops/s, "
                f"p50 {result.percentiles().get('p50', 0):.2f} ms",
                flush=True,
            )
            for name, (proc, out) in spies.items():
                if proc.returncode != 0 or not out.exists():
                    log = procs.log_tail(proc)
                    print(f"{name}: py-spy failed ({proc.returncode}):\n{log}", file=sys.stderr)
                    continue
                text = out.read_text()
                if args.keep is not None:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    (args.keep / f"{name.split()[0]}.collapsed").write_text(text)
                total, funcs, pkgs = summarize(text, args.top)
                print(
                    f"\n== {name}: {total} samples on CPU "
                    f"({total / args.rate / args.duration:.0%} of one core)"
                )
                print("  by package (inclusive):")
                for pkg, n in pkgs:
                    print(f"    {n / total:6.1%}  {pkg}")
                print("  by function (self):")
                for fn, n in funcs:
                    print(f"    {n / total:6.1%}  {fn}")
        except StartError as exc:
            print(f"profile: {exc}", file=sys.stderr)
            return 1
        finally:
            procs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
