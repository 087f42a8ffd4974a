"""Wire encodings of Raft messages.

Between trioraft nodes: msgpack (via msgspec), a list of messages per frame,
each a compact tagged array. msgspec validates every field's type *and range*
on decode, so garbage is rejected with `CodecError` before it can reach the
core: terms and indexes in [0, 2**62) (PLAN.md: the core never sees a term it
could overflow), member ids of 1..128 characters, bounded counts. Anything
the core relies on beyond types (entries contiguous and following
prev_log_index) is checked here too.

For the course's routes (`/raft/request-vote`, `/raft/append-entries`) the JSON
shapes of the course design are accepted and produced as well.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from trioraft.core import (
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
    SnapshotMeta,
    TimeoutNow,
)
from trioraft.core._types import MAX_MEMBER_ID_LEN

__all__ = [
    "CodecError",
    "append_entries_from_json",
    "append_response_to_json",
    "decode_messages",
    "encode_messages",
    "install_snapshot_from_wire",
    "install_snapshot_to_wire",
    "request_vote_from_json",
    "vote_response_to_json",
]


class CodecError(ValueError):
    """The bytes are not a valid encoding of Raft messages."""


# Ranges of everything that arrives from outside (PLAN.md, "Limits").
MAX_TERM = 2**62  # terms and log indexes are in [0, MAX_TERM)
MAX_ENTRIES_PER_MESSAGE = 10_000
MAX_MESSAGES_PER_BATCH = 10_000
MAX_READ_CTXS = 10_000
MAX_CONFIG_BYTES = 256 * 1024

Term = Annotated[int, Meta(ge=0, lt=MAX_TERM)]
Index = Annotated[int, Meta(ge=0, lt=MAX_TERM)]
MemberId = Annotated[str, Meta(min_length=1, max_length=MAX_MEMBER_ID_LEN)]
Seq = Annotated[int, Meta(ge=0, le=2**63 - 1)]  # read_seq, ReadIndex request ids
Ctxs = Annotated[list[Seq], Meta(max_length=MAX_READ_CTXS)]


class _WEntry(msgspec.Struct, array_like=True):
    index: Index
    term: Term
    kind: int
    data: bytes


class _WMeta(msgspec.Struct, array_like=True):
    index: Index
    term: Term
    config: Annotated[bytes, Meta(max_length=MAX_CONFIG_BYTES)]  # Configuration.encode()


class _WVote(msgspec.Struct, array_like=True, tag=1):
    src: MemberId
    dst: MemberId
    term: Term
    last_log_index: Index
    last_log_term: Term
    pre_vote: bool
    transfer: bool


class _WVoteResp(msgspec.Struct, array_like=True, tag=2):
    src: MemberId
    dst: MemberId
    term: Term
    granted: bool
    pre_vote: bool


class _WAppend(msgspec.Struct, array_like=True, tag=3):
    src: MemberId
    dst: MemberId
    term: Term
    prev_log_index: Index
    prev_log_term: Term
    entries: Annotated[list[_WEntry], Meta(max_length=MAX_ENTRIES_PER_MESSAGE)]
    leader_commit: Index
    read_seq: Seq
    commit_only: bool = False


class _WAppendResp(msgspec.Struct, array_like=True, tag=4):
    src: MemberId
    dst: MemberId
    term: Term
    success: bool
    match_index: Index
    conflict_index: Index
    conflict_term: Term | None
    reject_index: Index
    read_seq: Seq


class _WSnap(msgspec.Struct, array_like=True, tag=5):
    src: MemberId
    dst: MemberId
    term: Term
    meta: _WMeta
    leader_commit: Index


class _WSnapResp(msgspec.Struct, array_like=True, tag=6):
    src: MemberId
    dst: MemberId
    term: Term
    match_index: Index


class _WReadReq(msgspec.Struct, array_like=True, tag=7):
    src: MemberId
    dst: MemberId
    term: Term
    ctxs: Ctxs


class _WReadResp(msgspec.Struct, array_like=True, tag=8):
    src: MemberId
    dst: MemberId
    term: Term
    ctxs: Ctxs
    index: Annotated[int, Meta(ge=-1, lt=MAX_TERM)]  # -1: refused


class _WTimeoutNow(msgspec.Struct, array_like=True, tag=9):
    src: MemberId
    dst: MemberId
    term: Term


_Wire = (
    _WVote | _WVoteResp | _WAppend | _WAppendResp | _WSnap | _WSnapResp | _WReadReq
    | _WReadResp | _WTimeoutNow
)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(
    Annotated[list[_Wire], Meta(max_length=MAX_MESSAGES_PER_BATCH)]
)


def _config(raw: bytes) -> Configuration:
    try:
        return Configuration.decode(raw)
    except ValueError as exc:
        raise CodecError(str(exc)) from None


def _to_wire(m: Message) -> msgspec.Struct:
    match m:
        case AppendEntries():
            return _WAppend(
                m.src, m.dst, m.term, m.prev_log_index, m.prev_log_term,
                [_WEntry(e.index, e.term, int(e.kind), e.data) for e in m.entries],
                m.leader_commit, m.read_seq, m.commit_only,
            )
        case AppendEntriesResponse():
            return _WAppendResp(
                m.src, m.dst, m.term, m.success, m.match_index, m.conflict_index,
                m.conflict_term, m.reject_index, m.read_seq,
            )
        case RequestVote():
            return _WVote(
                m.src, m.dst, m.term, m.last_log_index, m.last_log_term, m.pre_vote, m.transfer
            )
        case RequestVoteResponse():
            return _WVoteResp(m.src, m.dst, m.term, m.granted, m.pre_vote)
        case InstallSnapshot():
            meta = _WMeta(m.meta.index, m.meta.term, m.meta.config.encode())
            return _WSnap(m.src, m.dst, m.term, meta, m.leader_commit)
        case InstallSnapshotResponse():
            return _WSnapResp(m.src, m.dst, m.term, m.match_index)
        case ReadIndexRequest():
            return _WReadReq(m.src, m.dst, m.term, list(m.ctxs))
        case ReadIndexResponse():
            return _WReadResp(m.src, m.dst, m.term, list(m.ctxs), m.index)
        case TimeoutNow():
            return _WTimeoutNow(m.src, m.dst, m.term)
    raise TypeError(f"not a Raft message: {m!r}")


def _from_wire(w: Any) -> Message:
    match w:
        case _WAppend():
            entries = []
            for e in w.entries:
                try:
                    kind = EntryKind(e.kind)
                except ValueError:
                    raise CodecError(f"unknown entry kind {e.kind}") from None
                entries.append(Entry(e.index, e.term, kind, e.data))
            for a, b in itertools.pairwise(entries):
                if b.index != a.index + 1:
                    raise CodecError("entries must be contiguous")
            if entries and entries[0].index != w.prev_log_index + 1:
                raise CodecError("entries must follow prev_log_index")
            _check_terms(w.prev_log_term, [e.term for e in entries], w.term)
            return AppendEntries(
                w.src, w.dst, w.term, w.prev_log_index, w.prev_log_term, tuple(entries),
                w.leader_commit, w.read_seq, w.commit_only,
            )
        case _WAppendResp():
            return AppendEntriesResponse(
                w.src, w.dst, w.term, w.success, w.match_index, w.conflict_index,
                w.conflict_term, w.reject_index, w.read_seq,
            )
        case _WVote():
            if w.last_log_term > w.term:
                raise CodecError("a candidate's last log term is above its term")
            return RequestVote(
                w.src, w.dst, w.term, w.last_log_index, w.last_log_term, w.pre_vote, w.transfer
            )
        case _WVoteResp():
            return RequestVoteResponse(w.src, w.dst, w.term, w.granted, w.pre_vote)
        case _WSnap():
            meta = SnapshotMeta(w.meta.index, w.meta.term, _config(w.meta.config))
            return InstallSnapshot(w.src, w.dst, w.term, meta, w.leader_commit)
        case _WSnapResp():
            return InstallSnapshotResponse(w.src, w.dst, w.term, w.match_index)
        case _WReadReq():
            return ReadIndexRequest(w.src, w.dst, w.term, tuple(w.ctxs))
        case _WReadResp():
            return ReadIndexResponse(w.src, w.dst, w.term, tuple(w.ctxs), w.index)
        case _WTimeoutNow():
            return TimeoutNow(w.src, w.dst, w.term)
    raise CodecError(f"unexpected wire object {type(w).__name__}")


def _check_terms(prev_log_term: int, terms: list[int], term: int) -> None:
    """Terms in a log never decrease, and a leader sends no entry above its term."""
    last = prev_log_term
    for t in terms:
        if t < last:
            raise CodecError("entry terms must not decrease")
        last = t
    if last > term:
        raise CodecError("an entry's term is above the message's term")


# The InstallSnapshot message travels inside snapshot chunk frames.
WireInstallSnapshot = _WSnap


def install_snapshot_to_wire(m: InstallSnapshot) -> WireInstallSnapshot:
    w = _to_wire(m)
    assert isinstance(w, _WSnap)
    return w


def install_snapshot_from_wire(w: WireInstallSnapshot) -> InstallSnapshot:
    m = _from_wire(w)
    assert isinstance(m, InstallSnapshot)
    return m


def encode_messages(msgs: list[Message]) -> bytes:
    return _encoder.encode([_to_wire(m) for m in msgs])


def decode_messages(data: bytes) -> list[Message]:
    try:
        wires = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CodecError(f"malformed Raft message batch: {exc}") from None
    return [_from_wire(w) for w in wires]


# ------------------------------------------------------------- course JSON forms


class _JVote(msgspec.Struct):
    term: Term
    candidateId: MemberId
    lastLogIndex: Index
    lastLogTerm: Term
    preVote: bool = False


class _JEntry(msgspec.Struct):
    index: Index
    term: Term
    command: str = ""


class _JAppend(msgspec.Struct):
    term: Term
    leaderId: MemberId
    prevLogIndex: Index
    prevLogTerm: Term
    leaderCommit: Index
    entries: Annotated[list[_JEntry], Meta(max_length=MAX_ENTRIES_PER_MESSAGE)] = []


def request_vote_from_json(body: bytes, dst: str) -> RequestVote:
    try:
        j = msgspec.json.decode(body, type=_JVote)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CodecError(f"malformed RequestVote: {exc}") from None
    if j.lastLogTerm > j.term:
        raise CodecError("a candidate's last log term is above its term")
    return RequestVote(j.candidateId, dst, j.term, j.lastLogIndex, j.lastLogTerm, j.preVote)


def append_entries_from_json(body: bytes, dst: str) -> AppendEntries:
    try:
        j = msgspec.json.decode(body, type=_JAppend)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CodecError(f"malformed AppendEntries: {exc}") from None
    entries = tuple(
        Entry(e.index, e.term, EntryKind.NORMAL, e.command.encode()) for e in j.entries
    )
    for i, e in enumerate(entries):
        if e.index != j.prevLogIndex + 1 + i:
            raise CodecError("entries must be contiguous and follow prevLogIndex")
    _check_terms(j.prevLogTerm, [e.term for e in entries], j.term)
    return AppendEntries(j.leaderId, dst, j.term, j.prevLogIndex, j.prevLogTerm, entries,
                         j.leaderCommit)


def vote_response_to_json(m: RequestVoteResponse) -> dict[str, Any]:
    return {"term": m.term, "voteGranted": m.granted}


def append_response_to_json(m: AppendEntriesResponse) -> dict[str, Any]:
    return {"term": m.term, "success": m.success, "matchIndex": m.match_index}
