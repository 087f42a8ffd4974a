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

import logging
from collections import deque

import trio

from trioraft.logs import event

__all__ = ["LoopLagMonitor"]

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
        while True:
            t0 = trio.current_time()
            await trio.sleep(self.interval)
            now = trio.current_time()
            self.record(now, now - t0 - self.interval)
