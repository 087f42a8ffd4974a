"""Keeping the loop free (issue 11 #4): CPU work in slices, staggered snapshots, the
stall tracer that told the remaining causes apart."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from tests.node.test_snapshots_observability import events
from trioraft.core import Configuration
from trioraft.node._looplag import StallTracer, tracer_from_env
from trioraft.node._offload import Offload
from trioraft.node._snapshotter import Snapshotter


def _steps(n: int, each: float, log: list[str]) -> Iterator[int]:
    for i in range(n):
        time.sleep(each)  # a step of real work, holding the loop
        log.append(f"step{i}")
        yield i


async def _ticker(log: list[str], stop: trio.Event) -> None:
    while not stop.is_set():
        log.append("other")
        await trio.lowlevel.checkpoint()


async def _run_sliced(n: int, each: float, budget: float) -> tuple[list[int], list[str]]:
    log: list[str] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_ticker, log, stop)
        await trio.lowlevel.checkpoint()
        out = await Offload(inline=False).sliced(_steps(n, each, log), budget=budget)
        stop.set()
    return out, log


async def test_sliced_work_yields_once_its_budget_is_spent() -> None:
    # Each step (5 ms) spends the whole budget (3 ms): other tasks run after each.
    out, log = await _run_sliced(6, 0.005, 0.003)
    assert out == list(range(6))
    assert _others_between_steps(log) >= 6 - 2
    # Steps that fit in the budget run back to back.
    out, log = await _run_sliced(50, 0.0, 10.0)
    assert out == list(range(50))
    assert _others_between_steps(log) == 0


def _others_between_steps(log: list[str]) -> int:
    """How often the other task ran between the first and the last step: trio
    runs each runnable task once per scheduling batch (in an order it shuffles),
    so a yield after each of n steps lets it run at least n - 2 times in there."""
    steps = [i for i, e in enumerate(log) if e.startswith("step")]
    return log[steps[0]:steps[-1]].count("other")


async def test_inline_sliced_work_yields_after_every_step() -> None:
    log: list[str] = []
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_ticker, log, stop)
        await trio.lowlevel.checkpoint()
        await Offload(inline=True).sliced(_steps(5, 0, log))
        stop.set()
    assert _others_between_steps(log) >= 5 - 2


async def test_sliced_work_is_cancellable_between_steps() -> None:
    log: list[str] = []
    with trio.move_on_after(0.01):
        await Offload(inline=False).sliced(_steps(10_000, 0.001, log), budget=0.001)
    assert 0 < len(log) < 10_000


def _snapshotter(n: int) -> Snapshotter:
    config = SimpleNamespace(snapshot_entries=n)
    return Snapshotter(config, None, None, {}, lambda *a: None, None)  # type: ignore[arg-type]


def _core(member: str, ids: set[str], last: int) -> Any:
    return SimpleNamespace(id=member, configuration=Configuration.of_voters(ids),
                           log=SimpleNamespace(snapshot=SimpleNamespace(index=last)))  # fmt: skip


@pytest.mark.parametrize("n", [1, 2, 3, 300, 1000, 5000])
def test_members_snapshot_at_staggered_indexes(n: int) -> None:
    ids = {"n1", "n2", "n3"}
    s = _snapshotter(n)
    for last in [0, 1, 7, n - 1, n, 3 * n + 5, 10**9]:
        dues = {m: s.due_at(_core(m, ids, last)) for m in sorted(ids)}
        for rank, m in enumerate(sorted(ids)):
            gap = dues[m] - last
            assert max(1, n // 2) <= gap <= n // 2 + n, (m, last, dues)
            assert dues[m] % n == (rank * n // 3) % n or n == 1
        if n >= 3:
            assert len(set(dues.values())) == 3  # never all at once
    # The member ranked first snapshots at multiples of n, as without staggering.
    assert s.due_at(_core("n1", ids, 0)) == n


def test_a_member_not_in_the_configuration_still_snapshots() -> None:
    s = _snapshotter(100)
    assert 50 <= s.due_at(_core("x9", {"n1", "n2"}, 0)) - 0 <= 150


async def test_the_stall_tracer_names_where_the_loop_was(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trioraft")
    tracer = StallTracer(threshold=0.03, period=0.005)
    tracer.start()
    try:
        await trio.sleep(0.05)  # ticks are due from the monitor; none come
        tracer.tick()
        _hold_the_loop(0.15)
        tracer.tick()
        await trio.sleep(0.02)
    finally:
        tracer.stop()
    stalls = [f for name, f in events(caplog) if name == "loop_stall"]
    assert stalls, events(caplog)
    assert all(f["ms"] >= 30 for f in stalls)
    held = next(f for f in stalls if "_hold_the_loop" in f["at"])
    assert held["ms"] >= 140  # the whole stall, not just its first 30 ms
    # Busy, not blocked: it ran (or waited for a CPU) for most of the stall.
    assert held["ran_ms"] + held["runqueue_ms"] >= 100
    assert held["ran_ms"] + held["runqueue_ms"] <= held["ms"] + 20


def _hold_the_loop(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # busy: the thread runs, it does not sleep
        pass


def test_the_stall_tracer_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIORAFT_TRACE_STALLS", raising=False)
    assert tracer_from_env() is None
    monkeypatch.setenv("TRIORAFT_TRACE_STALLS", "0")
    assert tracer_from_env() is None
    monkeypatch.setenv("TRIORAFT_TRACE_STALLS", "nonsense")
    assert tracer_from_env() is None
    monkeypatch.setenv("TRIORAFT_TRACE_STALLS", "40")
    tracer = tracer_from_env()
    assert tracer is not None
    assert tracer.threshold == pytest.approx(0.04)
