"""The HTTP API (API.md): client routes, peer routes, and the one place errors map to HTTP.

`create_app(node)` returns a QuartTrio app; `trioraft.server` serves it with
hypercorn inside the node's nursery.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import msgspec
from quart import Response, request
from quart_trio import QuartTrio
from quart_trio.wrappers import TrioRequest
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from trioraft import cluster_api, kv, observability, openapi
from trioraft.auth import ClientAuth
from trioraft.boundary import (
    MAX_BODY_BYTES,
    MAX_RAFT_BODY_BYTES,
    body_limit,
    decode_json,
    loggable,
    precheck,
    single_header,
)
from trioraft.core import (
    AppendEntriesResponse,
    Message,
    NotLeader,
    RequestVoteResponse,
)
from trioraft.errors import (
    ApiError,
    Forbidden,
    NoLeader,
    NoQuorum,
    Overloaded,
    ProposalDropped,
    ShuttingDown,
    Unauthorized,
    UnknownOutcome,
)
from trioraft.node import RaftNode
from trioraft.tls import TlsPeer, identity_error
from trioraft.transport import (
    TOKEN_HEADER,
    CodecError,
    append_entries_from_json,
    append_response_to_json,
    request_vote_from_json,
    vote_response_to_json,
)

__all__ = ["MAX_BODY_BYTES", "MAX_RAFT_BODY_BYTES", "ApiError", "create_app"]

log = logging.getLogger("trioraft.api")

LEADER_HEADER = "X-Raft-Leader"
DEBUG_MAX_KEYS = 100  # /debug's stateMachine: at most this many pairs ...
DEBUG_MAX_BYTES = 64 * 1024  # ... of at most this many characters of keys and values
_AUTH_HEADERS = {"WWW-Authenticate": 'Bearer realm="trioraft"'}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        msgspec.json.encode(body), status=status, content_type="application/json",
        headers=headers or {},
    )


def error_headers(status: int) -> dict[str, str]:
    """The headers an error answer carries besides its JSON body."""
    if status == 503:
        return {"Retry-After": "1"}
    if status == 401:
        return dict(_AUTH_HEADERS)
    return {}


def _error(status: int, code: str, message: str, **extra: Any) -> Response:
    return _json({"error": message, "code": code, **extra}, status, error_headers(status))


def map_error(exc: BaseException) -> ApiError:
    """Every runtime error's HTTP meaning, in one place (API.md §3 Errors)."""
    match exc:
        case ApiError():
            return exc
        case Unauthorized():
            return ApiError(401, "unauthorized", str(exc))
        case Forbidden():
            return ApiError(403, "forbidden", str(exc))
        case kv.TooLarge():
            return ApiError(413, "too_large", str(exc))
        case kv.InvalidCommand():
            return ApiError(400, "bad_request", str(exc))
        case NotLeader() | NoLeader():
            return ApiError(503, "no_leader", "no leader is known; retry shortly")
        case NoQuorum():
            return ApiError(503, "no_quorum", str(exc))
        case ProposalDropped():
            return ApiError(503, "no_leader", f"{exc}; it will not apply, retry")
        case UnknownOutcome():
            return ApiError(504, "unknown_outcome", str(exc))
        case Overloaded() | ShuttingDown():
            return ApiError(503, "no_leader", str(exc))
    return ApiError(500, "internal", "internal error (logged on the node)")


async def _raw_body(cache: bool) -> bytes:
    # All three arguments select quart's `-> bytes` overload (mypy --strict).
    return await request.get_data(cache, False, False)


async def _body_json(required: tuple[str, ...] = ()) -> dict[str, Any]:
    raw = await _raw_body(cache=False)
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes")
    body = decode_json(raw) if raw else None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    for name in required:
        if name not in body:
            raise ApiError(400, "bad_request", f"missing field {name!r}")
    return body


def _string(body: dict[str, Any], name: str, nullable: bool = False) -> str | None:
    v = body.get(name)
    if v is None and nullable:
        return None
    if not isinstance(v, str):
        kind = "a string or null" if nullable else "a string"
        raise ApiError(400, "bad_request", f"field {name!r} must be {kind}")
    return v


def _request_id() -> str | None:
    return check_request_id(single_header(request.scope["headers"], b"idempotency-key"))


def check_request_id(rid: str | None) -> str | None:
    if rid is None:
        return None
    try:
        kv.parse_request_id(rid)
    except kv.InvalidCommand as exc:
        raise ApiError(400, "bad_request", f"Idempotency-Key: {exc}") from None
    return rid


# ------------------------------------------------------ the operations themselves
# Shared by the Quart routes and the ASGI fast path: plain inputs in,
# (status, JSON body) out, runtime errors raised for map_error.


def result_reply(result: kv.Result) -> tuple[int, dict[str, Any]]:
    body = kv.result_to_json(result)
    match result:
        case kv.CasResult(ok=False):
            return 409, {**body, "error": "compare-and-set precondition false",
                         "code": "cas_failed"}
        case kv.ExpiredRequest():
            return 504, {**body, "code": "unknown_outcome"}
        case kv.InvalidResult():
            return 400, body
        case kv.TooLargeResult():
            return 413, body
    return 200, body


async def write_op(node: RaftNode, cmd: kv.Command) -> tuple[int, dict[str, Any]]:
    """Replicate a write: propose it here if we lead, else relay it to the leader."""
    data = kv.encode_command(cmd)  # validates: TooLarge -> 413, InvalidCommand -> 400
    if not node.is_leader:
        # Relayed to the leader in a batch with other writes arriving here.
        return result_reply(await node.forward(data))
    try:
        (result,) = await node.propose([data])
    except NotLeader:
        # Not appended, so it is safe to hand it to whoever leads now.
        return result_reply(await node.forward(data))
    return result_reply(result)


def authorize(token: str | None, token_header: str | None, authorization: str | None) -> None:
    """The cluster token check of every /raft/* route (401 changes nothing)."""
    if token is None:
        return
    given = token_header or ""
    if not given and authorization and authorization.startswith("Bearer "):
        given = authorization[7:]
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong cluster token")


async def read_barrier(node: RaftNode, consistency: str) -> None:
    if consistency == "stale":
        return
    if consistency != "linearizable":
        raise ApiError(400, "bad_request", "consistency must be 'linearizable' or 'stale'")
    await node.read_barrier()


async def get_op(node: RaftNode, key: str, consistency: str) -> tuple[int, dict[str, Any]]:
    check_key(key)
    await read_barrier(node, consistency)
    value = node.kv.get(key)
    if value is None:
        raise ApiError(404, "not_found", f"key {key!r} not found", key=key)
    return 200, {"key": key, "value": value}


def _raw_target() -> str:
    """This request's path and query as the client encoded them, for the leader.

    Re-encoding the decoded path would turn a key's "?" or "%" into URL syntax
    (key "a?b" would reach the leader as key "a" with a query).
    """
    raw = request.scope.get("raw_path") or quote(request.root_path + request.path).encode()
    target = quote(raw, safe="/%:@!$&'()*+,;=-._~")
    if request.query_string:
        target += "?" + quote(request.query_string, safe="/?%:@!$&'()*+,;=-._~")
    return target


class _KeyConverter(PathConverter):
    """A key in the path: any characters at all, a leading '/' or a newline included.

    Werkzeug's `path` needs a non-slash first character and its `.` stops at
    a newline, so keys like "/a" or "a\nb" (valid keys) had no path form.
    """

    regex = "(?s:.)+?"
    part_isolating = False  # spans slashes (werkzeug guesses from "/" in the regex)


class _Request(TrioRequest):
    """A request whose body limit is its route's (`boundary.body_limit`), not the app's."""

    def __init__(self, method: str, scheme: str, path: str, *args: Any, **kwargs: Any) -> None:
        kwargs["max_content_length"] = body_limit(method, path)
        super().__init__(method, scheme, path, *args, **kwargs)


def debug_body(node: RaftNode) -> dict[str, Any]:
    """/debug: the course's fields, with `stateMachine` bounded (issue 10 #7).

    At most DEBUG_MAX_KEYS pairs, in key order, holding at most
    DEBUG_MAX_BYTES characters; `stateMachineTruncated` says whether more
    exist, and `GET /kv?prefix=&limit=&after=` pages through all of them.
    """
    status = node.status()
    pairs: dict[str, str] = {}
    size = 0
    items, more = node.kv.range("", DEBUG_MAX_KEYS)
    for key, value in items:
        size += len(key) + len(value)
        if size > DEBUG_MAX_BYTES:
            more = True
            break
        pairs[key] = value
    return {
        "nodeId": status["id"],
        "state": status["role"],
        "term": status["term"],
        "leaderId": status["leader"],
        "logLength": status["last_log_index"],
        "commitIndex": status["commit_index"],
        "stateMachine": pairs,
        "stateMachineKeys": len(node.kv),
        "stateMachineTruncated": more,
        "note": (
            f"stateMachine shows at most {DEBUG_MAX_KEYS} keys and {DEBUG_MAX_BYTES} "
            "characters, in key order; page through every key with "
            "GET /kv?prefix=&limit=1000&after=<last key>"
        ),
    }


def check_key(key: str) -> str:
    if not key:
        raise ApiError(400, "bad_request", "the key must not be empty")
    kv.validate_key(key)
    return key


def client_auth(node: RaftNode) -> ClientAuth:
    """The node's client tokens (`trioraft.auth`), read from its configuration."""
    return ClientAuth(getattr(node.config, "client_tokens", ()))


def create_app(node: RaftNode, auth: ClientAuth | None = None) -> QuartTrio:
    app = QuartTrio("trioraft")
    app.request_class = _Request  # per-route body limits
    app.config["MAX_CONTENT_LENGTH"] = MAX_RAFT_BODY_BYTES
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    # Never answer "/kv//k" with a 308 to "/kv/k": that is another key.
    app.url_map.merge_slashes = False
    app.url_map.converters["key"] = _KeyConverter
    token = node.config.cluster_token
    auth = auth if auth is not None else client_auth(node)

    @app.before_request
    async def _boundary() -> None:
        # The fast path in front ran these checks already (before Quart read
        # anything); run them here for requests that reach this app directly.
        if not request.scope.get("trioraft.prechecked"):
            precheck(request.method, request.path, request.scope.get("raw_path"),
                     request.scope["headers"], auth)

    @app.after_request
    async def _leader_header(resp: Response) -> Response:
        lid = node.leader_name  # a name, not a member id (issue 12)
        if lid is not None:
            resp.headers[LEADER_HEADER] = lid
        return resp

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 404 and request.path == "/kv/":  # "PUT /kv/": the empty key
            return _error(400, "bad_request", "the key must not be empty")
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            status, "bad_request"
        )
        if status == 413:
            limit = body_limit(request.method, request.path)
            return _error(413, "too_large", f"request body over {limit} bytes")
        resp = _error(status, code, exc.description or exc.name)
        if (allow := dict(exc.get_headers()).get("Allow")) is not None:
            resp.headers["Allow"] = allow  # RFC 9110: a 405 names the allowed methods
        return resp

    @app.errorhandler(ApiError)
    async def _api_error(exc: ApiError) -> Response:
        return _error(exc.status, exc.code, exc.message, **exc.extra)

    @app.errorhandler(Exception)
    async def _crash(exc: Exception) -> Response:
        mapped = map_error(exc)
        if mapped.status == 500:
            log.exception("node=%s unhandled error in %s %s", node.id, request.method,
                          loggable(request.path))
        return _error(mapped.status, mapped.code, mapped.message)

    # ------------------------------------------------------------ write path
    async def _redirect() -> Response:
        """?redirect=true on a follower: 307 to the same request on the leader."""
        url = node.leader_url
        if url is None:
            await node.wait_for_leader(node.config.election_timeout_ms[1] / 1000 * 2)
            url = node.leader_url
        if url is None:
            raise ApiError(503, "no_leader", "no leader is known; retry shortly")
        return Response("", status=307, headers={"Location": url + _raw_target()})

    def _wants_redirect() -> bool:
        flag = request.args.get("redirect")
        if flag not in (None, "true", "false"):
            raise ApiError(400, "bad_request", "redirect must be 'true' or 'false'")
        return flag == "true" and not node.is_leader

    async def _write(cmd: kv.Command) -> Response:
        if _wants_redirect():
            kv.encode_command(cmd)  # a bad request is refused here, not redirected
            return await _redirect()
        status, body = await write_op(node, cmd)
        return _json(body, status)

    @app.route("/kv/<key:key>", methods=["PUT"])
    async def put_key(key: str) -> Response:
        body = await _body_json(("value",))
        return await _write(
            kv.Put(check_key(key), _string(body, "value") or "", request_id=_request_id())
        )

    @app.route("/kv", methods=["POST"])
    async def post_kv() -> Response:
        body = await _body_json(("key", "value"))
        key = check_key(_string(body, "key") or "")
        return await _write(kv.Put(key, _string(body, "value") or "", request_id=_request_id()))

    @app.route("/kv/<key:key>", methods=["DELETE"])
    async def delete_key(key: str) -> Response:
        return await _write(kv.Delete(check_key(key), request_id=_request_id()))

    @app.route("/kv", methods=["DELETE"])
    async def delete_prefix() -> Response:
        prefix = request.args.get("prefix")
        if prefix is None:
            raise ApiError(400, "bad_request", "DELETE /kv needs ?prefix=p (a non-empty prefix)")
        return await _write(kv.DeletePrefix(prefix, request_id=_request_id()))

    @app.route("/kv/<key:key>/cas", methods=["POST"])
    async def cas_key(key: str) -> Response:
        body = await _body_json(("expected", "value"))
        cmd = kv.Cas(
            check_key(key),
            _string(body, "expected", nullable=True),
            _string(body, "value", nullable=True),
            request_id=_request_id(),
        )
        return await _write(cmd)

    @app.route("/txn", methods=["POST"])
    async def txn() -> Response:
        body = await _body_json()
        try:
            cmd = msgspec.convert(
                {"compare": body.get("compare", []), "success": body.get("success", []),
                 "failure": body.get("failure", [])},
                _TxnBody,
            ).to_command(_request_id())
        except msgspec.ValidationError as exc:
            raise ApiError(400, "bad_request", f"invalid transaction: {exc}") from None
        return await _write(cmd)

    # ------------------------------------------------------------- read path
    async def _barrier() -> None:
        await read_barrier(node, request.args.get("consistency", "linearizable"))

    @app.route("/kv/<key:key>", methods=["GET"])
    async def get_key(key: str) -> Response:
        check_key(key)
        if _wants_redirect() and request.args.get("consistency") != "stale":
            return await _redirect()
        status, body = await get_op(node, key, request.args.get("consistency", "linearizable"))
        return _json(body, status)

    @app.route("/kv", methods=["GET"])
    async def range_kv() -> Response:
        prefix = request.args.get("prefix", "")
        try:
            limit = int(request.args.get("limit", "1000"))
        except ValueError:
            raise ApiError(400, "bad_request", "limit must be an integer") from None
        if not 1 <= limit <= 10_000:
            raise ApiError(400, "bad_request", "limit must be between 1 and 10000")
        after = request.args.get("after")
        if after is not None:
            check_key(after)
        if _wants_redirect() and request.args.get("consistency") != "stale":
            return await _redirect()
        await _barrier()
        items, more = node.kv.range(prefix, limit, after=after)
        return _json({"items": [{"key": k, "value": v} for k, v in items], "more": more})

    # ---------------------------------------------------------- observability
    @app.route("/status", methods=["GET"])
    async def status() -> Response:
        return _json(node.status())

    @app.route("/debug", methods=["GET"])
    async def debug() -> Response:
        return _json(debug_body(node))

    @app.route("/health", methods=["GET"])
    async def health() -> Response:
        return _json({"ok": True, "id": node.name})

    @app.route("/ready", methods=["GET"])
    async def ready() -> Response:
        if node.is_ready():
            return _json({"ready": True, "leader": node.leader_name})
        return _json({"ready": False, "leader": node.leader_name, "error": "not ready",
                      "code": "no_leader"}, 503, {"Retry-After": "1"})

    @app.route("/openapi.json", methods=["GET"])
    async def openapi_json() -> Response:
        return _json(openapi.spec())

    observability.register(app, node)  # /metrics, /ui, /ui/state (docs/operations.md)
    cluster_api.register(app, node)  # /cluster/* and the membership peer routes (issue 12)

    # ------------------------------------------------------------ peer routes
    peer_tls = getattr(node.config, "peer_tls_files", None) is not None

    def _authorize() -> None:
        authorize(token, request.headers.get(TOKEN_HEADER), request.headers.get("Authorization"))

    async def _course_rpc(
        parse: Callable[[bytes, str], Message],
        answer_type: type,
        to_json: Callable[[Any], dict[str, Any]],
        refusal: dict[str, Any],
    ) -> Response:
        """A course-form JSON request stepped into the core, its answer as JSON.

        The token is checked before a byte of the body is read (an
        unauthenticated sender costs no memory), and the body is bounded.
        """
        _authorize()
        # Peer TLS: a cluster-CA certificate before the body, naming the sender after
        # (trioraft.tls.identity_error, as for peer streams).
        scoped = request.scope.get("trioraft.tls_peer")
        tls_peer = scoped if isinstance(scoped, TlsPeer) else None
        if peer_tls and (tls_peer is None or not tls_peer.cluster_ca):
            raise ApiError(403, "tls_required", "this node requires peer TLS: a certificate "
                           "from the cluster CA naming the sending member")  # fmt: skip
        if (request.content_length or 0) > MAX_RAFT_BODY_BYTES:
            raise ApiError(413, "too_large", f"request body over {MAX_RAFT_BODY_BYTES} bytes")
        try:
            msg = parse(await _raw_body(cache=False), node.id)
        except CodecError as exc:
            raise ApiError(400, "bad_request", str(exc)) from None
        # The course's candidateId/leaderId are names; the core speaks member ids.
        src = node.membership.roster.id_of(msg.src)
        if src is not None and src != msg.src:
            msg = dataclasses.replace(msg, src=src)
        if peer_tls and (why := identity_error(tls_peer, msg.src, node.transport.peer_name)):
            raise ApiError(403, "identity", f"may not speak as member {msg.src!r}: {why}")
        if msg.src not in node.peer_ids:
            # Nothing for a node outside the configuration (the core ignores
            # it); answer in the course's shape all the same.
            return _json({"term": node.term, **refusal})
        resp = await node.rpc(msg)
        if not isinstance(resp, answer_type):
            raise ApiError(503, "no_quorum", "no answer from the node in time")
        return _json(to_json(resp))

    @app.route("/raft/request-vote", methods=["POST"])
    async def request_vote() -> Response:
        return await _course_rpc(
            request_vote_from_json, RequestVoteResponse, vote_response_to_json,
            {"voteGranted": False},
        )

    @app.route("/raft/append-entries", methods=["POST"])
    async def append_entries() -> Response:
        return await _course_rpc(
            append_entries_from_json, AppendEntriesResponse, append_response_to_json,
            {"success": False, "matchIndex": 0},
        )

    return app


# --------------------------------------------------------------- /txn body shape


class _TxnCompare(msgspec.Struct, forbid_unknown_fields=False):
    key: str
    op: kv.CompareOp = "=="
    value: str | None = None


class _TxnOp(msgspec.Struct):
    op: str
    key: str | None = None
    value: str | None = None
    expected: str | None = None
    prefix: str | None = None

    def to_op(self) -> kv.Op:
        if self.op == "delete_prefix":
            if self.prefix is None:
                raise msgspec.ValidationError("delete_prefix needs a string 'prefix'")
            return kv.DeletePrefix(self.prefix)
        if self.key is None:
            raise msgspec.ValidationError(f"{self.op} needs a string 'key'")
        match self.op:
            case "put":
                if self.value is None:
                    raise msgspec.ValidationError("put needs a string 'value'")
                return kv.Put(self.key, self.value)
            case "delete":
                return kv.Delete(self.key)
            case "get":
                return kv.Get(self.key)
            case "cas":
                return kv.Cas(self.key, self.expected, self.value)
        raise msgspec.ValidationError(
            f"unknown op {self.op!r} (put, delete, delete_prefix, get, cas)"
        )


class _TxnBody(msgspec.Struct):
    compare: list[_TxnCompare]
    success: list[_TxnOp]
    failure: list[_TxnOp]

    def to_command(self, request_id: str | None) -> kv.Txn:
        return kv.Txn(
            compare=[kv.Compare(c.key, c.op, c.value) for c in self.compare],
            success=[o.to_op() for o in self.success],
            failure=[o.to_op() for o in self.failure],
            request_id=request_id,
        )
