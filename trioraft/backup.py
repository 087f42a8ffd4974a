"""Online backups (`GET /cluster/snapshot`, `trioraft snapshot save`) and restore.

A backup file is the state machine at one applied index, taken after a
ReadIndex barrier (so it holds every write acknowledged before the request
began), with what describes it::

    TRBACKUP1\\n
    {"cluster_id":..,"config":[..],"crc32":..,"index":..,"name":..,"size":..,"term":..}\\n
    <size bytes: the state machine's snapshot data (trioraft.kv format)>

`restore(FILE, data_dir, name, advertise)` turns it into the data dir of a
**new** cluster (etcd's way): a new cluster id, one member (`name`, a
voter) whose snapshot is the backup; the other nodes then join it empty
(docs/operations.md). Restoring never writes into a data dir that has
anything in it.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trioraft.core import Configuration, HardState, Member, SnapshotMeta

__all__ = ["MAGIC", "Backup", "decode_backup", "encode_backup", "restore"]

MAGIC = b"TRBACKUP1\n"
_MAX_HEADER = 1 << 20


@dataclass(frozen=True, slots=True)
class Backup:
    index: int
    term: int
    cluster_id: str
    name: str  # the node that served it
    config: Configuration  # in force at `index` (for the record; restore makes a new one)
    data: bytes


def encode_backup(b: Backup) -> bytes:
    header = {"index": b.index, "term": b.term, "cluster_id": b.cluster_id, "name": b.name,
              "config": b.config.to_json(), "size": len(b.data), "crc32": zlib.crc32(b.data)}
    return MAGIC + json.dumps(header, sort_keys=True, separators=(",", ":")).encode() + b"\n" + (
        b.data
    )


def decode_backup(raw: bytes) -> Backup:
    """Check and parse a backup file; ValueError says what is wrong with it."""
    if not raw.startswith(MAGIC):
        raise ValueError("not a trioraft backup (it does not start with TRBACKUP1)")
    end = raw.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_HEADER)
    if end < 0:
        raise ValueError("the backup's header is missing or too long")
    try:
        h: dict[str, Any] = json.loads(raw[len(MAGIC):end])
        index, term, size, crc = h["index"], h["term"], h["size"], h["crc32"]
        config = Configuration.from_json(h["config"])
        cluster_id, name = str(h["cluster_id"]), str(h["name"])
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ValueError(f"the backup's header is malformed ({exc})") from None
    for what, v in (("index", index), ("term", term), ("size", size), ("crc32", crc)):
        if type(v) is not int or not 0 <= v < 2**62:
            raise ValueError(f"the backup's {what} is out of range")
    if index < 1:
        raise ValueError("the backup's index must be at least 1")
    data = raw[end + 1:]
    if len(data) != size:
        raise ValueError(f"the backup is truncated or padded: {len(data)} bytes of data, "
                         f"the header says {size}")  # fmt: skip
    if zlib.crc32(data) != crc:
        raise ValueError("the backup's data fails its checksum (corrupted)")
    return Backup(index, term, cluster_id, name, config, data)


def restore(raw: bytes, data_dir: Path, name: str, advertise: str) -> tuple[str, Backup]:
    """Make `data_dir` (empty or absent) a one-member cluster holding the backup.

    Returns (the new cluster id, the backup). Raises ValueError on a bad
    backup or a data dir that is not empty. The state machine data is
    checked by decoding it before anything is written.
    """
    from trioraft.bootstrap import BootstrapRecord, write_record
    from trioraft.kv import KVStateMachine
    from trioraft.storage import Identity, SqliteStorage, new_nonce

    backup = decode_backup(raw)
    KVStateMachine().restore(backup.data)  # raises ValueError if it is not a kv snapshot
    data_dir = Path(data_dir)
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ValueError(f"{data_dir} is not empty: restore into a new, empty directory")
    data_dir.mkdir(parents=True, exist_ok=True)
    config = Configuration.of([Member(name, True, name, advertise)])
    nonce = new_nonce()
    # A new cluster: its id covers a fresh nonce, so it can never be mistaken
    # for the cluster the backup came from (their nodes refuse each other).
    record = BootstrapRecord.new(config, [nonce])
    write_record(data_dir, record)
    storage = SqliteStorage(data_dir)
    try:
        storage.load()
        storage.save_identity(Identity(record.cluster_id, name, name, nonce))
        meta = SnapshotMeta(backup.index, backup.term, config)
        storage.save_snapshot(meta, backup.data)
        storage.save(HardState(backup.term, None, backup.index), [])
    finally:
        storage.close()
    return record.cluster_id, backup
