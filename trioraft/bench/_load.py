"""The load generator: N Trio workers, one keep-alive connection each, a bounded run.

Rules of a run:

* It is always bounded: it stops at ``duration`` seconds after warm-up, or after
  ``requests`` recorded requests, whichever comes first. Requests still in flight
  when the clock runs out are cancelled and not counted.
* Warm-up requests go through the same workers and connections but are not
  recorded. A request is recorded iff recording was on when it was *sent*.
* Worker ``i`` talks to ``targets[i % len(targets)]`` for the whole run, so load is
  spread round-robin over the targets without any connection churn.
* Every request ends in exactly one outcome label: ``"200"``, ``"404 not_found"``,
  ``"503 no_leader"``, ``"conn_error"``, ``"timeout"``... An outcome is a success
  when it is the expected answer for its operation (a 404 is a fine answer to a read,
  a 409 to a compare-and-set); latency percentiles are over successes only.
"""

from __future__ import annotations

import bisect
import math
import random
import time
import urllib.parse
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx
import msgspec
import trio

__all__ = [
    "DEFAULT_ENDPOINTS",
    "OPS",
    "LoadResult",
    "LoadSpec",
    "ProgressFn",
    "find_targets",
    "parse_mix",
    "run_load",
]

DEFAULT_ENDPOINTS: tuple[str, ...] = (
    "http://127.0.0.1:3001",
    "http://127.0.0.1:3002",
    "http://127.0.0.1:3003",
)

#: operation -> HTTP statuses that count as a successful answer.
OPS: Mapping[str, frozenset[int]] = {
    "write": frozenset({200}),
    "read": frozenset({200, 404}),
    "cas": frozenset({200, 409}),
    "delete": frozenset({200}),
    "txn": frozenset({200, 409}),
    "bulk": frozenset({200}),
    "echo": frozenset({200}),  # POST {path} with a body of value_size bytes
    "get": frozenset({200}),  # GET {path}
}

Consistency = Literal["linearizable", "stale"]
Target = Literal["all", "leader", "followers"]
ClientKind = Literal["raw", "httpx"]

#: (phase, recorded requests so far, seconds into the phase)
ProgressFn = Callable[[str, int, float], None]

_JSON = b"application/json"


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """``"write=0.5,read=0.5,cas=0.1"`` -> weights; a bare name means weight 1."""
    mix: list[tuple[str, float]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight_text = part.partition("=")
        name = name.strip()
        if name not in OPS:
            raise ValueError(f"unknown operation {name!r} in mix (known: {', '.join(OPS)})")
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise ValueError(f"bad weight {weight_text!r} for {name!r}") from None
        if not (weight >= 0 and math.isfinite(weight)):
            raise ValueError(f"weight for {name!r} must be a finite number >= 0")
        mix.append((name, weight))
    if not mix or sum(w for _, w in mix) <= 0:
        raise ValueError(f"mix {text!r} has no operation with a positive weight")
    return tuple(mix)


@dataclass(frozen=True, slots=True)
class LoadSpec:
    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    concurrency: int = 16
    duration: float = 10.0  # seconds of recording, after warm-up; always applies
    requests: int | None = None  # recorded-request cap; None = only the duration
    keys: int = 1000  # key space size
    key_size: int = 16
    value_size: int = 100
    mix: tuple[tuple[str, float], ...] = (("write", 1.0),)
    consistency: Consistency = "linearizable"
    target: Target = "all"
    warmup: float = 0.0
    path: str = "/echo"  # for the raw "echo" and "get" operations
    client: ClientKind = "raw"
    timeout: float = 10.0  # per request
    prefill: bool = False  # write every key once before warm-up
    seed: int = 0

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not (self.duration > 0 and math.isfinite(self.duration)):
            raise ValueError("duration must be a positive number of seconds")
        if self.requests is not None and self.requests < 1:
            raise ValueError("requests must be >= 1")
        if self.keys < 1 or self.key_size < 1 or self.value_size < 0:
            raise ValueError("keys and key size must be >= 1, value size >= 0")
        if self.warmup < 0 or self.timeout <= 0:
            raise ValueError("warmup must be >= 0 and timeout > 0")
        if not self.endpoints:
            raise ValueError("at least one endpoint is needed")
        parse_mix(",".join(f"{n}={w}" for n, w in self.mix))  # validates


@dataclass(slots=True)
class LoadResult:
    spec: LoadSpec
    elapsed: float  # seconds of the recorded phase
    outcomes: dict[str, int]  # label -> count, over every recorded request
    by_op: dict[str, dict[str, int]]  # op -> label -> count
    ok: int  # successful recorded requests
    latencies_ms: list[float]  # of the successes, sorted ascending
    targets: tuple[str, ...]  # the URLs the workers actually hit
    leader: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def errors(self) -> int:
        return self.total - self.ok

    @property
    def ops_per_s(self) -> float:
        """Successful operations per second."""
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.total / self.elapsed if self.elapsed > 0 else 0.0

    def percentiles(self) -> dict[str, float]:
        """Nearest-rank percentiles in ms; empty when nothing succeeded."""
        lat = self.latencies_ms
        if not lat:
            return {}
        n = len(lat)

        def rank(q: float) -> float:
            return lat[min(n - 1, max(0, math.ceil(q * n) - 1))]

        return {
            "min": lat[0],
            "p50": rank(0.50),
            "p90": rank(0.90),
            "p99": rank(0.99),
            "p99.9": rank(0.999),
            "max": lat[-1],
            "mean": sum(lat) / n,
        }

    def to_json(self) -> dict[str, Any]:
        s = self.spec
        return {
            "spec": {
                "endpoints": list(s.endpoints),
                "targets": list(self.targets),
                "concurrency": s.concurrency,
                "duration": s.duration,
                "requests": s.requests,
                "keys": s.keys,
                "key_size": s.key_size,
                "value_size": s.value_size,
                "mix": dict(s.mix),
                "consistency": s.consistency,
                "target": s.target,
                "warmup": s.warmup,
                "client": s.client,
            },
            "leader": self.leader,
            "elapsed_s": self.elapsed,
            "total": self.total,
            "ok": self.ok,
            "errors": self.errors,
            "ops_per_s": self.ops_per_s,
            "requests_per_s": self.requests_per_s,
            "outcomes": dict(sorted(self.outcomes.items())),
            "by_op": {op: dict(sorted(c.items())) for op, c in sorted(self.by_op.items())},
            "latency_ms": self.percentiles(),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------- clients


class _Client(Protocol):
    async def request(self, method: bytes, target: bytes, body: bytes | None) -> tuple[int, bytes]:
        """Send one request; return (status, body). Raises on transport failure."""
        ...

    async def aclose(self) -> None: ...


class _ConnectionLost(Exception):
    pass


class RawClient:
    """One HTTP/1.1 keep-alive connection on a Trio socket, for one task at a time.

    Deliberately minimal: Content-Length or chunked response bodies, reconnects
    after ``Connection: close`` or any failure (the failed request is *not*
    retried: its outcome is unknown to us, so it is reported).
    """

    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http:// endpoints are supported, not {base_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._host_header = f"Host: {parts.netloc}\r\n".encode()
        self._prefix = parts.path.rstrip("/").encode()
        self._stream: trio.SocketStream | None = None
        self._buf = bytearray()

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        self._buf.clear()
        if stream is not None:
            await trio.aclose_forcefully(stream)

    async def _fill(self, stream: trio.SocketStream) -> None:
        data = await stream.receive_some(65536)
        if not data:
            raise _ConnectionLost("server closed the connection")
        self._buf += data

    async def request(self, method: bytes, target: bytes, body: bytes | None) -> tuple[int, bytes]:
        try:
            return await self._request(method, target, body)
        except BaseException:
            # Whatever happened (cancel, timeout, error), the stream's state is unknown.
            with trio.CancelScope(shield=True):
                await self.aclose()
            raise

    async def _request(self, method: bytes, target: bytes, body: bytes | None) -> tuple[int, bytes]:
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self._host, self._port)
        stream = self._stream
        head = [method, b" ", self._prefix, target, b" HTTP/1.1\r\n", self._host_header]
        if body is not None:
            head += [b"Content-Type: ", _JSON, b"\r\nContent-Length: ", str(len(body)).encode()]
            head += [b"\r\n\r\n", body]
        else:
            head.append(b"\r\n")
        await stream.send_all(b"".join(head))

        buf = self._buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            await self._fill(stream)
        lines = bytes(buf[:end]).split(b"\r\n")
        del buf[: end + 4]
        status = int(lines[0].split(b" ", 2)[1])
        length = -1
        chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        if chunked:
            payload = await self._read_chunked(stream)
        elif length >= 0:
            while len(buf) < length:
                await self._fill(stream)
            payload = bytes(buf[:length])
            del buf[:length]
        elif status in (204, 304) or 100 <= status < 200 or method == b"HEAD":
            payload = b""
        else:  # body delimited by the end of the connection
            close = True
            try:
                while True:
                    await self._fill(stream)
            except _ConnectionLost:
                pass
            payload = bytes(buf)
            buf.clear()
        if close:
            await self.aclose()
        return status, payload

    async def _read_chunked(self, stream: trio.SocketStream) -> bytes:
        buf = self._buf
        out = bytearray()
        while True:
            while (eol := buf.find(b"\r\n")) < 0:
                await self._fill(stream)
            size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
            del buf[: eol + 2]
            if size == 0:  # trailers, then an empty line
                while (end := buf.find(b"\r\n")) != 0:
                    if end < 0:
                        await self._fill(stream)
                    else:
                        del buf[: end + 2]
                del buf[:2]
                return bytes(out)
            while len(buf) < size + 2:
                await self._fill(stream)
            out += buf[:size]
            del buf[: size + 2]


class HttpxClient:
    """Adapter over a shared ``httpx.AsyncClient`` (the pool is shared by all workers)."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self._client = client
        self._base = base_url.rstrip("/")

    async def request(self, method: bytes, target: bytes, body: bytes | None) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"} if body is not None else None
        resp = await self._client.request(
            method.decode(), self._base + target.decode(), content=body, headers=headers
        )
        return resp.status_code, resp.content

    async def aclose(self) -> None:
        pass  # the shared pool is closed by run_load


# --------------------------------------------------------------------------- workload


def _make_keys(n: int, size: int) -> list[bytes]:
    width = len(str(n - 1))
    keys = []
    for i in range(n):
        digits = str(i).rjust(width, "0")
        key = ("k" + digits.rjust(size - 1, "0")) if size > width else digits
        keys.append(key.encode())
    return keys


@dataclass(slots=True)
class _Request:
    op: str
    method: bytes
    target: bytes
    body: bytes | None


class _Workload:
    """Pre-encoded requests, so the hot loop only picks indices."""

    def __init__(self, spec: LoadSpec) -> None:
        rng = random.Random(spec.seed)
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        value = "".join(rng.choice(alphabet) for _ in range(spec.value_size))
        self.keys = _make_keys(spec.keys, spec.key_size)
        self.names = [name for name, w in spec.mix if w > 0]
        weights = [w for _, w in spec.mix if w > 0]
        total = sum(weights)
        acc = 0.0
        self.cumulative: list[float] = []
        for w in weights:
            acc += w / total
            self.cumulative.append(acc)
        self.cumulative[-1] = 1.0
        enc = msgspec.json.encode
        self.write_body = enc({"value": value})
        self.cas_body = enc({"expected": value, "value": value})
        self.echo_body = value.encode()
        self.read_query = b"?consistency=" + spec.consistency.encode()
        self.path = spec.path.encode()
        self.value = value

    def pick(self, rng: random.Random) -> _Request:
        i = bisect.bisect_left(self.cumulative, rng.random()) if len(self.names) > 1 else 0
        op = self.names[min(i, len(self.names) - 1)]
        if op == "echo":
            return _Request(op, b"POST", self.path, self.echo_body)
        if op == "get":
            return _Request(op, b"GET", self.path, None)
        key = self.keys[rng.randrange(len(self.keys))]
        return self.for_key(op, key)

    def for_key(self, op: str, key: bytes) -> _Request:
        if op == "write":
            return _Request(op, b"PUT", b"/kv/" + key, self.write_body)
        if op == "read":
            return _Request(op, b"GET", b"/kv/" + key + self.read_query, None)
        if op == "cas":
            return _Request(op, b"POST", b"/kv/" + key + b"/cas", self.cas_body)
        if op == "delete":
            return _Request(op, b"DELETE", b"/kv/" + key, None)
        if op == "txn":
            return _Request(op, b"POST", b"/txn", txn_body(key.decode(), self.value))
        if op == "bulk":
            return _Request(op, b"POST", b"/txn", self.bulk_body(key))
        raise AssertionError(op)

    def bulk_body(self, key: bytes) -> bytes:
        """A transaction of BULK_PUTS puts (no guard): the bulk-write path."""
        k = key.decode()
        return msgspec.json.encode(
            {"success": [{"op": "put", "key": f"{k}-{i}", "value": self.value}
                         for i in range(BULK_PUTS)]}
        )


BULK_PUTS = 100  # puts per "bulk" transaction


def txn_body(key: str, value: str) -> bytes:
    """One etcd-style transaction: if ``key`` holds ``value``, put it again, else read it."""
    return msgspec.json.encode(
        {
            "compare": [{"key": key, "target": "value", "op": "==", "value": value}],
            "success": [{"op": "put", "key": key, "value": value}],
            "failure": [{"op": "get", "key": key}],
        }
    )


def _label(status: int, body: bytes) -> str:
    if status < 400:
        return str(status)
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return str(status)
    code = decoded.get("code") if isinstance(decoded, dict) else None
    return f"{status} {code}" if isinstance(code, str) else str(status)


# --------------------------------------------------------------------------- discovery


async def _get_status(client: httpx.AsyncClient, url: str) -> dict[str, Any] | None:
    try:
        resp = await client.get(url.rstrip("/") + "/status")
        data = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def find_targets(
    endpoints: tuple[str, ...], target: Target, *, wait: float = 5.0
) -> tuple[tuple[str, ...], str | None]:
    """Resolve ``target`` to URLs via ``GET /status``; returns (urls, leader id).

    ``all`` needs no lookup (the leader is reported when one answers). ``leader``
    and ``followers`` wait up to ``wait`` seconds for a node to name a leader.
    """
    async with httpx.AsyncClient(timeout=2.0) as client:
        deadline = trio.current_time() + wait
        while True:
            statuses: dict[str, dict[str, Any]] = {}
            for url in endpoints:
                st = await _get_status(client, url)
                if st is not None:
                    statuses[url] = st
            leader = next(
                (s["leader"] for s in statuses.values() if isinstance(s.get("leader"), str)), None
            )
            if target == "all":
                return endpoints, leader
            if leader is not None:
                break
            if trio.current_time() >= deadline:
                raise RuntimeError(f"no leader reported by {', '.join(endpoints)} within {wait}s")
            await trio.sleep(0.2)
    ids = {url: s.get("id") for url, s in statuses.items()}
    if target == "followers":
        followers = tuple(u for u in endpoints if u in ids and ids[u] != leader)
        if not followers:
            raise RuntimeError("no follower among the endpoints answered /status")
        return followers, leader
    for url in endpoints:
        if ids.get(url) == leader:
            return (url,), leader
    for st in statuses.values():
        members = st.get("members")
        member = members.get(leader) if isinstance(members, dict) else None
        if isinstance(member, dict) and isinstance(member.get("url"), str):
            return (member["url"],), leader
    raise RuntimeError(f"leader {leader!r} has no known URL")


# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class _Stats:
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    ok: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))


class _Run:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.recording = False
        self.issued = 0  # recorded requests sent
        self.completed = 0  # recorded requests finished
        self.active = 0  # workers still running
        self.done = trio.Event()  # the request cap is reached, or every worker quit
        self.last_done = 0.0
        self.stats = [_Stats() for _ in range(spec.concurrency)]

    def claim(self) -> bool:
        """May a worker send one more request? (Unlimited during warm-up.)"""
        if not self.recording:
            return True
        cap = self.spec.requests
        if cap is not None and self.issued >= cap:
            return False
        self.issued += 1
        return True

    def finish_one(self) -> None:
        self.completed += 1
        self.last_done = time.perf_counter()
        if self.spec.requests is not None and self.completed >= self.spec.requests:
            self.done.set()


async def _worker(
    run: _Run,
    index: int,
    client: _Client,
    workload: _Workload,
    exc_types: tuple[type[BaseException], ...],
) -> None:
    spec = run.spec
    rng = random.Random(spec.seed * 1_000_003 + index)
    stats = run.stats[index]
    outcomes = stats.outcomes
    perf = time.perf_counter
    run.active += 1
    try:
        while run.claim():
            recorded = run.recording
            req = workload.pick(rng)
            t0 = perf()
            try:
                with trio.fail_after(spec.timeout):
                    status, body = await client.request(req.method, req.target, req.body)
            except trio.TooSlowError:
                label, good = "timeout", False
            except exc_types as exc:
                label, good = "conn_error", False
                del exc
            else:
                label = _label(status, body)
                good = status in OPS[req.op]
            elapsed = perf() - t0
            if recorded:
                key = (req.op, label)
                outcomes[key] = outcomes.get(key, 0) + 1
                if good:
                    stats.ok += 1
                    stats.latencies.append(elapsed * 1000.0)
                run.finish_one()
            if not good and label in ("conn_error", "timeout"):
                await trio.sleep(0.01)  # do not spin on a dead endpoint
    finally:
        run.active -= 1
        if run.active == 0:
            run.done.set()


async def _prefill(spec: LoadSpec, clients: list[_Client], workload: _Workload) -> int:
    """Write every key once, spread over the workers' connections; returns failures."""
    failures = 0
    next_key = 0

    async def fill(client: _Client) -> None:
        nonlocal failures, next_key
        while next_key < len(workload.keys):
            key = workload.keys[next_key]
            next_key += 1
            req = workload.for_key("write", key)
            try:
                with trio.fail_after(spec.timeout):
                    status, _ = await client.request(req.method, req.target, req.body)
            except (
                trio.TooSlowError,
                OSError,
                httpx.HTTPError,
                _ConnectionLost,
                trio.BrokenResourceError,
            ):
                status = 0
            if status != 200:
                failures += 1

    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(fill, client)
    return failures


async def _progress_loop(
    run: _Run, on_progress: ProgressFn, spec: LoadSpec, interval: float
) -> None:
    start = trio.current_time()
    while not run.recording:
        on_progress("warmup", 0, trio.current_time() - start)
        await trio.sleep(interval)
    start = trio.current_time()
    while True:
        on_progress("run", run.completed, trio.current_time() - start)
        await trio.sleep(interval)


async def run_load(
    spec: LoadSpec,
    *,
    on_progress: ProgressFn | None = None,
    progress_interval: float = 0.25,
) -> LoadResult:
    """Run one bounded load test as described by ``spec`` and return what it measured."""
    targets, leader = await find_targets(spec.endpoints, spec.target)
    workload = _Workload(spec)
    run = _Run(spec)
    notes: list[str] = []
    transport_errors: tuple[type[BaseException], ...] = (
        OSError,
        _ConnectionLost,
        trio.BrokenResourceError,
        trio.ClosedResourceError,
        httpx.HTTPError,
        ValueError,  # a garbled status line or header
        IndexError,
    )
    pool: httpx.AsyncClient | None = None
    clients: list[_Client] = []
    if spec.client == "httpx":
        limits = httpx.Limits(
            max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency
        )
        pool = httpx.AsyncClient(limits=limits, timeout=spec.timeout, http1=True, http2=False)
        clients = [HttpxClient(pool, targets[i % len(targets)]) for i in range(spec.concurrency)]
    else:
        clients = [RawClient(targets[i % len(targets)]) for i in range(spec.concurrency)]
    try:
        if spec.prefill:
            failed = await _prefill(spec, clients, workload)
            if failed:
                notes.append(f"prefill: {failed} of {spec.keys} writes failed")
        async with trio.open_nursery() as nursery:
            if on_progress is not None:
                nursery.start_soon(_progress_loop, run, on_progress, spec, progress_interval)
            for i, client in enumerate(clients):
                nursery.start_soon(_worker, run, i, client, workload, transport_errors)
            if spec.warmup > 0:
                await trio.sleep(spec.warmup)
            run.recording = True
            t_start = time.perf_counter()
            with trio.move_on_after(spec.duration) as timer:
                await run.done.wait()
            t_end = time.perf_counter() if timer.cancelled_caught else max(run.last_done, t_start)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for client in clients:
                await client.aclose()
            if pool is not None:
                await pool.aclose()

    outcomes: dict[str, int] = {}
    by_op: dict[str, dict[str, int]] = {}
    ok = 0
    lat: array[float] = array("d")
    for st in run.stats:
        ok += st.ok
        lat.extend(st.latencies)
        for (op, label), n in st.outcomes.items():
            outcomes[label] = outcomes.get(label, 0) + n
            per_op = by_op.setdefault(op, {})
            per_op[label] = per_op.get(label, 0) + n
    return LoadResult(
        spec=spec,
        elapsed=t_end - t_start,
        outcomes=outcomes,
        by_op=by_op,
        ok=ok,
        latencies_ms=sorted(lat),
        targets=targets,
        leader=leader,
        notes=notes,
    )
