"""Only the writer task writes to a peer stream.

Regression (found by the chaos run, seed 5 of the issue-11 campaign): a lossy link
reset a stream in the middle of a frame; the reading task answered the protocol
error with an ERROR frame, and while that send waited on a full socket, the
writer task woke up for queued traffic and called send_all too. Trio refused the
second writer with BusyResourceError, nothing caught it, and the node's process
exited with status 1, a crash caused by what a peer sent.
"""

from __future__ import annotations

import trio
import trio.testing

from trioraft.transport._conn import Connection, StreamConfig
from trioraft.transport._frames import HEADER, FrameType, frame
from trioraft.transport._handshake import PeerIdentity
from trioraft.transport._reader import FrameReader


class _Inbound:
    def deliver(self, src: str, msgs: list[object]) -> None:
        pass

    async def relayed_writes(self, src: str, datas: list[bytes], timeout: float) -> object:
        raise AssertionError("not used")

    async def snapshot_chunk(self, *args: object) -> None:
        raise AssertionError("not used")


async def test_a_protocol_error_while_traffic_is_queued_closes_the_stream_cleanly() -> None:
    ours, theirs = trio.testing.lockstep_stream_pair()  # a send waits for the reader
    cfg = StreamConfig()
    conn = Connection(ours, FrameReader(ours, cfg.max_frame), PeerIdentity("p", "c", 1, "none"),
                      "me", _Inbound(), cfg, dialed=True)  # type: ignore[arg-type]  # fmt: skip
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.run)
            # A header announcing a frame over the limit: a protocol error. The peer
            # then stops reading, so the ERROR frame in answer cannot go out ...
            await theirs.send_all(HEADER.pack(cfg.max_frame + 10, FrameType.RAFT))
            await trio.sleep(0.1)
            # ... while traffic queued for the peer wakes the writer up.
            conn._push(frame(FrameType.PING))
            await conn.closed.wait()  # before the fix: BusyResourceError out of conn.run
    assert conn.close_reason is not None
    assert conn.close_reason.startswith("protocol error")
