"""The leader's view of each follower (after etcd's tracker/progress.go).

A follower is in one of three states:

- PROBE: we do not know where its log matches ours. At most one AppendEntries
  is outstanding; we wait for its answer (or the next heartbeat) before
  sending another, backtracking with the follower's conflict hint.
- REPLICATE: its log matches up to `match_index`; we stream entries
  optimistically, advancing `next_index` as we send, with at most
  `max_inflight` messages unacknowledged (pipelining).
- SNAPSHOT: the entries it needs were compacted away; a snapshot is being
  sent and nothing else is until it is acknowledged or times out.
"""

from __future__ import annotations

import enum
from collections import deque

__all__ = ["Progress", "ProgressState"]


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "commit_sent",
        "inflight",
        "match_at_heartbeat",
        "match_index",
        "next_index",
        "probe_sent",
        "read_ack",
        "recent_active",
        "snapshot_index",
        "snapshot_sent_at",
        "state",
    )

    def __init__(self, next_index: int) -> None:
        self.state = ProgressState.PROBE
        # match_index <= next_index - 1 always: nothing past what we sent can match.
        self.match_index = 0
        self.next_index = next_index
        self.probe_sent = False  # PROBE: an AppendEntries is outstanding
        # REPLICATE: last index carried by each unacknowledged message, in order.
        self.inflight: deque[int] = deque()
        self.snapshot_index = 0  # SNAPSHOT: index of the snapshot being sent
        self.snapshot_sent_at = 0.0
        self.recent_active = False  # heard from it since the last CheckQuorum
        self.read_ack = 0  # highest ReadIndex round it acknowledged this term
        self.match_at_heartbeat = 0  # match_index at the previous heartbeat
        self.commit_sent = 0  # highest leader_commit we have sent it

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.value}, match={self.match_index}, next={self.next_index},"
            f" inflight={len(self.inflight)})"
        )

    def paused(self, max_inflight: int) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= max_inflight
        return True

    def on_heartbeat(self) -> None:
        """Once per heartbeat: recover from lost messages.

        A lost probe is re-sent; a pipeline that has not advanced in a whole
        heartbeat interval has most likely lost a message, so we fall back
        to probing from match_index + 1 rather than wait forever.
        """
        if self.state is ProgressState.PROBE:
            self.probe_sent = False
        elif (
            self.state is ProgressState.REPLICATE
            and self.inflight
            and self.match_index == self.match_at_heartbeat
        ):
            self.become_probe()
        self.match_at_heartbeat = self.match_index

    def become_probe(self) -> None:
        # From SNAPSHOT, resume right after the snapshot we sent.
        if self.state is ProgressState.SNAPSHOT:
            self.next_index = max(self.match_index + 1, self.snapshot_index + 1)
        else:
            self.next_index = self.match_index + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next_index = self.match_index + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, index: int, now: float) -> None:
        self.state = ProgressState.SNAPSHOT
        self.snapshot_index = index
        self.snapshot_sent_at = now
        self.inflight.clear()

    def maybe_update(self, match: int) -> bool:
        """Record an acknowledgement up to `match`; True if it moved forward."""
        updated = match > self.match_index
        if updated:
            self.match_index = match
        self.next_index = max(self.next_index, match + 1)
        while self.inflight and self.inflight[0] <= match:
            self.inflight.popleft()
        return updated
