"""Giving a cluster a state of a chosen size before a long run: ``POST /txn``
with up to 1,000 puts each (the API's limit per transaction), keys named exactly
as the load generator names them, so the run's writes overwrite them and the
state keeps its size."""

from __future__ import annotations

import msgspec
import trio

from ._clients import TRANSPORT_ERRORS, RawClient
from ._workload import make_keys

__all__ = ["fill_keys"]

TXN_PUTS = 1000


async def fill_keys(
    url: str,
    keys: int,
    *,
    key_size: int = 16,
    value_size: int = 100,
    concurrency: int = 4,
    batch: int = TXN_PUTS,
    timeout: float = 60.0,
) -> int:
    """Write every key once through ``url`` (the leader); returns failed transactions.
    Each transaction is retried a few times on 503/504/connection errors (a put of
    the same value twice is harmless here)."""
    names = make_keys(keys, key_size)
    value = "v" * value_size
    bodies = [
        msgspec.json.encode(
            {
                "success": [
                    {"op": "put", "key": k.decode(), "value": value} for k in names[i : i + batch]
                ]
            }
        )
        for i in range(0, len(names), batch)
    ]
    failures = 0
    todo = iter(bodies)

    async def worker() -> None:
        nonlocal failures
        client = RawClient(url)
        try:
            for body in todo:
                for _attempt in range(5):
                    try:
                        with trio.fail_after(timeout):
                            status, _ = await client.request(b"POST", b"/txn", body)
                    except trio.TooSlowError:
                        status = 0
                    except TRANSPORT_ERRORS:
                        status = 0
                    if status == 200:
                        break
                    await trio.sleep(0.5)
                else:
                    failures += 1
        finally:
            await client.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return failures
