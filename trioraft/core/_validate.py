"""Is a message from a peer well-formed on its own? (the core's first line of defence)

A node never raises, asserts or corrupts its state because of what a peer
sends (PLAN.md, issue 10), so every message is checked here before any
handler sees it. The checks are those that need no local state: types,
ranges, and the internal consistency of one message. A message that fails is
dropped without an answer -- exactly as if the network had lost it, which
Raft already tolerates, so dropping is always safe. The codec refuses the
same ranges earlier; the core does not rely on it.

Rules and why each is safe to enforce:
- terms and indexes are ints in [0, 2**62) (PLAN.md): no honest node ever
  reaches 2**62 (the core never increments its term past it), and a bounded
  term can never overflow storage's 64-bit integers;
- an AppendEntries' entries are contiguous from prev_log_index + 1, their
  terms never decrease, start at >= prev_log_term and never exceed the
  message's term: a leader's log has exactly this shape (terms along a log
  only grow, and a leader of term T holds no entry newer than T), so any
  other shape is forged or corrupt and appending it would break the Log
  Matching invariant;
- a CONFIG entry's data decodes as a Configuration: the leader encodes every
  one it creates, so an undecodable one could only come from a broken or
  hostile sender, and appending it would leave this node unable to say who
  its voters are;
- an InstallSnapshot's meta names index >= 1 with 1 <= term <= the message's
  term and a configuration with at least one voter: a snapshot covers only
  committed entries of terms up to the leader's, and every configuration the
  core creates keeps a voter;
- ReadIndex messages carry a bounded number of request ids, so a peer cannot
  make the leader hold an unbounded set of pending reads.
"""

from __future__ import annotations

from trioraft.core._types import (
    MAX_MEMBER_ID_LEN,
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)

__all__ = ["MAX_READ_CTXS", "MAX_TERM_OR_INDEX", "message_ok"]

MAX_TERM_OR_INDEX = 1 << 62  # exclusive bound on every term and index (PLAN.md)
MAX_READ_CTXS = 4096  # request ids in one ReadIndex message
MAX_ENTRIES_PER_MESSAGE = 1 << 16


def _n(x: object) -> bool:
    """A term or index: a (non-bool) int in [0, 2**62)."""
    return type(x) is int and 0 <= x < MAX_TERM_OR_INDEX


def _id(x: object) -> bool:
    return isinstance(x, str) and 0 < len(x) <= MAX_MEMBER_ID_LEN


def _entries_ok(msg: AppendEntries) -> bool:
    if not isinstance(msg.entries, tuple) or len(msg.entries) > MAX_ENTRIES_PER_MESSAGE:
        return False
    prev_term = msg.prev_log_term
    for i, e in enumerate(msg.entries):
        if not isinstance(e, Entry) or not isinstance(e.kind, EntryKind):
            return False
        if not isinstance(e.data, bytes) or not _n(e.term):
            return False
        if e.index != msg.prev_log_index + 1 + i:
            return False
        if e.term < prev_term or e.term > msg.term:
            return False
        prev_term = e.term
        if e.kind is EntryKind.CONFIG and config_of(e) is None:
            return False
    return True


def config_of(e: Entry) -> Configuration | None:
    """The configuration a CONFIG entry sets, or None if its data is malformed."""
    try:
        cfg = Configuration.decode(e.data)
    except ValueError:
        return None
    return cfg if cfg.voters else None


def message_ok(msg: Message) -> bool:
    """True if `msg` is well-formed; see the module docstring for each rule."""
    if not (_id(msg.src) and _id(msg.dst) and _n(msg.term)):
        return False
    match msg:
        case RequestVote():
            return (
                _n(msg.last_log_index) and _n(msg.last_log_term)
                and msg.last_log_term <= msg.term
                and isinstance(msg.pre_vote, bool) and isinstance(msg.transfer, bool)
            )
        case RequestVoteResponse():
            return isinstance(msg.granted, bool) and isinstance(msg.pre_vote, bool)
        case AppendEntries():
            return (
                _n(msg.prev_log_index) and _n(msg.prev_log_term) and _n(msg.leader_commit)
                and _n(msg.read_seq) and msg.prev_log_term <= msg.term
                and (msg.prev_log_index > 0 or msg.prev_log_term == 0)
                and msg.prev_log_index + len(msg.entries) < MAX_TERM_OR_INDEX
                and isinstance(msg.commit_only, bool)
                and _entries_ok(msg)
            )
        case AppendEntriesResponse():
            return (
                isinstance(msg.success, bool) and _n(msg.match_index)
                and _n(msg.conflict_index) and _n(msg.reject_index) and _n(msg.read_seq)
                and (msg.conflict_term is None or _n(msg.conflict_term))
            )
        case InstallSnapshot():
            m = msg.meta
            return (
                _n(m.index) and _n(m.term) and m.index >= 1 and 1 <= m.term <= msg.term
                and isinstance(m.config, Configuration) and bool(m.config.voters)
                and _n(msg.leader_commit)
            )
        case InstallSnapshotResponse():
            return _n(msg.match_index)
        case ReadIndexRequest():
            return (
                isinstance(msg.ctxs, tuple) and 0 < len(msg.ctxs) <= MAX_READ_CTXS
                and all(type(c) is int for c in msg.ctxs)
            )
        case ReadIndexResponse():
            return (
                isinstance(msg.ctxs, tuple) and len(msg.ctxs) <= MAX_READ_CTXS
                and all(type(c) is int for c in msg.ctxs)
                and type(msg.index) is int and -1 <= msg.index < MAX_TERM_OR_INDEX
            )
        case TimeoutNow():
            return True
    return False  # not a message type the core knows
