"""A fake node behind a transport, and raw access to a transport's accept side."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from trioraft.core import Message
from trioraft.transport import RelayAnswer, RelayCode, SnapshotOffer, StreamTransport
from trioraft.transport._frames import PREAMBLE
from trioraft.transport._handshake import PeerAuth, dial
from trioraft.transport._reader import FrameReader


class FakeNode:
    """An `Inbound` that records what arrives and answers relays with `relay_answer`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.delivered: list[tuple[str, Message]] = []
        self.arrived = trio.Event()
        self.relays: list[list[bytes]] = []
        self.relay_gate: trio.Event | None = None  # if set, relays wait for it
        self.chunks: list[tuple[int, int, bool]] = []  # (offset, len, last)
        self.chunk_gate: trio.Event | None = None
        self.refuse_snapshot: str | None = None

    def deliver(self, src: str, msgs: list[Message]) -> None:
        self.delivered.extend((src, m) for m in msgs)
        self.arrived.set()
        self.arrived = trio.Event()

    async def relayed_writes(self, src: str, datas: list[bytes], timeout: float) -> RelayAnswer:
        self.relays.append(datas)
        if self.relay_gate is not None:
            await self.relay_gate.wait()
        return RelayAnswer(tuple([int(RelayCode.OK)] * len(datas)), b"R" + bytes([len(datas)]))

    async def snapshot_chunk(
        self, src: str, offer: SnapshotOffer, offset: int, data: bytes, last: bool
    ) -> None:
        if self.chunk_gate is not None:
            await self.chunk_gate.wait()
        if self.refuse_snapshot:
            raise ValueError(self.refuse_snapshot)
        self.chunks.append((offset, len(data), last))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self.arrived.wait()


async def raw_dial(
    target: StreamTransport,
    *,
    local: str,
    token: str | None = None,
    cluster: str = "legacy",
) -> tuple[trio.abc.Stream, FrameReader]:
    """Open a stream into `target` as member `local`, handshake done; the raw stream."""
    near, far = trio.testing.memory_stream_pair()
    assert target.accept(far)
    reader = FrameReader(near, 16 << 20)
    await dial(near, reader, auth=PeerAuth(token), cluster=cluster, local=local, peer=target.id)
    return near, reader


async def raw_connect(target: StreamTransport, data: bytes = PREAMBLE) -> trio.abc.Stream:
    """A connection into `target` that sends `data` and whatever the test wants after."""
    near, far = trio.testing.memory_stream_pair()
    assert target.accept(far)
    if data:
        await near.send_all(data)
    return near


async def read_until_closed(stream: trio.abc.Stream, timeout: float = 30) -> bytes:
    out = b""
    with trio.fail_after(timeout):
        while True:
            try:
                chunk = await stream.receive_some(1 << 16)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return out
            if not chunk:
                return out
            out += chunk


Runner = Callable[..., Awaitable[Any]]
