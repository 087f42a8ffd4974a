"""The blocking client: :class:`Client` on httpx.Client."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from ._core import (
    DEFAULT_ENDPOINTS,
    MAX_PAGE,
    Consistency,
    Core,
    Gen,
    Reply,
    Send,
    Sleep,
    check_key_value,
)
from ._errors import EndpointStatus, RangePage, TxnResult
from ._tls import PathLike, auth_headers, client_ssl_context
from ._txn import Txn

__all__ = ["Client", "http_limits", "http_timeout"]

T = TypeVar("T")


def http_timeout(attempt: float, connect: float) -> httpx.Timeout:
    """One attempt's budget; connecting gets at most `connect` of it."""
    return httpx.Timeout(attempt, connect=min(attempt, connect))


def http_limits(max_connections: int) -> httpx.Limits:
    # Keep-alive for as many connections as may be open: with httpx's default
    # (20 kept of 100), 64 concurrent callers would close and reopen 44
    # connections after every request.
    return httpx.Limits(max_connections=max_connections,
                        max_keepalive_connections=max_connections)


class Client:
    """Blocking client (httpx.Client). Thread-safe enough to share between threads.

    `timeout` bounds each call, retries included; `attempt_timeout` bounds one HTTP
    request (of which `connect_timeout` for connecting), so that a paused or
    unreachable node costs a retry, not the whole call. When every endpoint refuses
    connections (the whole cluster is down, or the endpoints are wrong) a call fails
    with :class:`Unavailable` after `unreachable_timeout` instead of retrying until
    `timeout`. Writes carry an idempotency key, so an attempt abandoned and retried
    on another node still applies at most once. `transport` is for tests (e.g.
    ``httpx.MockTransport``).

    Credentials: `cacert` (a PEM CA bundle trusted instead of the system's), `cert`
    and `key` (a client certificate, PEM), `token` (a client token, sent as
    ``Authorization: Bearer``). A file that cannot be used is a ValueError here; a
    failed handshake is a :class:`TlsError` at the call.
    """

    def __init__(
        self,
        endpoints: str | Iterable[str] = DEFAULT_ENDPOINTS,
        *,
        timeout: float = 10.0,
        attempt_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        unreachable_timeout: float = 1.0,
        retry_base: float = 0.05,
        retry_cap: float = 1.0,
        max_connections: int = 100,
        transport: httpx.BaseTransport | None = None,
        trust_env: bool = False,
        rng: random.Random | None = None,
        client_id: str | None = None,
        cacert: PathLike | None = None,
        cert: PathLike | None = None,
        key: PathLike | None = None,
        token: str | None = None,
    ) -> None:
        ssl_context = client_ssl_context(cacert, cert, key)
        self._core = Core(
            endpoints,
            timeout=timeout,
            attempt_timeout=attempt_timeout,
            unreachable_timeout=unreachable_timeout,
            retry_base=retry_base,
            retry_cap=retry_cap,
            now=time.monotonic,
            rng=rng,
            client_id=client_id,
            default_scheme="https" if ssl_context is not None else "http",
        )
        self._connect_timeout = connect_timeout
        self._http = httpx.Client(
            transport=transport, trust_env=trust_env, limits=http_limits(max_connections),
            verify=ssl_context if ssl_context is not None else True,
            headers=auth_headers(token),
        )

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

    def _do(self, action: Send) -> httpx.Response | httpx.TransportError:
        try:
            return self._http.request(
                action.method,
                action.url + action.path,
                params=action.params,
                json=action.body,
                headers=action.headers,
                timeout=http_timeout(action.timeout, self._connect_timeout),
            )
        except httpx.TransportError as exc:
            return exc

    def _run(self, gen: Gen[T]) -> T:
        reply: Reply = None
        while True:
            try:
                action = gen.send(reply)
            except StopIteration as stop:
                result: T = stop.value
                return result
            if isinstance(action, Sleep):
                time.sleep(action.seconds)
                reply = None
            else:
                reply = self._do(action)

    def put(self, key: str, value: str) -> int:
        """Set `key` to `value`; returns the log index of the write."""
        check_key_value(key, value)
        return self._run(self._core.put(key, value))

    def get(self, key: str, consistency: Consistency = "linearizable") -> str | None:
        """The value of `key`, or None if absent."""
        return self._run(self._core.get(key, consistency))

    def delete(self, key: str) -> bool:
        """Delete `key`; True if it existed."""
        return self._run(self._core.delete(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with `prefix`, atomically; how many were deleted."""
        return self._run(self._core.delete_prefix(prefix))

    def cas(self, key: str, expected: str | None, value: str | None) -> bool:
        """Set `key` to `value` if it currently holds `expected`.

        ``expected=None``: only if absent. ``value=None``: delete. False if the
        precondition did not hold (nothing changed).
        """
        check_key_value(key, expected, allow_none=True)
        check_key_value(key, value, allow_none=True)
        return self._run(self._core.cas(key, expected, value))

    def txn(self) -> Txn:
        """A transaction builder: ``.compare(...).success(...).failure(...).commit()``."""
        return Txn(self._commit_txn)

    def _commit_txn(self, body: dict[str, Any]) -> TxnResult:
        return self._run(self._core.txn(body))

    def range(
        self,
        prefix: str = "",
        limit: int | None = None,
        consistency: Consistency = "linearizable",
        *,
        after: str | None = None,
    ) -> RangePage:
        """Keys starting with `prefix` (and greater than `after`), in order, at most `limit`.

        Page with ``after=page.next_after`` while ``page.more``; or use :meth:`scan`.
        """
        return self._run(self._core.range(prefix, limit, consistency, after))

    def scan(
        self,
        prefix: str = "",
        *,
        page_size: int = MAX_PAGE,
        consistency: Consistency = "linearizable",
        after: str | None = None,
    ) -> Iterator[tuple[str, str]]:
        """Every (key, value) starting with `prefix`, in order, fetched a page at a time.

        Each page is a read of its own (linearizable by default): keys written or
        deleted while the scan runs may or may not be seen, but no key is seen twice.
        """
        while True:
            page = self.range(prefix, page_size, consistency, after=after)
            yield from page.items
            after = page.next_after
            if after is None:
                return

    def status(self) -> list[EndpointStatus]:
        """`/status` of every endpoint and every other member they report (one try each)."""
        core = self._core
        results = [core.status_of(url, self._status_reply(url)) for url in core.endpoints]
        results += [core.status_of(url, self._status_reply(url)) for url in core.member_urls()]
        return results

    def _status_reply(self, url: str) -> httpx.Response | httpx.TransportError:
        timeout = min(self._core.timeout, self._core.attempt_timeout)
        return self._do(Send(url, "GET", "/status", None, None, {}, timeout))

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
