"""The data dir's identity (issue 12, PLAN.md "Member ids and identity")."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.storage.test_conformance import META, entries
from trioraft.core import Configuration, Entry, EntryKind, HardState, Member
from trioraft.storage import (
    DataDirKind,
    Identity,
    PersistedState,
    SqliteStorage,
    Storage,
    StorageCorrupt,
    classify,
    legacy_identity,
    new_nonce,
    open_storage,
    read_identity,
)

NEW = Identity(cluster_id="", member_id="", name="node1", bootstrap_nonce="n0nce")
JOINED = replace(NEW, cluster_id="c1", member_id="node1")
CONFIG = Configuration.of(Member(i, name=i, url=f"http://{i}:7000") for i in ("node1", "node2"))


# ------------------------------------------------------------------ every implementation
def test_no_identity_at_first(storage: Storage) -> None:
    assert storage.load_identity() is None


def test_identity_round_trips_and_may_be_completed(storage: Storage) -> None:
    storage.save_identity(NEW)
    assert storage.load_identity() == NEW
    storage.save_identity(JOINED)  # "" -> a value: bootstrap or admission decided
    assert storage.load_identity() == JOINED
    storage.save_identity(replace(JOINED, name="renamed"))  # the operator's label may change
    assert storage.load_identity() == replace(JOINED, name="renamed")


@pytest.mark.parametrize(
    "change",
    [
        {"cluster_id": "c2"},
        {"member_id": "node9"},
        {"bootstrap_nonce": "other"},
        {"cluster_id": ""},
    ],
    ids=["cluster", "member", "nonce", "cleared"],
)
def test_set_identity_fields_never_change(storage: Storage, change: dict[str, str]) -> None:
    storage.save_identity(JOINED)
    with pytest.raises(ValueError, match="cannot become"):
        storage.save_identity(replace(JOINED, **change))
    assert storage.load_identity() == JOINED


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (replace(NEW, name=""), "name must be"),
        (replace(NEW, name="x" * 129), "name must be"),
        (replace(NEW, member_id="a\x00b"), "non-printable"),
        (replace(NEW, cluster_id="\ud800"), "non-printable|surrogate"),
        (replace(NEW, bootstrap_nonce=5), "nonce must be"),  # type: ignore[arg-type]
    ],
    ids=["no name", "long", "control", "surrogate", "not a string"],
)
def test_malformed_identity_is_refused(storage: Storage, bad: Identity, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        storage.save_identity(bad)
    assert storage.load_identity() is None


def test_bootstrap_writes_the_config_entry_at_one_one(storage: Storage) -> None:
    storage.save_identity(JOINED)
    storage.bootstrap(CONFIG)
    state = storage.load()
    assert state.entries == [Entry(1, 1, EntryKind.CONFIG, CONFIG.encode())]
    assert Configuration.decode(state.entries[0].data) == CONFIG
    assert state.hard_state == HardState(term=1, vote=None, commit=1)
    storage.bootstrap(CONFIG)  # idempotent (a restart after a crash right after it)
    assert storage.load().entries == [Entry(1, 1, EntryKind.CONFIG, CONFIG.encode())]


def test_bootstrap_needs_an_identity_in_the_config(storage: Storage) -> None:
    with pytest.raises(ValueError, match="identity"):
        storage.bootstrap(CONFIG)
    storage.save_identity(NEW)
    with pytest.raises(ValueError, match="identity"):  # no cluster id yet
        storage.bootstrap(CONFIG)
    storage.save_identity(replace(JOINED, member_id="node3"))
    with pytest.raises(ValueError, match="not in the bootstrap configuration"):
        storage.bootstrap(CONFIG)
    assert storage.load().is_empty


def test_bootstrap_needs_an_empty_log(storage: Storage) -> None:
    storage.save_identity(JOINED)
    storage.save(None, entries(1, 2))
    with pytest.raises(ValueError, match="empty log"):
        storage.bootstrap(CONFIG)
    with pytest.raises(ValueError, match="empty log"):
        storage.bootstrap(Configuration.of_voters({"node1"}))
    assert storage.load().entries == entries(1, 2)


def test_classify() -> None:
    empty, written = PersistedState(), PersistedState(hard_state=HardState(term=1))
    snapshot_only = PersistedState(snapshot=META)
    assert classify(empty, None) is DataDirKind.EMPTY
    assert classify(written, None) is DataDirKind.LEGACY
    assert classify(snapshot_only, None) is DataDirKind.LEGACY
    assert classify(empty, NEW) is DataDirKind.IDENTIFIED
    assert classify(written, JOINED) is DataDirKind.MEMBER
    assert legacy_identity("node2") == Identity("legacy", "node2", "node2", "")
    assert new_nonce() != new_nonce()
    assert len(new_nonce()) == 32


# ------------------------------------------------------------------ the IDENTITY file
def test_identity_survives_reopen_and_is_readable_offline(tmp_path: Path) -> None:
    with open_storage(tmp_path, fsync=True) as s:
        s.save_identity(JOINED)
    assert read_identity(tmp_path) == JOINED
    with open_storage(tmp_path, fsync=False) as s:
        s.load()
        assert s.load_identity() == JOINED
    raw = json.loads((tmp_path / "IDENTITY").read_text())
    assert raw["format"] == 1
    assert raw["member_id"] == "node1"


def test_missing_identity_file_is_none(tmp_path: Path) -> None:
    assert read_identity(tmp_path) is None
    assert read_identity(tmp_path / "nowhere") is None


def edit(path: Path, **fields: object) -> None:
    raw = json.loads(path.read_text())
    raw.update(fields)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: edit(p, member_id="node2"), "checksum"),
        (lambda p: edit(p, format=2), "unsupported identity format"),
        (lambda p: p.write_bytes(b'{"format": 1, "crc32": '), "not valid JSON"),
        (lambda p: p.write_bytes(b"[1, 2]"), "not a JSON object"),
        (lambda p: p.write_bytes(b"\xff\xfe"), "not valid JSON"),
        (lambda p: p.write_bytes(b"{" * 100_000), "too large"),
        (lambda p: p.write_bytes(b""), "not valid JSON"),
    ],
    ids=["edited", "format", "truncated", "array", "binary", "huge", "empty"],
)
def test_damaged_identity_refuses_to_start(tmp_path: Path, damage: object, match: str) -> None:
    with open_storage(tmp_path, fsync=False) as s:
        s.save_identity(JOINED)
    path = tmp_path / "IDENTITY"
    damage(path)  # type: ignore[operator]
    with pytest.raises(StorageCorrupt, match=match) as info:
        read_identity(tmp_path)
    assert str(path) in str(info.value)
    assert "must not guess" in str(info.value)
    with SqliteStorage(tmp_path, fsync=False) as s, pytest.raises(StorageCorrupt, match=match):
        s.load_identity()


def test_identity_with_valid_checksum_but_bad_fields_is_corrupt(tmp_path: Path) -> None:
    import zlib

    body = {"bootstrap_nonce": "", "cluster_id": "", "format": 1, "member_id": 7, "name": "n"}
    canon = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    body["crc32"] = zlib.crc32(canon)
    (tmp_path / "IDENTITY").write_text(json.dumps(body))
    with pytest.raises(StorageCorrupt, match="not a string"):
        read_identity(tmp_path)


def test_interrupted_identity_write_leaves_the_old_record(tmp_path: Path) -> None:
    with open_storage(tmp_path, fsync=False) as s:
        s.save_identity(NEW)
    (tmp_path / "IDENTITY.tmp").write_bytes(b'{"half a new rec')
    with open_storage(tmp_path, fsync=False) as s:
        s.load()
        assert s.load_identity() == NEW
    assert not (tmp_path / "IDENTITY.tmp").exists()
