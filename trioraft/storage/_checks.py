"""Argument checks shared by every storage implementation.

Two kinds of refusal, both ValueError and both *before* anything is written
(so a refused batch never lands in part):

- Range and type: storage keeps every term, index and length as a signed
  64-bit SQLite INTEGER (and unsigned 64-bit in snapshot headers), so
  anything outside [0, 2**63) is refused here rather than crash the node with
  an OverflowError halfway through a batch (issue 10). The core refuses
  anything >= 2**62 from peers and clients; this is the last line.
- Log invariants: a batch that would leave a hole in the log, or overwrite
  what a snapshot already covers, is a bug in the caller; both
  implementations refuse it the same way so the simulation (memory) catches
  what production (sqlite) would.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from trioraft.core import Configuration, Entry, EntryKind, HardState, SnapshotMeta
from trioraft.storage._protocol import Identity, SnapshotTransfer

__all__ = [
    "MAX_ID_LEN",
    "MAX_INT",
    "bootstrap_entry",
    "check_batch",
    "check_hard_state",
    "check_identity",
    "check_identity_change",
    "check_index",
    "check_snapshot",
    "check_transfer",
    "config_bytes",
    "crc32",
]

MAX_INT = 2**63 - 1  # SQLite INTEGER is signed 64-bit
MAX_ID_LEN = 128  # = trioraft.core's MAX_MEMBER_ID_LEN: member ids, votes, names
MAX_CONFIG_BYTES = 1 << 20  # a Configuration in a snapshot header (64 members fit easily)


def crc32(data: bytes) -> int:
    return zlib.crc32(data)


def _int(name: str, value: object, lo: int = 0) -> int:
    # type() is int, not isinstance: a bool or an IntEnum is a caller bug.
    if type(value) is not int or not lo <= value <= MAX_INT:
        raise ValueError(f"{name} must be an integer in [{lo}, 2**63), not {value!r:.40}")
    return value


def check_index(name: str, value: object, lo: int = 0) -> int:
    return _int(name, value, lo)


def check_id(name: str, value: object, *, empty_ok: bool = False, printable: bool = True) -> str:
    """A member id, name or similar: a short, encodable (and printable) string.

    Votes are any id the core accepts (1..128 characters, printable or not);
    identity fields, which operators read, must also be printable.
    """
    if not isinstance(value, str) or len(value) > MAX_ID_LEN or (not value and not empty_ok):
        raise ValueError(f"{name} must be a string of 1..{MAX_ID_LEN} characters")
    if printable and not value.isprintable():
        raise ValueError(f"{name} has non-printable characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode (lone surrogate)") from None
    return value


def check_hard_state(hs: HardState) -> None:
    _int("term", hs.term)
    _int("commit index", hs.commit)
    if hs.vote is not None:
        check_id("vote", hs.vote, printable=False)


def check_batch(entries: Sequence[Entry], snapshot_index: int, last_index: int) -> None:
    """Raise ValueError unless `entries` can be appended after truncation.

    The batch must be contiguous, start after the newest snapshot and no later
    than last_index + 1 (it may start earlier: that is conflict truncation,
    which never reaches an entry a snapshot covers -- those are committed).
    Every field must be storable.
    """
    first = entries[0].index
    if type(first) is not int or not 1 <= first <= MAX_INT:
        raise ValueError(f"entry index must be an integer in [1, 2**63), not {first!r:.40}")
    if first <= snapshot_index:
        raise ValueError(
            f"batch starts at index {first}, inside the snapshot (index {snapshot_index})"
        )
    if first > last_index + 1:
        raise ValueError(f"batch starts at index {first} but the log ends at {last_index}")
    if first + len(entries) - 1 > MAX_INT:
        raise ValueError("entry index must be below 2**63")
    expected = first
    for e in entries:  # save()'s hot path: one condition per entry, details on failure only
        idx, term = e.index, e.term
        if (
            idx != expected
            or type(idx) is not int
            or type(term) is not int
            or not 0 <= term <= MAX_INT
            or type(e.kind) is not EntryKind
            or type(e.data) is not bytes
        ):
            _refuse_entry(e, expected)
        expected += 1


def _refuse_entry(e: Entry, expected: int) -> None:
    if type(e.index) is not int or e.index != expected:
        raise ValueError(
            f"batch is not contiguous: index {e.index!r:.40} where {expected} was expected"
        )
    if type(e.term) is not int or not 0 <= e.term <= MAX_INT:
        raise ValueError(f"entry {e.index}: term must be in [0, 2**63), not {e.term!r:.40}")
    raise ValueError(f"entry {e.index}: kind must be an EntryKind and data bytes")


def config_bytes(config: Configuration) -> bytes:
    """`config.encode()`, refused unless it reads back as the same configuration."""
    if not isinstance(config, Configuration):
        raise ValueError("a snapshot's config must be a Configuration")
    raw = config.encode()
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"configuration is {len(raw)} bytes, more than {MAX_CONFIG_BYTES}")
    if Configuration.decode(raw) != config:  # ValueError for bad ids, too many members...
        raise ValueError("configuration does not survive encoding (invalid member fields)")
    return raw


def check_snapshot(meta: SnapshotMeta) -> None:
    """A snapshot's meta must be storable and readable back (header fields, config)."""
    if not isinstance(meta, SnapshotMeta):
        raise ValueError("snapshot meta must be a SnapshotMeta")
    _int("snapshot index", meta.index, lo=1)
    _int("snapshot term", meta.term)
    config_bytes(meta.config)


def snapshot_parts(data: object) -> list[bytes]:
    """A snapshot's data as given to `save_snapshot`: bytes, or a list or tuple of
    bytes (written one after the other, never joined); ValueError otherwise."""
    if type(data) is bytes:
        return [data]
    if isinstance(data, list | tuple) and all(type(p) is bytes for p in data):
        return list(data)
    raise ValueError("snapshot data must be bytes or a list of bytes")


def check_transfer(transfer: SnapshotTransfer, max_bytes: int) -> None:
    if not isinstance(transfer, SnapshotTransfer):
        raise ValueError("a transfer must be a SnapshotTransfer")
    check_snapshot(transfer.meta)
    _int("snapshot size", transfer.size)
    if transfer.size > max_bytes:
        raise ValueError(
            f"snapshot of {transfer.size} bytes is larger than the maximum of {max_bytes} "
            "(raise the node's maximum snapshot size if the state really is that large)"
        )
    if type(transfer.checksum) is not int or not 0 <= transfer.checksum < 2**32:
        raise ValueError("a snapshot checksum is a CRC32 in [0, 2**32)")


def check_identity(identity: Identity) -> None:
    if not isinstance(identity, Identity):
        raise ValueError("an identity must be an Identity")
    check_id("cluster id", identity.cluster_id, empty_ok=True)
    check_id("member id", identity.member_id, empty_ok=True)
    check_id("name", identity.name)
    check_id("bootstrap nonce", identity.bootstrap_nonce, empty_ok=True)


def check_identity_change(old: Identity | None, new: Identity) -> None:
    """Fields once set never change: the member id names one incarnation for good."""
    check_identity(new)
    if old is None:
        return
    for field in ("cluster_id", "member_id", "bootstrap_nonce"):
        before, after = getattr(old, field), getattr(new, field)
        if before and after != before:
            raise ValueError(
                f"this data dir's {field.replace('_', ' ')} is {before!r}; it cannot "
                f"become {after!r} (a new member or cluster needs a new, empty data dir)"
            )


def bootstrap_entry(identity: Identity | None, config: Configuration) -> Entry:
    """The bootstrap CONFIG entry (index 1, term 1), refused unless this member may write it.

    Written only under an identity with a cluster id: a log without one would
    look like a legacy data dir on the next start.
    """
    if identity is None or not identity.cluster_id or not identity.member_id:
        raise ValueError("bootstrap needs an identity with a cluster id and a member id first")
    if identity.member_id not in config.ids:
        raise ValueError(f"member {identity.member_id!r} is not in the bootstrap configuration")
    return Entry(1, 1, EntryKind.CONFIG, config_bytes(config))
