"""A picture of a soak or stability run over time: throughput, follower lag,
RSS, and how long the nodes' loops were held up, with elections marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_soak"]


def plot_soak(out: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    series = out["series"]
    t = series["t"]
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=False)
    tl = out["load"]["timeline"]
    for op, counts in tl["ok"].items():
        xs = [i * tl["interval_s"] for i in range(len(counts))]
        axes[0].plot(xs, [c / tl["interval_s"] for c in counts], label=f"{op} ok/s")
    errors = tl["errors"]
    if any(errors):
        xs = [i * tl["interval_s"] for i in range(len(errors))]
        axes[0].plot(xs, [e / tl["interval_s"] for e in errors], label="errors/s", color="red")
    axes[0].set_ylabel("requests/s")
    axes[0].set_xlabel("seconds into the load")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    for name, node in series["nodes"].items():
        axes[1].plot(t, [v if v is not None else float("nan") for v in node["lag"]], label=name)
        axes[2].plot(t, [v if v is not None else float("nan") for v in node["rss_mib"]], label=name)
        lag = node["loop_lag_recent_ms"]
        if any(v is not None for v in lag):
            axes[3].plot(
                t,
                [v if v is not None else float("nan") for v in lag],
                label=f"{name} loop lag (recent max)",
            )
        axes[3].plot(
            t,
            [v if v is not None else float("nan") for v in node["status_ms"]],
            linestyle=":",
            label=f"{name} /status answer",
        )
    axes[1].set_ylabel("entries behind the leader")
    axes[2].set_ylabel("RSS MiB")
    axes[3].set_ylabel("ms")
    axes[3].set_yscale("log")
    for ax in axes[1:]:
        ax.set_xlabel("seconds since the watch began")
        ax.legend(fontsize=7)
    # Mark every term change (an election) on the watched panels.
    terms = [max((n["term"][i] or 0) for n in series["nodes"].values()) for i in range(len(t))]
    for i in range(1, len(t)):
        if terms[i] > terms[i - 1]:
            for ax in axes[1:]:
                ax.axvline(t[i], color="red", linewidth=0.8, linestyle="--")
    c = out["cluster"]
    fig.suptitle(f"{title}: {c['elections']} elections, {c['leader_changes']} leader changes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
