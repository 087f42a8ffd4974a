"""The membership routes (issue 12; docs/api.md "Cluster membership").

Client routes (client tokens: GET needs the read role, everything else and
the backup the write role, see `trioraft.boundary`):

    GET    /cluster/members                      every member, from the leader's view
    POST   /cluster/members                      {"name", "url", "promote"?, "timeout_ms"?}
    POST   /cluster/members/{name}/promote       {"wait_ms"?, "timeout_ms"?}
    DELETE /cluster/members/{name}
    POST   /cluster/leader/transfer              {"to"?: name|null, "timeout_ms"?}
    GET    /cluster/snapshot                     a consistent backup (trioraft.backup)

Peer routes (the cluster token, like every /raft/* route):

    GET    /raft/identity                        who this node is (start-up decisions)
    POST   /raft/readmit                         a wiped node asks to come back

Changes run on the leader; a follower relays the request to it over HTTP
(once: a relayed request that finds no leader is a 503). Every answer is
definite: a 4xx or 503 changed nothing, a 200 is committed, a 504 may or
may not have happened (`unknown_outcome`, or `timeout` for a transfer).
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import msgspec
import trio
from quart import Response, request
from quart_trio import QuartTrio

from trioraft import bootstrap
from trioraft.backup import Backup, encode_backup
from trioraft.boundary import decode_json
from trioraft.core import (
    ChangeInProgress,
    InvalidChange,
    LastVoter,
    MemberExists,
    NotCaughtUp,
    NotLeader,
    ProposalDropped,
    RaftCore,
    Role,
    TransferRefused,
    UnknownMember,
)
from trioraft.errors import ApiError, NoLeader, UnknownOutcome
from trioraft.node import RaftNode
from trioraft.tls import TlsPeer
from trioraft.transport import TOKEN_HEADER

__all__ = ["identity_answer", "members_view", "register"]

log = logging.getLogger("trioraft.api")

RELAYED_HEADER = "X-Trioraft-Relayed"  # how many times this request was relayed
MAX_HOPS = 2
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_TIMEOUT_MS = 3_600_000


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status=status, content_type="application/json",
                    headers=headers or {})  # fmt: skip


async def _body() -> dict[str, Any]:
    # Cached: a follower relays the same body to the leader.
    raw = await request.get_data(True, False, False)
    if not raw:
        return {}
    body = decode_json(raw)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return body


def _name(value: object, what: str = "name") -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ApiError(400, "bad_request", f"{what} must be a node name (letters, digits, "
                       "'.', '_', '-'; at most 64 characters)")  # fmt: skip
    return value


def _url(value: object) -> str:
    if (not isinstance(value, str) or len(value) > 2048
            or not re.fullmatch(r"https?://[^\s/?#]+", value.rstrip("/"))):  # fmt: skip
        raise ApiError(400, "bad_request", "url must be http://HOST:PORT (no path or query)")
    return value.rstrip("/")


def _millis(body: dict[str, Any], key: str, default_s: float) -> float:
    v = body.get(key)
    if v is None:
        return default_s
    if type(v) is not int or not 0 <= v <= MAX_TIMEOUT_MS:
        raise ApiError(400, "bad_request", f"{key} must be an integer of milliseconds, "
                       f"0 to {MAX_TIMEOUT_MS}")  # fmt: skip
    return v / 1000


def membership_error(exc: BaseException) -> ApiError | None:
    """The HTTP meaning of a membership refusal (all definite: nothing changed)."""
    match exc:
        case MemberExists():
            return ApiError(409, "member_exists", str(exc))
        case ChangeInProgress():
            return ApiError(409, "change_in_progress", str(exc))
        case NotCaughtUp():
            return ApiError(409, "not_caught_up", str(exc))
        case LastVoter():
            return ApiError(409, "last_voter", str(exc))
        case UnknownMember():
            return ApiError(404, "not_found", str(exc))
        case InvalidChange():
            return ApiError(409, "invalid_change", str(exc))
        case TransferRefused():
            return ApiError(409, "transfer_refused", str(exc))
        case ProposalDropped():
            return ApiError(503, "no_leader", f"{exc}: the change was overwritten by a new "
                            "leader's entry and will not apply; retry")  # fmt: skip
        case UnknownOutcome():
            return ApiError(504, "unknown_outcome", f"{exc}; check GET /cluster/members")
    return None


# ------------------------------------------------------------------- views


def identity_answer(node: RaftNode) -> dict[str, Any]:
    """`GET /raft/identity`: what a starting node needs to know about us."""
    facts: dict[str, Any] = node.startup_facts
    core = node.core
    roster = node.membership.roster
    if core is None:
        state = facts.get("state", "empty")
    elif node.id in core.configuration.ids or roster.was_member:
        state = "member"
    else:
        state = "joining"
    out: dict[str, Any] = {
        "name": node.name,
        "state": state,
        "nonce": facts.get("nonce", ""),
        "advertise": node.config.advertise_url,
        "expected": facts.get("expected", []),
        "cluster_id": node.cluster_id if core is not None or state != "empty" else "",
        "member_id": node.id if core is not None else "",
        "bootstrap": facts.get("record"),
        "configuration": [],
        "committed": [],
        "committed_index": 0,
        "leader": None,
    }
    if core is not None:
        out["configuration"] = _with_urls(node, core.configuration.members)
        out["committed"] = _with_urls(node, roster.committed.members)
        out["committed_index"] = roster.committed_index
        if core.leader_id is not None:
            out["leader"] = {"member_id": core.leader_id, "name": node.leader_name,
                             "url": node.leader_url}  # fmt: skip
    return out


def _with_urls(node: RaftNode, members: Any) -> list[dict[str, Any]]:
    roster = node.membership.roster
    return [{**m.to_json(), "url": m.url or roster.url_of(m.id) or ""} for m in members]


def members_view(node: RaftNode) -> dict[str, Any]:
    """`GET /cluster/members`: every member; match index, lag and health on the leader."""
    core = node.core
    if core is None:
        raise ApiError(503, "no_leader", f"this node is starting ({node.starting})")
    roster = node.membership.roster
    leading = core.role is Role.LEADER
    peers = node.transport.status()
    last = core.log.last_index()
    members = []
    for m in core.configuration.members:
        e: dict[str, Any] = {
            "name": m.display_name, "member_id": m.id, "url": roster.url_of(m.id) or m.url,
            "voter": m.voter, "leader": m.id == core.leader_id,
        }  # fmt: skip
        if leading:
            if m.id == core.id:
                e.update(match_index=last, lag=0, replication="self", reachable=True)
            elif (pr := core.progress.get(m.id)) is not None:
                link = peers.get(m.id, {})
                e.update(match_index=pr.match_index, lag=max(0, last - pr.match_index),
                         replication=pr.state.value, caught_up=core.caught_up(m.id),
                         reachable=bool(link.get("connected", pr.recent_active)))  # fmt: skip
                if "last_received_ms_ago" in link:
                    e["last_contact_ms"] = link["last_received_ms_ago"]
        members.append(e)
    return {
        "cluster_id": node.cluster_id,
        "leader": node.leader_name,
        "term": core.term,
        "commit_index": core.commit_index,
        "last_log_index": last,
        "change_in_progress": not core.change_committed(),
        "last_change": node.membership.last_change,
        "served_by": node.name,
        "from_leader": leading,
        "members": sorted(members, key=lambda e: e["name"]),
    }


def _member(node: RaftNode, member_id: str) -> dict[str, Any] | None:
    members: list[dict[str, Any]] = members_view(node)["members"]
    for e in members:
        if e["member_id"] == member_id:
            return e
    return None


# ------------------------------------------------------------------ relaying


async def _relay(node: RaftNode, timeout: float, *, peer: bool = False) -> Response:
    """Send this request on to the leader and pass its answer back.

    At most two hops (a follower to the leader, and that leader on to its
    successor when it handed leadership over to remove itself): a request
    that would travel further answers 503 (definite: nothing was done)."""
    try:
        hops = int(request.headers.get(RELAYED_HEADER, "0"))
    except ValueError:
        hops = MAX_HOPS
    if hops >= MAX_HOPS:
        raise ApiError(503, "no_leader", "relayed to a node that does not lead (any more); "
                       "retry shortly")  # fmt: skip
    wait = node.config.election_timeout_ms[1] / 1000 * 2
    if node.leader_id is None or node.leader_id == node.id:
        await node.wait_for_leader(wait)
    url = node.leader_url
    if url is None or node.leader_id == node.id:
        raise ApiError(503, "no_leader", "no leader is known; retry shortly")
    headers = {RELAYED_HEADER: str(hops + 1), "Content-Type": "application/json"}
    for h in ("Authorization", TOKEN_HEADER):
        if (v := request.headers.get(h)) is not None:
            headers[h] = v
    target = request.full_path if request.query_string else request.path
    body = await request.get_data(True, False, False)
    mutation = request.method != "GET"
    try:
        async with bootstrap.peer_http_client(node.config, timeout + 2.0) as http:
            r = await http.request(request.method, url + target, content=body, headers=headers)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise ApiError(503, "no_leader", f"the leader could not be reached: {exc}") from None
    except httpx.HTTPError as exc:
        if mutation:
            raise ApiError(504, "unknown_outcome", f"the leader did not answer ({exc!r}): the "
                           "change may or may not have happened") from None  # fmt: skip
        raise ApiError(503, "no_leader", f"the leader did not answer ({exc!r})") from None
    out = {k: v for k, v in r.headers.items()
           if k.lower() in ("content-type", "retry-after", "content-disposition")}  # fmt: skip
    return Response(r.content, status=r.status_code, headers=out)


async def _on_leader(
    node: RaftNode, timeout: float, op: Callable[[], Awaitable[Response]]
) -> Response:
    """Run `op` here if we lead, else relay the request to the leader."""
    if not node.is_leader:
        return await _relay(node, timeout)
    try:
        return await op()
    except (NotLeader, NoLeader):
        # Not appended (or we handed leadership over first): the leader now
        # takes it. A relayed request that lands here answers 503 instead.
        return await _relay(node, timeout)
    except Exception as exc:
        mapped = membership_error(exc)
        if mapped is None:
            raise
        headers = {"Retry-After": "1"} if mapped.code == "change_in_progress" else {}
        return _json({"error": mapped.message, "code": mapped.code}, mapped.status, headers)


def _peer_authorized(token: str | None, peer_tls: bool) -> None:
    """A peer route: the cluster token if there is one, and with peer TLS a
    certificate from the cluster CA (as for the course routes and the peer
    streams; any member's certificate will do: these routes only ask who a
    node is, or carry a wiped member's request, which the leader checks by
    asking the node at the URL it gives)."""
    if peer_tls:
        scoped = request.scope.get("trioraft.tls_peer")
        if not isinstance(scoped, TlsPeer) or not scoped.cluster_ca:
            raise ApiError(403, "tls_required", "this node requires peer TLS: a certificate "
                           "from the cluster CA")  # fmt: skip
    if token is None:
        return
    given = request.headers.get(TOKEN_HEADER, "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong cluster token")


# ------------------------------------------------------------------- routes


def register(app: QuartTrio, node: RaftNode) -> None:
    token = node.config.cluster_token
    peer_tls = node.config.peer_tls_files is not None
    default_timeout = node.config.request_timeout_s

    @app.route(bootstrap.IDENTITY_PATH, methods=["GET"])
    async def raft_identity() -> Response:
        _peer_authorized(token, peer_tls)
        return _json(identity_answer(node))

    @app.route(bootstrap.READMIT_PATH, methods=["POST"])
    async def raft_readmit() -> Response:
        _peer_authorized(token, peer_tls)
        body = await _body()
        name = _name(body.get("name"))
        url = _url(body.get("url"))
        member_id, cluster_id = body.get("member_id"), body.get("cluster_id")
        if not isinstance(member_id, str) or not 0 < len(member_id) <= 128:
            raise ApiError(400, "bad_request", "member_id must be a member id")
        if cluster_id != node.cluster_id:
            raise ApiError(409, "cluster_mismatch", f"this is cluster {node.cluster_id}, not "
                           f"{cluster_id}")  # fmt: skip
        replaces = body.get("replaces")
        if replaces is not None and (not isinstance(replaces, str)
                                     or not 0 < len(replaces) <= 128):  # fmt: skip
            raise ApiError(400, "bad_request", "replaces must be a member id")

        async def op() -> Response:
            await _check_joiner(node, url, name, member_id)
            status = await node.membership.readmit(name, member_id, url, default_timeout,
                                                   node.spawn, replaces)  # fmt: skip
            return _json({"status": status, "name": name, "member_id": member_id})

        return await _on_leader(node, default_timeout, op)

    @app.route(bootstrap.CHECK_PATH, methods=["POST"])
    async def raft_check_membership() -> Response:
        # A hint from a leader that removed us: check now (by asking the
        # members, as the periodic check does); the hint itself changes nothing.
        _peer_authorized(token, peer_tls)
        node.membership.check_now.set()
        return _json({"ok": True})

    @app.route("/cluster/members", methods=["GET"])
    async def list_members() -> Response:
        if not node.is_leader and node.leader_id is not None and not request.headers.get(
            RELAYED_HEADER
        ):
            try:
                return await _relay(node, default_timeout)
            except ApiError:
                pass  # the leader is unreachable: our own view, marked as such
        return _json(members_view(node))

    @app.route("/cluster/members", methods=["POST"])
    async def add_member() -> Response:
        body = await _body()
        name = _name(body.get("name"))
        url = _url(body.get("url"))
        promote = body.get("promote", False)
        if not isinstance(promote, bool):
            raise ApiError(400, "bad_request", "promote must be true or false")
        timeout = _millis(body, "timeout_ms", default_timeout if not promote else 60.0)

        async def op() -> Response:
            joiner = await _check_joiner(node, url, name, None)
            core = _core(node)
            current = core.configuration.get(joiner.member_id)
            index = 0
            if current is None:
                index = await node.membership.add_learner(name, joiner.member_id, url,
                                                          min(timeout, default_timeout))
            promoted = current is not None and current.voter
            # Adding again what is already there (a retry after a 504) is a no-op.
            note = "already a member: nothing changed" if current is not None else None
            if promote and not promoted:
                deadline = trio.current_time() + timeout
                while await node.membership.wait_caught_up(
                    joiner.member_id, max(0.0, deadline - trio.current_time())
                ):
                    try:
                        index = await node.membership.promote(name, default_timeout)
                    except NotCaughtUp:
                        # It fell behind again between the check and the proposal.
                        if trio.current_time() >= deadline:
                            break
                        continue
                    promoted = True
                    break
                if not promoted:
                    note = (f"{name} was added as a learner but did not catch up within "
                            f"{timeout:g} s; promote it later (trioraft member promote {name})")
            return _json({"index": index, "name": name, "member_id": joiner.member_id,
                          "voter": promoted, "note": note,
                          "member": _member(node, joiner.member_id)})  # fmt: skip

        return await _on_leader(node, timeout, op)

    @app.route("/cluster/members/<name>/promote", methods=["POST"])
    async def promote_member(name: str) -> Response:
        _name(name)
        body = await _body()
        wait = _millis(body, "wait_ms", 0.0)
        timeout = _millis(body, "timeout_ms", default_timeout)

        async def op() -> Response:
            core = _core(node)
            member_id = node.membership.roster.id_of(name)
            m = core.configuration.get(member_id) if member_id else None
            if m is None:
                raise UnknownMember(f"no member is named {name!r}")
            if m.voter:
                return _json({"error": f"{name} is already a voter", "code": "not_a_learner"},
                             409)  # fmt: skip
            if wait > 0:
                await node.membership.wait_caught_up(m.id, wait)
            if not core.promotable(m.id):
                pr = core.progress.get(m.id)
                behind = f"match index {pr.match_index}, commit {core.commit_index}" if pr else ""
                raise NotCaughtUp(f"{name} is not caught up yet ({behind}); retry, or pass "
                                  "wait_ms to wait for it")  # fmt: skip
            index = await node.membership.promote(name, timeout)
            return _json({"index": index, "name": name, "member_id": m.id, "voter": True})

        return await _on_leader(node, timeout + wait, op)

    @app.route("/cluster/members/<name>", methods=["DELETE"])
    async def remove_member(name: str) -> Response:
        _name(name)
        timeout = default_timeout

        async def op() -> Response:
            member_id = node.membership.roster.id_of(name)
            index = await node.membership.remove(name, timeout)
            return _json({"index": index, "name": name, "member_id": member_id,
                          "removed": True})  # fmt: skip

        return await _on_leader(node, timeout, op)

    @app.route("/cluster/leader/transfer", methods=["POST"])
    async def transfer() -> Response:
        body = await _body()
        to = body.get("to")
        if to is not None:
            _name(to, "to")
        timeout = _millis(body, "timeout_ms", node.config.election_timeout_ms[1] / 1000 * 4)

        async def op() -> Response:
            core = _core(node)
            target: str | None = None
            if to is not None:
                target = node.membership.roster.id_of(to)
                if target is None or target not in core.configuration.ids:
                    raise UnknownMember(f"no member is named {to!r}")
                if target == core.id:
                    return _json({"leader": node.name, "previous": node.name})
            previous = node.name
            new = await node.transfer_to(target, timeout)
            if new is None:
                return _json({"error": f"leadership did not move within {timeout:g} s; it may "
                              "still move", "code": "timeout"}, 504)  # fmt: skip
            return _json({"leader": node.membership.roster.name_of(new), "previous": previous})

        return await _on_leader(node, timeout, op)

    @app.route("/cluster/snapshot", methods=["GET"])
    async def snapshot() -> Response:
        return await _backup(node)


def _core(node: RaftNode) -> RaftCore:
    core = node.core
    if core is None or core.role is not Role.LEADER:
        raise NotLeader(node.leader_id)
    return core


async def _check_joiner(
    node: RaftNode, url: str, name: str, member_id: str | None
) -> bootstrap.PeerAnswer:
    """The node at `url` must be a joiner of this cluster named `name` (and, if
    given, with that member id): otherwise nothing is proposed."""
    async with bootstrap.peer_http_client(node.config) as http:
        a = await bootstrap.ask_identity(http, url)
    if isinstance(a, str):
        raise ApiError(409, "not_joining", f"the node at {url} {a}; start it first with an "
                       f"empty data dir and --join {node.config.advertise_url}")  # fmt: skip
    if a.name != name:
        raise ApiError(409, "not_joining", f"the node at {url} is named {a.name!r}, not {name!r}")
    if a.cluster_id and a.cluster_id != node.cluster_id:
        raise ApiError(409, "not_joining", f"the node at {url} belongs to cluster "
                       f"{a.cluster_id}, this is {node.cluster_id}")  # fmt: skip
    if not a.member_id or (member_id is not None and a.member_id != member_id):
        raise ApiError(409, "not_joining", f"the node at {url} is not waiting to join under "
                       f"that member id (it says {a.member_id or 'none yet'!r}, state "
                       f"{a.state})")  # fmt: skip
    if a.state == "empty":
        raise ApiError(409, "not_joining", f"the node at {url} is still deciding whether to "
                       "bootstrap; start it with --join")  # fmt: skip
    return a


async def _backup(node: RaftNode) -> Response:
    """A consistent backup: the state machine at an index covering every write
    acknowledged before this request (a ReadIndex barrier, as a linearizable read)."""
    await node.read_barrier()
    core = node.core
    if core is None:
        raise ApiError(503, "no_leader", "this node is starting")
    # No await between these three: the state machine does not move under us.
    index = node.kv.applied_index
    meta = core.snapshot_meta(index)
    chunks = node.kv.snapshot_chunks()
    # Encoded in short slices on the loop, joined in a thread.
    frames = await node.encode_snapshot(chunks)
    data = await trio.to_thread.run_sync(b"".join, frames)
    del frames
    raw = encode_backup(Backup(meta.index, meta.term, node.cluster_id, node.name, meta.config,
                               data))  # fmt: skip
    name = f"trioraft-{node.cluster_id}-{meta.index}.backup"
    return Response(raw, status=200, content_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}"',
                             "X-Trioraft-Index": str(meta.index)})  # fmt: skip
