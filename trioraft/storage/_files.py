"""Files in the data directory: the snapshot file format, atomic writes, the lock.

Snapshot file layout (all integers big-endian)::

    magic       8 bytes   b"TRRSNAP\\x00"
    version     u16       2 (version 1 files are still read)
    index       u64       last included index
    term        u64       term of that entry
    data_len    u64       length of the data that follows the header
    data_crc    u32       CRC32 of the data
    config_len  u32       length of the configuration JSON
    config      JSON      `Configuration.encode()` (version 1: a sorted list of voter ids)
    header_crc  u32       CRC32 of everything above
    data        data_len bytes (the state machine's snapshot, opaque here)

A file is made durable by writing it under a temporary name, fsyncing it,
renaming it into place and fsyncing the directory, so a crash leaves either
the old set of files or the new one, plus perhaps a temp file that the next
start removes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from trioraft.core import Configuration, SnapshotMeta
from trioraft.storage._protocol import StorageCorrupt

__all__ = [
    "ADVICE",
    "DataDirLock",
    "DataDirLocked",
    "SnapFile",
    "corrupt",
    "encode_header",
    "fsync_dir",
    "incoming_name",
    "open_snapshot",
    "parse_snapshot_name",
    "snapshot_name",
    "verify_snapshot",
    "write_file_atomically",
]

MAGIC = b"TRRSNAP\x00"
VERSION = 2
_FIXED = struct.Struct(">8sHQQQII")
_CRC = struct.Struct(">I")
_MAX_VOTERS_JSON = 1 << 20  # a sanity bound: a larger length means a damaged header
_COPY_CHUNK = 1 << 20

ADVICE = (
    "Restore this node's data dir from a backup, or, if the rest of the cluster "
    "still has a quorum, remove the node's data dir so it rejoins empty and "
    "catches up with a snapshot from the leader."
)

_SNAP_RE = re.compile(r"^snap-(\d+)-(\d+)\.bin$")


def corrupt(path: Path, what: str) -> StorageCorrupt:
    """A StorageCorrupt naming `path`, saying what is wrong and what to do."""
    return StorageCorrupt(f"{path}: {what}. {ADVICE}")


def snapshot_name(meta: SnapshotMeta) -> str:
    return f"snap-{meta.term}-{meta.index}.bin"


def incoming_name(meta: SnapshotMeta) -> str:
    return f"incoming-{meta.term}-{meta.index}.part"


def parse_snapshot_name(name: str) -> tuple[int, int] | None:
    """(term, index) for a snapshot file name, None for any other name."""
    m = _SNAP_RE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def encode_header(meta: SnapshotMeta, data_len: int, data_crc: int) -> bytes:
    voters = meta.config.encode()
    fixed = _FIXED.pack(MAGIC, VERSION, meta.index, meta.term, data_len, data_crc, len(voters))
    head = fixed + voters
    return head + _CRC.pack(zlib.crc32(head))


@dataclass(frozen=True, slots=True)
class SnapFile:
    """A snapshot file whose header has been checked."""

    path: Path
    meta: SnapshotMeta
    data_offset: int  # where the data starts in the file
    data_len: int
    data_crc: int


def _read_exact(f: BinaryIO, n: int, path: Path, what: str) -> bytes:
    b = f.read(n)
    if len(b) != n:
        raise corrupt(path, f"snapshot file is truncated ({what})")
    return b


def open_snapshot(path: Path) -> tuple[BinaryIO, SnapFile]:
    """Open `path` and check its header; the file is positioned at the data.

    Raises StorageCorrupt if the header is damaged or the size is wrong.
    """
    f = path.open("rb")
    try:
        fixed = _read_exact(f, _FIXED.size, path, "header")
        magic, version, index, term, data_len, data_crc, voters_len = _FIXED.unpack(fixed)
        if magic != MAGIC:
            raise corrupt(path, "not a trioraft snapshot file (bad magic)")
        if version not in (1, VERSION):
            raise corrupt(path, f"unsupported snapshot format version {version}")
        if voters_len > _MAX_VOTERS_JSON:
            raise corrupt(path, "snapshot header is damaged (voters length)")
        voters_raw = _read_exact(f, voters_len, path, "header")
        (header_crc,) = _CRC.unpack(_read_exact(f, _CRC.size, path, "header"))
        if zlib.crc32(fixed + voters_raw) != header_crc:
            raise corrupt(path, "snapshot header checksum mismatch")
        try:
            if version == 1:
                voters = json.loads(voters_raw)
                if not isinstance(voters, list) or not all(isinstance(v, str) for v in voters):
                    raise ValueError("voters")
                config = Configuration.of_voters(voters)
            else:
                config = Configuration.decode(voters_raw)
        except ValueError:
            raise corrupt(path, "snapshot header is damaged (configuration)") from None
        data_offset = _FIXED.size + voters_len + _CRC.size
        size = os.fstat(f.fileno()).st_size
        if size != data_offset + data_len:
            raise corrupt(
                path,
                f"snapshot file is {size} bytes, its header says {data_offset + data_len}",
            )
        meta = SnapshotMeta(index=index, term=term, config=config)
        return f, SnapFile(path, meta, data_offset, data_len, data_crc)
    except BaseException:
        f.close()
        raise


def verify_snapshot(path: Path) -> SnapFile:
    """Check header and data checksum of `path`, reading it in bounded chunks."""
    f, snap = open_snapshot(path)
    with f:
        crc = 0
        while chunk := f.read(_COPY_CHUNK):
            crc = zlib.crc32(chunk, crc)
    if crc != snap.data_crc:
        raise corrupt(path, "snapshot data checksum mismatch")
    return snap


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(final: Path, parts: list[bytes], fsync: bool) -> None:
    """Write `parts` to `final` via temp file + fsync + rename + directory fsync."""
    tmp = final.with_name(final.name + ".tmp")
    with tmp.open("wb") as f:
        for part in parts:
            f.write(part)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, final)
    if fsync:
        fsync_dir(final.parent)


class DataDirLocked(Exception):
    """Another process (or another open storage) is using this data directory."""


class DataDirLock:
    """An exclusive `flock` on `<data_dir>/LOCK`, held until `release()`.

    flock locks belong to the open file description, so a second open of the
    same directory fails even from the same process, and the kernel drops
    the lock when the process dies (no stale lock after SIGKILL).
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "LOCK"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            try:
                holder = self.path.read_text().strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise DataDirLocked(
                f"{data_dir} is in use by another trioraft node (pid {holder} holds "
                f"{self.path}). Stop that node, or give this one its own --data-dir; "
                "two nodes must never share a data dir."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock
