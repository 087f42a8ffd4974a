"""Plain data the core consumes and produces: entries, hard state, messages.

Everything here is an immutable slotted dataclass so that a message handed to
the network (or kept in a simulation trace) can never be changed under a
reader's feet. Field names follow Figure 2 of the Raft paper.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "AppendEntries",
    "AppendEntriesResponse",
    "Entry",
    "EntryKind",
    "HardState",
    "InstallSnapshot",
    "InstallSnapshotResponse",
    "Message",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "RequestVote",
    "RequestVoteResponse",
    "SnapshotMeta",
    "TimeoutNow",
]


class EntryKind(enum.IntEnum):
    NORMAL = 0  # a client command, opaque to the core
    NOOP = 1  # appended by every new leader so it can commit its term (paper §5.4.2)
    CONFIG = 2  # a membership change; data is the encoded voter set


@dataclass(frozen=True, slots=True)
class Entry:
    index: int  # >= 1; position in the log
    term: int  # the leader term that created the entry
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on stable storage before the node answers anyone."""

    term: int = 0  # current_term: latest term this node has seen, never decreases
    vote: str | None = None  # voted_for in `term`; at most one per term
    commit: int = 0  # commit_index; persisted only as a hint to speed up recovery


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0  # last included index
    term: int = 0  # term of the last included entry
    voters: frozenset[str] = frozenset()  # membership as of `index`


# --------------------------------------------------------------------- messages
# Every message carries `src`, `dst` and the sender's `term`. The term rules in
# the core (a higher term makes the receiver a follower, a lower one is answered
# with a rejection carrying the current term) are applied uniformly to all of
# them, before the per-type handler runs.


@dataclass(frozen=True, slots=True)
class RequestVote:
    src: str
    dst: str
    term: int  # for a pre-vote: the term the sender *would* campaign in
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False  # sent after TimeoutNow: overrides the leader lease


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    src: str
    dst: str
    term: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    src: str
    dst: str
    term: int
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int
    # ReadIndex round this message confirms leadership for (0: none). A
    # follower echoes it so the leader can count a heartbeat quorum.
    read_seq: int = 0
    # A notice of a new commit index only (no entries, prev = match_index):
    # the follower applies it and does not answer when it succeeds.
    commit_only: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    src: str
    dst: str
    term: int
    success: bool
    # On success: highest index known to match the leader's log.
    match_index: int = 0
    # On rejection, the fast-backtracking hint (Raft thesis §5.3 optimisation):
    # conflict_term is the follower's term at prev_log_index (None when its log
    # is shorter), conflict_index the first index it holds for that term (or
    # its last index + 1).
    conflict_index: int = 0
    conflict_term: int | None = None
    # On rejection: the prev_log_index of the rejected request, so the leader
    # can tell a stale rejection (of a probe it has already moved past) from a
    # current one.
    reject_index: int = 0
    read_seq: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Leader -> follower: replace your log prefix with snapshot `meta`.

    The core only deals in metadata; the runtime moves the bytes (in chunks)
    and hands the message to the follower's core once they are all on disk.
    """

    src: str
    dst: str
    term: int
    meta: SnapshotMeta
    leader_commit: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    src: str
    dst: str
    term: int
    match_index: int  # the snapshot index the follower now holds (0 if rejected)


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    """Follower -> leader: give me a read index for these request ids."""

    src: str
    dst: str
    term: int
    ctxs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    src: str
    dst: str
    term: int
    ctxs: tuple[int, ...]
    index: int  # -1: refused (the sender is not, or no longer, a confirmed leader)


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leader -> chosen successor: campaign now (leadership transfer)."""

    src: str
    dst: str
    term: int


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | ReadIndexRequest
    | ReadIndexResponse
    | TimeoutNow
)

