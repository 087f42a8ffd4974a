"""Presenting a :class:`LoadResult`: a small table, JSON, and an optional latency plot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.table import Table

from ._load import LoadResult, percentiles

__all__ = ["check_plot_available", "plot_run", "print_json", "print_table"]


def _describe(result: LoadResult) -> str:
    s = result.spec
    mix = ",".join(f"{n}={w:g}" for n, w in s.mix)
    parts = [
        f"mix {mix}",
        f"{s.concurrency} clients",
        f"target {s.target} ({len(result.targets)} url{'s' if len(result.targets) != 1 else ''})",
        f"value {s.value_size} B",
        f"client {s.client}",
    ]
    if any(n in ("read",) for n, _ in s.mix):
        parts.append(s.consistency)
    return ", ".join(parts)


def print_table(result: LoadResult, file: IO[str] | None = None) -> None:
    console = Console(file=file, highlight=False)
    console.print(_describe(result))
    summary = Table(show_header=True, header_style="bold", title="latency in ms")
    for col in ("ops/s", "ok", "errors", "secs", "p50", "p90", "p99", "p99.9", "max"):
        summary.add_column(col, justify="right")
    pct = result.percentiles()

    def ms(name: str) -> str:
        return f"{pct[name]:.2f}" if name in pct else "-"

    summary.add_row(
        f"{result.ops_per_s:,.0f}",
        f"{result.ok:,}",
        f"{result.errors:,}",
        f"{result.elapsed:.2f}",
        ms("p50"),
        ms("p90"),
        ms("p99"),
        ms("p99.9"),
        ms("max"),
    )
    console.print(summary)
    if len(result.op_latencies_ms) > 1:
        per_op = Table(show_header=True, header_style="bold", title="per operation, ms")
        for col in ("op", "ok/s", "p50", "p90", "p99", "max"):
            per_op.add_column(col, justify="right")
        for op, lat in result.op_latencies_ms.items():
            p = percentiles(lat)
            per_op.add_row(
                op,
                f"{len(lat) / result.elapsed:,.0f}" if result.elapsed > 0 else "-",
                *(f"{p[k]:.2f}" if k in p else "-" for k in ("p50", "p90", "p99", "max")),
            )
        console.print(per_op)
    outcomes = Table(show_header=True, header_style="bold")
    outcomes.add_column("op")
    outcomes.add_column("outcome")
    outcomes.add_column("count", justify="right")
    for op, counts in sorted(result.by_op.items()):
        for label, n in sorted(counts.items()):
            outcomes.add_row(op, label, f"{n:,}")
    console.print(outcomes)
    if result.leader is not None:
        console.print(f"leader: {result.leader}")
    for note in result.notes:
        console.print(f"note: {note}")


def print_json(result: LoadResult, file: IO[str] | None = None) -> None:
    text = json.dumps(result.to_json(), indent=2)
    if file is None:
        print(text)
    else:
        file.write(text + "\n")


def check_plot_available() -> str | None:
    """None when matplotlib can be imported, else a sentence saying what to install."""
    if importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib: pip install 'trioraft[plot]'"
    return None


def plot_run(result: LoadResult, path: Path, interval: float | None = None) -> None:
    """A PNG of one run: successes per second per operation over time (errors in
    red), so a stall or an election shows as a dip; the worst latency per interval
    per operation; and a latency CDF per operation (reads and writes apart)."""
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    if interval is None:  # about 100 points across the window, at least 50 ms each
        interval = max(0.05, round(result.elapsed / 100, 2)) if result.elapsed > 0 else 1.0
    tl = result.timeline(interval)
    fig, (rate, worst, cdf) = plt.subplots(1, 3, figsize=(16, 4.2))
    fig.suptitle(f"{_describe(result)}: {result.ops_per_s:,.0f} ops/s")
    for op in result.ops:
        counts = tl["ok"].get(op, [])
        xs = [(i + 0.5) * interval for i in range(len(counts))]
        rate.plot(xs, [c / interval for c in counts], label=f"{op} ok/s")
        worst.plot(xs, [w or float("nan") for w in tl["worst_ms"].get(op, [])], label=op)
        lat = result.op_latencies_ms.get(op, [])
        if lat:
            n = len(lat)
            line = cdf.plot(lat, [(i + 1) / n for i in range(n)], label=op)[0]
            for name, value in percentiles(lat).items():
                if name in ("p50", "p99"):
                    cdf.axvline(value, linestyle=":", linewidth=1, color=line.get_color())
                    cdf.annotate(f"{op} {name}", (value, 0.02), rotation=90, fontsize=7)
    errors = tl["errors"]
    if any(errors):
        xs = [(i + 0.5) * interval for i in range(len(errors))]
        rate.plot(xs, [e / interval for e in errors], color="red", label="errors/s")
    rate.set_xlabel(f"seconds into the measured window ({interval:g} s bins)")
    rate.set_ylabel("requests per second")
    rate.set_title("throughput over time")
    rate.set_ylim(bottom=0)
    worst.set_xlabel("seconds into the measured window")
    worst.set_ylabel("worst latency in the bin (ms)")
    worst.set_yscale("log")
    worst.set_title("worst latency over time")
    cdf.set_xlabel("latency (ms)")
    cdf.set_ylabel("fraction of successful requests")
    cdf.set_xscale("log")
    cdf.set_title("latency CDF per operation")
    for ax in (rate, worst, cdf):
        if ax.get_legend_handles_labels()[0]:  # a run with no success draws no line
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
