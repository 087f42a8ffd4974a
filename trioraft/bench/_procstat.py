"""CPU time and memory of processes, from /proc (Linux).

``/proc/PID/stat`` fields 14 and 15 (utime, stime) count every thread of the
process in clock ticks; a node's worker threads (fsync, snapshot encoding) and
etcd's goroutines are therefore included. :class:`CpuMeter` takes a reading of a
set of processes at the start and at the end of a window, so CPU per operation
covers exactly the measured window and nothing before or after it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CpuMeter", "CpuWindow", "cpu_seconds", "rss_mib"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = stat.rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of the whole line
    return (utime + stime) / _TICKS


def rss_mib(pid: int) -> float:
    """Resident set size in MiB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass(slots=True)
class CpuWindow:
    """CPU seconds each named process used over one window, and the window's length."""

    wall_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return sum(self.cpu_s.values())

    def per_op_us(self, ops: int) -> float | None:
        """Microseconds of CPU (all processes together) per operation."""
        return self.total_s / ops * 1e6 if ops > 0 else None


class CpuMeter:
    """Reads the CPU counters of named processes at ``start()`` and ``stop()``.

    Usable as ``run_load``'s ``on_window`` callback: ``meter.window("start")``.
    """

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._t0 = 0.0
        self._c0: dict[str, float] = {}
        self.result: CpuWindow | None = None

    def _read(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = cpu_seconds(pid)
            except (OSError, IndexError, ValueError):
                out[name] = float("nan")  # gone: the window's figure says so
        return out

    def start(self) -> None:
        self._c0 = self._read()
        self._t0 = _now()
        self.result = None

    def stop(self) -> CpuWindow:
        c1 = self._read()
        self.result = CpuWindow(
            wall_s=_now() - self._t0,
            cpu_s={name: c1[name] - self._c0.get(name, float("nan")) for name in c1},
        )
        return self.result

    def window(self, phase: str) -> None:
        if phase == "start":
            self.start()
        else:
            self.stop()


_now = time.perf_counter
