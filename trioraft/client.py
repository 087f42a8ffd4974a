"""Python clients for trioraft: :class:`Client` (blocking) and :class:`AsyncClient` (Trio).

Both have the same methods and behaviour, because both run the same sans-IO request
logic (:class:`_Core`): a generator that yields "send this request" and "sleep this
long" actions and receives responses; each client only supplies the I/O.

Behaviour
---------
* **Leader discovery.** Every response carries ``X-Raft-Leader: <id>``; the client
  resolves the id to a URL (an endpoint that reported that id in ``/status``, else the
  URL in the ``/status`` members map) and sends writes and linearizable reads there.
  Any node forwards to the leader anyway, so a wrong guess costs a hop, not an error.
* **Retries.** Connection errors, timeouts, ``503`` (no leader / no quorum), ``502`` and
  ``504`` (unknown outcome) are retried with exponential backoff and jitter, trying the
  other endpoints first, until the per-call deadline (``timeout``) passes.
* **Exactly once.** Each client has a random id; every write gets
  ``Idempotency-Key: <client-id>:<seq>`` and all retries of that write reuse it, so the
  cluster applies it at most once even when an attempt's outcome was unknown.
* **Errors.** ``get`` of an absent key returns ``None``; a failed CAS returns ``False``.
  Everything else raises a :class:`TrioraftError` subclass: :class:`BadRequest` (400),
  :class:`TooLarge` (413), :class:`Unavailable` (no answer or no leader before the
  deadline: the operation did not happen), :class:`UnknownOutcome` (a write might
  have been applied: retrying it with a fresh key could apply it twice).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import quote

import httpx
import trio

__all__ = [
    "DEFAULT_ENDPOINTS",
    "AsyncClient",
    "BadRequest",
    "Client",
    "EndpointStatus",
    "RangePage",
    "TooLarge",
    "TrioraftError",
    "Unavailable",
    "UnknownOutcome",
    "normalize_endpoints",
]

DEFAULT_ENDPOINTS = ("http://127.0.0.1:3001", "http://127.0.0.1:3002", "http://127.0.0.1:3003")
LEADER_HEADER = "X-Raft-Leader"
IDEMPOTENCY_HEADER = "Idempotency-Key"

Consistency = Literal["linearizable", "stale"]
T = TypeVar("T")


# ---------------------------------------------------------------- errors


class TrioraftError(Exception):
    """Base of all client errors. `code` is the server's machine code (API.md §3)."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.status = status


class BadRequest(TrioraftError):
    """400: the request was malformed (e.g. an empty key). Nothing was applied."""

    code = "bad_request"


class TooLarge(TrioraftError):
    """413: key, value or body over the server's limit. Nothing was applied."""

    code = "too_large"


class Unavailable(TrioraftError):
    """No node answered, or none knew a leader with a quorum, before the deadline.

    The operation did not take effect.
    """

    code = "unavailable"


class UnknownOutcome(TrioraftError):
    """A write may or may not have been applied: it reached the cluster but its commit
    was not confirmed before the deadline."""

    code = "unknown_outcome"


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class RangePage:
    """One page of `range`: (key, value) pairs in key order; `more` if the limit cut it."""

    items: list[tuple[str, str]]
    more: bool


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """`GET /status` of one node: `status` is the JSON body, or None with `error` set."""

    url: str
    status: dict[str, Any] | None
    error: str | None = None

    @property
    def reachable(self) -> bool:
        return self.status is not None


def normalize_endpoints(endpoints: str | Iterable[str]) -> tuple[str, ...]:
    """``"a:1,http://b:2/"`` -> ``("http://a:1", "http://b:2")``; ValueError if empty/bad."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    result: list[str] = []
    for raw in items:
        url = raw.strip().rstrip("/")
        if not url:
            continue
        if "://" not in url:
            url = "http://" + url
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"not an http(s) endpoint URL: {raw.strip()!r}")
        if url not in result:
            result.append(url)
    if not result:
        raise ValueError("no endpoints given")
    return tuple(result)


# ---------------------------------------------------------------- sans-IO core


@dataclass(frozen=True, slots=True)
class _Send:
    url: str  # base URL of the node
    method: str
    path: str
    params: dict[str, str] | None
    body: Any
    headers: dict[str, str]
    timeout: float


@dataclass(frozen=True, slots=True)
class _Sleep:
    seconds: float


_Action = _Send | _Sleep
# What the driver sends back: the response, the transport exception, or None after a sleep.
_Reply = httpx.Response | httpx.TransportError | None
_Gen = Generator[_Action, _Reply, T]

# Transport errors raised before a byte of the request could have reached the server.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def _error_of(resp: httpx.Response) -> tuple[str, str]:
    """(code, message) from an error response body, tolerating non-JSON bodies."""
    try:
        body = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        return str(body.get("code", "error")), str(body.get("error", resp.reason_phrase))
    return "error", f"HTTP {resp.status_code} {resp.reason_phrase}".strip()


def _json_dict(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise TrioraftError(
            f"unexpected response from {resp.request.url}: not a JSON object",
            code="bad_response",
            status=resp.status_code,
        )
    return body


def _key_path(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError("key must be a non-empty string")
    return "/kv/" + quote(key, safe="")


class _Core:
    """Leader tracking, retry policy and request/response mapping; no I/O."""

    def __init__(
        self,
        endpoints: str | Iterable[str],
        *,
        timeout: float,
        attempt_timeout: float,
        retry_base: float,
        retry_cap: float,
        now: Callable[[], float],
        rng: random.Random | None,
        client_id: str | None,
    ) -> None:
        if timeout <= 0 or attempt_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.endpoints = normalize_endpoints(endpoints)
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.client_id = client_id or uuid.uuid4().hex
        self._now = now
        self._rng = rng or random.Random()
        self._seq = itertools.count(1)  # next() is atomic under the GIL: thread-safe
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

    def _learn_status(self, url: str, body: Mapping[str, Any]) -> None:
        node_id = body.get("id")
        if isinstance(node_id, str):
            self._id_of[url] = node_id
        members = body.get("members")
        if isinstance(members, Mapping):
            for member_id, info in members.items():
                member_url = info.get("url") if isinstance(info, Mapping) else None
                if isinstance(member_id, str) and isinstance(member_url, str):
                    self._members[member_id] = member_url.rstrip("/")

    def _learn(self, url: str, resp: httpx.Response) -> _Gen[None]:
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
            reply = yield _Send(url, "GET", "/status", None, None, {}, self.attempt_timeout)
            if isinstance(reply, httpx.Response) and reply.status_code == 200:
                with contextlib.suppress(TrioraftError):
                    self._learn_status(url, _json_dict(reply))
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
    ) -> _Gen[httpx.Response]:
        headers: dict[str, str] = {}
        if write:
            # One key per operation, reused by every retry: the server applies it once.
            headers[IDEMPOTENCY_HEADER] = f"{self.client_id}:{next(self._seq)}"
        deadline = self._now() + self.timeout
        maybe_applied = False  # some attempt of this write may have reached a leader
        last_problem = "no endpoint answered"
        last_code: str | None = None
        # Failed attempts since the last sleep: fail over to the next node at once
        # until every endpoint had its chance, then back off.
        hops = 0
        attempt = 0
        while (remaining := deadline - self._now()) > 0:
            url = self._target(leader)
            reply = yield _Send(
                url, method, path, params, body, headers, min(remaining, self.attempt_timeout)
            )
            retry_after = 0.0
            if isinstance(reply, httpx.TransportError):
                if write and not isinstance(reply, _NOT_SENT):
                    maybe_applied = True
                last_problem = f"{url}: {type(reply).__name__}: {reply}".rstrip(": ")
                self._failed(url, unreachable=True)
                hops += 1
                if hops < len(self.endpoints):
                    continue  # try another node right away
            elif reply is None:  # pragma: no cover - drivers never do this
                raise AssertionError("driver replied None to a send")
            else:
                yield from self._learn(url, reply)
                status = reply.status_code
                if status in accept:
                    return reply
                code, message = _error_of(reply)
                if status == 400:
                    raise BadRequest(message, code=code, status=status)
                if status == 413:
                    raise TooLarge(message, code=code, status=status)
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
                yield _Sleep(delay)
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

    def put(self, key: str, value: str) -> _Gen[int]:
        resp = yield from self.request("PUT", _key_path(key), body={"value": value}, write=True)
        return int(_json_dict(resp).get("index", 0))

    def get(self, key: str, consistency: Consistency) -> _Gen[str | None]:
        if consistency not in ("linearizable", "stale"):
            raise ValueError(f"consistency must be 'linearizable' or 'stale', not {consistency!r}")
        resp = yield from self.request(
            "GET",
            _key_path(key),
            params={"consistency": consistency},
            write=False,
            leader=consistency == "linearizable",
            accept=frozenset({200, 404}),
        )
        if resp.status_code == 404:
            code, message = _error_of(resp)
            if code not in ("not_found", "error"):
                raise TrioraftError(message, code=code, status=404)
            return None
        value = _json_dict(resp).get("value")
        if not isinstance(value, str):
            raise TrioraftError("unexpected response: value is not a string", code="bad_response")
        return value

    def delete(self, key: str) -> _Gen[bool]:
        resp = yield from self.request("DELETE", _key_path(key), write=True)
        return bool(_json_dict(resp).get("deleted", False))

    def cas(self, key: str, expected: str | None, value: str | None) -> _Gen[bool]:
        resp = yield from self.request(
            "POST",
            _key_path(key) + "/cas",
            body={"expected": expected, "value": value},
            write=True,
            accept=frozenset({200, 409}),
        )
        if resp.status_code == 409:
            code, message = _error_of(resp)
            if code != "cas_failed":
                raise TrioraftError(message, code=code, status=409)
            return False
        return bool(_json_dict(resp).get("ok", True))

    def range(self, prefix: str, limit: int | None, consistency: Consistency) -> _Gen[RangePage]:
        params = {"prefix": prefix, "consistency": consistency}
        if limit is not None:
            if limit < 1:
                raise ValueError("limit must be at least 1")
            params["limit"] = str(limit)
        resp = yield from self.request(
            "GET", "/kv", params=params, write=False, leader=consistency == "linearizable"
        )
        body = _json_dict(resp)
        items = [
            (str(item["key"]), str(item["value"]))
            for item in body.get("items", [])
            if isinstance(item, dict) and "key" in item and "value" in item
        ]
        return RangePage(items=items, more=bool(body.get("more", False)))

    def status_of(self, url: str, reply: _Reply) -> EndpointStatus:
        if isinstance(reply, httpx.Response):
            if reply.status_code != 200:
                return EndpointStatus(url, None, _error_of(reply)[1])
            try:
                body = _json_dict(reply)
            except TrioraftError as exc:
                return EndpointStatus(url, None, str(exc))
            self._learn_status(url, body)
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


def _check_key_value(key: str, value: str | None, *, allow_none: bool = False) -> None:
    _key_path(key)
    if value is None and allow_none:
        return
    if not isinstance(value, str):
        raise TypeError("values are strings")


# ---------------------------------------------------------------- the clients


class Client:
    """Blocking client (httpx.Client). Thread-safe enough to share between threads.

    `timeout` bounds each call, retries included; `attempt_timeout` bounds one HTTP
    request, so that a paused or unreachable node costs a retry, not the whole call.
    Writes carry an idempotency key, so an attempt abandoned this way and retried on
    another node still applies at most once. `transport` is for tests (e.g.
    ``httpx.MockTransport``).
    """

    def __init__(
        self,
        endpoints: str | Iterable[str] = DEFAULT_ENDPOINTS,
        *,
        timeout: float = 10.0,
        attempt_timeout: float = 2.0,
        retry_base: float = 0.05,
        retry_cap: float = 1.0,
        transport: httpx.BaseTransport | None = None,
        trust_env: bool = False,
        rng: random.Random | None = None,
        client_id: str | None = None,
    ) -> None:
        self._core = _Core(
            endpoints,
            timeout=timeout,
            attempt_timeout=attempt_timeout,
            retry_base=retry_base,
            retry_cap=retry_cap,
            now=time.monotonic,
            rng=rng,
            client_id=client_id,
        )
        self._http = httpx.Client(transport=transport, trust_env=trust_env)

    @property
    def client_id(self) -> str:
        return self._core.client_id

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._core.endpoints

    @property
    def leader_url(self) -> str | None:
        """The current guess of the leader's URL, or None."""
        return self._core.leader_url

    def _do(self, action: _Send) -> httpx.Response | httpx.TransportError:
        try:
            return self._http.request(
                action.method,
                action.url + action.path,
                params=action.params,
                json=action.body,
                headers=action.headers,
                timeout=action.timeout,
            )
        except httpx.TransportError as exc:
            return exc

    def _run(self, gen: _Gen[T]) -> T:
        reply: _Reply = None
        while True:
            try:
                action = gen.send(reply)
            except StopIteration as stop:
                result: T = stop.value
                return result
            if isinstance(action, _Sleep):
                time.sleep(action.seconds)
                reply = None
            else:
                reply = self._do(action)

    def put(self, key: str, value: str) -> int:
        """Set `key` to `value`; returns the log index of the write."""
        _check_key_value(key, value)
        return self._run(self._core.put(key, value))

    def get(self, key: str, consistency: Consistency = "linearizable") -> str | None:
        """The value of `key`, or None if absent."""
        return self._run(self._core.get(key, consistency))

    def delete(self, key: str) -> bool:
        """Delete `key`; True if it existed."""
        return self._run(self._core.delete(key))

    def cas(self, key: str, expected: str | None, value: str | None) -> bool:
        """Set `key` to `value` if it currently holds `expected`.

        ``expected=None``: only if absent. ``value=None``: delete. False if the
        precondition did not hold (nothing changed).
        """
        _check_key_value(key, expected, allow_none=True)
        _check_key_value(key, value, allow_none=True)
        return self._run(self._core.cas(key, expected, value))

    def range(
        self, prefix: str = "", limit: int | None = None, consistency: Consistency = "linearizable"
    ) -> RangePage:
        """Keys starting with `prefix`, in order, at most `limit` of them."""
        return self._run(self._core.range(prefix, limit, consistency))

    def status(self) -> list[EndpointStatus]:
        """`/status` of every endpoint and every other member they report (one try each)."""
        core = self._core
        results = [core.status_of(url, self._status_reply(url)) for url in core.endpoints]
        results += [core.status_of(url, self._status_reply(url)) for url in core.member_urls()]
        return results

    def _status_reply(self, url: str) -> httpx.Response | httpx.TransportError:
        timeout = min(self._core.timeout, self._core.attempt_timeout)
        return self._do(_Send(url, "GET", "/status", None, None, {}, timeout))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """Trio client (httpx.AsyncClient); the same methods as :class:`Client`, awaited.

    Safe to use from many tasks at once. Use ``async with AsyncClient(...) as c`` or
    call :meth:`aclose`.
    """

    def __init__(
        self,
        endpoints: str | Iterable[str] = DEFAULT_ENDPOINTS,
        *,
        timeout: float = 10.0,
        attempt_timeout: float = 2.0,
        retry_base: float = 0.05,
        retry_cap: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
        trust_env: bool = False,
        rng: random.Random | None = None,
        client_id: str | None = None,
    ) -> None:
        self._core = _Core(
            endpoints,
            timeout=timeout,
            attempt_timeout=attempt_timeout,
            retry_base=retry_base,
            retry_cap=retry_cap,
            now=trio.current_time,
            rng=rng,
            client_id=client_id,
        )
        self._http = httpx.AsyncClient(transport=transport, trust_env=trust_env)

    @property
    def client_id(self) -> str:
        return self._core.client_id

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._core.endpoints

    @property
    def leader_url(self) -> str | None:
        return self._core.leader_url

    async def _do(self, action: _Send) -> httpx.Response | httpx.TransportError:
        try:
            return await self._http.request(
                action.method,
                action.url + action.path,
                params=action.params,
                json=action.body,
                headers=action.headers,
                timeout=action.timeout,
            )
        except httpx.TransportError as exc:
            return exc

    async def _run(self, gen: _Gen[T]) -> T:
        reply: _Reply = None
        while True:
            try:
                action = gen.send(reply)
            except StopIteration as stop:
                result: T = stop.value
                return result
            if isinstance(action, _Sleep):
                await trio.sleep(action.seconds)
                reply = None
            else:
                reply = await self._do(action)

    async def put(self, key: str, value: str) -> int:
        _check_key_value(key, value)
        return await self._run(self._core.put(key, value))

    async def get(self, key: str, consistency: Consistency = "linearizable") -> str | None:
        return await self._run(self._core.get(key, consistency))

    async def delete(self, key: str) -> bool:
        return await self._run(self._core.delete(key))

    async def cas(self, key: str, expected: str | None, value: str | None) -> bool:
        _check_key_value(key, expected, allow_none=True)
        _check_key_value(key, value, allow_none=True)
        return await self._run(self._core.cas(key, expected, value))

    async def range(
        self, prefix: str = "", limit: int | None = None, consistency: Consistency = "linearizable"
    ) -> RangePage:
        return await self._run(self._core.range(prefix, limit, consistency))

    async def status(self) -> list[EndpointStatus]:
        core = self._core
        first = await self._status_many(core.endpoints)
        return first + await self._status_many(core.member_urls())

    async def _status_many(self, urls: Iterable[str]) -> list[EndpointStatus]:
        urls = list(urls)
        replies: list[_Reply] = [None] * len(urls)
        timeout = min(self._core.timeout, self._core.attempt_timeout)

        async def one(i: int) -> None:
            replies[i] = await self._do(_Send(urls[i], "GET", "/status", None, None, {}, timeout))

        async with trio.open_nursery() as nursery:
            for i in range(len(urls)):
                nursery.start_soon(one, i)
        return [self._core.status_of(url, reply) for url, reply in zip(urls, replies, strict=True)]

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
