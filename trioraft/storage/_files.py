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

Every header field is checked when a file is opened (ranges, the
configuration decoded and validated), so a damaged or hostile header is
StorageCorrupt, never a crash further on.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from trioraft.core import Configuration, Member, SnapshotMeta
from trioraft.storage._checks import MAX_CONFIG_BYTES, MAX_INT, check_index, config_bytes
from trioraft.storage._protocol import SnapshotTransfer, StorageCorrupt

__all__ = [
    "ADVICE",
    "DataDirLock",
    "DataDirLocked",
    "FileSnapshotReader",
    "SnapFile",
    "StagingFile",
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
_COPY_CHUNK = 1 << 20

ADVICE = (
    "Restore this node's data dir from a backup, or, if the rest of the cluster "
    "still has a quorum, replace the node: remove it from the cluster and add it "
    "back as a new member with an empty data dir, which catches up from the "
    "leader (docs/operations.md). Never restart it empty under its old identity."
)

_SNAP_RE = re.compile(r"^snap-(\d+)-(\d+)\.bin$")


def corrupt(path: Path, what: str) -> StorageCorrupt:
    """A StorageCorrupt naming `path`, saying what is wrong and what to do."""
    return StorageCorrupt(f"{path}: {what}. {ADVICE}")


def snapshot_name(meta: SnapshotMeta) -> str:
    return f"snap-{meta.term}-{meta.index}.bin"


_staging_seq = itertools.count(1)


def incoming_name(meta: SnapshotMeta) -> str:
    """A staging file name no other transfer of this process has used."""
    return f"incoming-{meta.term}-{meta.index}-{next(_staging_seq)}.part"


def parse_snapshot_name(name: str) -> tuple[int, int] | None:
    """(term, index) for a snapshot file name, None for any other name."""
    m = _SNAP_RE.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def encode_header(meta: SnapshotMeta, data_len: int, data_crc: int) -> bytes:
    """The header for `meta`; its length depends only on `meta`.

    Callers have checked the ranges (`check_snapshot`); the configuration is
    checked again here because a header we could not read back is a node
    that cannot restart.
    """
    config = config_bytes(meta.config)
    fixed = _FIXED.pack(MAGIC, VERSION, meta.index, meta.term, data_len, data_crc, len(config))
    head = fixed + config
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


def _decode_config(raw: bytes, version: int) -> Configuration:
    """The configuration in a header, validated like one from the wire."""
    if version == 1:  # a sorted JSON list of voter ids
        voters = json.loads(raw)
        if not isinstance(voters, list) or not all(isinstance(v, str) for v in voters):
            raise ValueError("voters")
        config = Configuration.of(Member(v) for v in voters)
        config_bytes(config)  # the same limits as format 2 (id lengths, member count)
        return config
    return Configuration.decode(raw)


def open_snapshot(path: Path) -> tuple[BinaryIO, SnapFile]:
    """Open `path` and check its header; the file is positioned at the data.

    Raises StorageCorrupt if the header is damaged, out of range or the size
    is wrong.
    """
    f = path.open("rb")
    try:
        fixed = _read_exact(f, _FIXED.size, path, "header")
        magic, version, index, term, data_len, data_crc, config_len = _FIXED.unpack(fixed)
        if magic != MAGIC:
            raise corrupt(path, "not a trioraft snapshot file (bad magic)")
        if version not in (1, VERSION):
            raise corrupt(path, f"unsupported snapshot format version {version}")
        if config_len > MAX_CONFIG_BYTES:
            raise corrupt(path, "snapshot header is damaged (configuration length)")
        config_raw = _read_exact(f, config_len, path, "header")
        (header_crc,) = _CRC.unpack(_read_exact(f, _CRC.size, path, "header"))
        if zlib.crc32(fixed + config_raw) != header_crc:
            raise corrupt(path, "snapshot header checksum mismatch")
        # A header whose CRC matches was written by us (or forged with care):
        # still check every field, so nothing out of range goes any further.
        if not 1 <= index <= MAX_INT or term > MAX_INT or data_len > MAX_INT:
            raise corrupt(path, "snapshot header has an index, term or length out of range")
        try:
            config = _decode_config(config_raw, version)
        except (ValueError, RecursionError):
            raise corrupt(path, "snapshot header is damaged (configuration)") from None
        data_offset = _FIXED.size + config_len + _CRC.size
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


class FileSnapshotReader:
    """A `SnapshotReader` over an open snapshot file.

    The descriptor keeps the file's data alive after a newer snapshot unlinks
    it (POSIX), so a transfer never loses its snapshot. Reads use pread, so
    they need no lock and never disturb another reader.
    """

    def __init__(self, path: Path) -> None:
        f, snap = open_snapshot(path)
        self._file: BinaryIO | None = f
        self._snap = snap

    @property
    def meta(self) -> SnapshotMeta:
        return self._snap.meta

    @property
    def size(self) -> int:
        return self._snap.data_len

    @property
    def checksum(self) -> int:
        return self._snap.data_crc

    def transfer(self) -> SnapshotTransfer:
        return SnapshotTransfer(self.meta, self.size, self.checksum)

    def read(self, offset: int, size: int) -> bytes:
        check_index("offset", offset)
        check_index("size", size)
        f = self._file
        if f is None:
            raise ValueError("snapshot reader is closed")
        n = max(0, min(size, self._snap.data_len - offset))
        parts: list[bytes] = []
        pos = self._snap.data_offset + offset
        while n > 0:
            try:
                part = os.pread(f.fileno(), n, pos)
            except (OSError, ValueError):
                if self._file is None:  # closed by another thread (storage.close)
                    raise ValueError("snapshot reader is closed") from None
                raise
            if not part:
                raise corrupt(self._snap.path, "snapshot file is shorter than its header says")
            parts.append(part)
            n -= len(part)
            pos += len(part)
        return b"".join(parts)

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()

    def __enter__(self) -> FileSnapshotReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class StagingFile:
    """The staging of one incoming transfer: a snapshot file under a unique name.

    The header goes first (a placeholder of the same length when size and
    checksum were not declared) and is made final by `seal`.
    """

    def __init__(self, snap_dir: Path, meta: SnapshotMeta, fsync: bool) -> None:
        self.meta = meta
        self.fsync = fsync
        header = encode_header(meta, 0, 0)
        self.header_len = len(header)
        while True:  # "x": never reuse a file, even one a crash left behind
            self.path = snap_dir / incoming_name(meta)
            try:
                self._file: BinaryIO | None = self.path.open("x+b")
                break
            except FileExistsError:
                continue
        self._sealed = False
        self._file.write(header)

    def write(self, data: bytes) -> None:
        if self._file is None or self._sealed:
            raise ValueError("staging file is closed or sealed")
        self._file.write(data)

    def seal(self, size: int, checksum: int) -> bytes:
        f = self._file
        if f is None:
            raise ValueError("staging file is closed")
        if not self._sealed:
            f.flush()
            f.seek(0)
            f.write(encode_header(self.meta, size, checksum))
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
            self._sealed = True
        f.seek(self.header_len)
        return f.read()

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# While a large file is written with fsync on, it is flushed every this many
# bytes, so the disk never holds a long queue of dirty pages: a log fsync
# that arrives meanwhile waits for at most one such piece, not for the whole
# file (with a 115 MB snapshot written in one go, log fsyncs took up to 1 s).
FLUSH_EVERY = 8 * 1024 * 1024


def write_durably(path: Path, parts: list[bytes], fsync: bool) -> None:
    """Write `parts` to a new file at `path`, flushed as it goes and fsync'd."""
    with path.open("xb") as f:
        unflushed = 0
        for part in parts:
            f.write(part)
            unflushed += len(part)
            if fsync and unflushed >= FLUSH_EVERY:
                f.flush()
                os.fdatasync(f.fileno())
                unflushed = 0
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def write_file_atomically(final: Path, parts: list[bytes], fsync: bool) -> None:
    """Write `parts` to `final` via temp file + fsync + rename + directory fsync."""
    tmp = final.with_name(final.name + ".tmp")
    tmp.unlink(missing_ok=True)
    write_durably(tmp, parts, fsync)
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
