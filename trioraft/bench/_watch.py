"""Watching a cluster during a long run: ``/status`` of every node, polled.

Each poll records, per node: role, term, leader, commit and applied index, the
event-loop lag the node reports (``loop_lag_ms: {"max", "recent_max"}``, when its
``/status`` has it), how long ``/status`` took to answer (an outside upper bound
on how long the node's loop was busy, useful where ``loop_lag_ms`` is absent),
and the process's RSS from /proc. :meth:`Watcher.summary` reduces the samples:

* elections = how much the highest term seen grew (terms only grow, so an
  election between two polls is still counted);
* leader changes = how often the leader named by the nodes changed;
* follower lag = the leader's applied index minus each follower's, per poll.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from ._procstat import rss_mib

__all__ = ["NodeSample", "Poll", "Watcher"]


@dataclass(slots=True)
class NodeSample:
    ok: bool
    status_ms: float
    role: str | None = None
    term: int | None = None
    leader: str | None = None
    commit: int | None = None
    applied: int | None = None
    snapshot_index: int | None = None
    loop_lag_max: float | None = None
    loop_lag_recent: float | None = None
    rss_mib: float = 0.0


@dataclass(slots=True)
class Poll:
    t: float  # seconds since the watcher started
    nodes: dict[str, NodeSample] = field(default_factory=dict)

    def leader(self) -> str | None:
        leaders = [s.leader for s in self.nodes.values() if s.ok and s.leader]
        return max(set(leaders), key=leaders.count) if leaders else None

    def max_term(self) -> int | None:
        terms = [s.term for s in self.nodes.values() if s.term is not None]
        return max(terms) if terms else None

    def follower_lag(self) -> dict[str, int]:
        """Leader's applied index minus each follower's (followers that answered)."""
        lead = self.leader()
        ls = self.nodes.get(lead) if lead else None
        if ls is None or ls.applied is None:
            return {}
        return {
            name: max(0, ls.applied - s.applied)
            for name, s in self.nodes.items()
            if name != lead and s.applied is not None
        }


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


class Watcher:
    """Polls ``/status`` of every node every ``interval`` seconds until cancelled."""

    def __init__(
        self, urls: Mapping[str, str], pids: Mapping[str, int], interval: float = 0.2
    ) -> None:
        self.urls = dict(urls)
        self.pids = dict(pids)
        self.interval = interval
        self.polls: list[Poll] = []
        self.started = time.monotonic()

    async def _one(self, client: httpx.AsyncClient, name: str, poll: Poll) -> None:
        t0 = time.perf_counter()
        try:
            resp = await client.get(self.urls[name] + "/status")
            st = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            st = None
        ms = (time.perf_counter() - t0) * 1000
        rss = rss_mib(self.pids[name]) if name in self.pids else 0.0
        if not isinstance(st, dict):
            poll.nodes[name] = NodeSample(ok=False, status_ms=ms, rss_mib=rss)
            return
        lag = st.get("loop_lag_ms")
        lag = lag if isinstance(lag, dict) else {}
        poll.nodes[name] = NodeSample(
            ok=True,
            status_ms=ms,
            role=st.get("role") if isinstance(st.get("role"), str) else None,
            term=_int(st.get("term")),
            leader=st.get("leader") if isinstance(st.get("leader"), str) else None,
            commit=_int(st.get("commit_index")),
            applied=_int(st.get("applied_index")),
            snapshot_index=_int(st.get("snapshot_index")),
            loop_lag_max=_num(lag.get("max")),
            loop_lag_recent=_num(lag.get("recent_max")),
            rss_mib=rss,
        )

    async def poll_once(self, client: httpx.AsyncClient) -> Poll:
        poll = Poll(t=time.monotonic() - self.started)
        async with trio.open_nursery() as nursery:
            for name in self.urls:
                nursery.start_soon(self._one, client, name, poll)
        self.polls.append(poll)
        return poll

    async def run(self) -> None:
        """Poll until cancelled."""
        self.started = time.monotonic()
        timeout = httpx.Timeout(5.0)
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            while True:
                start = trio.current_time()
                await self.poll_once(client)
                await trio.sleep_until(start + self.interval)

    def series(self, max_points: int = 2000) -> dict[str, Any]:
        """Per-node time series for plots (every k-th poll, at most ``max_points``):
        follower lag (0 for the leader), RSS, /status time, recent loop lag, term."""
        step = max(1, len(self.polls) // max_points)
        polls = self.polls[::step]
        names = list(self.urls)
        out: dict[str, Any] = {"t": [round(p.t, 2) for p in polls], "nodes": {}}
        for name in names:
            node: dict[str, list[Any]] = {
                "lag": [],
                "rss_mib": [],
                "status_ms": [],
                "loop_lag_recent_ms": [],
                "term": [],
            }
            for p in polls:
                s = p.nodes.get(name)
                lag = p.follower_lag().get(name, 0 if p.leader() == name else None)
                node["lag"].append(lag)
                node["rss_mib"].append(round(s.rss_mib, 1) if s else None)
                node["status_ms"].append(round(s.status_ms, 1) if s else None)
                node["loop_lag_recent_ms"].append(s.loop_lag_recent if s else None)
                node["term"].append(s.term if s else None)
            out["nodes"][name] = node
        return out

    def summary(self) -> dict[str, Any]:
        polls = [p for p in self.polls if any(s.ok for s in p.nodes.values())]
        terms = [t for p in polls if (t := p.max_term()) is not None]
        leaders = [lead for p in polls if (lead := p.leader()) is not None]
        changes = sum(1 for a, b in itertools.pairwise(leaders) if a != b)
        samples = [s for p in polls for s in p.nodes.values() if s.ok]
        lag_reported = any(s.loop_lag_max is not None for s in samples)
        lags = [lag for p in polls for lag in p.follower_lag().values()]
        rss: dict[str, list[float]] = {}
        for p in self.polls:
            for name, s in p.nodes.items():
                if s.rss_mib:
                    rss.setdefault(name, []).append(s.rss_mib)
        return {
            "polls": len(self.polls),
            "unanswered_polls": sum(1 for p in self.polls for s in p.nodes.values() if not s.ok),
            "elections": (terms[-1] - terms[0]) if terms else None,
            "first_term": terms[0] if terms else None,
            "last_term": terms[-1] if terms else None,
            "leader_changes": changes,
            "leaders": list(dict.fromkeys(leaders)),
            "loop_lag_reported": lag_reported,
            "worst_loop_lag_ms": max(
                (s.loop_lag_max for s in samples if s.loop_lag_max is not None), default=None
            ),
            "worst_recent_loop_lag_ms": max(
                (s.loop_lag_recent for s in samples if s.loop_lag_recent is not None),
                default=None,
            ),
            "worst_status_ms": max((s.status_ms for s in samples), default=None),
            "max_follower_lag": max(lags, default=None),
            "rss_mib": {
                name: {"first": v[0], "last": v[-1], "max": max(v)} for name, v in rss.items()
            },
        }
