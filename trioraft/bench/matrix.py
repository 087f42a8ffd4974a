"""The standard benchmark matrix: ``python -m trioraft.bench.matrix [--quick] [--out FILE]``.

1. Starts the echo server (a subprocess serving the way a node serves) and measures
   the ceiling at 1, 16, 64 and 256 clients.
2. Starts a local 3-node cluster with fsync on and runs: writes at 1/16/64/256
   clients (100-byte values), 4 KiB writes at 64, linearizable and stale reads at 64
   spread over all nodes, writes through the followers at 64, and ``POST /txn`` at
   64 if the server has it.
3. Starts a 5-node cluster and runs writes at 64.

``--vs-etcd`` runs :mod:`trioraft.bench.vs_etcd` instead (trioraft and a 3-member
etcd side by side); the options after it are that module's.

Each result is printed with its ratio to the echo ceiling at the same concurrency.
Every process started here is stopped by PID (SIGTERM, then SIGKILL after a
timeout) in a ``finally``. The Markdown results replace the marked section of
``--out`` (``docs/benchmarks.md`` by default).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import httpx
import trio

from trioraft.testing.procs import free_ports

from ._load import BULK_PUTS, ClientKind, LoadResult, LoadSpec, parse_mix, run_load, txn_body
from ._procs import Processes, StartError, start_cluster, start_echo, wait_until, workdir

__all__ = ["BEGIN", "END", "main", "render_markdown", "replace_section"]

BEGIN = "<!-- bench-matrix:begin -->"
END = "<!-- bench-matrix:end -->"
CEILING_CONCURRENCY = (1, 16, 64, 256)


@dataclass(slots=True)
class Row:
    name: str
    spec: LoadSpec
    result: LoadResult | None = None
    ceiling: float | None = None  # echo ops/s at the same concurrency
    note: str = ""


# --------------------------------------------------------------------------- measuring


def measure(row: Row) -> Row:
    row.result = trio.run(run_load, row.spec)
    return row


def probe_txn(leader_url: str) -> str | None:
    """None if POST /txn works; otherwise why the txn row is skipped."""
    try:
        with httpx.Client(timeout=5.0) as client:
            resp = client.post(
                leader_url + "/txn",
                content=txn_body("bench-probe", "x"),
                headers={"content-type": "application/json"},
            )
    except httpx.HTTPError as exc:
        return f"POST /txn failed: {exc!r}"
    if resp.status_code in (200, 409):
        return None
    if resp.status_code in (404, 405):
        return "POST /txn is not served (404): row skipped"
    return f"POST /txn answered {resp.status_code} {resp.text[:120]!r}: row skipped"


def print_row(row: Row, file: IO[str] = sys.stdout) -> None:
    r = row.result
    if r is None:
        print(f"{row.name:<40} skipped: {row.note}", file=file, flush=True)
        return
    pct = r.percentiles()
    ratio = f"{r.ops_per_s / row.ceiling:6.1%}" if row.ceiling else "     -"
    p50 = f"{pct['p50']:7.2f}" if pct else "      -"
    p99 = f"{pct['p99']:7.2f}" if pct else "      -"
    print(
        f"{row.name:<40} c={row.spec.concurrency:<4} {r.ops_per_s:9,.0f} ops/s  "
        f"{ratio} of echo  p50 {p50} ms  p99 {p99} ms  errors {r.errors}",
        file=file,
        flush=True,
    )


# --------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def render_markdown(rows: list[Row], notes: list[str], settings: str) -> str:
    m = machine()
    out = [
        BEGIN,
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, {m['os']}; "
        f"run {m['date']}. {settings}",
        "",
        "| workload | clients | value | target | ops/s | vs echo | p50 ms | p99 ms "
        "| p99.9 ms | errors |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        s = row.spec
        if row.result is None:
            out.append(
                f"| {row.name} | {s.concurrency} | {s.value_size} B | {s.target} "
                f"| skipped | | | | | {row.note} |"
            )
            continue
        r = row.result
        pct = r.percentiles()

        def ms(name: str, pct: dict[str, float] = pct) -> str:
            return f"{pct[name]:.2f}" if name in pct else "-"

        ratio = f"{r.ops_per_s / row.ceiling:.1%}" if row.ceiling else "-"
        errors = ", ".join(
            f"{label}: {n}" for label, n in sorted(r.outcomes.items()) if not label.startswith("2")
        )
        errors = str(r.errors) if not r.errors else f"{r.errors} ({errors})"
        out.append(
            f"| {row.name} | {s.concurrency} | {s.value_size} B | {s.target} "
            f"| {r.ops_per_s:,.0f} | {ratio} | {ms('p50')} | {ms('p99')} | {ms('p99.9')} "
            f"| {errors} |"
        )
    out += [
        "",
        "- *vs echo* is the row's ops/s over the echo ceiling at the same number of clients."
        " The ceiling is one server process; rows spread over several nodes (reads,"
        " writes via followers) can exceed it.",
        "- Every process (nodes, echo server, load generator) ran on the same machine.",
    ]
    out += [f"- {note}" for note in notes]
    out += ["", END]
    return "\n".join(out)


def replace_section(text: str, section: str) -> str:
    """Replace BEGIN..END in text with section (which carries the markers), or append."""
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0 and end > start:
        return text[:start] + section + text[end + len(END) :]
    return text.rstrip("\n") + "\n\n## Results\n\n" + section + "\n"


# --------------------------------------------------------------------------- ceilings


def client_grid(
    procs: Processes, trials: int, duration: float, concurrency: tuple[int, ...] = (1, 16, 64)
) -> str:
    """Echo ceilings for {hypercorn, raw h11} servers x {raw, httpx} clients.

    Trials are interleaved (trial 1 of every cell, then trial 2...) so that a burst of
    outside load hurts every cell alike; each cell reports the median trial.
    Returns a Markdown table.
    """
    servers: dict[str, str] = {}
    for name, extra in (("hypercorn echo", []), ("raw trio+h11", ["--raw"])):
        port = free_ports(1)[0]
        cmd = [sys.executable, "-m", "trioraft.bench._echo", "--port", str(port), *extra]
        proc = procs.start(name.replace(" ", "-"), cmd)
        url = f"http://127.0.0.1:{port}"

        def ready(client: httpx.Client, url: str = url) -> str | None:
            try:
                return url if client.get(url + "/echo").status_code == 200 else None
            except httpx.HTTPError:
                return None

        servers[name] = wait_until(ready, [proc], procs, name, 15.0)
    cells: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    clients: tuple[ClientKind, ...] = ("raw", "httpx")
    for trial in range(trials):
        for server, url in servers.items():
            for client in clients:
                for c in concurrency:
                    spec = LoadSpec(
                        endpoints=(url,),
                        concurrency=c,
                        mix=parse_mix("echo"),
                        duration=duration,
                        warmup=0.3,
                        client=client,
                    )
                    r = trio.run(run_load, spec)
                    p50 = r.percentiles().get("p50", float("nan"))
                    cells.setdefault((server, client, c), []).append((r.ops_per_s, p50))
                    print(
                        f"trial {trial + 1}: {server:<15} client {client:<5} c={c:<3} "
                        f"{r.ops_per_s:8,.0f} ops/s  p50 {p50:6.2f} ms",
                        flush=True,
                    )
    lines = [
        "| server | client | clients | median ops/s | median p50 ms | trials (ops/s) |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for (server, client_name, c), results in cells.items():
        ops = statistics.median([o for o, _ in results])
        p50 = statistics.median([p for _, p in results])
        each = ", ".join(f"{o:,.0f}" for o, _ in results)
        lines.append(f"| {server} | {client_name} | {c} | {ops:,.0f} | {p50:.2f} | {each} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main




def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if "--vs-etcd" in args_list:  # `nox -s bench -- --vs-etcd [vs_etcd options]`
        from . import vs_etcd

        args_list.remove("--vs-etcd")
        return vs_etcd.main(args_list)
    parser = argparse.ArgumentParser(
        prog="python -m trioraft.bench.matrix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--vs-etcd",
        action="store_true",
        help="instead: trioraft side by side with etcd (python -m trioraft.bench.vs_etcd "
        "--help lists the options that may follow)",
    )
    parser.add_argument("--quick", action="store_true", help="3 s per row instead of 10 s")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--duration", type=float, default=None, help="seconds per row")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw")
    parser.add_argument("--echo-only", action="store_true", help="only the echo ceiling")
    parser.add_argument(
        "--client-grid",
        type=int,
        metavar="TRIALS",
        default=0,
        help="instead: compare hypercorn/raw-h11 echo servers x raw/httpx clients at "
        "1/16/64 clients, TRIALS interleaved trials each (--duration s, default 2)",
    )
    args = parser.parse_args(args_list)
    if args.client_grid:
        with workdir() as work:
            procs = Processes(work)
            try:
                table = client_grid(procs, args.client_grid, args.duration or 2.0)
            finally:
                procs.stop()
        m = machine()
        print(f"\n{m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, {m['date']}\n")
        print(table)
        return 0

    duration = args.duration or (3.0 if args.quick else 10.0)
    warmup = 0.5 if args.quick else 1.0
    base = LoadSpec(
        endpoints=("http://127.0.0.1:1",),
        duration=duration,
        warmup=warmup,
        requests=2_000_000,
        client=args.client,
        value_size=100,
        keys=1000,
    )
    settings = (
        f"{duration:g} s per row after {warmup:g} s warm-up, {base.keys} keys, "
        f"{args.client} client, load generator on the same machine."
    )
    rows: list[Row] = []
    notes: list[str] = []
    ceilings: dict[int, float] = {}

    with workdir() as work:
        procs = Processes(work)
        try:
            url, echo = start_echo(procs)
            print(f"echo server at {url}", flush=True)
            for c in CEILING_CONCURRENCY:
                spec = replace(base, endpoints=(url,), concurrency=c, mix=parse_mix("echo"))
                row = measure(Row("echo ceiling (POST /echo)", spec))
                assert row.result is not None
                ceilings[c] = row.result.ops_per_s
                rows.append(row)
                print_row(row)
            procs.stop([echo])  # it would compete with the cluster for CPU

            if not args.echo_only:
                rows += _cluster_rows(procs, work, base, ceilings, notes)
        except KeyboardInterrupt:
            notes.append("interrupted")
            print("interrupted", file=sys.stderr)
        finally:
            procs.stop()

    if not args.no_write:
        section = render_markdown(rows, notes, settings)
        text = args.out.read_text() if args.out.exists() else "# Benchmarks\n"
        args.out.write_text(replace_section(text, section))
        print(f"wrote {args.out}", flush=True)
    return 0 if rows else 1


def _summary(exc: StartError) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} {lines[-1]}"


def _cluster_rows(
    procs: Processes, work: Path, base: LoadSpec, ceilings: dict[int, float], notes: list[str]
) -> list[Row]:
    rows: list[Row] = []
    write = parse_mix("write")

    def run(row: Row) -> None:
        row.ceiling = ceilings.get(row.spec.concurrency)
        try:
            measure(row)
        except RuntimeError as exc:  # e.g. no leader for --target leader
            row.note = str(exc)
        rows.append(row)
        print_row(row)

    try:
        urls, nodes, leader = start_cluster(procs, 3, work)
    except StartError as exc:
        notes.append(f"3-node cluster did not start: {_summary(exc)}")
        print(exc, file=sys.stderr)
        return rows
    print(f"3-node cluster at {', '.join(urls)}, leader {leader}", flush=True)
    three = replace(base, endpoints=urls)
    for c in CEILING_CONCURRENCY:
        run(
            Row(
                "writes, 3 nodes, via leader",
                replace(three, concurrency=c, mix=write, target="leader"),
            )
        )
    run(
        Row(
            "writes, 3 nodes, spread over all nodes",
            replace(three, concurrency=64, mix=write, target="all"),
        )
    )
    run(
        Row(
            "writes 4 KiB, 3 nodes, via leader",
            replace(three, concurrency=64, mix=write, target="leader", value_size=4096),
        )
    )
    # The reads find 100-byte values: prefill writes every key once first.
    run(
        Row(
            "linearizable reads, 3 nodes, all nodes",
            replace(
                three,
                concurrency=64,
                mix=parse_mix("read"),
                target="all",
                consistency="linearizable",
                prefill=True,
            ),
        )
    )
    run(
        Row(
            "stale reads, 3 nodes, all nodes",
            replace(
                three, concurrency=64, mix=parse_mix("read"), target="all", consistency="stale"
            ),
        )
    )
    run(
        Row(
            "writes, 3 nodes, via followers",
            replace(three, concurrency=64, mix=write, target="followers"),
        )
    )
    txn_spec = replace(three, concurrency=64, mix=parse_mix("txn"), target="leader")
    leader_url = next(
        (r.result.targets[0] for r in rows if r.result and r.spec.target == "leader"), None
    )
    why = probe_txn(leader_url) if leader_url else "no leader URL"
    if why is None:
        run(Row("txn (POST /txn), 3 nodes, via leader", txn_spec))
        run(
            Row(
                f"bulk txn ({BULK_PUTS} puts each; x{BULK_PUTS} = puts/s), 3 nodes, via leader",
                replace(three, concurrency=16, mix=parse_mix("bulk"), target="leader"),
            )
        )
    else:
        rows.append(Row("txn (POST /txn), 3 nodes, via leader", txn_spec, note=why))
        notes.append(why)
        print_row(rows[-1])
    procs.stop(nodes)

    try:
        urls5, nodes5, leader5 = start_cluster(procs, 5, work)
    except StartError as exc:
        notes.append(f"5-node cluster did not start: {_summary(exc)}")
        print(exc, file=sys.stderr)
        return rows
    print(f"5-node cluster at {', '.join(urls5)}, leader {leader5}", flush=True)
    run(
        Row(
            "writes, 5 nodes, via leader",
            replace(base, endpoints=urls5, concurrency=64, mix=write, target="leader"),
        )
    )
    procs.stop(nodes5)
    return rows


if __name__ == "__main__":
    sys.exit(main())
