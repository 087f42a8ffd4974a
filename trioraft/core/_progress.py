"""The leader's view of each follower or learner (after etcd's tracker/progress.go).

A peer is in one of three states:

- PROBE: we do not know where its log matches ours. At most one small
  AppendEntries (the probe) is outstanding; another goes only once the peer
  answers something (it is alive), or -- if the probe itself was lost -- once
  a later heartbeat is answered. An unresponsive peer costs one probe and
  then heartbeats only, never a stream of full-size messages.
- REPLICATE: its log matches up to `match_index`; we stream entries
  optimistically, advancing `next_index` as we send, with at most
  `max_inflight` messages unacknowledged (pipelining).
- SNAPSHOT: the entries it needs were compacted away; a snapshot is being
  sent and nothing else is (etcd pauses the peer) until the transfer itself
  reports success, failure or times out. A rejected heartbeat never starts a
  second transfer.

`match_index` never moves back: it is only ever raised (`maybe_update`).
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
        "probe_sent_at",
        "read_ack",
        "recent_active",
        "snapshot_deadline",
        "snapshot_index",
        "state",
    )

    def __init__(self, next_index: int) -> None:
        self.state = ProgressState.PROBE
        # Highest index known to be replicated on the peer. Only ever raised.
        self.match_index = 0
        self.next_index = next_index
        self.probe_sent = False  # PROBE: an AppendEntries is outstanding
        self.probe_sent_at = 0.0
        # REPLICATE: last index carried by each unacknowledged message, in order.
        self.inflight: deque[int] = deque()
        self.snapshot_index = 0  # SNAPSHOT: index of the snapshot being sent
        self.snapshot_deadline = 0.0  # SNAPSHOT: give up on the transfer after this
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
        """Once per heartbeat: a pipeline that has not advanced in a whole
        heartbeat interval has most likely lost a message, so we fall back to
        probing from match_index + 1 rather than wait forever.

        A lost probe is *not* re-sent here: only an answer from the peer
        (`on_answer`) allows the next one, so a peer that answers nothing
        is sent nothing but heartbeats.
        """
        if (
            self.state is ProgressState.REPLICATE
            and self.inflight
            and self.match_index == self.match_at_heartbeat
        ):
            self.become_probe()
        self.match_at_heartbeat = self.match_index

    def on_answer(self, now: float, to_probe: bool, min_wait: float) -> None:
        """The peer answered an AppendEntries (it is alive).

        The answer to the probe itself lets the next probe go; an answer to
        something else (a heartbeat) does so only once the probe has been out
        for `min_wait`: it was most likely lost. Either way at most one probe
        is in flight per round trip.
        """
        if self.state is ProgressState.PROBE and (
            to_probe or now - self.probe_sent_at >= min_wait
        ):
            self.probe_sent = False

    def sent_probe(self, now: float) -> None:
        self.probe_sent = True
        self.probe_sent_at = now

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

    def become_snapshot(self, index: int, deadline: float) -> None:
        self.state = ProgressState.SNAPSHOT
        self.snapshot_index = index
        self.snapshot_deadline = deadline
        self.inflight.clear()

    def maybe_update(self, match: int) -> bool:
        """Record an acknowledgement up to `match`; True if it moved forward.

        Safety: `match_index` is the basis of the commit rule, so it must
        only ever grow. A follower never loses an entry it acknowledged to a
        leader of this term (it only truncates entries that conflict with the
        leader's log, and acknowledged ones do not), so a smaller figure can
        only come from an older, reordered message.
        """
        updated = match > self.match_index
        if updated:
            self.match_index = match
        self.next_index = max(self.next_index, match + 1)
        while self.inflight and self.inflight[0] <= match:
            self.inflight.popleft()
        return updated
