"""A client load for membership tests and figures: every write retried until acknowledged.

Each client writes (PUT, with one Idempotency-Key per write reused by all its
attempts, so it applies exactly once) and reads (linearizable GET) a few keys
through random live nodes. An attempt refused definitely (503, 409) or
answered 504 / not at all is retried on another node; the operation enters
the history once, spanning all its attempts, as "ok" when it finally
succeeded -- so the history can be checked for linearizability
(`trioraft.testing.linearizability.check`) and "no failed or lost writes"
means: every write ended "ok" within its budget, and every acknowledged
value is readable afterwards.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
import trio

from trioraft.testing.linearizability import Operation

__all__ = ["KEYS", "Load", "final_reads", "run_clients"]


@dataclass
class Load:
    history: list[Operation] = field(default_factory=list)
    write_latencies: list[float] = field(default_factory=list)  # seconds, per write
    failed_writes: list[str] = field(default_factory=list)  # never acknowledged in budget
    attempts: int = 0
    refused_attempts: int = 0  # 503 / 409 / connection refused: retried
    unknown_attempts: int = 0  # 504 / timeout: retried with the same key
    # key -> the last value acknowledged (in completion order: with concurrent
    # writers that need not be the final value; the history decides).
    acked: dict[str, str] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)  # the history's clock origin

    def p99_ms(self) -> float:
        lat = sorted(self.write_latencies)
        if not lat:
            return float("nan")
        return 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))]


async def _attempt(
    http: httpx.AsyncClient, method: str, url: str, headers: dict[str, str], body: object,
    timeout: float,
) -> httpx.Response | str:
    try:
        return await http.request(method, url, json=body, headers=headers, timeout=timeout)
    except (httpx.ConnectError, httpx.ConnectTimeout):
        return "refused"
    except httpx.HTTPError:
        return "unknown"


async def _client(
    cid: int, load: Load, targets: Callable[[], list[str]], keys: list[str],
    http: httpx.AsyncClient, stop: trio.Event, rng: random.Random, budget: float,
    attempt_timeout: float, t0: float,
) -> None:
    seq = 0
    while not stop.is_set():
        key = rng.choice(keys)
        write = rng.random() < 0.7
        seq += 1
        value = f"c{cid}-{seq}"
        headers = {"Idempotency-Key": f"load-{cid}:{seq}"} if write else {}
        call = time.monotonic() - t0
        deadline = trio.current_time() + budget
        done: httpx.Response | None = None
        while trio.current_time() < deadline:
            live = targets()
            if not live:
                await trio.sleep(0.05)
                continue
            url = rng.choice(live) + "/kv/" + quote(key, safe="")
            load.attempts += 1
            r = await _attempt(http, "PUT" if write else "GET", url, headers,
                               {"value": value} if write else None, attempt_timeout)
            if isinstance(r, httpx.Response) and (r.status_code == 200 or (
                    not write and r.status_code == 404)):
                done = r
                break
            if r == "unknown" or (isinstance(r, httpx.Response) and r.status_code == 504):
                load.unknown_attempts += 1
            else:
                load.refused_attempts += 1
            await trio.sleep(0.02)
        ret = time.monotonic() - t0
        if write:
            if done is not None:
                load.history.append(Operation.put(cid, key, value, call, ret))
                load.write_latencies.append(ret - call)
                load.acked[key] = value
            else:
                # Never acknowledged: it may still apply (an attempt may have landed).
                load.history.append(Operation.put(cid, key, value, call, None, "unknown"))
                load.failed_writes.append(f"{key}={value}")
        elif done is not None:
            result = done.json()["value"] if done.status_code == 200 else None
            load.history.append(Operation.get(cid, key, result, call, ret))
        await trio.sleep(rng.uniform(0.0, 0.01))


async def run_clients(
    load: Load, targets: Callable[[], list[str]], stop: trio.Event, *, clients: int = 4,
    keys: int = 8, seed: int = 0, budget: float = 30.0, attempt_timeout: float = 3.0,
) -> None:
    """Run `clients` clients until `stop` (each finishes its current operation)."""
    names = [f"m{i}" for i in range(keys)]
    t0 = load.t0
    limits = httpx.Limits(max_connections=4 * clients)
    async with httpx.AsyncClient(trust_env=False, limits=limits) as http, \
            trio.open_nursery() as nursery:  # fmt: skip
        for cid in range(clients):
            nursery.start_soon(_client, cid, load, targets, names, http, stop,
                               random.Random(f"{seed}-{cid}"), budget, attempt_timeout, t0)


def KEYS(n: int = 8) -> list[str]:
    return [f"m{i}" for i in range(n)]


async def final_reads(load: Load, url: str, keys: int = 8, timeout: float = 30.0) -> dict[str, str]:
    """After the load: a linearizable read of every key (through `url`), each added
    to the history, so a lost acknowledged write is a linearizability violation.
    Returns the values read (absent keys left out)."""
    out: dict[str, str] = {}
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as http:
        for key in KEYS(keys):
            with trio.fail_after(timeout):
                while True:
                    call = time.monotonic() - load.t0
                    try:
                        r = await http.get(url + "/kv/" + quote(key, safe=""))
                    except httpx.HTTPError:
                        r = None
                    if r is not None and r.status_code in (200, 404):
                        value = r.json()["value"] if r.status_code == 200 else None
                        load.history.append(Operation.get("final", key, value, call,
                                                          time.monotonic() - load.t0))
                        if value is not None:
                            out[key] = value
                        break
                    await trio.sleep(0.1)
    return out
