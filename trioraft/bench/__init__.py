"""``trioraft bench``: a bounded HTTP load generator for a trioraft cluster.

The CLI wires :func:`add_arguments` and :func:`main` into ``trioraft bench``;
programs call :func:`run_load` with a :class:`LoadSpec`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import trio

from ._load import (
    DEFAULT_ENDPOINTS,
    OPS,
    LoadResult,
    LoadSpec,
    ProgressFn,
    find_targets,
    parse_mix,
    run_load,
)
from ._report import check_plot_available, plot_run, print_json, print_table

__all__ = [
    "DEFAULT_ENDPOINTS",
    "OPS",
    "LoadResult",
    "LoadSpec",
    "ProgressFn",
    "add_arguments",
    "find_targets",
    "main",
    "parse_mix",
    "run_load",
    "spec_from_args",
]

DEFAULT_DURATION = 10.0

DESCRIPTION = """\
Load-test running trioraft nodes over HTTP and report what they sustained.

N concurrent clients (--concurrency), each on its own keep-alive connection,
send a mix of operations (--mix) for --warmup seconds unmeasured, then for
--duration seconds or --requests requests, whichever ends first: every run is
bounded and stops by itself. Every request is counted under its outcome (200,
404 not_found, 503 no_leader, conn_error, timeout...); latency percentiles are
over the successful ones, overall and per operation.

Operations: write (PUT /kv/KEY), read (GET /kv/KEY?consistency=...), cas
(POST /kv/KEY/cas), delete (DELETE /kv/KEY), txn (POST /txn, a guarded put),
bulk (POST /txn with 100 puts), and against any HTTP server echo (POST --path
with a --value-size body) and get (GET --path). --protocol etcd sends write,
read and delete to etcd's v3 JSON gateway instead, for a side by side.

--plot draws throughput over time per operation (so a stall or an election
shows as a dip), the worst latency per interval, and latency CDFs with reads
and writes apart. Exit status: 0 when requests succeeded, 1 when none did,
2 for bad options, 3 when the cluster could not be reached or had no leader.
"""

EPILOG = """\
examples:
  trioraft bench --mix write=1 --concurrency 64 --target leader
  trioraft bench --mix read=1 --consistency stale --prefill --json
  trioraft bench --mix write=0.5,read=0.5 --duration 30 --plot run.png
  trioraft bench --endpoints http://127.0.0.1:8080 --mix echo   # an echo ceiling
  trioraft bench --protocol etcd --endpoints http://127.0.0.1:2379 --target leader

Standard runs: python -m trioraft.bench.matrix (the matrix), ...vs_etcd (side by
side with etcd), ...stability and ...soak (docs/benchmarks.md says what each does).
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``trioraft bench`` options (and its description) to ``parser``."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--endpoints",
        default=os.environ.get("TRIORAFT_ENDPOINTS") or ",".join(DEFAULT_ENDPOINTS),
        help="comma-separated node URLs (env TRIORAFT_ENDPOINTS; default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        "-c",
        type=_positive_int,
        default=16,
        help="concurrent clients, one connection each (default: %(default)s)",
    )
    parser.add_argument(
        "--duration",
        "-d",
        type=_positive_float,
        default=None,
        help=f"seconds to measure, after warm-up (default: {DEFAULT_DURATION:g})",
    )
    parser.add_argument(
        "--requests",
        "-n",
        type=_positive_int,
        default=None,
        help="stop after this many measured requests (or the duration, whichever comes first)",
    )
    parser.add_argument(
        "--keys", type=_positive_int, default=1000, help="key space size (default: %(default)s)"
    )
    parser.add_argument(
        "--key-size",
        type=_positive_int,
        default=16,
        help="key length in bytes (default: %(default)s)",
    )
    parser.add_argument(
        "--value-size",
        type=int,
        default=100,
        help="value (or echo body) size in bytes (default: %(default)s)",
    )
    parser.add_argument(
        "--mix",
        default="write=1",
        help="operation weights, e.g. 'write=0.5,read=0.5,cas=0.1'; "
        f"operations: {', '.join(OPS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--consistency",
        choices=("linearizable", "stale"),
        default="linearizable",
        help="read consistency (default: %(default)s)",
    )
    parser.add_argument(
        "--target",
        choices=("all", "leader", "followers"),
        default="all",
        help="spread over all endpoints, or only the leader / the followers, "
        "found via GET /status (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative_float,
        default=1.0,
        help="seconds of unmeasured load first (default: %(default)s)",
    )
    parser.add_argument(
        "--path",
        default="/echo",
        help="path for the raw 'echo' (POST) and 'get' (GET) operations (default: %(default)s)",
    )
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="HTTP client: the minimal keep-alive client on trio sockets, "
        "or httpx (default: %(default)s, the faster one)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        help="per-request timeout in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--prefill",
        action="store_true",
        help="write every key once before warm-up (so reads find values)",
    )
    parser.add_argument("--seed", type=int, default=0, help="workload random seed")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        type=Path,
        default=None,
        help="save a PNG: throughput over time per operation, worst latency per "
        "interval, latency CDFs with reads and writes apart (needs matplotlib)",
    )
    parser.add_argument(
        "--protocol",
        choices=("trioraft", "etcd"),
        default="trioraft",
        help="trioraft's HTTP API, or etcd's v3 JSON gateway (write/read/delete only; "
        "default: %(default)s)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def spec_from_args(args: argparse.Namespace) -> LoadSpec:
    endpoints = tuple(e.strip().rstrip("/") for e in args.endpoints.split(",") if e.strip())
    duration = args.duration if args.duration is not None else DEFAULT_DURATION
    return LoadSpec(
        endpoints=endpoints,
        concurrency=args.concurrency,
        duration=duration,
        requests=args.requests,
        keys=args.keys,
        key_size=args.key_size,
        value_size=args.value_size,
        mix=parse_mix(args.mix),
        consistency=args.consistency,
        target=args.target,
        warmup=args.warmup,
        path=args.path,
        client=args.client,
        timeout=args.timeout,
        prefill=args.prefill,
        seed=args.seed,
        protocol=args.protocol,
    )


async def _run_with_progress(spec: LoadSpec, show: bool) -> LoadResult:
    if not show:
        return await run_load(spec)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]:>9,} req  {task.fields[rate]:>9,.0f}/s"),
        TimeElapsedColumn(),
        transient=True,
        auto_refresh=False,
        console=Console(stderr=True),
    ) as progress:
        task = progress.add_task("warm-up", total=spec.warmup or 1.0, count=0, rate=0.0)

        def update(phase: str, done: int, elapsed: float) -> None:
            if phase == "warmup":
                progress.update(task, completed=elapsed)
            else:
                total = spec.duration
                completed = elapsed
                if spec.requests is not None and done / spec.requests > elapsed / total:
                    total, completed = float(spec.requests), float(done)
                rate = done / elapsed if elapsed > 0 else 0.0
                progress.update(
                    task,
                    description="load",
                    total=total,
                    completed=completed,
                    count=done,
                    rate=rate,
                )
            progress.refresh()

        return await run_load(spec, on_progress=update)


def main(args: argparse.Namespace) -> int:
    """Run ``trioraft bench``; returns the exit status."""
    try:
        spec = spec_from_args(args)
    except ValueError as exc:
        print(f"trioraft bench: {exc}", file=sys.stderr)
        return 2
    if args.plot is not None and (problem := check_plot_available()) is not None:
        print(f"trioraft bench: {problem}", file=sys.stderr)
        return 2
    show = not args.no_progress and not args.json and sys.stderr.isatty()
    try:
        result = trio.run(_run_with_progress, spec, show)
    except RuntimeError as exc:  # no leader to target
        print(f"trioraft bench: {exc}", file=sys.stderr)
        return 3
    if args.json:
        print_json(result)
    else:
        print_table(result)
    if args.plot is not None:
        plot_run(result, args.plot)
    if result.total and set(result.outcomes) <= {"conn_error", "timeout"}:
        return 3  # the cluster could not be reached
    if result.total and result.ok == 0:
        return 1
    return 0


def _standalone(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trioraft bench")
    add_arguments(parser)
    return main(parser.parse_args(argv))
