"""Presenting a :class:`LoadResult`: a small table, JSON, and an optional latency plot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.table import Table

from ._load import LoadResult

__all__ = ["check_plot_available", "plot_latency", "print_json", "print_table"]


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


def plot_latency(result: LoadResult, path: Path) -> None:
    """A latency histogram and CDF, side by side, as a PNG."""
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    lat = result.latencies_ms
    fig, (hist, cdf) = plt.subplots(1, 2, figsize=(11, 4))
    fig.suptitle(f"{_describe(result)}: {result.ops_per_s:,.0f} ops/s")
    if lat:
        hist.hist(lat, bins=100)
        n = len(lat)
        cdf.plot(lat, [(i + 1) / n for i in range(n)])
        for name, value in result.percentiles().items():
            if name in ("p50", "p99", "p99.9"):
                cdf.axvline(value, linestyle=":", linewidth=1)
                cdf.annotate(name, (value, 0.02), rotation=90, fontsize=8)
    hist.set_xlabel("latency (ms)")
    hist.set_ylabel("requests")
    cdf.set_xlabel("latency (ms)")
    cdf.set_ylabel("fraction of requests")
    cdf.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
