"""The snapshot receiver, on real storage: a transfer is staged apart, checked whole and
decoded before the core ever sees it, and a finished one is never written again."""

from __future__ import annotations

import zlib

import pytest

from trioraft.core import Configuration, InstallSnapshot, SnapshotMeta
from trioraft.kv import KVStateMachine, Put, encode_command
from trioraft.metrics import NodeMetrics
from trioraft.node._offload import Offload
from trioraft.node._snapshot_recv import OfferedSnapshot, SnapshotReceiver
from trioraft.storage import MemoryStorage, SnapshotTransfer
from trioraft.transport import SnapshotOffer

CONFIG = Configuration.of_voters(["a", "b"])
META = SnapshotMeta(10, 2, CONFIG)


def state(n: int = 10) -> bytes:
    kv = KVStateMachine()
    for i in range(1, n + 1):
        kv.apply(i, encode_command(Put(f"k{i}", "v" * 100)))
    return kv.snapshot()


DATA = state()


class _NoNode:
    """Stands for the node a registry belongs to (only a weak reference is kept)."""


class Rig:
    def __init__(self, term: int = 2, limit: int = 1 << 20) -> None:
        self.storage = MemoryStorage(max_snapshot_bytes=limit)
        self.offered: list[OfferedSnapshot] = []
        self._node = _NoNode()
        self.metrics = NodeMetrics(self._node)  # type: ignore[arg-type]

        async def offer(o: OfferedSnapshot) -> None:
            self.offered.append(o)

        self.rx = SnapshotReceiver(self.storage, Offload(inline=True), lambda: term, offer,
                                   self.metrics)  # fmt: skip

    def transfers(self, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "trioraft_snapshot_transfers_total",
            {"direction": "received", "peer": "a", "result": result},
        )
        return value or 0.0


def offer(data: bytes = DATA, meta: SnapshotMeta = META, crc: int | None = None,
          term: int = 3) -> SnapshotOffer:  # fmt: skip
    checksum = zlib.crc32(data) if crc is None else crc
    return SnapshotOffer(InstallSnapshot("a", "b", term, meta, 10), len(data), checksum)


async def send(rig: Rig, data: bytes = DATA, chunk: int = 300,
               off: SnapshotOffer | None = None, upto: int | None = None) -> None:  # fmt: skip
    off = off or offer(data)
    for start in range(0, max(len(data), 1), chunk):
        if upto is not None and start >= upto:
            return
        piece = data[start : start + chunk]
        await rig.rx.chunk("a", off, start, piece, start + len(piece) >= len(data))


def transfer(off: SnapshotOffer) -> SnapshotTransfer:
    return SnapshotTransfer(off.msg.meta, off.size, off.checksum)


async def test_a_whole_intact_transfer_is_offered_decoded() -> None:
    rig = Rig()
    await send(rig)
    [o] = rig.offered
    assert o.msg == offer().msg
    assert o.transfer == transfer(offer())
    assert o.kv.snapshot() == DATA  # restored before the core sees it
    # Staged and finished, not installed: the driver installs it if the core takes it.
    rig.storage.install_transfer(o.transfer, keep_entries_after=False)
    assert rig.storage.load_snapshot() == (META, DATA)
    assert rig.transfers("ok") == 1


async def test_a_corrupted_transfer_is_refused_and_discarded() -> None:
    rig = Rig()
    bad = offer(crc=zlib.crc32(DATA) ^ 1)
    with pytest.raises(ValueError, match="fails its check"):
        await send(rig, off=bad)
    assert rig.offered == []
    assert rig.transfers("failed") == 1
    with pytest.raises(ValueError, match="not finished"):
        rig.storage.install_transfer(transfer(bad), keep_entries_after=False)
    await send(rig)  # the good one goes through afterwards
    assert len(rig.offered) == 1


async def test_data_that_does_not_decode_never_reaches_the_core() -> None:
    rig = Rig()
    garbage = b"\x93\x00garbage" * 50  # its checksum matches: only decoding can tell
    with pytest.raises(ValueError, match="does not decode"):
        await send(rig, garbage)
    assert rig.offered == []
    with pytest.raises(ValueError, match="not finished"):  # discarded, nothing to install
        rig.storage.install_transfer(transfer(offer(garbage)), keep_entries_after=False)


@pytest.mark.parametrize(
    ("offset", "data", "last", "match"),
    [
        (300, DATA[300:600], False, "not started"),  # no offset 0 first
        (0, DATA + b"x", True, "ends at"),  # beyond the announced size
        (0, DATA[:300], True, "ends at 300"),  # "last" before the end
    ],
)
async def test_chunks_out_of_order_or_size_are_refused(
    offset: int, data: bytes, last: bool, match: str
) -> None:
    rig = Rig()
    with pytest.raises(ValueError, match=match):
        await rig.rx.chunk("a", offer(), offset, data, last)
    assert rig.offered == []


async def test_a_transfer_from_a_stale_term_or_over_the_limit_is_refused() -> None:
    rig = Rig(term=5)
    with pytest.raises(ValueError, match="stale term"):
        await send(rig)
    rig = Rig(limit=500)
    with pytest.raises(ValueError, match="larger than the maximum"):
        await send(rig)


async def test_a_finished_transfer_waiting_for_the_driver_is_never_written_again() -> None:
    """Issue 11 #3b: a retry of the very same transfer from offset 0 while the finished
    one waits is refused (no prefix of it can replace what was checked); another
    transfer may come meanwhile, in its own staging (no timed hold)."""
    rig = Rig()
    await send(rig)
    first = rig.offered[0]
    with pytest.raises(ValueError, match="awaits installation"):
        await send(rig, upto=300)  # the retry's first chunk
    newer_data = state(12)
    newer = offer(newer_data, SnapshotMeta(12, 2, CONFIG))
    await send(rig, newer_data, off=newer)  # its own staging
    assert [o.transfer for o in rig.offered] == [first.transfer, transfer(newer)]
    # The core took the first (say): what is installed is exactly what was checked.
    rig.storage.install_transfer(first.transfer, keep_entries_after=False)
    assert rig.storage.load_snapshot() == (META, DATA)
    rig.storage.install_transfer(transfer(newer), keep_entries_after=False)
    assert rig.storage.load_snapshot() == (newer.msg.meta, newer_data)
