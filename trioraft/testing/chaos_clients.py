"""The chaos run's clients: workloads, values, and the recorded history.

Each client is a Trio task looping until the run stops: it picks a key and a
node and sends one raw HTTP attempt (no retries, no Idempotency-Key), recorded
as one history :class:`~trioraft.testing.linearizability.Operation`. Workloads:

``mixed``        get 40 %, put 30 %, cas 25 %, delete 5 %, each to a random node.
``write-heavy``  get 10 %, put 55 %, cas 30 %, delete 5 %; writes go through
                 *followers* (the leader as last polled), most of them to one
                 "hot" follower, so with many clients its relayed batches hold
                 hundreds of writes; reads go to random nodes.

Values are unique names (``c<client>-<n>``) padded to a size drawn from
``value_bytes`` (deterministically from the name: ``name~<pad>``), so states of
several MB can be built without keeping MBs in the history: a value read back
is checked against its name's padding and recorded by name (``corrupt:...`` if
the padding is wrong, which no write wrote, so the checker flags it).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import trio

from trioraft.testing.chaos_http import Answer, Pool
from trioraft.testing.linearizability import Operation, Outcome

__all__ = ["WORKLOADS", "ClientSpec", "Recorder", "Values", "Waves", "Workload", "client",
           "do_get", "prefill"]  # fmt: skip


class Recorder:
    """The history, the run's clock, and the clients' shared stop condition.

    `attempts[i]` says where operation i went and what came back (its node and
    HTTP status, or what went wrong), for evidence."""

    def __init__(self, max_ops: int) -> None:
        self.t0 = trio.current_time()
        self.wall_t0 = time.time()
        self.history: list[Operation] = []
        self.attempts: list[tuple[str, str]] = []
        self.max_ops = max_ops
        self.stop = trio.Event()
        self.inflight: Counter[str] = Counter()  # writes in flight per node
        self.max_inflight: Counter[str] = Counter()

    def reset_clock(self) -> None:
        self.t0, self.wall_t0 = trio.current_time(), time.time()

    def now(self) -> float:
        return trio.current_time() - self.t0

    def add(self, op: Operation, node: str = "", status: str = "") -> int:
        """Append `op`; returns its slot, for :meth:`settle`."""
        self.history.append(op)
        self.attempts.append((node, status))
        if len(self.history) >= self.max_ops:
            self.stop.set()
        return len(self.history) - 1

    def settle(self, slot: int, op: Operation, status: str) -> None:
        """Replace the operation recorded (as unknown) at `slot` by its outcome."""
        self.history[slot] = op
        self.attempts[slot] = (self.attempts[slot][0], status)


def key_path(key: str) -> str:
    return "/kv/" + quote(key, safe="")


async def attempt(
    pool: Pool, node: str, method: str, target: str, seconds: float,
    body: dict[str, Any] | None = None,
) -> Answer:  # fmt: skip
    """One HTTP attempt: (status, body), or ``"fail"`` (certainly not sent) or ``"unknown"``."""
    data = None if body is None else json.dumps(body).encode()
    return await pool.request(node, method, target, data, seconds)


def _status(r: Answer) -> str:
    return r if isinstance(r, str) else str(r[0])


def _json(r: tuple[int, bytes]) -> dict[str, Any]:
    try:
        body = json.loads(r[1])
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def write_outcome(r: Answer) -> Outcome:
    """ok / fail / unknown for a write's raw answer (API.md §3 Errors)."""
    if isinstance(r, str):
        return r
    if r[0] in (200, 409):
        return "ok"
    if r[0] in (400, 404, 413, 503):
        return "fail"  # never took effect and never will
    return "unknown"  # 504, 5xx, anything unexpected


class Values:
    """Unique value names padded to a size in `size` bytes (MIN, MAX); (0, 0): bare."""

    def __init__(self, size: tuple[int, int] = (0, 0)) -> None:
        self.size = size

    def pad_length(self, name: str) -> int:
        lo, hi = self.size
        if hi <= 0:
            return 0
        h = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
        return max(0, lo + h % (hi - lo + 1) - len(name) - 1)

    def make(self, name: str) -> str:
        n = self.pad_length(name)
        if n == 0:
            return name
        unit = hashlib.blake2b(name.encode(), digest_size=32).hexdigest()
        return name + "~" + (unit * (n // len(unit) + 1))[:n]

    def read(self, raw: str | None) -> str | None:
        """The name of a value read back; ``corrupt:...`` if it is not one we wrote."""
        if raw is None:
            return None
        name = raw.partition("~")[0]
        if self.make(name) == raw:
            return name
        return f"corrupt:{raw[:40]}...({len(raw)} chars)"


@dataclass(frozen=True)
class Workload:
    name: str
    get: float
    put: float
    cas: float
    """Fractions of gets, puts and cas; the rest are deletes."""
    via_followers: bool = False
    hot_share: float = 0.0
    """Through followers: the share of writes sent to one follower (the first non-leader)."""


WORKLOADS = {
    "mixed": Workload("mixed", 0.40, 0.30, 0.25),
    "write-heavy": Workload("write-heavy", 0.10, 0.55, 0.30, via_followers=True, hot_share=0.7),
}


class Waves:
    """Paced load in waves: every `interval` seconds every idle client sends one request
    at once. Hundreds of writes then reach the hot follower together (large relayed
    batches) while the offered rate stays at most clients / interval, so the machine
    is not saturated (a starved machine has elections that are nobody's bug)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._tick = trio.Event()

    async def run(self, stop: trio.Event) -> None:
        while not stop.is_set():
            with trio.move_on_after(self.interval):
                await stop.wait()
            self._tick.set()
            self._tick = trio.Event()

    async def next(self) -> None:
        if self.interval > 0:
            await self._tick.wait()


@dataclass(frozen=True)
class ClientSpec:
    seed: int
    workload: Workload
    timeout: float
    read_consistency: str
    values: Values
    lie_refused: float = 0.0
    """Test-only: the share of acknowledged puts recorded as refused (503)."""
    waves: Waves | None = None


async def do_get(
    rec: Recorder, pool: Pool, client: str | int, node: str, key: str, seconds: float,
    values: Values, consistency: str = "linearizable",
) -> Operation:  # fmt: skip
    call = rec.now()
    r = await attempt(pool, node, "GET", f"{key_path(key)}?consistency={consistency}", seconds)
    ret = rec.now()
    if isinstance(r, str):
        op = Operation.get(client, key, None, call, ret, outcome=r)
    elif r[0] == 200 and isinstance(v := _json(r).get("value"), str):
        op = Operation.get(client, key, values.read(v), call, ret)
    elif r[0] == 404:
        op = Operation.get(client, key, None, call, ret)
    elif r[0] in (400, 413, 503):
        op = Operation.get(client, key, None, call, ret, outcome="fail")
    else:
        op = Operation.get(client, key, None, call, ret, outcome="unknown")
    rec.add(op, node, _status(r))
    return op


def _route(
    rng: random.Random, w: Workload, write: bool, ids: Sequence[str], leader: str | None
) -> str:
    if not (write and w.via_followers) or leader is None:
        return rng.choice(ids)
    followers = [i for i in ids if i != leader] or list(ids)
    if rng.random() < w.hot_share:
        return followers[0]
    return rng.choice(followers)


async def client(
    cid: int, spec: ClientSpec, rec: Recorder, ports: dict[str, int], keys: list[str],
    leader_hint: Callable[[], str | None],
) -> None:  # fmt: skip
    pool = Pool(ports)
    try:
        await _client_loop(cid, spec, rec, pool, sorted(ports), keys, leader_hint)
    finally:
        await pool.aclose()


async def _client_loop(
    cid: int, spec: ClientSpec, rec: Recorder, pool: Pool, ids: list[str], keys: list[str],
    leader_hint: Callable[[], str | None],
) -> None:  # fmt: skip
    rng = random.Random(f"{spec.seed}-client-{cid}")
    w = spec.workload
    seen: dict[str, str | None] = {}  # last value this client saw per key: cas targets
    counter = 0
    t = spec.timeout
    last: Outcome = "ok"
    while not rec.stop.is_set():
        if spec.waves is not None:
            await spec.waves.next()
            if rec.stop.is_set():
                break
        elif last == "fail":
            # A refused connection or a 503 comes back at once: back off a little
            # rather than spin (while every node is down, say).
            await trio.sleep(rng.uniform(0.05, 0.15))
        key = rng.choice(keys)
        r = rng.random()
        node = _route(rng, w, r >= w.get, ids, leader_hint())
        if r < w.get:
            op = await do_get(rec, pool, cid, node, key, t, spec.values, spec.read_consistency)
            last = op.outcome
            if op.outcome == "ok":
                seen[key] = op.result
            continue
        counter += 1
        name = f"c{cid}-{counter}"
        path = key_path(key)
        call = rec.now()
        rec.inflight[node] += 1
        rec.max_inflight[node] = max(rec.max_inflight[node], rec.inflight[node])
        try:
            # Recorded as unknown before it is sent, settled when the answer comes: a
            # write cancelled mid-flight stays in the history as what it is, unknown.
            if r < w.get + w.put:
                slot = rec.add(Operation.put(cid, key, name, call, None, "unknown"), node)
                resp = await attempt(pool, node, "PUT", path, t, {"value": spec.values.make(name)})
                outcome = last = write_outcome(resp)
                status = _status(resp)
                if outcome == "ok" and spec.lie_refused and rng.random() < spec.lie_refused:
                    outcome, status = "fail", f"{status}, recorded as 503 (sabotage)"
                rec.settle(slot, Operation.put(cid, key, name, call, rec.now(), outcome), status)
                if outcome == "ok":
                    seen[key] = name
            elif r < w.get + w.put + w.cas:
                last = await _cas(rec, pool, node, cid, rng, seen, key, name, t, spec.values)
            else:
                slot = rec.add(Operation.delete(cid, key, None, call, None, "unknown"), node)
                resp = await attempt(pool, node, "DELETE", path, t)
                outcome = last = write_outcome(resp)
                deleted = None
                if not isinstance(resp, str) and outcome == "ok":
                    d = _json(resp).get("deleted")
                    deleted = d if isinstance(d, bool) else None
                    seen[key] = None
                rec.settle(slot, Operation.delete(cid, key, deleted, call, rec.now(), outcome),
                           _status(resp))  # fmt: skip
        finally:
            rec.inflight[node] -= 1


async def _cas(
    rec: Recorder, pool: Pool, node: str, cid: int, rng: random.Random,
    seen: dict[str, str | None], key: str, name: str, t: float, values: Values,
) -> Outcome:  # fmt: skip
    call = rec.now()
    expected = seen.get(key) if rng.random() < 0.8 else None
    slot = rec.add(Operation.cas(cid, key, expected, name, None, call, None, "unknown"), node)
    body = {"expected": values.make(expected) if expected is not None else None,
            "value": values.make(name)}  # fmt: skip
    resp = await attempt(pool, node, "POST", key_path(key) + "/cas", t, body)
    ret = rec.now()
    outcome = write_outcome(resp)
    ok: bool | None = None
    if not isinstance(resp, str) and outcome == "ok":
        ok = resp[0] == 200
        answer = _json(resp)
        if ok:
            seen[key] = name
        elif "current" in answer and isinstance(answer["current"], (str, type(None))):
            # The refused cas read `current` atomically: record that read too.
            current = values.read(answer["current"])
            seen[key] = current
            rec.add(Operation.get(cid, key, current, call, ret), node, "409")
    rec.settle(slot, Operation.cas(cid, key, expected, name, ok, call, ret, outcome),
               _status(resp))  # fmt: skip
    return outcome


TXN_OPS = 1000  # puts per POST /txn (the API's limit)
TXN_BYTES = 3 << 20  # ... and bytes of values per txn (the limit is 4 MiB)


async def prefill(
    ports: dict[str, int], leader: Callable[[], Awaitable[str]], keys: int, value_bytes: int,
    seconds: float = 120.0,
) -> int:  # fmt: skip
    """Ballast: `keys` keys ``b00000``... of `value_bytes` each, written with ``POST /txn``
    through the leader before the load starts, so the state (and every snapshot) is
    several MB. Not part of the checked history; returns the bytes written."""
    per_txn = max(1, min(TXN_OPS, TXN_BYTES // max(1, value_bytes)))
    names = [f"b{i:05d}" for i in range(keys)]
    make = Values((value_bytes, value_bytes)).make
    written = 0
    pool = Pool(ports)
    try:
        with trio.fail_after(seconds):
            for i in range(0, len(names), per_txn):
                ops = [{"op": "put", "key": k, "value": make(k)} for k in names[i : i + per_txn]]
                while True:
                    r = await attempt(pool, await leader(), "POST", "/txn", 30.0, {"success": ops})
                    if not isinstance(r, str) and r[0] == 200:
                        break
                    await trio.sleep(0.2)  # a put of the same values twice is harmless
                written += sum(len(op["value"]) for op in ops)
    finally:
        await pool.aclose()
    return written
