"""The identity record of a data dir: which cluster and member it belongs to.

`<data-dir>/IDENTITY` is one line of canonical JSON (sorted keys)::

    {"bootstrap_nonce":"9f0c…","cluster_id":"c8e1…","crc32":1234567890,
     "format":1,"member_id":"node1","name":"node1"}

`crc32` is the CRC32 of the canonical JSON of every other field. The file is
written atomically (temp file, fsync, rename, directory fsync), so a crash
leaves the old record or the new one. A damaged record is StorageCorrupt: the
node must never guess who it is (PLAN.md, "Member ids and identity").

A data dir with Raft state but no IDENTITY was written by the version before
identities: a *legacy* dir, whose member id is its name in cluster "legacy".
"""

from __future__ import annotations

import enum
import json
import os
import secrets
import zlib
from pathlib import Path

from trioraft.storage._checks import check_identity
from trioraft.storage._files import fsync_dir
from trioraft.storage._protocol import Identity, PersistedState, StorageCorrupt

__all__ = [
    "IDENTITY_FILE",
    "LEGACY_CLUSTER_ID",
    "DataDirKind",
    "classify",
    "legacy_identity",
    "new_nonce",
    "read_identity",
    "write_identity",
]

IDENTITY_FILE = "IDENTITY"
FORMAT = 1
LEGACY_CLUSTER_ID = "legacy"
_MAX_FILE = 4096  # four 128-character fields and a little JSON
_FIELDS = ("bootstrap_nonce", "cluster_id", "member_id", "name")

_ADVICE = (
    "This file says which cluster and member this data dir belongs to, and a node "
    "must not guess that. Restore the data dir (or just this file) from a backup; "
    "or remove this member from the cluster and add the node back as a new member "
    "with an empty data dir."
)


def _corrupt(path: Path, what: str) -> StorageCorrupt:
    return StorageCorrupt(f"{path}: {what}. {_ADVICE}")


def _canonical(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def encode_identity(identity: Identity) -> bytes:
    check_identity(identity)
    body: dict[str, object] = {f: getattr(identity, f) for f in _FIELDS}
    body["format"] = FORMAT
    body["crc32"] = zlib.crc32(_canonical(body))
    return _canonical(body) + b"\n"


def decode_identity(raw: bytes, path: Path) -> Identity:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _corrupt(path, "the identity record is not valid JSON") from None
    if not isinstance(obj, dict):
        raise _corrupt(path, "the identity record is not a JSON object")
    if obj.get("format") != FORMAT:
        raise _corrupt(path, f"unsupported identity format {obj.get('format')!r:.20}")
    crc = obj.pop("crc32", None)
    if type(crc) is not int or zlib.crc32(_canonical(obj)) != crc:
        raise _corrupt(path, "the identity record fails its checksum")
    if set(obj) != {*_FIELDS, "format"}:
        raise _corrupt(path, "the identity record has missing or unknown fields")
    values = [obj[f] for f in _FIELDS]
    if not all(isinstance(v, str) for v in values):
        raise _corrupt(path, "an identity field is not a string")
    identity = Identity(
        cluster_id=obj["cluster_id"],
        member_id=obj["member_id"],
        name=obj["name"],
        bootstrap_nonce=obj["bootstrap_nonce"],
    )
    try:
        check_identity(identity)
    except ValueError as exc:
        raise _corrupt(path, f"the identity record is invalid ({exc})") from None
    return identity


def read_identity(data_dir: Path) -> Identity | None:
    """The identity in `data_dir`, None if it has none; StorageCorrupt if damaged.

    Safe to call on a data dir a node is not using (offline tools); a running
    node reads it through its storage.
    """
    path = Path(data_dir) / IDENTITY_FILE
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_FILE + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _corrupt(path, f"cannot read the identity record ({exc})") from None
    if len(raw) > _MAX_FILE:
        raise _corrupt(path, "the identity record is too large")
    return decode_identity(raw, path)


def write_identity(data_dir: Path, identity: Identity, fsync: bool = True) -> None:
    """Atomically replace `data_dir`'s identity (no checks of what it replaces)."""
    raw = encode_identity(identity)
    final = Path(data_dir) / IDENTITY_FILE
    tmp = final.with_name(IDENTITY_FILE + ".tmp")
    with tmp.open("wb") as f:
        f.write(raw)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, final)
    if fsync:
        fsync_dir(final.parent)


def remove_identity_leftover(data_dir: Path) -> None:
    """A temp file from an interrupted write_identity (the record itself is intact)."""
    (Path(data_dir) / (IDENTITY_FILE + ".tmp")).unlink(missing_ok=True)


def new_nonce() -> str:
    """A fresh random bootstrap nonce (128 bits, hex)."""
    return secrets.token_hex(16)


def legacy_identity(name: str) -> Identity:
    """The identity a legacy data dir is taken to have: member id = name."""
    return Identity(cluster_id=LEGACY_CLUSTER_ID, member_id=name, name=name, bootstrap_nonce="")


class DataDirKind(enum.Enum):
    """What a node finds in its data dir at start-up (`classify`)."""

    EMPTY = "empty"  # nothing at all: a new node (bootstrap or join, phase B)
    LEGACY = "legacy"  # Raft state but no identity: written before identities
    IDENTIFIED = "identified"  # an identity, no Raft state yet (bootstrap/join under way)
    MEMBER = "member"  # an identity and Raft state


def classify(state: PersistedState, identity: Identity | None) -> DataDirKind:
    if identity is None:
        return DataDirKind.EMPTY if state.is_empty else DataDirKind.LEGACY
    return DataDirKind.IDENTIFIED if state.is_empty else DataDirKind.MEMBER
