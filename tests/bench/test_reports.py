"""The side-by-side report, the /status watcher and the /proc meter, on made-up
inputs: the figures they print are the ones their inputs imply."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trioraft.bench._procstat import CpuMeter, cpu_seconds, rss_mib
from trioraft.bench._vs_report import Measurement, render_markdown, targets
from trioraft.bench._watch import NodeSample, Poll, Watcher


def m(
    system: str, row: str, clients: int, trial: int, ops: float, p50: float, cpu: float
) -> Measurement:
    return Measurement(
        system,
        row,
        clients,
        trial,
        ops,
        p50,
        p50 * 3,
        0,
        cpu,
        {f"{system}1": cpu * ops / 1e6},
        {"200": int(ops)},
    )


def sample_runs() -> list[Measurement]:
    out = []
    # Trial 1 is slow for everyone (outside load); ratios within a trial stay put.
    for trial, slow in ((0, 1.0), (1, 3.0), (2, 1.1)):
        out += [
            m("echo", "echo", 1, trial, 2000 / slow, 0.5 * slow, 400),
            m("echo", "echo", 64, trial, 2000 / slow, 30 * slow, 400),
            m("trioraft", "durable puts", 1, trial, 200 / slow, 5.0 * slow, 8000),
            m("etcd", "durable puts", 1, trial, 800 / slow, 1.25 * slow, 1600),
            m("trioraft", "durable puts", 64, trial, 1600 / slow, 40 * slow, 600),
            m("etcd", "durable puts", 64, trial, 4000 / slow, 12 * slow, 300),
            m("trioraft", "linearizable reads", 64, trial, 2000 / slow, 30 * slow, 420),
            m("etcd", "linearizable reads", 64, trial, 7000 / slow, 8 * slow, 200),
        ]
    return out


def test_targets_are_per_trial_ratios_judged_against_issue_13() -> None:
    got = {what: (value, met) for what, value, _, met in targets(sample_runs())}
    assert got["c=1 durable write p50, trioraft / etcd"] == (pytest.approx(4.0), False)
    assert got["c=1 CPU per durable write, trioraft / etcd"] == (pytest.approx(5.0), False)
    cpu_w = got["c=64 CPU per durable write (all nodes) / echo CPU per request"]
    assert cpu_w == (pytest.approx(1.5), False)
    assert got["c=64 durable writes/s / echo requests/s"] == (pytest.approx(0.8), False)
    cpu_r = got["c=64 CPU per linearizable read (all nodes) / echo CPU per request"]
    assert cpu_r == (pytest.approx(1.05), True)


def test_markdown_has_a_row_per_workload_and_the_medians() -> None:
    text = render_markdown(sample_runs(), "test settings", plot_name="img/x.png")
    # Medians over the trials (200/1, 200/3, 200/1.1 -> 182); ratios within a trial.
    assert (
        "| durable puts | 1 | 182 | 727 | 0.25x | 5.50 / 16.50 | 1.38 / 4.12 | 4.00x "
        "| 8,000 | 1,600 | 5.00x | 0 / 0 |"
    ) in text
    assert "| durable puts | 64 |" in text
    assert "| linearizable reads | 64 |" in text
    assert "bare ASGI echo" in text
    assert "**no**" in text
    assert "| yes |" in text
    assert "![trioraft and etcd side by side](img/x.png)" in text
    assert "test settings" in text


def test_without_etcd_the_etcd_targets_are_left_out() -> None:
    runs = [x for x in sample_runs() if x.system != "etcd"]
    text = render_markdown(runs, "s")
    assert "trioraft / etcd" not in text
    assert "echo CPU per request" in text


def poll(t: float, nodes: dict[str, tuple[str, int, str, int]], lag: float | None = None) -> Poll:
    p = Poll(t=t)
    for name, (role, term, leader, applied) in nodes.items():
        p.nodes[name] = NodeSample(
            ok=True,
            status_ms=5.0,
            role=role,
            term=term,
            leader=leader,
            commit=applied,
            applied=applied,
            loop_lag_max=lag,
            loop_lag_recent=lag,
            rss_mib=50.0 + t,
        )
    return p


def test_watcher_counts_elections_by_term_and_leader_changes() -> None:
    w = Watcher({"a": "http://a", "b": "http://b", "c": "http://c"}, {})
    w.polls = [
        poll(
            0.0,
            {
                "a": ("leader", 2, "a", 10),
                "b": ("follower", 2, "a", 7),
                "c": ("follower", 2, "a", 10),
            },
        ),
        # Two elections happened between polls (term 2 -> 4): both counted.
        poll(
            1.0,
            {
                "a": ("follower", 4, "b", 20),
                "b": ("leader", 4, "b", 25),
                "c": ("follower", 4, "b", 5),
            },
        ),
        poll(
            2.0,
            {
                "a": ("follower", 4, "b", 30),
                "b": ("leader", 4, "b", 30),
                "c": ("follower", 4, "b", 29),
            },
        ),
    ]
    s = w.summary()
    assert s["elections"] == 2
    assert s["leader_changes"] == 1
    assert s["leaders"] == ["a", "b"]
    assert s["max_follower_lag"] == 20  # c at 5 while leader b applied 25
    assert s["loop_lag_reported"] is False
    assert s["worst_loop_lag_ms"] is None
    assert s["rss_mib"]["a"] == {"first": 50.0, "last": 52.0, "max": 52.0}
    series = w.series()
    assert series["t"] == [0.0, 1.0, 2.0]
    assert series["nodes"]["b"]["lag"] == [3, 0, 0]


def test_watcher_reads_loop_lag_when_nodes_report_it() -> None:
    w = Watcher({"a": "http://a"}, {})
    w.polls = [
        poll(0.0, {"a": ("leader", 1, "a", 1)}, lag=3.5),
        poll(1.0, {"a": ("leader", 1, "a", 2)}, lag=12.0),
    ]
    s = w.summary()
    assert s["loop_lag_reported"] is True
    assert s["worst_loop_lag_ms"] == 12.0
    assert s["elections"] == 0


def test_cpu_meter_reads_this_process() -> None:
    pid = os.getpid()
    assert cpu_seconds(pid) > 0
    assert rss_mib(pid) > 1
    meter = CpuMeter({"me": pid, "gone": 2**22 + 12345})
    meter.window("start")
    sum(i * i for i in range(200_000))  # burn a little CPU
    window = meter.stop()
    assert window.cpu_s["me"] >= 0
    assert window.cpu_s["gone"] != window.cpu_s["gone"]  # NaN: said, not hidden
    assert window.wall_s > 0
    assert window.per_op_us(0) is None


def test_rss_of_a_missing_process_is_zero(tmp_path: Path) -> None:
    assert rss_mib(2**22 + 12345) == 0.0
