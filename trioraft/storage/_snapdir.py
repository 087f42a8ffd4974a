"""The `snapshots/` directory of a data dir: snapshot files, staging, clean-up.

Which file is the current snapshot is raft.db's to say (SqliteStorage); this
module only makes files durable, finds and checks them, and removes the
ones nobody needs. Removal is never fatal: a file that cannot be removed is
logged and left, so leftovers never stop a start.
"""

from __future__ import annotations

import logging
import os
import secrets
import zlib
from dataclasses import dataclass
from pathlib import Path

from trioraft.core import SnapshotMeta
from trioraft.storage._files import (
    SnapFile,
    StagingFile,
    corrupt,
    encode_header,
    fsync_dir,
    open_snapshot,
    parse_snapshot_name,
    snapshot_name,
    verify_snapshot,
    write_durably,
)
from trioraft.storage._protocol import SnapshotTransfer

__all__ = ["PendingSnapshot", "SnapshotDir"]

log = logging.getLogger("trioraft.storage")


@dataclass(frozen=True, slots=True)
class PendingSnapshot:
    """A local snapshot written durably under a temporary name, not yet in place."""

    tmp: Path
    snap: SnapFile


class SnapshotDir:
    def __init__(self, path: Path, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        path.mkdir(parents=True, exist_ok=True)

    def has_snapshot_files(self) -> bool:
        return any(parse_snapshot_name(p.name) for p in self.path.iterdir())

    def _existing(self, index: int, term: int) -> Path:
        path = self.path / snapshot_name(SnapshotMeta(index, term))
        if not path.exists():
            raise corrupt(path, "the snapshot recorded in raft.db is missing")
        return path

    def _matching(self, snap: SnapFile, index: int, term: int) -> SnapFile:
        if (snap.meta.index, snap.meta.term) != (index, term):
            raise corrupt(snap.path, f"header says index {snap.meta.index} term {snap.meta.term}")
        return snap

    def header(self, index: int, term: int) -> SnapFile:
        """The snapshot file (index, term), its header checked."""
        f, snap = open_snapshot(self._existing(index, term))
        f.close()
        return self._matching(snap, index, term)

    def verify(self, index: int, term: int) -> SnapFile:
        """The snapshot file (index, term), header and data checked (start-up)."""
        return self._matching(verify_snapshot(self._existing(index, term)), index, term)

    def read_data(self, snap: SnapFile) -> bytes:
        with snap.path.open("rb") as f:
            f.seek(snap.data_offset)
            data = f.read(snap.data_len)
        if len(data) != snap.data_len or zlib.crc32(data) != snap.data_crc:
            raise corrupt(snap.path, "snapshot data checksum mismatch")
        return data

    def write(self, meta: SnapshotMeta, parts: list[bytes]) -> SnapFile:
        """Make a local snapshot (its data in pieces) durable under its final name
        (not yet current)."""
        pending = self.write_pending(meta, parts)
        return self.commit_pending(pending)

    def write_pending(self, meta: SnapshotMeta, parts: list[bytes]) -> PendingSnapshot:
        """Write a local snapshot durably under a name of its own (`*.<token>.tmp`).

        Touches nothing shared: it may run in its own thread while the log
        is being written (the file is the long part of saving a snapshot).
        `commit_pending` puts it in place, `discard_pending` drops it; a
        crash leaves a `.tmp` that start-up removes.
        """
        crc = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
        size = sum(map(len, parts))
        header = encode_header(meta, size, crc)
        final = self.path / snapshot_name(meta)
        tmp = self.path / f"{final.name}.{secrets.token_hex(6)}.tmp"
        try:
            write_durably(tmp, [header, *parts], self.fsync)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return PendingSnapshot(tmp, SnapFile(final, meta, len(header), size, crc))

    def commit_pending(self, pending: PendingSnapshot) -> SnapFile:
        """Rename a written snapshot into its final name, durably."""
        os.replace(pending.tmp, pending.snap.path)
        if self.fsync:
            fsync_dir(self.path)
        return pending.snap

    def discard_pending(self, pending: PendingSnapshot) -> None:
        pending.tmp.unlink(missing_ok=True)

    def new_staging(self, meta: SnapshotMeta) -> StagingFile:
        return StagingFile(self.path, meta, self.fsync)

    def adopt(self, staged: StagingFile, transfer: SnapshotTransfer) -> SnapFile:
        """Rename a finished (sealed, fsync'd) staging file into place, durably."""
        staged.close()
        final = self.path / snapshot_name(transfer.meta)
        os.replace(staged.path, final)
        if self.fsync:
            fsync_dir(self.path)
        return SnapFile(final, transfer.meta, staged.header_len, transfer.size, transfer.checksum)

    def _unlink(self, path: Path, why: str) -> None:
        try:
            path.unlink(missing_ok=True)
            log.info("removed %s %s", why, path)
        except OSError as exc:
            log.warning("cannot remove %s %s: %s", why, path, exc)

    def remove_except(self, keep: Path | None) -> None:
        """Remove every snapshot file but `keep` (open readers keep theirs)."""
        for p in self.path.iterdir():
            if parse_snapshot_name(p.name) and p != keep:
                self._unlink(p, "superseded snapshot")

    def remove_leftovers(self, keep: Path | None) -> None:
        """Interrupted writes, staging and unrecorded snapshot files (start-up)."""
        for p in self.path.iterdir():
            if p.name.endswith((".tmp", ".part")):
                self._unlink(p, "interrupted write")
        self.remove_except(keep)
