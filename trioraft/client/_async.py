"""The async client: :class:`AsyncClient` on httpx.AsyncClient, under Trio or asyncio.

All its waiting goes through anyio (sleep, clock, task groups), so the same object
works in whichever event loop calls it.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
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
from ._sync import http_limits, http_timeout
from ._tls import PathLike, auth_headers, client_ssl_context
from ._txn import AsyncTxn

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient:
    """The same methods as :class:`~trioraft.client.Client`, awaited; Trio or asyncio.

    Safe to use from many tasks at once: up to `max_connections` requests are in
    flight, each on a kept-alive connection (more wait for a free one). Use
    ``async with AsyncClient(...) as c`` or call :meth:`aclose`.
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
        transport: httpx.AsyncBaseTransport | None = None,
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
            now=anyio.current_time,  # the running loop's clock (trio's MockClock in tests)
            rng=rng,
            client_id=client_id,
            default_scheme="https" if ssl_context is not None else "http",
        )
        self._connect_timeout = connect_timeout
        self._http = httpx.AsyncClient(
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
        return self._core.leader_url

    async def _do(self, action: Send) -> httpx.Response | httpx.TransportError:
        try:
            return await self._http.request(
                action.method,
                action.url + action.path,
                params=action.params,
                json=action.body,
                headers=action.headers,
                timeout=http_timeout(action.timeout, self._connect_timeout),
            )
        except httpx.TransportError as exc:
            return exc

    async def _run(self, gen: Gen[T]) -> T:
        reply: Reply = None
        while True:
            try:
                action = gen.send(reply)
            except StopIteration as stop:
                result: T = stop.value
                return result
            if isinstance(action, Sleep):
                await anyio.sleep(action.seconds)
                reply = None
            else:
                reply = await self._do(action)

    async def put(self, key: str, value: str) -> int:
        check_key_value(key, value)
        return await self._run(self._core.put(key, value))

    async def get(self, key: str, consistency: Consistency = "linearizable") -> str | None:
        return await self._run(self._core.get(key, consistency))

    async def delete(self, key: str) -> bool:
        return await self._run(self._core.delete(key))

    async def delete_prefix(self, prefix: str) -> int:
        return await self._run(self._core.delete_prefix(prefix))

    async def cas(self, key: str, expected: str | None, value: str | None) -> bool:
        check_key_value(key, expected, allow_none=True)
        check_key_value(key, value, allow_none=True)
        return await self._run(self._core.cas(key, expected, value))

    def txn(self) -> AsyncTxn:
        """A transaction builder: ``await c.txn().compare(...).success(...).commit()``."""
        return AsyncTxn(self._commit_txn)

    async def _commit_txn(self, body: dict[str, Any]) -> TxnResult:
        return await self._run(self._core.txn(body))

    async def range(
        self,
        prefix: str = "",
        limit: int | None = None,
        consistency: Consistency = "linearizable",
        *,
        after: str | None = None,
    ) -> RangePage:
        return await self._run(self._core.range(prefix, limit, consistency, after))

    async def scan(
        self,
        prefix: str = "",
        *,
        page_size: int = MAX_PAGE,
        consistency: Consistency = "linearizable",
        after: str | None = None,
    ) -> AsyncIterator[tuple[str, str]]:
        """Every (key, value) starting with `prefix`, a page at a time (see Client.scan)."""
        while True:
            page = await self.range(prefix, page_size, consistency, after=after)
            for item in page.items:
                yield item
            after = page.next_after
            if after is None:
                return

    async def status(self) -> list[EndpointStatus]:
        core = self._core
        first = await self._status_many(core.endpoints)
        return first + await self._status_many(core.member_urls())

    async def _status_many(self, urls: Iterable[str]) -> list[EndpointStatus]:
        urls = list(urls)
        replies: list[Reply] = [None] * len(urls)
        timeout = min(self._core.timeout, self._core.attempt_timeout)

        async def one(i: int) -> None:
            replies[i] = await self._do(Send(urls[i], "GET", "/status", None, None, {}, timeout))

        async with anyio.create_task_group() as tg:
            for i in range(len(urls)):
                tg.start_soon(one, i)
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
