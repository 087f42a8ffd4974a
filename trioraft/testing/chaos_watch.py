"""The chaos run's observer: every node's ``/status``, a few times a second, all run long.

The samples (``status.jsonl`` in the run directory) feed the healthy-period check
and the loop-lag report (:mod:`trioraft.testing.chaos_checks`); the latest leader
seen is the write-heavy clients' hint for where the followers are. Polls go
straight to each node's own port, never through the fault proxy, so a
partitioned node is still observed; a paused or dead node is a sample with
``ok=False``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio

from trioraft.testing.chaos_checks import Sample
from trioraft.testing.chaos_http import Pool
from trioraft.testing.procs import ClusterTimeout, ProcCluster

__all__ = ["HarnessLag", "StatusWatcher", "converged_state"]


class HarnessLag:
    """The harness's own loop lag: the proxy and the clients share its event loop, so a
    stalled harness is a stalled network. A healthy-period verdict while the harness
    lagged more than an election timeout would blame the nodes for the harness."""

    def __init__(self, clock: Any, interval: float = 0.01) -> None:
        self.clock = clock
        self.interval = interval
        self.stalls: list[tuple[float, float]] = []  # (when, seconds) above 50 ms
        self.worst = 0.0

    async def run(self) -> None:
        while True:
            t0 = trio.current_time()
            await trio.sleep(self.interval)
            lag = trio.current_time() - t0 - self.interval
            self.worst = max(self.worst, lag)
            if lag >= 0.05:
                self.stalls.append((self.clock(), lag))

    def worst_between(self, start: float, end: float) -> float:
        return max((lag for t, lag in self.stalls if start <= t <= end + lag), default=0.0)

_STATS = ("snapshots", "snapshots_installed", "snapshots_sent", "snapshots_send_failed",
          "proposals", "batches")  # fmt: skip


class StatusWatcher:
    def __init__(self, cluster: ProcCluster, clock: Any, interval: float = 0.25) -> None:
        self.cluster = cluster
        self.clock = clock
        self.interval = interval
        self.samples: list[Sample] = []
        self.leader: str | None = None
        self._round = 0
        # Counters in /status restart at 0 with each process: keep per (node, pid)
        # the last value seen, and sum over processes at the end.
        self._stats: dict[tuple[str, int], dict[str, int]] = {}

    def leader_hint(self) -> str | None:
        return self.leader

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            start = trio.current_time()
            await self.poll()
            await trio.sleep_until(start + self.interval)

    async def poll(self) -> dict[str, dict[str, Any] | None]:
        self._round += 1
        rnd = self._round
        out: dict[str, dict[str, Any] | None] = {}

        async def one(node: str) -> None:
            st = await self.cluster.status(node)
            out[node] = st
            self.samples.append(Sample.from_status(self.clock(), rnd, node, st))
            pid = self.cluster.nodes[node].pid
            if st and pid is not None and isinstance(stats := st.get("stats"), dict):
                self._stats[node, pid] = {k: int(stats.get(k, 0) or 0) for k in _STATS}

        async with trio.open_nursery() as nursery:
            for node in self.cluster.ids:
                nursery.start_soon(one, node)
        leaders = [(int(st["term"]), n) for n, st in out.items()
                   if st and st.get("role") == "leader"]  # fmt: skip
        if leaders:
            self.leader = max(leaders)[1]
        return out

    def stats(self) -> dict[str, int]:
        """Snapshot and proposal counters, summed over every node and process."""
        total = dict.fromkeys(_STATS, 0)
        for counters in self._stats.values():
            for k, v in counters.items():
                total[k] += v
        return total

    def save(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for s in self.samples:
                f.write(json.dumps(s.to_dict()) + "\n")


async def _whole_state(pool: Pool, node: str) -> dict[str, str] | None:
    """Every key of `node`'s state machine, paged with stale reads (None: no answer)."""
    state: dict[str, str] = {}
    after = ""
    while True:
        target = "/kv?prefix=&limit=1000&consistency=stale" + (f"&after={quote(after)}"
                                                                if after else "")  # fmt: skip
        r = await pool.request(node, "GET", target, None, 10.0)
        if isinstance(r, str) or r[0] != 200:
            return None
        body = json.loads(r[1])
        for item in body["items"]:
            state[item["key"]] = item["value"]
            after = item["key"]
        if not body["more"]:
            return state


async def converged_state(
    cluster: ProcCluster, pool: Pool, timeout: float = 30.0
) -> dict[str, str]:
    """Wait until every node has applied the same index and holds the same *whole*
    state (every key, paged: /debug shows only the first hundred), read between two
    identical applied indexes so that each state is the one at that index.
    Raises :class:`ClusterTimeout` with what differed."""
    last = "no round completed"
    with trio.move_on_after(timeout):
        while True:
            before = await cluster.statuses()
            applied = {n: st and st.get("applied_index") for n, st in before.items()}
            if None not in applied.values() and len(set(applied.values())) == 1:
                states = {n: await _whole_state(pool, n) for n in cluster.ids}
                after = await cluster.statuses()
                if {n: st and st.get("applied_index") for n, st in after.items()} != applied:
                    last = f"applied index moved while reading: {applied}"
                elif any(st is None for st in states.values()):
                    last = "a node did not answer while its state was read"
                else:
                    first = next(iter(states.values()))
                    assert first is not None
                    if all(st == first for st in states.values()):
                        return first
                    sizes = {n: len(st or {}) for n, st in states.items()}
                    differ = sorted({k for st in states.values() for k, v in (st or {}).items()
                                     if any((o or {}).get(k) != v for o in states.values())})
                    last = (f"states differ at applied index {applied}: keys {sizes}, "
                            f"{len(differ)} keys differ, e.g. {differ[:5]}")  # fmt: skip
            else:
                last = f"applied indexes {applied}"
            await trio.sleep(0.2)
    raise ClusterTimeout(f"nodes did not converge within {timeout:g}s ({last})")
