"""The frame format and the Raft codec refuse anything malformed or out of range."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
import trio
import trio.testing

from trioraft.core import (
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    Entry,
    EntryKind,
    InstallSnapshot,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    SnapshotMeta,
)
from trioraft.transport import CodecError, FrameError, decode_messages, encode_messages
from trioraft.transport._frames import HEADER, PREAMBLE, FrameType, Relay, decode, encode, frame
from trioraft.transport._reader import FrameReader

MAX = 2**62


def test_every_message_type_round_trips() -> None:
    meta = SnapshotMeta(7, 2, Configuration.of_voters(["a", "b"]))
    msgs = [
        RequestVote("a", "b", 3, 10, 2, pre_vote=True),
        AppendEntries("a", "b", 3, 4, 2, (Entry(5, 2, EntryKind.NORMAL, b"x"),
                                         Entry(6, 3, EntryKind.NOOP)), 4, read_seq=9),
        AppendEntriesResponse("b", "a", 3, False, 0, 4, None, 5, 9),
        InstallSnapshot("a", "b", 3, meta, 7),
        ReadIndexRequest("b", "a", 3, (2**62, 5)),
        ReadIndexResponse("a", "b", 3, (1,), -1),
    ]
    assert decode_messages(encode_messages(msgs)) == msgs


@pytest.mark.parametrize(
    "wire",
    [
        [[1, "a", "b", MAX, 0, 0, False, False]],  # term out of range
        [[1, "a", "b", -1, 0, 0, False, False]],  # negative term
        [[1, "a", "b", 5, 0, 6, False, False]],  # last log term above the term
        [[1, "", "b", 5, 0, 0, False, False]],  # empty member id
        [[1, "a" * 129, "b", 5, 0, 0, False, False]],  # member id too long
        [[3, "a", "b", 5, 0, 0, [[2, 1, 0, b""]], 0, 0, False]],  # entry does not follow prev
        [[3, "a", "b", 5, 0, 0, [[1, 2, 0, b""], [2, 1, 0, b""]], 0, 0, False]],  # term falls
        [[3, "a", "b", 5, 0, 0, [[1, 6, 0, b""]], 0, 0, False]],  # entry above msg term
        [[3, "a", "b", 5, 0, 0, [[1, 1, 9, b""]], 0, 0, False]],  # unknown entry kind
        [[3, "a", "b", 5, MAX, 0, [], 0, 0, False]],  # index out of range
        [[8, "a", "b", 5, [1], -2]],  # read index below -1
        [[7, "b", "a", 5, [-1]]],  # negative read id
        [[99, "a", "b"]],  # unknown message tag
        [[5, "a", "b", 1, [1, 1, b"not json"], 0]],  # bad configuration
        "not a list",
    ],
)
def test_out_of_range_or_inconsistent_messages_are_refused(wire: object) -> None:
    with pytest.raises(CodecError):
        decode_messages(msgspec.msgpack.encode(wire))


def test_garbage_bytes_are_refused_never_raise_anything_else() -> None:
    import random

    rng = random.Random(1)
    for _ in range(2000):
        data = rng.randbytes(rng.randrange(0, 64))
        with contextlib.suppress(CodecError):
            decode_messages(data)


def test_frame_payloads_are_bounded() -> None:
    relay = Relay(1, 1000, [b"x"] * 4097)
    with pytest.raises(FrameError):
        decode(FrameType.RELAY, msgspec.msgpack.encode(relay), Relay)


def test_the_preamble_cannot_start_an_http_request_or_tls() -> None:
    # The listener routes on the first byte; HTTP methods are tokens, TLS
    # records start with 0x16, the HTTP/2 preface with "P".
    assert PREAMBLE[0] == 0


async def _read_all(data: bytes, max_frame: int = 1024) -> list[tuple[FrameType, bytes]]:
    send, recv = trio.testing.memory_stream_one_way_pair()
    await send.send_all(data)
    await send.aclose()
    reader = FrameReader(recv, max_frame)
    out = []
    while (got := await reader.next()) is not None:
        out.append(got)
    return out


async def test_the_reader_splits_a_stream_into_frames() -> None:
    data = frame(FrameType.PING) + encode(FrameType.RELAY, Relay(7, 10, [b"a", b"b"]))
    frames = await _read_all(data)
    assert [t for t, _ in frames] == [FrameType.PING, FrameType.RELAY]
    assert decode(FrameType.RELAY, frames[1][1], Relay).datas == [b"a", b"b"]


@pytest.mark.parametrize(
    "data",
    [
        HEADER.pack(2000, FrameType.RAFT),  # over the limit: refused before any payload
        HEADER.pack(0, FrameType.RAFT),  # a frame needs at least its type byte
        HEADER.pack(5, 250) + b"abcd",  # unknown frame type
        HEADER.pack(50, FrameType.RAFT) + b"short",  # the stream ends inside a frame
        b"\x00\x00",  # the stream ends inside a header
    ],
)
async def test_bad_frames_are_frame_errors(data: bytes) -> None:
    with pytest.raises(FrameError):
        await _read_all(data)
