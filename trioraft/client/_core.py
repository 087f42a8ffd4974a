"""The sans-IO request logic both clients share: leader tracking, retries, op mapping.

An operation is a generator that yields "send this request" (:class:`Send`) and
"sleep this long" (:class:`Sleep`) actions and receives the response (or the
transport exception); each client only supplies the I/O.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from ._errors import (
    BadRequest,
    EndpointStatus,
    Forbidden,
    RangePage,
    TlsError,
    TooLarge,
    TrioraftError,
    TxnResult,
    Unauthorized,
    Unavailable,
    UnknownOutcome,
)
from ._tls import tls_failure
from ._txn import txn_result

__all__ = ["DEFAULT_ENDPOINTS", "Consistency", "Core", "Send", "Sleep", "key_path",
           "normalize_endpoints"]

DEFAULT_ENDPOINTS = ("http://127.0.0.1:3001", "http://127.0.0.1:3002", "http://127.0.0.1:3003")
LEADER_HEADER = "X-Raft-Leader"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: The server's largest page (docs/api.md, Limits): what `scan` asks for.
MAX_PAGE = 10_000

Consistency = Literal["linearizable", "stale"]
T = TypeVar("T")


def normalize_endpoints(
    endpoints: str | Iterable[str], default_scheme: str = "http"
) -> tuple[str, ...]:
    """``"a:1,http://b:2/"`` -> ``("http://a:1", "http://b:2")``; ValueError if empty/bad.
    `default_scheme` is for endpoints given without one."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    result: list[str] = []
    for raw in items:
        url = raw.strip().rstrip("/")
        if not url:
            continue
        if "://" not in url:
            url = f"{default_scheme}://{url}"
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"not an http(s) endpoint URL: {raw.strip()!r}")
        if url not in result:
            result.append(url)
    if not result:
        raise ValueError("no endpoints given")
    return tuple(result)


def key_path(key: str) -> str:
    """``/kv/<key>`` with the key as one percent-encoded path segment.

    Every character but the unreserved ones is encoded, "/" included, so the key
    is always exactly one segment (a leading "/" travels as ``%2F``). The segments
    "." and ".." are encoded as ``%2E``: HTTP clients (httpx, browsers) remove
    literal dot segments before sending (RFC 3986 §5.2.4), which would turn
    ``/kv/..`` into ``/``.
    """
    if not isinstance(key, str) or not key:
        raise ValueError("key must be a non-empty string")
    segment = quote(key, safe="")
    if key in (".", ".."):
        segment = segment.replace(".", "%2E")
    return "/kv/" + segment


@dataclass(frozen=True, slots=True)
class Send:
    url: str  # base URL of the node
    method: str
    path: str
    params: dict[str, str] | None
    body: Any
    headers: dict[str, str]
    timeout: float


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Action = Send | Sleep
# What the driver sends back: the response, the transport exception, or None after a sleep.
Reply = httpx.Response | httpx.TransportError | None
Gen = Generator[Action, Reply, T]

# Transport errors raised before a byte of the request could have reached the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
# ... and of those, the ones that say "nothing answers at that address" (a full
# local pool is not one: the node may be fine).
_UNREACHABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol)


def _json_or_none(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def error_of(resp: httpx.Response) -> tuple[str, str]:
    """(code, message) from an error response body, tolerating non-JSON bodies."""
    body = _json_or_none(resp)
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        return str(body["code"]), str(body.get("error", resp.reason_phrase))
    status = f"HTTP {resp.status_code} {resp.reason_phrase}".strip()
    return "error", f"{status} (not a trioraft answer)"


def json_dict(resp: httpx.Response) -> dict[str, Any]:
    body = _json_or_none(resp)
    if not isinstance(body, dict):
        raise TrioraftError(
            f"unexpected response from {resp.request.url}: not a JSON object",
            code="bad_response",
            status=resp.status_code,
        )
    return body


def _check_consistency(consistency: str) -> None:
    if consistency not in ("linearizable", "stale"):
        raise ValueError(f"consistency must be 'linearizable' or 'stale', not {consistency!r}")


@dataclass(slots=True)
class _Lane:
    id: str  # the client part of the Idempotency-Key
    seq: int = 0  # the last sequence number used


class Core:
    """Leader tracking, retry policy and request/response mapping; no I/O."""

    def __init__(
        self,
        endpoints: str | Iterable[str],
        *,
        timeout: float,
        attempt_timeout: float,
        unreachable_timeout: float,
        retry_base: float,
        retry_cap: float,
        now: Callable[[], float],
        rng: random.Random | None,
        client_id: str | None,
        default_scheme: str = "http",
    ) -> None:
        if timeout <= 0 or attempt_timeout <= 0 or unreachable_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.endpoints = normalize_endpoints(endpoints, default_scheme)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.unreachable_timeout = unreachable_timeout
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.client_id = client_id or uuid.uuid4().hex
        self._now = now
        self._rng = rng or random.Random()
        # Write lanes: one Idempotency-Key client id each, holding at most one write
        # (and its retries) at a time. The server remembers the results of only the
        # newest DEDUP_WINDOW (64) sequence numbers per client id, so one id shared
        # by 64+ concurrent writes gets "too old" answers for the stragglers (seen:
        # 64 tasks on one AsyncClient). With a lane per concurrent write, every
        # lane's writes are strictly sequential and no retry is ever too old.
        # Lane 0 is the client id itself; more are made as concurrency needs them.
        # list.pop/append are atomic under the GIL: safe across threads.
        self._free_lanes: list[_Lane] = [_Lane(self.client_id)]
        self._lane_count = itertools.count(1)
        self._cursor = 0  # index into endpoints: where non-leader requests go
        self.leader_id: str | None = None
        self.leader_url: str | None = None
        self._members: dict[str, str] = {}  # id -> advertised URL, from /status
        self._id_of: dict[str, str] = {}  # endpoint URL -> node id, from /status
        self._unreachable: set[str] = set()  # advertised URLs we could not connect to

    # -- leader tracking

    def _target(self, leader: bool) -> str:
        if leader and self.leader_url is not None:
            return self.leader_url
        return self.endpoints[self._cursor]

    def _failed(self, url: str, *, unreachable: bool) -> None:
        """`url` did not answer (or said it knows no leader): look elsewhere."""
        if url == self.leader_url:
            self.leader_url = None
            if unreachable and url not in self.endpoints:
                # An advertised address this client cannot reach (e.g. a container
                # name): stop trying it; the endpoints forward to the leader.
                self._unreachable.add(url)
        if self.endpoints[self._cursor] == url:
            self._cursor = (self._cursor + 1) % len(self.endpoints)

    def _resolve(self, leader_id: str) -> str | None:
        for url in self.endpoints:
            if self._id_of.get(url) == leader_id:
                return url
        member_url = self._members.get(leader_id)
        if member_url is not None and member_url not in self._unreachable:
            return member_url
        return None

    def learn_status(self, url: str, body: Mapping[str, Any]) -> None:
        node_id = body.get("id")
        if isinstance(node_id, str):
            self._id_of[url] = node_id
        members = body.get("members")
        if isinstance(members, Mapping):
            for member_id, info in members.items():
                member_url = info.get("url") if isinstance(info, Mapping) else None
                if isinstance(member_id, str) and isinstance(member_url, str):
                    self._members[member_id] = member_url.rstrip("/")

    def _learn(self, url: str, resp: httpx.Response) -> Gen[None]:
        """Update the leader guess from a response's X-Raft-Leader header."""
        leader_id = resp.headers.get(LEADER_HEADER)
        if not leader_id:
            return
        if url in self.endpoints:
            self._cursor = self.endpoints.index(url)  # stick with a node that answers
        if leader_id == self.leader_id and self.leader_url is not None:
            return
        self.leader_id = leader_id
        if leader_id not in self._members and url not in self._id_of:
            # One extra round trip per unknown leader: the members map says where it is.
            reply = yield Send(url, "GET", "/status", None, None, {}, self.attempt_timeout)
            if isinstance(reply, httpx.Response) and reply.status_code == 200:
                with contextlib.suppress(TrioraftError):
                    self.learn_status(url, json_dict(reply))
        self.leader_url = self._resolve(leader_id)

    # -- the retry loop

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.retry_cap, self.retry_base * 2.0 ** min(attempt, 30))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)  # "equal jitter"

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        write: bool,
        leader: bool = True,
        accept: frozenset[int] = frozenset({200}),
    ) -> Gen[httpx.Response]:
        if not write:
            return (yield from self._request(method, path, params, body, {}, False, leader,
                                             accept))
        try:
            lane = self._free_lanes.pop()
        except IndexError:
            lane = _Lane(f"{self.client_id}-{next(self._lane_count)}")
        try:
            lane.seq += 1
            # One key per operation, reused by every retry: the server applies it once.
            headers = {IDEMPOTENCY_HEADER: f"{lane.id}:{lane.seq}"}
            return (yield from self._request(method, path, params, body, headers, True, leader,
                                             accept))
        finally:
            self._free_lanes.append(lane)  # also when abandoned (cancelled): seq moves on

    def _request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None,
        body: Any,
        headers: dict[str, str],
        write: bool,
        leader: bool,
        accept: frozenset[int],
    ) -> Gen[httpx.Response]:
        start = self._now()
        deadline = start + self.timeout
        maybe_applied = False  # some attempt of this write may have reached a leader
        last_problem = "no endpoint answered"
        last_code: str | None = None
        # Endpoints found unreachable (connection refused, no route, DNS) while no
        # node has answered anything in this call. Once every endpoint is in it and
        # `unreachable_timeout` has passed, the cluster is down (or the endpoints
        # are wrong): waiting out the whole timeout would only delay saying so.
        refused: set[str] = set()
        answered = False
        # Failed attempts since the last sleep: fail over to the next node at once
        # until every endpoint had its chance, then back off.
        hops = 0
        attempt = 0
        while (remaining := deadline - self._now()) > 0:
            url = self._target(leader)
            reply = yield Send(
                url, method, path, params, body, headers, min(remaining, self.attempt_timeout)
            )
            retry_after = 0.0
            if isinstance(reply, httpx.TransportError) and (
                tls_error := tls_failure(url, reply)
            ) is not None:
                # The handshake failed: the node never read a request, so nothing
                # was applied. On an endpoint the client was given, that is a
                # configuration problem to report now; on a learned leader URL, the
                # endpoints are asked instead (they forward).
                if url in self.endpoints:
                    raise tls_error
                self._failed(url, unreachable=True)
                self._unreachable.add(url)
                last_problem = str(tls_error)
                continue
            if isinstance(reply, httpx.TransportError):
                if write and not isinstance(reply, _NOT_SENT):
                    maybe_applied = True
                last_problem = f"{url}: {type(reply).__name__}: {reply}".rstrip(": ")
                if isinstance(reply, _UNREACHABLE) and url in self.endpoints:
                    refused.add(url)
                if (
                    not answered
                    and not maybe_applied
                    and len(refused) == len(self.endpoints)
                    and self._now() - start >= self.unreachable_timeout
                ):
                    raise Unavailable(
                        f"no node reachable: all {len(self.endpoints)} endpoint(s) refused or "
                        f"could not be connected for {self.unreachable_timeout:g}s "
                        f"(last: {last_problem})"
                    )
                self._failed(url, unreachable=True)
                hops += 1
                if hops < len(self.endpoints):
                    continue  # try another node right away
            elif reply is None:  # pragma: no cover - drivers never do this
                raise AssertionError("driver replied None to a send")
            else:
                answered = True
                yield from self._learn(url, reply)
                status = reply.status_code
                if status in accept:
                    return reply
                code, message = error_of(reply)
                if status == 400:
                    raise BadRequest(message, code=code, status=status)
                if status == 413:
                    raise TooLarge(message, code=code, status=status)
                if status == 401 and code == "client_certificate_required":
                    raise TlsError(f"{url}: the node requires a client certificate: give one "
                                   "(--cert/--key, env TRIORAFT_CERT/TRIORAFT_KEY)",
                                   code="tls", status=status)  # fmt: skip
                if status == 401:
                    raise Unauthorized(
                        f"{url}: {message} (the node requires a client token: token=..., "
                        "CLI --token or TRIORAFT_TOKEN)", code=code, status=status,
                    )  # fmt: skip
                if status == 403:
                    raise Forbidden(f"{url}: {message}", code=code, status=status)
                if status not in (502, 503, 504):
                    raise TrioraftError(f"{url}: {message}", code=code, status=status)
                last_problem, last_code = f"{url}: {message}", code
                if status != 503 and write:
                    maybe_applied = True  # 504 (or a failed forward): outcome open
                if status == 503:
                    self._failed(url, unreachable=False)  # it knows no leader: ask another
                    hops += 1
                    try:
                        retry_after = float(reply.headers.get("Retry-After", "0"))
                    except ValueError:
                        retry_after = 0.0
                    if hops < len(self.endpoints):
                        continue
            hops = 0
            delay = max(self._backoff(attempt), min(retry_after, self.retry_cap))
            attempt += 1
            delay = min(delay, deadline - self._now())
            if delay > 0:
                yield Sleep(delay)
        if maybe_applied:
            raise UnknownOutcome(
                f"write not confirmed within {self.timeout:g}s; it may or may not have been "
                f"applied (last: {last_problem})",
                status=504,
            )
        raise Unavailable(
            f"cluster unavailable for {self.timeout:g}s (last: {last_problem})",
            code=last_code if last_code in ("no_leader", "no_quorum") else None,
        )

    # -- operations

    def put(self, key: str, value: str) -> Gen[int]:
        resp = yield from self.request("PUT", key_path(key), body={"value": value}, write=True)
        return int(json_dict(resp).get("index", 0))

    def get(self, key: str, consistency: Consistency) -> Gen[str | None]:
        _check_consistency(consistency)
        resp = yield from self.request(
            "GET",
            key_path(key),
            params={"consistency": consistency},
            write=False,
            leader=consistency == "linearizable",
            accept=frozenset({200, 404}),
        )
        if resp.status_code == 404:
            # Only the store's own answer means "absent": a JSON not_found naming
            # this key. Any other 404 (a proxy, a wrong endpoint, a path the
            # server did not route) is an error, never a silent None.
            body = _json_or_none(resp)
            ours = isinstance(body, dict) and body.get("code") == "not_found"
            if not (ours and body.get("key") == key):
                code, message = error_of(resp)
                raise TrioraftError(
                    f"{resp.request.url}: 404 that is not a trioraft 'key not found': {message}",
                    code=code if code != "not_found" else "bad_response",
                    status=404,
                )
            return None
        value = json_dict(resp).get("value")
        if not isinstance(value, str):
            raise TrioraftError("unexpected response: value is not a string", code="bad_response")
        return value

    def delete(self, key: str) -> Gen[bool]:
        resp = yield from self.request("DELETE", key_path(key), write=True)
        return bool(json_dict(resp).get("deleted", False))

    def delete_prefix(self, prefix: str) -> Gen[int]:
        """``DELETE /kv?prefix=p``: one atomic log entry; the number of keys deleted."""
        if not isinstance(prefix, str) or not prefix:
            raise ValueError("prefix must be a non-empty string")
        resp = yield from self.request("DELETE", "/kv", params={"prefix": prefix}, write=True)
        deleted = json_dict(resp).get("deleted")
        if not isinstance(deleted, int) or isinstance(deleted, bool):
            raise TrioraftError("unexpected response: 'deleted' is not a count",
                                code="bad_response")
        return deleted

    def cas(self, key: str, expected: str | None, value: str | None) -> Gen[bool]:
        resp = yield from self.request(
            "POST",
            key_path(key) + "/cas",
            body={"expected": expected, "value": value},
            write=True,
            accept=frozenset({200, 409}),
        )
        if resp.status_code == 409:
            code, message = error_of(resp)
            if code != "cas_failed":
                raise TrioraftError(message, code=code, status=409)
            return False
        return bool(json_dict(resp).get("ok", True))

    def txn(self, body: dict[str, Any]) -> Gen[TxnResult]:
        resp = yield from self.request("POST", "/txn", body=body, write=True)
        return txn_result(json_dict(resp))

    def range(
        self, prefix: str, limit: int | None, consistency: Consistency, after: str | None
    ) -> Gen[RangePage]:
        _check_consistency(consistency)
        params = {"prefix": prefix, "consistency": consistency}
        if limit is not None:
            if not 1 <= limit <= MAX_PAGE:
                raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
            params["limit"] = str(limit)
        if after is not None:
            params["after"] = after
        resp = yield from self.request(
            "GET", "/kv", params=params, write=False, leader=consistency == "linearizable"
        )
        body = json_dict(resp)
        items = [
            (str(item["key"]), str(item["value"]))
            for item in body.get("items", [])
            if isinstance(item, dict) and "key" in item and "value" in item
        ]
        if after is not None and items and items[0][0] <= after:
            # A server without the `after` parameter ignores it: paging would loop.
            raise TrioraftError(
                "the server ignored the range cursor ('after'); it is older than this client",
                code="bad_response",
            )
        return RangePage(items=items, more=bool(body.get("more", False)))

    def status_of(self, url: str, reply: Reply) -> EndpointStatus:
        if isinstance(reply, httpx.Response):
            if reply.status_code != 200:
                return EndpointStatus(url, None, error_of(reply)[1])
            try:
                body = json_dict(reply)
            except TrioraftError as exc:
                return EndpointStatus(url, None, str(exc))
            self.learn_status(url, body)
            return EndpointStatus(url, body)
        return EndpointStatus(url, None, f"unreachable ({type(reply).__name__})")

    def member_urls(self) -> list[str]:
        """Advertised member URLs not among the endpoints (learned from /status)."""
        known_ids = set(self._id_of.values())
        return [
            url
            for member_id, url in sorted(self._members.items())
            if url not in self.endpoints and member_id not in known_ids
        ]


def check_key_value(key: str, value: str | None, *, allow_none: bool = False) -> None:
    key_path(key)
    if value is None and allow_none:
        return
    if not isinstance(value, str):
        raise TypeError("values are strings")
