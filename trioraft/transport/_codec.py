"""Wire encodings of Raft messages.

Between trioraft nodes: msgpack (via msgspec), a list of messages per HTTP body,
each a compact tagged array. msgspec validates every field's type on decode, so
garbage is rejected with `CodecError` before it can reach the core.

For the course's routes (`/raft/request-vote`, `/raft/append-entries`) the JSON
shapes of the course design are accepted and produced as well.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgspec

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

__all__ = [
    "CodecError",
    "append_entries_from_json",
    "append_response_to_json",
    "decode_messages",
    "encode_messages",
    "meta_from_wire",
    "meta_to_wire",
    "request_vote_from_json",
    "vote_response_to_json",
]


class CodecError(ValueError):
    """The bytes are not a valid encoding of Raft messages."""


class _WEntry(msgspec.Struct, array_like=True):
    index: int
    term: int
    kind: int
    data: bytes


class _WMeta(msgspec.Struct, array_like=True):
    index: int
    term: int
    config: bytes  # Configuration.encode()


class _WVote(msgspec.Struct, array_like=True, tag=1):
    src: str
    dst: str
    term: int
    last_log_index: int
    last_log_term: int
    pre_vote: bool
    transfer: bool


class _WVoteResp(msgspec.Struct, array_like=True, tag=2):
    src: str
    dst: str
    term: int
    granted: bool
    pre_vote: bool


class _WAppend(msgspec.Struct, array_like=True, tag=3):
    src: str
    dst: str
    term: int
    prev_log_index: int
    prev_log_term: int
    entries: list[_WEntry]
    leader_commit: int
    read_seq: int
    commit_only: bool = False


class _WAppendResp(msgspec.Struct, array_like=True, tag=4):
    src: str
    dst: str
    term: int
    success: bool
    match_index: int
    conflict_index: int
    conflict_term: int | None
    reject_index: int
    read_seq: int


class _WSnap(msgspec.Struct, array_like=True, tag=5):
    src: str
    dst: str
    term: int
    meta: _WMeta
    leader_commit: int


class _WSnapResp(msgspec.Struct, array_like=True, tag=6):
    src: str
    dst: str
    term: int
    match_index: int


class _WReadReq(msgspec.Struct, array_like=True, tag=7):
    src: str
    dst: str
    term: int
    ctxs: list[int]


class _WReadResp(msgspec.Struct, array_like=True, tag=8):
    src: str
    dst: str
    term: int
    ctxs: list[int]
    index: int


class _WTimeoutNow(msgspec.Struct, array_like=True, tag=9):
    src: str
    dst: str
    term: int


_Wire = (
    _WVote | _WVoteResp | _WAppend | _WAppendResp | _WSnap | _WSnapResp | _WReadReq
    | _WReadResp | _WTimeoutNow
)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[_Wire])


def meta_to_wire(meta: SnapshotMeta) -> list[Any]:
    return [meta.index, meta.term, meta.config.encode().decode()]


def meta_from_wire(w: Any) -> SnapshotMeta:
    if not isinstance(w, list) or len(w) != 3 or not isinstance(w[2], str):
        raise CodecError("a snapshot meta is [index, term, configuration]")
    m = msgspec.convert([w[0], w[1], w[2].encode()], _WMeta)
    return SnapshotMeta(m.index, m.term, _config(m.config))


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


def _check_ints(m: Message) -> None:
    # Negative terms or indexes would break the core's invariants.
    for name in ("term", "prev_log_index", "prev_log_term", "leader_commit", "match_index",
                 "last_log_index", "last_log_term"):
        v = getattr(m, name, 0)
        if v < 0:
            raise CodecError(f"{name} must not be negative")


def encode_messages(msgs: list[Message]) -> bytes:
    return _encoder.encode([_to_wire(m) for m in msgs])


def decode_messages(data: bytes) -> list[Message]:
    try:
        wires = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CodecError(f"malformed Raft message batch: {exc}") from None
    out = [_from_wire(w) for w in wires]
    for m in out:
        _check_ints(m)
    return out


# ------------------------------------------------------------- course JSON forms


class _JVote(msgspec.Struct):
    term: int
    candidateId: str
    lastLogIndex: int
    lastLogTerm: int
    preVote: bool = False


class _JEntry(msgspec.Struct):
    index: int
    term: int
    command: str = ""


class _JAppend(msgspec.Struct):
    term: int
    leaderId: str
    prevLogIndex: int
    prevLogTerm: int
    leaderCommit: int
    entries: list[_JEntry] = []


def request_vote_from_json(body: bytes, dst: str) -> RequestVote:
    try:
        j = msgspec.json.decode(body, type=_JVote)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CodecError(f"malformed RequestVote: {exc}") from None
    m = RequestVote(j.candidateId, dst, j.term, j.lastLogIndex, j.lastLogTerm, j.preVote)
    _check_ints(m)
    return m


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
    m = AppendEntries(j.leaderId, dst, j.term, j.prevLogIndex, j.prevLogTerm, entries,
                      j.leaderCommit)
    _check_ints(m)
    return m


def vote_response_to_json(m: RequestVoteResponse) -> dict[str, Any]:
    return {"term": m.term, "voteGranted": m.granted}


def append_response_to_json(m: AppendEntriesResponse) -> dict[str, Any]:
    return {"term": m.term, "success": m.success, "matchIndex": m.match_index}
