"""The core's settings and the roles a node can be in."""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["CoreConfig", "Role"]


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRECANDIDATE = "precandidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"  # not a voter of its configuration (or not a member at all)


@dataclass(frozen=True, slots=True)
class CoreConfig:
    id: str
    voters: frozenset[str]  # bootstrap membership (a snapshot's configuration overrides it)
    election_timeout: tuple[float, float] = (0.150, 0.300)  # seconds, [min, max)
    heartbeat_interval: float = 0.050
    max_entries_per_msg: int = 512
    max_bytes_per_msg: int = 1 << 20
    max_inflight: int = 8
    # A probe (PROBE state: where does the follower's log match?) is small:
    # it may well be rejected, and the follower may not be answering at all.
    probe_max_entries: int = 4
    probe_max_bytes: int = 64 << 10
    pre_vote: bool = True
    check_quorum: bool = True
    # Entries kept in the log after a snapshot (etcd's SnapshotCatchUpEntries):
    # a follower less than this far behind is caught up with entries.
    snapshot_catchup_entries: int = 5000
    # Give up on a snapshot transfer nobody reported on after this long.
    snapshot_timeout: float = 30.0
    # A read that has not been answered after this long is refused (-1).
    read_timeout: float = 5.0
    max_pending_reads: int = 10_000
    # Deliberately broken variants, for the simulation's "teeth" tests only:
    # "commit_old_terms", "vote_without_log_check", "no_truncate",
    # "match_moves_back", "two_changes", "change_before_commit".
    unsafe: frozenset[str] = frozenset()
