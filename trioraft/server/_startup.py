"""Start-up identity (issue 12): what the data dir says, and what to do about it.

`plan()` reads the data dir before anything listens (trioraft.bootstrap has
the safety argument):

=============================  ============================================
data dir                       the node...
=============================  ============================================
member (identity + Raft state)  resumes: its stored configuration rules;
                                refuses if it names another node, or if its
                                member id was removed
legacy (Raft state, no          resumes as before: member id = name, cluster
identity)                       "legacy", voters from --peer while the log
                                has no configuration; gets an identity file
empty                           writes a nonce, then `decide()`s while the
                                server answers 503: bootstrap (all initial
                                members reachable and empty), finish a
                                bootstrap that holds its nonce, or join
identity, no Raft state         a bootstrap interrupted after its identity
                                was written finishes it; a joiner goes on
                                waiting for admission under its member id
=============================  ============================================

`watch()` runs beside every node: a joiner's admission (learn the cluster's
configuration, ask for re-admission when its name is a member under an
older member id, or say how to add it), a removed member's clean stop, and
a refusal when a configured peer turns out to belong to another cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import trio

from trioraft import bootstrap
from trioraft.bootstrap import Bootstrap, BootstrapRecord, Join, PeerAnswer, Wait
from trioraft.config import NodeConfig
from trioraft.core import Configuration, Entry, EntryKind, Member
from trioraft.node import NodeIdentity, RaftNode
from trioraft.storage import (
    LEGACY_CLUSTER_ID,
    DataDirKind,
    Identity,
    Storage,
    classify,
    legacy_identity,
    new_nonce,
)
from trioraft.transport import StreamTransport

__all__ = ["Plan", "Refused", "decide_and_start", "plan", "watch"]

log = logging.getLogger("trioraft.server")
# Node-to-node HTTP (identity polls, re-admission, relays) would otherwise log
# every request at INFO: keep the node's log about the node.
logging.getLogger("httpx").setLevel(logging.WARNING)

POLL_S = 0.2  # between bootstrap polls
WATCH_S = 0.5  # between admission / removal checks


class Refused(Exception):
    """The node must not start on this data dir; the message says what to do."""


@dataclass(frozen=True)
class Plan:
    identity: NodeIdentity | None  # None: decide() first
    nonce: str = ""
    record: BootstrapRecord | None = None
    warning: str | None = None


def _history(entries: list[Entry]) -> list[Configuration]:
    """The configurations of the stored CONFIG entries, oldest first."""
    out = []
    for e in entries:
        if e.kind is EntryKind.CONFIG:
            try:
                out.append(Configuration.decode(e.data))
            except ValueError:
                continue  # the core refuses a malformed one at recovery, loudly
    return out


def plan(config: NodeConfig, storage: Storage) -> Plan:
    """Read the data dir and decide what is known now (blocking: run it in a thread)."""
    state = storage.load()
    ident = storage.load_identity()
    try:
        record = bootstrap.read_record(config.data_dir)
    except ValueError as exc:
        raise Refused(f"{exc}. Restore the data dir from a backup, or empty it and let the "
                      "node be re-admitted") from None  # fmt: skip
    kind = classify(state, ident)
    name = config.id
    if (removed := bootstrap.read_removed(config.data_dir)) is not None:
        raise Refused(removed)
    if ident is not None and ident.name != name:
        raise Refused(
            f"the data dir {config.data_dir} belongs to {ident.name!r} (member id "
            f"{ident.member_id or 'none yet'}, cluster {ident.cluster_id or 'none yet'}), not to "
            f"--id {name}: start it with --id {ident.name}, or give this node its own data dir"
        )
    flag_names = frozenset(config.members)
    if kind is DataDirKind.LEGACY:
        # Written before identities: record who it is, so a wrong --id or a
        # data dir moved between nodes is caught from now on.
        storage.save_identity(legacy_identity(name))
        return Plan(NodeIdentity(name, name, LEGACY_CLUSTER_ID, static_voters=flag_names))
    if kind is DataDirKind.EMPTY or (ident is not None and not ident.cluster_id):
        nonce = ident.bootstrap_nonce if ident is not None and ident.bootstrap_nonce else ""
        if not nonce:
            # Durably, before anyone can see it: a restart before bootstrap keeps it.
            nonce = new_nonce()
            storage.save_identity(Identity("", "", name, nonce))
        if not config.peers and not config.join:
            # A single-node cluster: nobody else to wait for.
            rec = BootstrapRecord.new(
                Configuration.of([_self_member(config)]), [nonce]
            )
            return Plan(_bootstrap(config, storage, rec, nonce), nonce, rec)
        return Plan(None, nonce)
    assert ident is not None
    if kind is DataDirKind.IDENTIFIED:
        if record is not None and ident.member_id == name and name in record.config.ids:
            # Crashed between writing the identity and entry 1: finish it.
            storage.bootstrap(record.config)
            return Plan(NodeIdentity(name, name, ident.cluster_id), ident.bootstrap_nonce, record)
        return Plan(NodeIdentity(ident.member_id, name, ident.cluster_id),
                    ident.bootstrap_nonce)  # fmt: skip
    # A member.
    if ident.cluster_id == LEGACY_CLUSTER_ID:
        return Plan(NodeIdentity(name, name, LEGACY_CLUSTER_ID, static_voters=flag_names))
    configs = _history(list(state.entries))
    latest = configs[-1] if configs else state.snapshot.config
    seen = ident.member_id in state.snapshot.config.ids or any(
        ident.member_id in c.ids for c in configs
    )
    if seen and ident.member_id not in latest.ids:
        raise Refused(
            f"member {ident.member_id} ({name}) was removed from cluster {ident.cluster_id}: "
            f"this data dir can no longer be used. Empty it (or use a new --data-dir) and "
            f"start the node again: it is re-admitted automatically while {name} is a member, "
            f"otherwise add it with `trioraft member add {name} URL`"
        )
    warning = None
    stored = frozenset(m.display_name for m in latest.members)
    if latest.members and flag_names != stored:
        warning = (
            f"the --peer flags name the members {sorted(flag_names)}, but this data dir's "
            f"configuration has {sorted(stored)}: the stored configuration is used (quorum "
            f"{len(latest.voters) // 2 + 1} of {len(latest.voters)} voters). Change the "
            "membership with `trioraft member add/remove`, not with flags"
        )
    return Plan(NodeIdentity(ident.member_id, name, ident.cluster_id), ident.bootstrap_nonce,
                record, warning)  # fmt: skip


def _self_member(config: NodeConfig) -> Member:
    return Member(config.id, True, config.id, config.advertise_url)


def _bootstrap(
    config: NodeConfig, storage: Storage, record: BootstrapRecord, nonce: str
) -> NodeIdentity:
    """Record, identity, entry 1 -- in that order, each durable before the next."""
    bootstrap.write_record(config.data_dir, record, config.fsync)
    storage.save_identity(Identity(record.cluster_id, config.id, config.id, nonce))
    storage.bootstrap(record.config)
    log.warning("node %s bootstrapped cluster %s with members %s", config.id,
                record.cluster_id, ", ".join(sorted(record.config.ids)))  # fmt: skip
    return NodeIdentity(config.id, config.id, record.cluster_id)


def facts(config: NodeConfig, p: Plan, state: str) -> dict[str, object]:
    return {"nonce": p.nonce, "expected": sorted({config.id, *config.peers}), "state": state,
            "record": p.record.to_json() if p.record is not None else None}  # fmt: skip


# ----------------------------------------------------------------- deciding


async def _poll(http: httpx.AsyncClient, targets: dict[str, str]) -> dict[str, PeerAnswer | str]:
    out: dict[str, PeerAnswer | str] = {}

    async def one(key: str, url: str) -> None:
        out[key] = await bootstrap.ask_identity(http, url)

    async with trio.open_nursery() as nursery:
        for key, url in targets.items():
            nursery.start_soon(one, key, url)
    return out


async def decide_and_start(
    config: NodeConfig, storage: Storage, node: RaftNode, transport: StreamTransport, p: Plan
) -> None:
    """An empty node: poll until it can decide, then set the node's identity."""
    join = bool(config.join)
    targets = {u: u for u in config.join} if join else dict(config.peers)
    expected = frozenset({config.id, *config.peers})
    logged: tuple[str, bool] = ("", False)
    since = trio.current_time()
    async with bootstrap.peer_http_client(config, timeout=1.0) as http:
        while True:
            answers = await _poll(http, targets)
            d = bootstrap.decide(config.id, p.nonce, config.advertise_url, expected, answers,
                                 join=join)  # fmt: skip
            if not isinstance(d, Wait):
                break
            node.starting = d.reason
            # Each reason once at INFO, and once more as a WARNING after 10 s.
            loud = trio.current_time() - since > 10
            if (d.reason, loud) != logged and logged != (d.reason, True):
                (log.warning if loud else log.info)("node %s: %s", config.id, d.reason)
                logged = (d.reason, loud)
            await trio.sleep(POLL_S)
    if isinstance(d, Bootstrap):
        if d.finishing:
            log.warning("node %s finishes the bootstrap of cluster %s (its nonce is in the "
                        "record)", config.id, d.record.cluster_id)  # fmt: skip
        ident = await trio.to_thread.run_sync(_bootstrap, config, storage, d.record, p.nonce)
        node.startup_facts.update(state="member", record=d.record.to_json())
    else:
        assert isinstance(d, Join)
        ident = await trio.to_thread.run_sync(_join, config, storage, d, p.nonce)
        node.startup_facts.update(state="joining")
    transport.id, transport.cluster_id = ident.member_id, ident.cluster_id
    node.set_identity(ident)


def _join(config: NodeConfig, storage: Storage, d: Join, nonce: str) -> NodeIdentity:
    member_id = bootstrap.fresh_member_id(config.id)
    storage.save_identity(Identity(d.cluster_id, member_id, config.id, nonce))
    names = {m.display_name for m in d.seed.members}
    how = (f"{config.id} is a member under an older member id: asking the leader to re-admit it"
           if config.id in names else
           f"waiting to be added: run `trioraft member add {config.id} "
           f"{config.advertise_url}` against the cluster")  # fmt: skip
    log.warning("node %s joins cluster %s (via %s) as new member id %s; %s", config.id,
                d.cluster_id, d.via, member_id, how)  # fmt: skip
    return NodeIdentity(member_id, config.id, d.cluster_id)


# ----------------------------------------------------------------- watching


async def watch(
    config: NodeConfig, node: RaftNode, stop_with: Callable[[int, str], None]
) -> None:
    """Beside a running node: admission, removal, foreign clusters (see the docstring)."""
    await node.started.wait()
    asked_readmit = False
    replacing: str | None = None  # the old member id a re-admission we asked for replaces
    said_waiting = False
    leaderless = 0
    last_ask = -1e9
    async with bootstrap.peer_http_client(config, timeout=1.0) as http:
        while True:
            if node.membership.removed is not None:
                message = node.membership.removed.message()
                await trio.to_thread.run_sync(bootstrap.write_removed, config.data_dir,
                                              message, config.fsync)  # fmt: skip
                stop_with(0, message)
                return
            core = node.core
            assert core is not None
            me = node.id
            # Not a voter of our own configuration: a joiner (or a learner) that
            # still has to be admitted or promoted. (A legacy member's static
            # voters include it.)
            admitting = me not in core.voters and (
                me not in core.configuration.ids or asked_readmit
            )  # (a learner the operator added and keeps a learner: nothing to ask)
            leaderless = leaderless + 1 if node.leader_id is None else 0
            hinted = node.membership.check_now.is_set()
            if hinted:
                node.membership.check_now = trio.Event()
            if admitting or leaderless >= 4 or hinted:
                answers = await _poll(http, _targets(config, node))
                foreign = _foreign(node, answers)
                if foreign is not None:
                    stop_with(1, foreign)
                    return
                members = [a for a in answers.values() if isinstance(a, PeerAnswer)
                           and a.state == "member" and a.cluster_id == node.cluster_id]
                if admitting and members:
                    best = max(members, key=lambda a: (a.leader_id == a.member_id,
                                                       a.committed_index))  # fmt: skip
                    cfg = best.configuration
                    if me in cfg.ids:
                        node.learn_seed(cfg)
                    mine = [m for m in cfg.members if m.display_name == config.id]
                    now = trio.current_time()
                    old = mine[0].id if mine else None
                    if old is not None and old != me and replacing is None:
                        replacing = old
                    # Ask while our name is a member under an older id, while we are
                    # a learner of a re-admission, and when a re-admission we asked
                    # for stopped after removing the old id (no member has our name).
                    if (old is not None and old != me) or (asked_readmit and (
                            me in cfg.ids or (not mine and replacing is not None))):
                        if now - last_ask >= 2.0:
                            last_ask = now
                            asked_readmit = True
                            await _ask_readmit(http, config, node, best, replacing)
                    elif not mine and not said_waiting:
                        said_waiting = True
                        log.warning(
                            "node %s (member id %s) waits to be added to cluster %s: run "
                            "`trioraft member add %s %s`", config.id, me, node.cluster_id,
                            config.id, config.advertise_url,
                        )
                if node.membership.roster.was_member:
                    _check_removed(node, members)
            with trio.move_on_after(WATCH_S):
                await node.membership.check_now.wait()


def removal_notifier(config: NodeConfig, node: RaftNode) -> Callable[[str, str], None]:
    """What a leader does once its removal of a member committed: tell that node
    to check its membership (`POST /raft/check-membership`) so it stops within a
    moment rather than after its next leaderless poll."""

    async def notify(member_id: str, url: str) -> None:
        async with bootstrap.peer_http_client(config, timeout=2.0) as http:
            for _ in range(3):
                try:
                    await http.post(url.rstrip("/") + bootstrap.CHECK_PATH,
                                    json={"member_id": member_id})  # fmt: skip
                    return
                except httpx.HTTPError:
                    await trio.sleep(0.5)

    return lambda member_id, url: node.spawn(notify, member_id, url)


def _targets(config: NodeConfig, node: RaftNode) -> dict[str, str]:
    """Whom to ask: the --peer and --join URLs, and every member we know of."""
    out: dict[str, str] = dict(config.peers)
    for u in config.join:
        out.setdefault(u, u)
    roster = node.membership.roster
    for m in (*roster.latest.members, *roster.seed.members):
        if m.id != node.id and (url := roster.url_of(m.id)) is not None:
            out.setdefault(m.display_name, url)
    out.pop(config.id, None)
    return out


def _foreign(node: RaftNode, answers: dict[str, PeerAnswer | str]) -> str | None:
    """A configured peer that is a member of another cluster: this data dir is foreign."""
    for asked, a in sorted(answers.items(), key=lambda kv: kv[0]):
        if (isinstance(a, PeerAnswer) and a.state == "member" and a.cluster_id
                and a.cluster_id != node.cluster_id and asked in node.config.peers):  # fmt: skip
            return (
                f"this data dir ({node.config.data_dir}) belongs to cluster {node.cluster_id}, "
                f"but {asked} ({node.config.peers[asked]}) is a member of cluster "
                f"{a.cluster_id}: the node refuses to start. To make this node a member of "
                f"{a.cluster_id}, empty its data dir and start it again (it is then re-admitted "
                "or added as a new member); if the peer is the one in the wrong cluster, fix "
                "the --peer flags"
            )
    return None


def _check_removed(node: RaftNode, members: list[PeerAnswer]) -> None:
    """A member's committed configuration, newer than ours, without our member id."""
    for a in members:
        node.membership.peer_committed(a.committed_index, a.committed)


async def _ask_readmit(
    http: httpx.AsyncClient, config: NodeConfig, node: RaftNode, via: PeerAnswer,
    replaces: str | None = None,
) -> None:
    url = node.membership.roster.flag_urls.get(via.name) or next(
        (m.url for m in via.configuration.members if m.display_name == via.name), None
    )
    if not url:
        return
    body = {"name": config.id, "member_id": node.id, "url": config.advertise_url,
            "cluster_id": node.cluster_id, "replaces": replaces}  # fmt: skip
    try:
        r = await http.post(url.rstrip("/") + bootstrap.READMIT_PATH, json=body, timeout=10.0)
    except httpx.HTTPError as exc:
        log.info("node %s: re-admission request to %s failed: %s", config.id, via.name, exc)
        return
    if r.status_code == 200:
        log.info("node %s: re-admission of member id %s: %s", config.id, node.id,
                 r.json().get("status"))  # fmt: skip
    else:
        log.warning("node %s: re-admission refused (%d): %s", config.id, r.status_code,
                    r.text[:500])  # fmt: skip
