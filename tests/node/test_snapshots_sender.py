"""The snapshot sender: a reader held for the whole transfer, one transfer per follower,
and failures reported after a growing backoff (a refusing follower is not hammered)."""

from __future__ import annotations

import logging
import zlib
from typing import Any

import pytest
import trio

from trioraft.core import Configuration, Entry, EntryKind, InstallSnapshot, SnapshotMeta
from trioraft.metrics import NodeMetrics
from trioraft.node._offload import Offload
from trioraft.node._snapshot_send import BACKOFF_MIN_S, SnapshotSender
from trioraft.storage import MemoryStorage
from trioraft.transport import LinkError, SnapshotOffer

CONFIG = Configuration.of_voters(["a", "b"])
META = SnapshotMeta(5, 1, CONFIG)
DATA = b"snapshot " * 100


class _NoNode:
    pass


class FakeTransport:
    def __init__(self) -> None:
        self.offers: list[SnapshotOffer] = []
        self.received: list[bytes] = []
        self.fail: str | None = None
        self.between: Any = None  # called after the first chunk (a newer snapshot, say)

    async def send_snapshot(self, offer: SnapshotOffer, read_chunk: Any) -> None:
        self.offers.append(offer)
        if self.fail is not None:
            raise LinkError(self.fail)
        data = await read_chunk(0, 100)
        if self.between is not None:
            self.between()
        data += await read_chunk(100, offer.size - 100)
        self.received.append(data)


class Rig:
    def __init__(self) -> None:
        self.storage = MemoryStorage()
        self.storage.save(None, [Entry(i, 1, EntryKind.NORMAL, b"x") for i in range(1, 10)])
        self.storage.save_snapshot(META, DATA)
        self.transport = FakeTransport()
        self.reports: list[tuple[str, bool, float]] = []
        self._node = _NoNode()

        async def report(peer: str, ok: bool) -> None:
            self.reports.append((peer, ok, trio.current_time()))

        metrics = NodeMetrics(self._node)  # type: ignore[arg-type]
        transport: Any = self.transport
        self.sender = SnapshotSender("a", self.storage, Offload(inline=True), transport, report,
                                     metrics)  # fmt: skip


def msg(meta: SnapshotMeta = META) -> InstallSnapshot:
    return InstallSnapshot("a", "b", 2, meta, meta.index)


async def test_a_transfer_outlives_newer_snapshots_and_carries_size_and_checksum(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()

    def newer() -> None:  # two newer snapshots mid-transfer (issue 11 #2)
        rig.storage.save_snapshot(SnapshotMeta(7, 1, CONFIG), b"seven")
        rig.storage.save_snapshot(SnapshotMeta(9, 1, CONFIG), b"nine")

    rig.transport.between = newer
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.sender.run)
        rig.sender.start(msg())
        rig.sender.start(msg())  # the same again while it runs: ignored
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    [offer] = rig.transport.offers
    assert (offer.size, offer.checksum) == (len(DATA), zlib.crc32(DATA))
    assert rig.transport.received == [DATA]
    assert [(p, ok) for p, ok, _ in rig.reports] == [("b", True)]


async def test_failures_are_reported_after_a_growing_backoff_and_logged_sparsely(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trioraft")
    rig = Rig()
    rig.transport.fail = "b refused the snapshot: a received snapshot awaits installation"
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.sender.run)
        start = trio.current_time()
        for _ in range(5):  # the core asks again after each failure report
            n = len(rig.reports)
            rig.sender.start(msg())
            while len(rig.reports) == n:  # noqa: ASYNC110 -- the report is the event
                await trio.sleep(0.001)
        rig.transport.fail = None
        rig.sender.start(msg())
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    waits = [round(t - prev, 3) for (_, _, t), prev in zip(
        rig.reports, [start] + [t for _, _, t in rig.reports], strict=False)][:5]
    assert waits == pytest.approx([BACKOFF_MIN_S * 2**k for k in range(5)], abs=0.005)
    assert [ok for _, ok, _ in rig.reports] == [False] * 5 + [True]
    logged = [r.fields["attempt"] for r in caplog.records  # type: ignore[attr-defined]
              if getattr(r, "event", None) == "snapshot_send_failed"]
    assert logged == [1, 2, 4]


async def test_a_superseded_snapshot_is_a_failure_the_core_retries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rig = Rig()
    rig.storage.save_snapshot(SnapshotMeta(7, 1, CONFIG), b"seven")  # before the transfer
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.sender.run)
        rig.sender.start(msg())
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert rig.transport.offers == []  # nothing sent of a snapshot storage no longer has
    assert [(p, ok) for p, ok, _ in rig.reports] == [("b", False)]
