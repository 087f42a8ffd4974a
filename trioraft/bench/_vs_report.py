"""Tables and a plot of the side-by-side runs (``trioraft.bench.vs_etcd``).

Every figure is a median over trials; every ratio is taken within one trial
(trioraft's trial 2 against etcd's trial 2, against the echo's trial 2) and then
the median of those ratios is given, so load from outside that hit one trial hits
both sides of its ratio alike.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .matrix import machine

__all__ = ["Measurement", "plot_measurements", "render_markdown", "targets"]


@dataclass(slots=True)
class Measurement:
    """One run: which system, row, trial; what the load generator and /proc saw."""

    system: str  # "trioraft", "etcd" or "echo"
    row: str  # "durable puts", "linearizable reads", "echo"
    clients: int
    trial: int
    ops_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    cpu_us_per_op: float | None
    cpu_s: dict[str, float] = field(default_factory=dict)  # process name -> CPU seconds
    outcomes: dict[str, int] = field(default_factory=dict)


Key = tuple[str, str, int]  # (system, row, clients)


def _group(ms: Iterable[Measurement]) -> dict[Key, dict[int, Measurement]]:
    out: dict[Key, dict[int, Measurement]] = {}
    for m in ms:
        out.setdefault((m.system, m.row, m.clients), {})[m.trial] = m
    return out


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(vals) if vals else None


def _stat(
    g: dict[Key, dict[int, Measurement]], key: Key, get: Callable[[Measurement], float | None]
) -> float | None:
    return _median(get(m) for m in g.get(key, {}).values())


def _ratio(
    g: dict[Key, dict[int, Measurement]], a: Key, b: Key, get: Callable[[Measurement], float | None]
) -> float | None:
    """Median over trials of get(a) / get(b), both from the same trial."""
    ratios = []
    for trial, ma in g.get(a, {}).items():
        mb = g.get(b, {}).get(trial)
        va, vb = get(ma), (get(mb) if mb is not None else None)
        if va is not None and vb:
            ratios.append(va / vb)
    return _median(ratios)


def _num(v: float | None, fmt: str = "{:,.0f}") -> str:
    return fmt.format(v) if v is not None else "-"


def _x(v: float | None) -> str:
    return f"{v:.2f}x" if v is not None else "-"


def _ops(m: Measurement) -> float:
    return m.ops_per_s


def _p50(m: Measurement) -> float | None:
    return m.p50_ms


def _p99(m: Measurement) -> float | None:
    return m.p99_ms


def _cpu(m: Measurement) -> float | None:
    return m.cpu_us_per_op


def targets(ms: list[Measurement]) -> list[tuple[str, float | None, str, bool | None]]:
    """Issue 13's targets: (what, measured ratio, target, met?) from these runs."""
    g = _group(ms)
    t_w1, e_w1 = ("trioraft", "durable puts", 1), ("etcd", "durable puts", 1)
    t_w64, t_r64 = ("trioraft", "durable puts", 64), ("trioraft", "linearizable reads", 64)
    echo64 = ("echo", "echo", 64)
    rows = [
        ("c=1 durable write p50, trioraft / etcd", _ratio(g, t_w1, e_w1, _p50), "<= 1.5x", 1.5),
        ("c=1 CPU per durable write, trioraft / etcd", _ratio(g, t_w1, e_w1, _cpu), "<= 2x", 2.0),
        (
            "c=64 CPU per durable write (all nodes) / echo CPU per request",
            _ratio(g, t_w64, echo64, _cpu),
            "<= 1.15x",
            1.15,
        ),
        (
            "c=64 durable writes/s / echo requests/s",
            _ratio(g, t_w64, echo64, _ops),
            ">= 0.9x",
            -0.9,
        ),
        (
            "c=64 CPU per linearizable read (all nodes) / echo CPU per request",
            _ratio(g, t_r64, echo64, _cpu),
            "<= 1.1x",
            1.1,
        ),
        ("c=64 linearizable reads/s / echo requests/s", _ratio(g, t_r64, echo64, _ops), "", 0.0),
    ]
    out: list[tuple[str, float | None, str, bool | None]] = []
    for what, value, text, bound in rows:
        met: bool | None = None
        if value is not None and bound:
            met = value <= bound if bound > 0 else value >= -bound
        out.append((what, value, text, met))
    return out


def render_markdown(ms: list[Measurement], settings: str, plot_name: str | None = None) -> str:
    g = _group(ms)
    m = machine()
    has_etcd = any(k[0] == "etcd" for k in g)
    lines = [
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, {m['os']}; run "
        f"{m['date']}. {settings}. Every server and the load generator share the machine.",
        "",
        "| workload | clients | trioraft ops/s | etcd ops/s | ops/s ratio "
        "| trioraft p50 / p99 ms | etcd p50 / p99 ms | p50 ratio "
        "| trioraft CPU us/op | etcd CPU us/op | CPU ratio | errors (t / e) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys = sorted({(k[1], k[2]) for k in g if k[0] == "trioraft"}, key=lambda rc: (rc[0], rc[1]))
    for row, clients in keys:
        t, e = ("trioraft", row, clients), ("etcd", row, clients)

        def errs(k: Key) -> str:
            return str(sum(x.errors for x in g.get(k, {}).values())) if k in g else "-"

        lines.append(
            f"| {row} | {clients} | {_num(_stat(g, t, _ops))} | {_num(_stat(g, e, _ops))} "
            f"| {_x(_ratio(g, t, e, _ops))} "
            f"| {_num(_stat(g, t, _p50), '{:.2f}')} / {_num(_stat(g, t, _p99), '{:.2f}')} "
            f"| {_num(_stat(g, e, _p50), '{:.2f}')} / {_num(_stat(g, e, _p99), '{:.2f}')} "
            f"| {_x(_ratio(g, t, e, _p50))} "
            f"| {_num(_stat(g, t, _cpu))} | {_num(_stat(g, e, _cpu))} "
            f"| {_x(_ratio(g, t, e, _cpu))} | {errs(t)} / {errs(e)} |"
        )
    for clients in sorted({k[2] for k in g if k[0] == "echo"}):
        k = ("echo", "echo", clients)
        lines.append(
            f"| bare ASGI echo (`POST /echo`) | {clients} | {_num(_stat(g, k, _ops))} | | "
            f"| {_num(_stat(g, k, _p50), '{:.2f}')} / {_num(_stat(g, k, _p99), '{:.2f}')} | | "
            f"| {_num(_stat(g, k, _cpu))} | | | {errs(k)} |"
        )
    lines += [
        "",
        "| target (issue 13) | measured (median of per-trial ratios) | target | met |",
        "| --- | ---: | --- | --- |",
    ]
    for what, value, text, met in targets(ms):
        if "etcd" in what and not has_etcd:
            continue
        verdict = "-" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {what} | {_x(value)} | {text} | {verdict} |")
    lines += [
        "",
        "Where the CPU goes (median CPU us per operation of each process; the busiest"
        " process is the leader):",
        "",
    ]
    for row, clients in keys:
        for system in ("trioraft", "etcd"):
            per = g.get((system, row, clients))
            if not per:
                continue
            split = _split(per.values())
            lines.append(f"- {system}, {row}, c={clients}: {split}")
    lines += [
        "",
        "- CPU is user + system time of every process of the cluster (all threads), read",
        "  from `/proc/PID/stat` at the start and end of the measured window, divided by",
        "  the successful operations in it. The load generator's own CPU is not counted.",
        "- etcd is loaded through its v3 JSON gateway (`POST /v3/kv/put`, `/v3/kv/range`,",
        "  base64 keys and values), which translates each request to a gRPC call inside",
        "  etcd: a cost etcd's own Go clients do not pay, so etcd's figures here are",
        "  conservative. Both clusters get the same client, keys, values and concurrency.",
    ]
    if plot_name:
        lines += ["", f"![trioraft and etcd side by side]({plot_name})"]
    return "\n".join(lines)


def _split(ms: Iterable[Measurement]) -> str:
    per_proc: dict[str, list[float]] = {}
    for m in ms:
        ok = m.outcomes.get("200", 0) + m.outcomes.get("404 not_found", 0)
        for name, secs in m.cpu_s.items():
            if ok:
                per_proc.setdefault(name, []).append(secs / ok * 1e6)
    meds = sorted(((statistics.median(v), n) for n, v in per_proc.items()), reverse=True)
    return ", ".join(f"{n} {v:,.0f}" for v, n in meds) if meds else "-"


def plot_measurements(ms: list[Measurement], path: Path) -> None:
    """Writes/s, p50 and CPU per write against clients for both systems; reads at 64."""
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    g = _group(ms)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    systems = [s for s in ("trioraft", "etcd") if any(k[0] == s for k in g)]
    for system in systems:
        cs = sorted(k[2] for k in g if k[0] == system and k[1] == "durable puts")
        for ax, get in zip(axes[:3], (_ops, _p50, _cpu), strict=True):
            ys = [_stat(g, (system, "durable puts", c), get) for c in cs]
            ax.plot(
                cs, [y if y is not None else float("nan") for y in ys], marker="o", label=system
            )
    echo = sorted(k[2] for k in g if k[0] == "echo")
    for ax, get in zip(axes[:3], (_ops, _p50, _cpu), strict=True):
        ys = [_stat(g, ("echo", "echo", c), get) for c in echo]
        ax.plot(
            echo,
            [y if y is not None else float("nan") for y in ys],
            linestyle=":",
            marker="x",
            color="grey",
            label="bare ASGI echo",
        )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("clients")
        ax.legend(fontsize=8)
    axes[0].set_title("durable puts/s via the leader")
    axes[1].set_title("put p50 latency (ms)")
    axes[1].set_yscale("log")
    axes[2].set_title("CPU per put, all processes (us)")
    reads = [
        (
            s,
            _stat(g, (s, "linearizable reads", 64), _ops),
            _stat(g, (s, "linearizable reads", 64), _cpu),
        )
        for s in systems
    ]
    echo64 = ("echo", "echo", 64)
    reads.append(("echo", _stat(g, echo64, _ops), _stat(g, echo64, _cpu)))
    names = [r[0] for r in reads]
    x = list(range(len(reads)))
    axes[3].bar([i - 0.2 for i in x], [r[1] or 0 for r in reads], width=0.4, label="ops/s")
    twin = axes[3].twinx()
    twin.bar(
        [i + 0.2 for i in x],
        [r[2] or 0 for r in reads],
        width=0.4,
        color="tab:orange",
        label="CPU us/op",
    )
    axes[3].set_xticks(x, names)
    axes[3].set_title(
        "linearizable reads, 64 clients: ops/s (blue), CPU us/op (orange)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
