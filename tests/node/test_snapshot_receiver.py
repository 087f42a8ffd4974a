"""The snapshot receiver checks a transfer whole before the core ever sees it."""

from __future__ import annotations

import zlib

import pytest
import trio

from trioraft.core import Configuration, InstallSnapshot, Message, SnapshotMeta
from trioraft.node._snapshot_recv import SnapshotReceiver
from trioraft.transport import SnapshotOffer

META = SnapshotMeta(10, 2, Configuration.of_voters(["a", "b"]))
DATA = bytes(range(256)) * 4  # 1 KiB


class Sink:
    def __init__(self) -> None:
        self.staged = bytearray()
        self.installed: list[SnapshotMeta] = []

    async def stage(self, meta: SnapshotMeta, offset: int, data: bytes) -> None:
        if offset == 0:
            self.staged.clear()
        self.staged += data

    async def install(self, meta: SnapshotMeta, keep_entries_after: bool) -> bytes:
        self.installed.append(meta)
        return bytes(self.staged)


def make(term: int = 2, limit: int = 1 << 20) -> tuple[SnapshotReceiver, Sink, list[Message]]:
    sink = Sink()
    delivered: list[Message] = []

    async def deliver(msgs: list[Message]) -> None:
        delivered.extend(msgs)

    return SnapshotReceiver(sink, lambda: term, deliver, limit), sink, delivered


def offer(size: int = len(DATA), meta: SnapshotMeta = META, term: int = 3) -> SnapshotOffer:
    return SnapshotOffer(InstallSnapshot("a", "b", term, meta, 10), size)


async def send(rx: SnapshotReceiver, data: bytes = DATA, chunk: int = 300,
               crc: int | None = None, off: SnapshotOffer | None = None) -> None:  # fmt: skip
    off = off or offer(len(data))
    for start in range(0, max(len(data), 1), chunk):
        piece = data[start : start + chunk]
        last = start + len(piece) >= len(data)
        await rx.chunk("a", off, start, piece, last,
                       (zlib.crc32(data) if crc is None else crc) if last else 0)  # fmt: skip


async def test_a_whole_intact_transfer_reaches_the_core() -> None:
    rx, sink, delivered = make()
    await send(rx)
    assert delivered == [offer().msg]
    assert bytes(sink.staged) == DATA
    assert await rx.install(META, False) == DATA


async def test_a_corrupted_transfer_never_reaches_the_core() -> None:
    rx, _, delivered = make()
    with pytest.raises(ValueError, match="checksum"):
        await send(rx, crc=zlib.crc32(DATA) ^ 1)
    assert delivered == []


@pytest.mark.parametrize(
    ("offset", "data", "last", "match"),
    [
        (300, b"x" * 300, False, "not in progress"),  # no offset 0 first
        (0, b"x" * 2000, True, "ends at 2000"),  # beyond the announced size
        (0, b"x" * 300, True, "ends at 300"),  # "last" before the end
    ],
)
async def test_chunks_out_of_order_or_size_are_refused(
    offset: int, data: bytes, last: bool, match: str
) -> None:
    rx, _, delivered = make()
    with pytest.raises(ValueError, match=match):
        await rx.chunk("a", offer(), offset, data, last, 0)
    assert delivered == []


async def test_a_transfer_from_a_stale_term_or_over_the_limit_is_refused() -> None:
    rx, _, _ = make(term=5)
    with pytest.raises(ValueError, match="stale term"):
        await send(rx)
    rx, _, _ = make(limit=500)
    with pytest.raises(ValueError, match="over this node's limit"):
        await send(rx)


async def test_a_new_transfer_waits_while_a_received_one_awaits_installation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rx, _, delivered = make()
    await send(rx)
    newer = SnapshotMeta(20, 3, META.config)
    with pytest.raises(ValueError, match="waiting to be installed"):
        await send(rx, off=offer(meta=newer))
    await rx.install(META, False)
    await send(rx, off=offer(meta=newer))  # installed: the next one may come
    assert [m.meta.index for m in delivered] == [10, 20]  # type: ignore[union-attr]
    await trio.sleep(10)  # and one the core never installs blocks nothing for long
    await send(rx, off=offer(meta=SnapshotMeta(30, 3, META.config)))
    assert len(delivered) == 3
