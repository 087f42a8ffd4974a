"""The sans-IO Raft core: no sockets, files, clocks or Trio -- only data in, data out."""

from trioraft.core._errors import NotLeader, ProposalDropped, RaftError
from trioraft.core._progress import Progress, ProgressState
from trioraft.core._raft import CoreConfig, RaftCore, Ready, Role
from trioraft.core._types import (
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    InstallSnapshotResponse,
    Member,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
)

__all__ = [
    "AppendEntries",
    "AppendEntriesResponse",
    "Configuration",
    "CoreConfig",
    "Entry",
    "EntryKind",
    "HardState",
    "InstallSnapshot",
    "InstallSnapshotResponse",
    "Member",
    "Message",
    "NotLeader",
    "Progress",
    "ProgressState",
    "ProposalDropped",
    "RaftCore",
    "RaftError",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "Ready",
    "RequestVote",
    "RequestVoteResponse",
    "Role",
    "SnapshotMeta",
    "TimeoutNow",
]
