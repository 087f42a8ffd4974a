"""Incoming snapshot transfers: the staging rules both implementations share.

A transfer is named by a `SnapshotTransfer` (snapshot meta, total size, CRC32
of the whole data). The rules (issue 11 #3, issue 10):

- Each transfer has its own staging (a file named with a fresh sequence
  number, or a buffer): two transfers never share one.
- At most one transfer is *in progress* (receiving chunks). Chunks come in
  order; offset 0 (re)starts a transfer and abandons whichever other one was
  in progress. Nothing past the declared size (nor past the configured
  maximum) is ever staged, so staging is bounded.
- `finish` checks the staged bytes, read back from where they are kept,
  against the declared size and checksum -- a truncated prefix whose own
  checksum matches what the sender had sent so far is not a finished
  transfer -- and then the transfer is *finished*: it stays exactly as it is
  until installed or discarded. Nothing can write to a finished transfer
  (its chunks are refused), so what the caller checked (decodes) is what
  gets installed.
- At most MAX_FINISHED transfers wait finished; while that many do, no new
  one starts. Staging thus never exceeds (1 + MAX_FINISHED) * max_bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from trioraft.core import SnapshotMeta
from trioraft.storage._checks import check_index, check_transfer
from trioraft.storage._protocol import SnapshotTransfer

__all__ = ["MAX_FINISHED", "Staged", "Transfers"]

MAX_FINISHED = 2


class Staged(Protocol):
    """Where the data of one transfer is kept (a file or a buffer)."""

    def write(self, data: bytes) -> None: ...

    def seal(self, size: int, checksum: int) -> bytes:
        """Make the staged bytes durable (final header, fsync) and read them back."""
        ...

    def discard(self) -> None: ...


S = TypeVar("S", bound=Staged)


@dataclass(slots=True)
class _InProgress(Generic[S]):
    declared: SnapshotTransfer
    staged: S
    size: int = 0  # bytes staged so far: the next expected offset


def _bytes_like(data: object) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError("a snapshot chunk must be bytes")
    return bytes(data)


class Transfers(Generic[S]):
    """The book of staged transfers; `open_staged` makes the staging of a new one."""

    def __init__(
        self,
        max_bytes: int,
        open_staged: Callable[[SnapshotMeta], S],
    ) -> None:
        self.max_bytes = max_bytes
        self._open = open_staged
        self.in_progress: _InProgress[S] | None = None
        self.finished: dict[SnapshotTransfer, S] = {}

    # ------------------------------------------------------------ chunks
    def chunk(self, declared: SnapshotTransfer, offset: int, data: bytes) -> int:
        check_transfer(declared, self.max_bytes)
        check_index("offset", offset)
        data = _bytes_like(data)
        if declared in self.finished:
            raise ValueError(
                f"snapshot transfer {_name(declared)} was already received and awaits "
                "installation; its chunks are not taken again"
            )
        cur = self.in_progress
        if offset == 0:
            if len(self.finished) >= MAX_FINISHED:
                raise ValueError(
                    f"{len(self.finished)} received snapshots await installation; "
                    "no new transfer starts until they are installed or discarded"
                )
            self.abandon()
            cur = self.in_progress = _InProgress(declared, self._open(declared.meta))
        elif cur is None or cur.declared != declared:
            raise ValueError(f"chunk at offset {offset} for a transfer that was not started")
        elif offset != cur.size:
            raise ValueError(f"out-of-order snapshot chunk: offset {offset}, expected {cur.size}")
        if cur.size + len(data) > declared.size:
            raise ValueError(
                f"snapshot chunk at offset {offset} ({len(data)} bytes) runs past its "
                f"declared size ({declared.size} bytes)"
            )
        try:
            cur.staged.write(data)
        except BaseException:
            self.abandon()  # unknown state: start over (the error itself is fatal)
            raise
        cur.size += len(data)
        return cur.size

    # ------------------------------------------------------------ finishing
    def finish(self, transfer: SnapshotTransfer) -> bytes:
        check_transfer(transfer, self.max_bytes)
        if transfer in self.finished:
            return self._reverify(transfer)
        cur = self.in_progress
        if cur is None or cur.declared != transfer:
            raise ValueError(f"no snapshot transfer {_name(transfer)} is in progress")
        if cur.size != transfer.size:
            raise ValueError(
                f"snapshot transfer {_name(transfer)} is incomplete: {cur.size} of "
                f"{transfer.size} bytes staged"
            )
        return self._seal(cur, transfer)

    def _seal(self, cur: _InProgress[S], transfer: SnapshotTransfer) -> bytes:
        self.in_progress = None
        try:
            data = self._verify(transfer, cur.staged)
        except BaseException:
            cur.staged.discard()
            raise
        self.finished[transfer] = cur.staged
        return data

    def _reverify(self, transfer: SnapshotTransfer) -> bytes:
        staged = self.finished[transfer]
        try:
            return self._verify(transfer, staged)
        except BaseException:
            del self.finished[transfer]
            staged.discard()
            raise

    @staticmethod
    def _verify(transfer: SnapshotTransfer, staged: S) -> bytes:
        # Read back from where it is kept: this checks what install will use,
        # not what we meant to write.
        data = staged.seal(transfer.size, transfer.checksum)
        if len(data) != transfer.size or zlib.crc32(data) != transfer.checksum:
            raise ValueError(
                f"snapshot transfer {_name(transfer)} fails its check: {len(data)} bytes with "
                f"CRC32 {zlib.crc32(data):08x}, expected {transfer.size} with "
                f"{transfer.checksum:08x}; it was discarded, send it again"
            )
        return data

    # ------------------------------------------------------------ bookkeeping
    def finished_staging(self, transfer: SnapshotTransfer) -> S:
        staged = self.finished.get(transfer)
        if staged is None:
            raise ValueError(f"snapshot transfer {_name(transfer)} is not finished")
        return staged

    def forget(self, transfer: SnapshotTransfer) -> None:
        """Installed: its staging moved into place, so there is nothing to discard."""
        del self.finished[transfer]

    def prune(self, index: int) -> None:
        """Discard finished transfers older than the newest snapshot, now at `index`.

        Install refuses them, so they could only ever be discarded.
        """
        for t in [t for t in self.finished if t.meta.index < index]:
            self.finished.pop(t).discard()

    def discard(self, transfer: SnapshotTransfer) -> None:
        staged = self.finished.pop(transfer, None)
        if staged is not None:
            staged.discard()
        cur = self.in_progress
        if cur is not None and cur.declared == transfer:
            self.abandon()

    def abandon(self) -> None:
        """Drop the transfer in progress, if any."""
        cur, self.in_progress = self.in_progress, None
        if cur is not None:
            cur.staged.discard()

    def clear(self) -> None:
        self.abandon()
        for staged in self.finished.values():
            staged.discard()
        self.finished.clear()


def _name(t: SnapshotTransfer) -> str:
    return f"(index {t.meta.index}, term {t.meta.term}, {t.size} bytes, crc {t.checksum:08x})"
