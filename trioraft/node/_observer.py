"""What the driver reports to operators: metrics hooks and structured log events.

The driver calls one method per thing that happened; this module turns it into
the node's Prometheus metrics (`trioraft.metrics.NodeMetrics`) and its log
events (`trioraft.logs.event`, docs/operations.md "Logs"): INFO for what an
operator follows (role and leader changes), WARNING for problems (a slow
fsync, rate-limited), nothing per request.
"""

from __future__ import annotations

import logging
import time

from trioraft.core import AppendEntries, Message, Role
from trioraft.logs import event
from trioraft.metrics import NodeMetrics

__all__ = ["SLOW_FSYNC_S", "SLOW_LOG_EVERY_S", "Observer"]

log = logging.getLogger("trioraft.node")

# A storage write (one Ready, one fsync) slower than this is logged (at most
# once per SLOW_LOG_EVERY_S): a disk this slow delays every acknowledgement.
SLOW_FSYNC_S = 0.1
SLOW_LOG_EVERY_S = 10.0


class Observer:
    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics
        self.role = Role.FOLLOWER
        self.leader: str | None = None
        self._read_round = (0, 0)  # (term, read_seq) of the last ReadIndex round seen
        self._slow_fsyncs = 0  # since the last slow_fsync line
        self._slow_logged_at = -SLOW_LOG_EVERY_S

    def changes(self, term: int, role: Role, leader: str | None) -> bool:
        """The core's role and leader now; True if the leader changed."""
        if role is self.role and leader == self.leader:
            return False
        if role is not self.role:
            event(log, "role_changed", role=role.value, previous=self.role.value, term=term)
            self.role = role
        leader_changed = leader != self.leader
        if leader_changed:
            event(log, "leader_changed", leader=leader, previous=self.leader, term=term,
                  role=role.value)  # fmt: skip
            self.leader = leader
        self.metrics.observe_leader_change(term, role.value, leader)
        return leader_changed

    def persisted(self, seconds: float, entries: int) -> None:
        """One storage write of a Ready (hard state and/or entries: one fsync)."""
        self.metrics.observe_fsync(seconds)
        if seconds < SLOW_FSYNC_S:
            return
        self._slow_fsyncs += 1
        now = time.monotonic()
        if now - self._slow_logged_at >= SLOW_LOG_EVERY_S:
            event(log, "slow_fsync", logging.WARNING, ms=round(seconds * 1000, 1),
                  entries=entries, slow_since_last=self._slow_fsyncs)  # fmt: skip
            self._slow_logged_at, self._slow_fsyncs = now, 0

    def applied(self, seconds: float, entries: int) -> None:
        self.metrics.observe_apply(seconds, entries)

    def proposed(self, commands: int) -> None:
        self.metrics.observe_batch(commands)

    def sending(self, m: Message) -> None:
        """A message the driver sends: a leader's AppendEntries names its ReadIndex
        round; each new round is counted once."""
        if not isinstance(m, AppendEntries) or not m.read_seq:
            return
        last_term, last_seq = self._read_round
        if m.term != last_term:
            last_seq = 0  # read rounds restart with each term's leadership
        for _ in range(m.read_seq - last_seq):
            self.metrics.observe_read_index()
        self._read_round = (m.term, max(m.read_seq, last_seq))
