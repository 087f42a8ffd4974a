"""Prometheus metrics at ``GET /metrics`` (text format), one registry per node.

Three sources, so the runtime carries no metrics code but a few calls:

* **State, read at scrape time** by :class:`_StateCollector` from the node's public
  face: ``node.status()`` (term, role, indexes, members, the leader's progress),
  ``node.stats`` (proposals, batches, fsyncs, snapshots) and ``node.core.progress``
  (whether each follower answered lately).
* **Requests**, timed by :class:`HttpMetrics`, an ASGI middleware in front of the
  whole app (fast path included): a latency histogram per route and status.
* **What only the runtime can time**, pushed through :class:`NodeMetrics`'s
  ``observe_*`` methods: fsync and apply latency, batch sizes, ReadIndex rounds,
  snapshot transfers, leader changes, event-loop lag. ``metrics_of(node)`` gives a
  node's object; the hook points are listed in docs/operations.md ("Metrics").

A :class:`Watcher` task (started with the app) samples the node's status once per
heartbeat interval: it measures event-loop lag, timestamps the leader's log
growth (so a follower's lag can be given in seconds, not only entries), and keeps
the recent role/leader changes the live view (``/ui``) shows on its timeline.
Leader changes are counted there until the runtime reports them itself through
``observe_leader_change`` (then the sampler defers to it).

No global registry: several nodes in one process (the tests) never share a metric.
"""

from __future__ import annotations

import bisect
import collections
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "ROLES",
    "HttpMetrics",
    "NodeMetrics",
    "Watcher",
    "metrics_of",
    "render",
    "route_of",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# No `*_created` series: they double the exposition and no alert here uses them.
# (A process-wide switch of prometheus_client; it affects only that series.)
disable_created_metrics()  # type: ignore[no-untyped-call]
ROLES = ("leader", "follower", "candidate", "precandidate", "learner")
PROGRESS_STATES = ("probe", "replicate", "snapshot")
# Latency buckets (seconds): 100 µs to 10 s.
_LATENCY = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
HISTORY = 200  # role/leader changes kept for the live view


class NodeLike(Protocol):
    """What the metrics read of a node (RaftNode has all of it)."""

    id: str
    stats: dict[str, int]

    @property
    def core(self) -> Any: ...

    def status(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Change:
    """A role or leader change this node saw (wall-clock `time`, for the timeline)."""

    time: float
    term: int
    role: str
    leader: str | None


class NodeMetrics:
    """One node's registry, its push-style metrics and its recent history."""

    def __init__(self, node: NodeLike) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.fsync_seconds = Histogram(
            "trioraft_fsync_duration_seconds",
            "Time to persist one Ready batch (hard state and entries), fsync included.",
            buckets=_LATENCY, registry=r)  # fmt: skip
        self.apply_seconds = Histogram(
            "trioraft_apply_duration_seconds",
            "Time to apply one batch of committed entries to the state machine.",
            buckets=_LATENCY, registry=r)  # fmt: skip
        self.applied_entries = Counter(
            "trioraft_applied_entries", "Committed entries applied to the state machine.",
            registry=r)  # fmt: skip
        self.batch_size = Histogram(
            "trioraft_proposal_batch_size_entries",
            "Commands per proposal batch (one log append and fsync), on the leader.",
            buckets=_BATCH, registry=r)  # fmt: skip
        self.read_index_rounds = Counter(
            "trioraft_read_index_rounds", "ReadIndex rounds (leadership confirmations for "
            "linearizable reads) started by this node as leader.", registry=r)
        self.snapshot_transfers = Counter(
            "trioraft_snapshot_transfers", "Snapshot transfers to or from a peer, by outcome.",
            ["direction", "peer", "result"], registry=r)  # fmt: skip
        self.snapshot_transfer_bytes = Counter(
            "trioraft_snapshot_transfer_bytes", "Snapshot bytes sent or received.",
            ["direction", "peer"], registry=r)  # fmt: skip
        self.leader_changes = Counter(
            "trioraft_leader_changes", "Times the leader this node knows changed (to another "
            "node or to none).", registry=r)
        self.loop_lag_seconds = Histogram(
            "trioraft_event_loop_lag_seconds",
            "How late the event loop ran a timer (a busy or blocked loop delays everything).",
            buckets=_LATENCY, registry=r)  # fmt: skip
        self.http_seconds = Histogram(
            "trioraft_http_request_duration_seconds",
            "HTTP requests served by this node, by route template, method and status.",
            ["route", "method", "status"], buckets=_LATENCY, registry=r)  # fmt: skip
        self.last_loop_lag = 0.0
        self.history: collections.deque[Change] = collections.deque(maxlen=HISTORY)
        self.runtime_reports_leader = False
        # (monotonic time, leader's last log index) samples: when did the log reach i?
        self._growth: collections.deque[tuple[float, int]] = collections.deque(maxlen=4096)
        self._node = weakref.ref(node)
        r.register(_StateCollector(self))
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu, open fds

    # ------------------------------------------------------------ runtime hooks

    def observe_fsync(self, seconds: float) -> None:
        """After each storage.save of a Ready (entries and/or hard state)."""
        self.fsync_seconds.observe(seconds)

    def observe_apply(self, seconds: float, entries: int) -> None:
        """After applying one Ready's committed entries."""
        self.apply_seconds.observe(seconds)
        self.applied_entries.inc(entries)

    def observe_batch(self, size: int) -> None:
        """When the leader proposes one batch of `size` commands."""
        self.batch_size.observe(size)

    def observe_read_index(self) -> None:
        """When the leader starts a ReadIndex round."""
        self.read_index_rounds.inc()

    def observe_snapshot_transfer(
        self, direction: str, peer: str, nbytes: int, ok: bool
    ) -> None:
        """When a snapshot transfer to (`sent`) or from (`received`) `peer` ends."""
        result = "ok" if ok else "failed"
        self.snapshot_transfers.labels(direction, peer, result).inc()
        self.snapshot_transfer_bytes.labels(direction, peer).inc(nbytes)

    def observe_loop_lag(self, seconds: float) -> None:
        """A measurement of event-loop lag (the Watcher makes one per heartbeat)."""
        self.last_loop_lag = seconds
        self.loop_lag_seconds.observe(seconds)

    def observe_leader_change(self, term: int, role: str, leader: str | None) -> None:
        """When this node's role or known leader changes (the runtime's leader-change
        spot). Once called, the sampler stops counting changes itself."""
        self.runtime_reports_leader = True
        self._record(term, role, leader)

    def _record(self, term: int, role: str, leader: str | None) -> None:
        last = self.history[-1] if self.history else None
        if last is not None and (last.term, last.role, last.leader) == (term, role, leader):
            return
        if last is None or last.leader != leader:
            self.leader_changes.inc()
        self.history.append(Change(time.time(), term, role, leader))

    # ------------------------------------------------------------ lag in seconds

    def note_log(self, last_index: int, now: float) -> None:
        if not self._growth or last_index > self._growth[-1][1]:
            self._growth.append((now, last_index))
        elif last_index < self._growth[-1][1]:
            self._growth.clear()  # a new leader's log, or this node stepped down
            self._growth.append((now, last_index))

    def lag_seconds(self, match_index: int, last_index: int, now: float) -> float:
        """How long ago the leader's log first held an entry past `match_index`."""
        if match_index >= last_index or not self._growth:
            return 0.0
        indexes = [i for _, i in self._growth]
        k = bisect.bisect_right(indexes, match_index)
        first = self._growth[k][0] if k < len(self._growth) else now
        return max(0.0, now - first)

    @property
    def node(self) -> NodeLike | None:
        return self._node()


_BY_NODE: weakref.WeakKeyDictionary[Any, NodeMetrics] = weakref.WeakKeyDictionary()


def metrics_of(node: NodeLike) -> NodeMetrics:
    """The node's :class:`NodeMetrics` (made on first use; one per node, per process)."""
    m = _BY_NODE.get(node)
    if m is None:
        m = _BY_NODE[node] = NodeMetrics(node)
    return m


def render(m: NodeMetrics) -> bytes:
    """The Prometheus text exposition of everything the node's registry holds."""
    return bytes(generate_latest(m.registry))


# ---------------------------------------------------------------- scrape-time state


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class _StateCollector(Collector):
    def __init__(self, m: NodeMetrics) -> None:
        self.m = m

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: its families depend on the node's role

    def collect(self) -> Iterator[Metric]:
        node = self.m.node
        if node is None or node.core is None:
            return
        s = node.status()
        yield _gauge("trioraft_term", "Current Raft term.", s["term"])
        role = GaugeMetricFamily("trioraft_role", "1 for this node's current role.",
                                 labels=["role"])
        for r in ROLES:
            role.add_metric([r], 1.0 if s["role"] == r else 0.0)
        yield role
        yield _gauge("trioraft_is_leader", "1 if this node is the leader.",
                     1.0 if s["role"] == "leader" else 0.0)
        yield _gauge("trioraft_leader_known", "1 if this node knows a leader.",
                     0.0 if s.get("leader") is None else 1.0)
        for field, doc in (
            ("commit_index", "Highest log index known to be committed."),
            ("applied_index", "Highest log index applied to the state machine."),
            ("last_log_index", "Highest index in this node's log."),
            ("snapshot_index", "Log index covered by the newest snapshot."),
        ):
            yield _gauge(f"trioraft_{field}", doc, s[field])
        yield _gauge("trioraft_keys", "Keys in this node's state machine.", s.get("keys", 0))
        members = s.get("members", {})
        yield _gauge("trioraft_members", "Members in the configuration (voters and learners).",
                     len(members))
        yield _gauge("trioraft_voters", "Voting members in the configuration.",
                     sum(1 for m in members.values() if m.get("voter")))
        stats = node.stats
        for key, name, doc in (
            ("proposals", "trioraft_proposals", "Commands proposed by this node as leader."),
            ("batches", "trioraft_proposal_batches", "Proposal batches (log appends) as leader."),
            ("fsyncs", "trioraft_fsyncs", "Log writes persisted (one fsync each)."),
            ("snapshots", "trioraft_snapshots", "Snapshots taken locally."),
            ("snapshots_installed", "trioraft_snapshots_installed",
             "Snapshots received from a leader and installed."),
        ):
            yield CounterMetricFamily(name, doc, value=stats.get(key, 0))
        if "last_snapshot_bytes" in stats:
            yield _gauge("trioraft_last_snapshot_bytes", "Size of the last local snapshot.",
                         stats["last_snapshot_bytes"])
        yield from self._peers(node, s)

    def _peers(self, node: NodeLike, s: dict[str, Any]) -> Iterator[Metric]:
        progress = s.get("progress")
        if not isinstance(progress, dict):
            return  # only the leader tracks its followers
        last = s["last_log_index"]
        now = time.monotonic()
        lag = GaugeMetricFamily("trioraft_replication_lag_entries",
                                "Leader only: entries a follower lacks.", labels=["peer"])
        lag_s = GaugeMetricFamily(
            "trioraft_replication_lag_seconds",
            "Leader only: age of the oldest entry a follower lacks (0 when caught up).",
            labels=["peer"])  # fmt: skip
        match = GaugeMetricFamily("trioraft_replication_match_index",
                                  "Leader only: highest index known replicated on a follower.",
                                  labels=["peer"])
        state = GaugeMetricFamily("trioraft_replication_state",
                                  "Leader only: 1 for a follower's replication state.",
                                  labels=["peer", "state"])
        up = GaugeMetricFamily(
            "trioraft_peer_up",
            "Leader only: 1 if the follower answered since the last quorum check.",
            labels=["peer"])  # fmt: skip
        core_progress = getattr(node.core, "progress", {})
        for peer, p in sorted(progress.items()):
            m = int(p.get("match_index", 0))
            lag.add_metric([peer], max(0, last - m))
            lag_s.add_metric([peer], self.m.lag_seconds(m, last, now))
            match.add_metric([peer], m)
            for st in PROGRESS_STATES:
                state.add_metric([peer, st], 1.0 if p.get("state") == st else 0.0)
            pr = core_progress.get(peer)
            if pr is not None and hasattr(pr, "recent_active"):
                up.add_metric([peer], 1.0 if pr.recent_active else 0.0)
        yield from (lag, lag_s, match, state, up)


# ---------------------------------------------------------------- the sampler


class Watcher:
    """Once per `interval`: loop lag, the leader's log growth, role/leader changes."""

    def __init__(self, node: NodeLike, interval: float) -> None:
        self.node = node
        self.m = metrics_of(node)
        self.interval = interval

    async def run(self) -> None:
        m = self.m
        while True:
            before = trio.current_time()
            await trio.sleep(self.interval)
            m.observe_loop_lag(max(0.0, trio.current_time() - before - self.interval))
            self.sample()

    def sample(self) -> None:
        node, m = self.node, self.m
        if node.core is None:
            return
        s = node.status()
        if s["role"] == "leader":
            m.note_log(s["last_log_index"], time.monotonic())
        if not m.runtime_reports_leader:
            m._record(s["term"], s["role"], s.get("leader"))


# ---------------------------------------------------------------- ASGI middleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_STATIC_ROUTES = frozenset({
    "/kv", "/txn", "/status", "/debug", "/health", "/ready", "/openapi.json", "/metrics",
    "/ui", "/ui/history", "/raft/messages", "/raft/propose", "/raft/snapshot",
    "/raft/request-vote", "/raft/append-entries",
})  # fmt: skip


def route_of(path: str, method: str) -> str:
    """A request's route template: a bounded label set, never a key."""
    if path in _STATIC_ROUTES:
        return path
    if path.startswith("/kv/"):
        return "/kv/{key}/cas" if method == "POST" and path.endswith("/cas") else "/kv/{key}"
    return "other"


class HttpMetrics:
    """ASGI middleware: time every HTTP request into the node's latency histogram."""

    def __init__(self, app: Any, node: NodeLike) -> None:
        self.app: ASGIApp = app
        self.hist = metrics_of(node).http_seconds
        # (route, method, status) -> the histogram's child: `labels()` takes a
        # lock and formats the label values on every call.
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method = scope["method"]
            key = (route_of(scope["path"], method), method, status)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.hist.labels(key[0], method, str(status))
            child.observe(time.perf_counter() - start)
