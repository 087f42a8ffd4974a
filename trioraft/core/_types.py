"""Plain data the core consumes and produces: entries, hard state, messages.

Everything here is an immutable slotted dataclass so that a message handed to
the network (or kept in a simulation trace) can never be changed under a
reader's feet. Field names follow Figure 2 of the Raft paper.
"""

from __future__ import annotations

import enum
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "AppendEntries",
    "AppendEntriesResponse",
    "Configuration",
    "Entry",
    "EntryKind",
    "HardState",
    "InstallSnapshot",
    "InstallSnapshotResponse",
    "Member",
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
    CONFIG = 2  # a membership change; data is `Configuration.encode()`


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
class Member:
    """One member of a configuration.

    `id` is the member id: the `src`/`dst` of every message and the only name
    the core knows. It identifies one *incarnation* of a node: a node that
    lost its disk comes back under a fresh id, so an amnesiac can never vote
    or count under the id whose promises (votes, acknowledged entries) it has
    forgotten. `name` (the operator's name, e.g. "node1") and `url` are
    carried for the runtime and are opaque to the core.
    """

    id: str
    voter: bool = True
    name: str = ""  # "" means: the same as `id`
    url: str = ""

    @property
    def display_name(self) -> str:
        return self.name or self.id

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "voter": self.voter, "name": self.name, "url": self.url}


@dataclass(frozen=True, slots=True)
class Configuration:
    """The cluster membership: voters and learners (non-voting members).

    `members` is sorted by id and ids are unique (use `Configuration.of`).
    Carried in CONFIG entries and in every snapshot.
    """

    members: tuple[Member, ...] = ()

    @classmethod
    def of(cls, members: Iterable[Member]) -> Configuration:
        ms = sorted(members, key=lambda m: m.id)
        for a, b in itertools.pairwise(ms):
            if a.id == b.id:
                raise ValueError(f"member id {a.id!r} appears twice")
        return cls(tuple(ms))

    @classmethod
    def of_voters(cls, ids: Iterable[str]) -> Configuration:
        """All voters, named by their ids (tests, simulations, static clusters)."""
        return cls.of(Member(i) for i in ids)

    @property
    def voters(self) -> frozenset[str]:
        return frozenset(m.id for m in self.members if m.voter)

    @property
    def learners(self) -> frozenset[str]:
        return frozenset(m.id for m in self.members if not m.voter)

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(m.id for m in self.members)

    def get(self, member_id: str) -> Member | None:
        for m in self.members:
            if m.id == member_id:
                return m
        return None

    def to_json(self) -> list[dict[str, object]]:
        return [m.to_json() for m in self.members]

    @classmethod
    def from_json(cls, obj: object) -> Configuration:
        """The inverse of `to_json`; raises ValueError on anything malformed."""
        if not isinstance(obj, list):
            raise ValueError("a configuration is a list of members")
        out = []
        for m in obj:
            if not isinstance(m, dict):
                raise ValueError("a member is an object")
            mid, voter = m.get("id"), m.get("voter", True)
            name, url = m.get("name", ""), m.get("url", "")
            if not isinstance(mid, str) or not mid or len(mid) > MAX_MEMBER_ID_LEN:
                raise ValueError("a member id is a non-empty string")
            if not isinstance(voter, bool) or not isinstance(name, str) or not isinstance(url, str):
                raise ValueError("member fields have the wrong types")
            if len(name) > MAX_MEMBER_ID_LEN or len(url) > MAX_URL_LEN:
                raise ValueError("member name or url too long")
            out.append(Member(mid, voter, name, url))
        if len(out) > MAX_MEMBERS:
            raise ValueError(f"more than {MAX_MEMBERS} members")
        return cls.of(out)

    def encode(self) -> bytes:
        """Canonical bytes (JSON): the data of a CONFIG entry, a snapshot header field."""
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> Configuration:
        try:
            return cls.from_json(json.loads(data))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"malformed configuration: {exc}") from None


MAX_MEMBERS = 64
MAX_MEMBER_ID_LEN = 128
MAX_URL_LEN = 2048


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0  # last included index
    term: int = 0  # term of the last included entry
    config: Configuration = Configuration()  # membership as of `index`

    @property
    def voters(self) -> frozenset[str]:
        return self.config.voters


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

