"""The loop-lag monitor: how long the Trio event loop went without running.

A task sleeps `interval` seconds over and over; whatever it oversleeps is
time the loop could not run anything (a long synchronous call, the GIL held
by a thread, a swapped or paused process). A stall longer than the election
timeout costs leadership, so stalls are exported in /status
(`loop_lag_ms.max` since start, `loop_lag_ms.recent_max` over the last
`window` seconds) and logged when one exceeds `threshold`. The resolution is
`interval`: a stall shorter than that may go unseen.

One loop runs per process, so one monitor serves every node in it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import threading
import time
import traceback
from collections import deque
from pathlib import Path

import trio

from trioraft.logs import event

__all__ = ["TRACE_ENV", "LoopLagMonitor", "StallTracer", "tracer_from_env"]

log = logging.getLogger("trioraft.node")


class LoopLagMonitor:
    def __init__(
        self, interval: float = 0.01, threshold: float = 0.05, window: float = 10.0
    ) -> None:
        self.interval = interval
        self.threshold = threshold
        self.window = window
        self.max_lag = 0.0
        self.stalls = 0  # lags above the threshold
        self._recent: deque[tuple[float, float]] = deque()  # (when, lag), lags decreasing
        self._last_log = -1e9

    def record(self, now: float, lag: float) -> None:
        lag = max(0.0, lag)
        self.max_lag = max(self.max_lag, lag)
        # A monotonic queue: keep only lags that could still be the window's max.
        while self._recent and self._recent[-1][1] <= lag:
            self._recent.pop()
        self._recent.append((now, lag))
        while self._recent[0][0] < now - self.window:
            self._recent.popleft()
        if lag >= self.threshold:
            self.stalls += 1
            if now - self._last_log >= self.window or lag >= self.max_lag:
                self._last_log = now
                event(log, "loop_lag", logging.WARNING, ms=round(lag * 1000),
                      worst_ms=round(self.max_lag * 1000), stalls=self.stalls)  # fmt: skip

    def recent_max(self, now: float) -> float:
        while self._recent and self._recent[0][0] < now - self.window:
            self._recent.popleft()
        return self._recent[0][1] if self._recent else 0.0

    def status(self) -> dict[str, float | int]:
        now = trio.current_time()
        return {"max": round(self.max_lag * 1000, 1),
                "recent_max": round(self.recent_max(now) * 1000, 1),
                "stalls": self.stalls}  # fmt: skip

    async def run(self) -> None:
        tracer = tracer_from_env()
        if tracer is not None:
            tracer.start()
        try:
            while True:
                if tracer is not None:
                    tracer.tick()
                await self._tick()
        finally:
            if tracer is not None:
                tracer.stop()

    async def _tick(self) -> None:
        t0 = trio.current_time()
        await trio.sleep(self.interval)
        now = trio.current_time()
        self.record(now, now - t0 - self.interval)


TRACE_ENV = "TRIORAFT_TRACE_STALLS"


def tracer_from_env() -> StallTracer | None:
    """A StallTracer when TRIORAFT_TRACE_STALLS names a threshold in ms (else None)."""
    text = os.environ.get(TRACE_ENV, "").strip()
    if not text:
        return None
    try:
        ms = float(text)
    except ValueError:
        log.warning("%s=%r is not a number of milliseconds; stall tracing is off",
                    TRACE_ENV, text)  # fmt: skip
        return None
    return StallTracer(max(ms, 1.0) / 1000) if ms > 0 else None


def _schedstat(native_id: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for one) of a thread (Linux; else zeros)."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat") as f:
            ran, waited, _ = f.read().split()
        return int(ran), int(waited)
    except (OSError, ValueError):
        return 0, 0


class StallTracer:
    """Why the loop stalled: a watchdog thread names where it was, and what it waited for.

    Off by default; `TRIORAFT_TRACE_STALLS=<ms>` turns it on (see
    docs/operations.md, "Logs"). The monitor's task calls `tick()` each
    time it runs; a daemon thread wakes every `period` seconds. Once the
    last tick is older than `threshold` it notes where the loop thread is
    (its innermost frames), and when the loop runs again it logs one
    `loop_stall` event for the whole stall: how long it lasted (to within
    `period`) and, from the kernel's schedstat, how much of it the loop
    thread spent running (our code, or
    a garbage collection: `gc_pause` events time those), waiting for a CPU
    (`runqueue_ms`: the machine is busy) or neither (blocked: the GIL held
    by another thread, or a page fault on a slow disk). This is how the
    causes of issue 11 #4 were told apart.
    """

    def __init__(self, threshold: float, period: float = 0.005) -> None:
        self.threshold = threshold
        self.period = period
        self._last = time.monotonic()
        self._thread_id = threading.get_ident()
        self._native_id = threading.get_native_id()
        self._stop = threading.Event()
        self._gc_started = 0.0
        self.stalls = 0
        self._thread = threading.Thread(target=self._watch, name="stall-tracer", daemon=True)

    def tick(self) -> None:
        self._last = time.monotonic()

    def start(self) -> None:
        self.tick()
        gc.callbacks.append(self._gc)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.monotonic()
            return
        took = time.monotonic() - self._gc_started
        if took >= self.threshold / 2:
            event(log, "gc_pause", logging.WARNING, ms=round(took * 1000, 1),
                  generation=info.get("generation"), collected=info.get("collected"))  # fmt: skip

    def _watch(self) -> None:
        base = _schedstat(self._native_id)
        where: str | None = None  # set while a stall lasts: where the loop was
        longest = 0.0
        while not self._stop.wait(self.period):
            now = _schedstat(self._native_id)
            behind = time.monotonic() - self._last
            if behind >= self.threshold:
                if where is None:  # a stall begins: look where the loop is
                    frame = sys._current_frames().get(self._thread_id)
                    where = " < ".join(
                        f"{Path(f.filename).name}:{f.lineno}:{f.name}"
                        for f in reversed(traceback.extract_stack(frame, limit=4))
                    ) if frame is not None else "?"
                longest = max(longest, behind)
                continue
            if where is not None:  # the loop ran again: report the whole stall
                self.stalls += 1
                event(log, "loop_stall", logging.WARNING, ms=round(longest * 1000),
                      ran_ms=round((now[0] - base[0]) / 1e6),
                      runqueue_ms=round((now[1] - base[1]) / 1e6), at=where)  # fmt: skip
                where, longest = None, 0.0
            base = now
