"""trioraft side by side with etcd: ``python -m trioraft.bench.vs_etcd`` (or
``nox -s bench -- --vs-etcd``).

Starts, on loopback, a bare ASGI echo server (the node's hypercorn settings), a
3-node trioraft cluster (fsync on) and a 3-member etcd cluster (etcd's defaults:
fsync on). All three run for the whole benchmark; the same load generator and the
same keys and 100-byte values load each in turn (trioraft through its HTTP API,
etcd through its v3 JSON gateway, base64 keys and values):

* durable puts via the leader at 1, 16, 64 and 256 clients,
* linearizable reads via the leader at 64 clients (every key written first),
* ``POST /echo`` at 1 and 64 clients (the client-path ceiling).

For each run: throughput, p50/p99, and CPU per operation summed over every process
of that cluster (``/proc/PID/stat``, read at the start and end of the measured
window only). Trials are interleaved (trial 1 of every row and system, then trial
2...), every ratio is taken within one trial, and the tables give medians over
trials. The Markdown replaces a marked section of ``--out`` and the plot goes
beside it. Every process is stopped by PID when the run ends.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

import trio

from ._load import LoadResult, LoadSpec, parse_mix, run_load
from ._procs import (
    Cluster,
    Processes,
    StartError,
    etcd_available,
    start_cluster,
    start_echo,
    start_etcd,
    workdir,
)
from ._procstat import CpuMeter
from ._vs_report import Measurement, plot_measurements, render_markdown
from ._workload import Protocol

__all__ = ["ROWS", "Measurement", "main", "run_benchmark"]

#: (row name, op, clients) measured on both clusters.
ROWS: tuple[tuple[str, str, int], ...] = (
    ("durable puts", "write", 1),
    ("durable puts", "write", 16),
    ("durable puts", "write", 64),
    ("durable puts", "write", 256),
    ("linearizable reads", "read", 64),
)
ECHO_CLIENTS = (1, 64)


def _measurement(system: str, row: str, trial: int, r: LoadResult, meter: CpuMeter) -> Measurement:
    pct = r.percentiles()
    window = meter.result
    return Measurement(
        system=system,
        row=row,
        clients=r.spec.concurrency,
        trial=trial,
        ops_per_s=r.ops_per_s,
        p50_ms=pct.get("p50"),
        p99_ms=pct.get("p99"),
        errors=r.errors,
        cpu_us_per_op=window.per_op_us(r.ok) if window is not None else None,
        cpu_s=dict(window.cpu_s) if window is not None else {},
        outcomes=dict(r.outcomes),
    )


def _measure(
    spec: LoadSpec, pids: dict[str, int], system: str, row: str, trial: int
) -> Measurement:
    meter = CpuMeter(pids)

    async def go() -> LoadResult:
        return await run_load(spec, on_window=meter.window)

    m = _measurement(system, row, trial, trio.run(go), meter)
    cpu = f"{m.cpu_us_per_op:8.0f} us/op" if m.cpu_us_per_op is not None else "   - us/op"
    p50 = f"{m.p50_ms:7.2f}" if m.p50_ms is not None else "      -"
    print(
        f"trial {trial + 1} {system:<8} {row:<20} c={m.clients:<3} {m.ops_per_s:8,.0f} ops/s  "
        f"p50 {p50} ms  CPU {cpu}  errors {m.errors}",
        flush=True,
    )
    return m


def run_benchmark(
    procs: Processes,
    work: Path,
    *,
    trials: int,
    duration: float,
    warmup: float,
    keys: int = 1000,
    with_etcd: bool = True,
    rows: tuple[tuple[str, str, int], ...] = ROWS,
    echo_clients: tuple[int, ...] = ECHO_CLIENTS,
) -> list[Measurement]:
    """Start the servers, run every trial, return every measurement."""
    echo_url, echo = start_echo(procs, "asgi")
    urls, nodes, leader = start_cluster(procs, 3, work)
    clusters = {"trioraft": Cluster("trioraft", urls, nodes, leader, ("node1", "node2", "node3"))}
    if with_etcd:
        clusters["etcd"] = start_etcd(procs, 3, work)
    print(
        f"echo {echo_url}; "
        + "; ".join(
            f"{name} {', '.join(c.urls)} (leader {c.leader})" for name, c in clusters.items()
        ),
        flush=True,
    )
    base = LoadSpec(
        endpoints=("http://127.0.0.1:1",),
        duration=duration,
        warmup=warmup,
        keys=keys,
        value_size=100,
        key_size=16,
        target="leader",
    )
    # Reads find 100-byte values: write every key once, on both, before any trial.
    for name, cluster in clusters.items():
        fill = replace(
            base,
            endpoints=cluster.urls,
            concurrency=16,
            mix=parse_mix("write"),
            protocol=_protocol(name),
            duration=0.1,
            warmup=0.0,
            prefill=True,
        )
        trio.run(run_load, fill)
    out: list[Measurement] = []
    for trial in range(trials):
        for n in echo_clients:
            spec = replace(
                base, endpoints=(echo_url,), concurrency=n, mix=parse_mix("echo"), target="all"
            )
            out.append(_measure(spec, {"echo": echo.pid}, "echo", "echo", trial))
        for row, op, clients in rows:
            for name, cluster in clusters.items():
                spec = replace(
                    base,
                    endpoints=cluster.urls,
                    concurrency=clients,
                    mix=parse_mix(op),
                    protocol=_protocol(name),
                )
                out.append(_measure(spec, cluster.pids, name, row, trial))
    return out


def _protocol(system: str) -> Protocol:
    return "etcd" if system == "etcd" else "trioraft"


def _write_section(path: Path, section: str, name: str) -> None:
    begin, end = f"<!-- bench-vs-etcd:{name}:begin -->", f"<!-- bench-vs-etcd:{name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n\n{section}\n\n{end}"
    start, stop = text.find(begin), text.find(end)
    if start >= 0 and stop > start:
        text = text[:start] + block + text[stop + len(end) :]
    else:
        text = text.rstrip("\n") + f"\n\n## trioraft and etcd side by side ({name})\n\n{block}\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trioraft.bench.vs_etcd",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--trials", type=int, default=3, help="interleaved trials (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--keys", type=int, default=1000, help="key space (default 1000)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/benchmarks.md"),
        help="Markdown file whose marked section is replaced",
    )
    parser.add_argument(
        "--section", default="latest", help="name of the marked section in --out (default: latest)"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="PNG path (default: docs/img/vs-etcd-SECTION.png beside --out)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also save every trial here")
    parser.add_argument("--no-write", action="store_true", help="print only; write nothing")
    parser.add_argument(
        "--without-etcd",
        action="store_true",
        help="measure only trioraft and the echo (when etcd is not installed)",
    )
    args = parser.parse_args(argv)
    if args.trials < 1 or args.duration <= 0 or args.warmup < 0 or args.keys < 1:
        parser.error("--trials and --keys must be >= 1, --duration > 0, --warmup >= 0")
    with_etcd = not args.without_etcd
    if with_etcd and (hint := etcd_available()) is not None:
        print(f"vs_etcd: {hint} (or pass --without-etcd)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    with workdir("trioraft-vs-etcd-") as work:
        procs = Processes(work)
        try:
            measurements = run_benchmark(
                procs,
                work,
                trials=args.trials,
                duration=args.duration,
                warmup=args.warmup,
                keys=args.keys,
                with_etcd=with_etcd,
            )
        except StartError as exc:
            print(f"vs_etcd: {exc}", file=sys.stderr)
            return 1
        finally:
            procs.stop()
    load_after = os.getloadavg()
    settings = (
        f"{args.trials} interleaved trials of {args.duration:g} s after {args.warmup:g} s "
        f"warm-up per run; {args.keys} keys of 16 bytes, 100-byte values; load average "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after"
    )
    plot = args.plot or args.out.parent / "img" / f"vs-etcd-{args.section}.png"
    section = render_markdown(
        measurements, settings, plot_name=os.path.relpath(plot, args.out.parent)
    )
    print(section)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(m) for m in measurements], indent=1))
    if not args.no_write:
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_measurements(measurements, plot)
        _write_section(args.out, section, args.section)
        print(f"wrote {args.out} and {plot}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
