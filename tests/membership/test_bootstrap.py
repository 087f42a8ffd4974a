"""Start-up identity decisions (trioraft.bootstrap, trioraft.server._startup.plan).

The safety argument these tests pin down: a node bootstraps only when every
initial member answered empty with the same member list; a node whose nonce
is not in a member's bootstrap record (a wiped disk) can only join; every
node that bootstraps writes the very same entry 1; a data dir of another
node, or of a removed member, never starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trioraft.bootstrap import (
    Bootstrap,
    BootstrapRecord,
    Join,
    PeerAnswer,
    Wait,
    cluster_id_of,
    decide,
    read_record,
    write_record,
)
from trioraft.config import parse_serve_args
from trioraft.core import ConfChange, Configuration, Entry, EntryKind, HardState, Member
from trioraft.core import apply_change as change
from trioraft.server._startup import Refused, plan
from trioraft.storage import LEGACY_CLUSTER_ID, Identity, SqliteStorage

NAMES = ("node1", "node2", "node3")
URLS = {n: f"http://{n}:3000" for n in NAMES}
NONCES = {n: f"nonce-of-{n}" for n in NAMES}


def empty(name: str, nonce: str | None = None) -> PeerAnswer:
    return PeerAnswer(name, "empty", nonce or NONCES[name], URLS[name], frozenset(NAMES))


def decide_as(name: str, answers: dict[str, PeerAnswer | str], *, nonce: str | None = None,
              join: bool = False) -> object:  # fmt: skip
    return decide(name, nonce or NONCES[name], URLS[name], frozenset(NAMES), answers, join=join)


def test_all_initial_members_empty_bootstrap_the_same_cluster_from_every_view() -> None:
    records = []
    for me in NAMES:
        d = decide_as(me, {n: empty(n) for n in NAMES if n != me})
        assert isinstance(d, Bootstrap)
        assert not d.finishing
        records.append(d.record)
    assert records[0] == records[1] == records[2]  # the same entry 1 everywhere
    r = records[0]
    assert r.consistent()
    assert r.cluster_id == cluster_id_of(r.config, NONCES.values())
    assert sorted(r.config.voters) == list(NAMES)
    assert {m.id: m.url for m in r.config.members} == URLS


@pytest.mark.parametrize(
    "answers",
    [
        {"node2": empty("node2"), "node3": "is unreachable (ConnectError)"},
        {"node2": empty("node2"), "node3": PeerAnswer("node3", "empty", "n3", URLS["node3"],
                                                      frozenset({"node3", "node4"}))},
        {"node2": empty("node2"), "node3": PeerAnswer("node9", "empty", "n3", "", frozenset())},
        {"node2": empty("node2"), "node3": PeerAnswer("node3", "joining", "", "",
                                                      cluster_id="c-x", member_id="node3-1")},
    ],
    ids=["unreachable", "other-member-list", "wrong-name", "joining"],
)
def test_no_bootstrap_unless_every_initial_member_is_empty_and_agrees(
    answers: dict[str, PeerAnswer | str],
) -> None:
    assert isinstance(decide_as("node1", answers), Wait)


def _member_answer(name: str, record: BootstrapRecord, committed_index: int = 5) -> PeerAnswer:
    return PeerAnswer(name, "member", NONCES[name], URLS[name], frozenset(NAMES),
                      record.cluster_id, name, record, record.config, record.config,
                      committed_index, leader_id=name, leader_url=URLS[name])  # fmt: skip


def test_a_late_initial_member_finishes_the_bootstrap_that_holds_its_nonce() -> None:
    d = decide_as("node1", {n: empty(n) for n in ("node2", "node3")})
    assert isinstance(d, Bootstrap)
    answers: dict[str, PeerAnswer | str] = {"node1": _member_answer("node1", d.record),
                                            "node3": "is unreachable"}  # fmt: skip
    late = decide_as("node2", answers)
    assert isinstance(late, Bootstrap)
    assert late.finishing
    assert late.record == d.record


def test_a_wiped_node_can_only_join_under_a_fresh_identity() -> None:
    """Its new nonce is in no record: it never bootstraps, whoever else answers."""
    d = decide_as("node1", {n: empty(n) for n in ("node2", "node3")})
    assert isinstance(d, Bootstrap)
    answers: dict[str, PeerAnswer | str] = {"node1": _member_answer("node1", d.record),
                                            "node2": "is unreachable"}  # fmt: skip
    j = decide_as("node3", answers, nonce="a-new-nonce-after-the-wipe")
    assert isinstance(j, Join)
    assert j.cluster_id == d.record.cluster_id
    assert j.seed == d.record.config


def test_a_forged_record_is_not_finished() -> None:
    """A record whose id is not the hash of its contents never makes us bootstrap."""
    real = BootstrapRecord.new(Configuration.of_voters(NAMES), NONCES.values())
    forged = BootstrapRecord("c-forged", real.nonces, real.config)
    a = PeerAnswer("node1", "member", "", "", frozenset(), "c-forged", "node1", forged,
                   forged.config, forged.config, 3)  # fmt: skip
    assert isinstance(decide_as("node2", {"node1": a, "node3": "down"}), Join)


def test_join_never_bootstraps() -> None:
    answers: dict[str, PeerAnswer | str] = {n: empty(n) for n in ("node2", "node3")}
    assert isinstance(decide_as("node1", answers, join=True), Wait)


def test_members_of_different_clusters_stop_the_decision() -> None:
    a = BootstrapRecord.new(Configuration.of_voters(["node1"]), ["x"])
    b = BootstrapRecord.new(Configuration.of_voters(["node2"]), ["y"])
    answers: dict[str, PeerAnswer | str] = {"node1": _member_answer("node1", a),
                                            "node2": _member_answer("node2", b)}  # fmt: skip
    d = decide_as("node3", answers)
    assert isinstance(d, Wait)
    assert "different clusters" in d.reason


@pytest.mark.parametrize("bad", [
    None, [], {"state": "member"}, {"name": "x", "state": "boss"},
    {"name": "x", "state": "member", "committed_index": -1},
    {"name": "x", "state": "member", "committed_index": 2**62},
    {"name": "x", "state": "member", "expected": ["a"] * 65},
    {"name": "x", "state": "member", "configuration": [{"id": ""}]},
    {"name": "x", "state": "member", "bootstrap": {"cluster_id": 1}},
    {"name": "x", "state": "member", "leader": {"member_id": 5}},
    {"name": "y" * 3000, "state": "empty"},
])  # fmt: skip
def test_a_malformed_peer_answer_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r".+"):
        PeerAnswer.from_json(bad)


def test_the_record_file_round_trips_and_damage_is_detected(tmp_path: Path) -> None:
    r = BootstrapRecord.new(Configuration.of_voters(NAMES), NONCES.values())
    assert read_record(tmp_path) is None
    write_record(tmp_path, r)
    assert read_record(tmp_path) == r
    raw = json.loads((tmp_path / "BOOTSTRAP").read_text())
    raw["nonces"][0] = "tampered"
    (tmp_path / "BOOTSTRAP").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="damaged"):
        read_record(tmp_path)


# ---------------------------------------------------------------- plan()


def cfg(name: str, data: Path, peers: tuple[str, ...] = (), *more: str) -> object:
    argv = ["--id", name, "--data-dir", str(data / name), *more]
    for p in peers:
        argv += ["--peer", f"{p}=http://{p}:3000"]
    return parse_serve_args(argv, {})


def test_a_single_empty_node_bootstraps_alone(tmp_path: Path) -> None:
    c = cfg("solo", tmp_path)
    st = SqliteStorage(c.data_dir)  # type: ignore[attr-defined]
    p = plan(c, st)  # type: ignore[arg-type]
    assert p.identity is not None
    assert p.identity.member_id == "solo"
    assert p.identity.static_voters == frozenset()
    state = st.load()
    assert state.entries[0].kind is EntryKind.CONFIG
    assert Configuration.decode(state.entries[0].data).voters == {"solo"}
    ident = st.load_identity()
    assert ident is not None
    assert ident.cluster_id == p.identity.cluster_id
    st.close()


def test_an_empty_node_with_peers_waits_to_decide_and_keeps_its_nonce(tmp_path: Path) -> None:
    c = cfg("node1", tmp_path, ("node2", "node3"))
    st = SqliteStorage(c.data_dir)  # type: ignore[attr-defined]
    first = plan(c, st)  # type: ignore[arg-type]
    assert first.identity is None
    assert first.nonce
    again = plan(c, st)  # type: ignore[arg-type]
    assert again.nonce == first.nonce  # durable: a restart before bootstrap keeps it
    st.close()


def _member_dir(path: Path, name: str, config: Configuration, *, member_id: str | None = None,
                entries: list[Entry] | None = None) -> None:  # fmt: skip
    st = SqliteStorage(path)
    st.load()
    st.save_identity(Identity("c-test", member_id or name, name, "n"))
    st.bootstrap(config)
    if entries:
        st.save(HardState(2, None, 1), entries)
    st.close()


def test_a_data_dir_of_another_node_is_refused(tmp_path: Path) -> None:
    _member_dir(tmp_path / "node2", "node1", Configuration.of_voters(["node1"]))
    c = cfg("node2", tmp_path)
    st = SqliteStorage(c.data_dir)  # type: ignore[attr-defined]
    with pytest.raises(Refused, match=r"belongs to 'node1'.*--id node1"):
        plan(c, st)  # type: ignore[arg-type]
    st.close()


def test_a_removed_member_is_refused_with_what_to_do(tmp_path: Path) -> None:
    three = Configuration.of_voters(NAMES)
    two = change(three, ConfChange.remove("node3"))
    _member_dir(tmp_path / "node3", "node3", three,
                entries=[Entry(2, 2, EntryKind.CONFIG, two.encode())])  # fmt: skip
    c = cfg("node3", tmp_path, ("node1", "node2"))
    st = SqliteStorage(c.data_dir)  # type: ignore[attr-defined]
    with pytest.raises(Refused, match=r"was removed.*Empty it.*re-admitted"):
        plan(c, st)  # type: ignore[arg-type]
    st.close()


def test_a_five_member_data_dir_keeps_its_five_voters_under_three_peer_flags(
    tmp_path: Path,
) -> None:
    five = Configuration.of(Member(f"node{i}", True, f"node{i}", f"http://node{i}:3000")
                            for i in range(1, 6))  # fmt: skip
    _member_dir(tmp_path / "node1", "node1", five)
    c = cfg("node1", tmp_path, ("node2", "node3"))
    st = SqliteStorage(c.data_dir)  # type: ignore[attr-defined]
    p = plan(c, st)  # type: ignore[arg-type]
    assert p.identity is not None
    assert p.identity.static_voters == frozenset()  # the stored configuration rules
    assert p.warning is not None
    assert "quorum 3 of 5" in p.warning
    st.close()


def test_a_legacy_data_dir_keeps_working_and_gets_an_identity(tmp_path: Path) -> None:
    c = cfg("node1", tmp_path, ("node2", "node3"))
    st = SqliteStorage(c.data_dir)  # type: ignore[attr-defined]
    st.load()
    st.save(HardState(3, "node2", 0), [Entry(1, 3, EntryKind.NOOP)])
    p = plan(c, st)  # type: ignore[arg-type]
    assert p.identity is not None
    assert (p.identity.member_id, p.identity.cluster_id) == ("node1", LEGACY_CLUSTER_ID)
    assert p.identity.static_voters == frozenset(NAMES)
    ident = st.load_identity()
    assert ident is not None
    assert ident.name == "node1"
    st.close()


def test_a_bootstrap_interrupted_after_the_identity_finishes_at_restart(tmp_path: Path) -> None:
    c = cfg("node1", tmp_path, ("node2", "node3"))
    record = BootstrapRecord.new(Configuration.of_voters(NAMES), NONCES.values())
    c.data_dir.mkdir(parents=True)  # type: ignore[attr-defined]
    write_record(c.data_dir, record)  # type: ignore[attr-defined]
    st = SqliteStorage(c.data_dir)  # type: ignore[attr-defined]
    st.load()
    st.save_identity(Identity(record.cluster_id, "node1", "node1", NONCES["node1"]))
    p = plan(c, st)  # type: ignore[arg-type]
    assert p.identity is not None
    assert p.identity.cluster_id == record.cluster_id
    assert st.load().entries[0].data == record.config.encode()
    st.close()
