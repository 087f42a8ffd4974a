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

import random
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import trio

from ._clients import TRANSPORT_ERRORS, Client, HttpxClient, RawClient
from ._discovery import find_targets
from ._spec import (
    DEFAULT_ENDPOINTS,
    ClientKind,
    LoadResult,
    LoadSpec,
    parse_mix,
    percentiles,
)
from ._workload import BULK_PUTS, OPS, Workload, label, txn_body

__all__ = [
    "BULK_PUTS",
    "DEFAULT_ENDPOINTS",
    "OPS",
    "ClientKind",
    "LoadResult",
    "LoadSpec",
    "ProgressFn",
    "WindowFn",
    "find_targets",
    "parse_mix",
    "percentiles",
    "run_load",
    "txn_body",
]

#: (phase, recorded requests so far, seconds into the phase)
ProgressFn = Callable[[str, int, float], None]
#: Called with "start" just before the measured window opens and "end" just after
#: it closes (before requests still in flight are cancelled): e.g. to read CPU
#: counters over exactly the measured window.
WindowFn = Callable[[str], None]



# --------------------------------------------------------------------------- the run


@dataclass(slots=True)
class _Stats:
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    ok: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    # one entry per recorded request, in completion order
    done_at: array[float] = field(default_factory=lambda: array("d"))
    op_index: array[int] = field(default_factory=lambda: array("B"))
    good: array[int] = field(default_factory=lambda: array("B"))
    latency: array[float] = field(default_factory=lambda: array("d"))


class _Run:
    def __init__(self, spec: LoadSpec, ops: tuple[str, ...]) -> None:
        self.spec = spec
        self.ops = ops
        self.op_codes = {op: i for i, op in enumerate(ops)}
        self.recording = False
        self.t_start = 0.0  # perf_counter() when the window opened
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


async def _worker(run: _Run, index: int, client: Client, workload: Workload) -> None:
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
                outcome, good = "timeout", False
            except TRANSPORT_ERRORS as exc:
                outcome, good = "conn_error", False
                del exc
            else:
                outcome = label(status, body)
                good = status in OPS[req.op]
            t1 = perf()
            if recorded:
                key = (req.op, outcome)
                outcomes[key] = outcomes.get(key, 0) + 1
                ms = (t1 - t0) * 1000.0
                if good:
                    stats.ok += 1
                    stats.latencies.append(ms)
                stats.done_at.append(t1 - run.t_start)
                stats.op_index.append(run.op_codes[req.op])
                stats.good.append(1 if good else 0)
                stats.latency.append(ms)
                run.finish_one()
            if not good and outcome in ("conn_error", "timeout"):
                await trio.sleep(0.01)  # do not spin on a dead endpoint
    finally:
        run.active -= 1
        if run.active == 0:
            run.done.set()


async def _prefill(spec: LoadSpec, clients: list[Client], workload: Workload) -> int:
    """Write every key once, spread over the workers' connections; returns failures."""
    failures = 0
    next_key = 0

    async def fill(client: Client) -> None:
        nonlocal failures, next_key
        while next_key < len(workload.keys):
            key = workload.keys[next_key]
            next_key += 1
            req = workload.for_key("write", key)
            try:
                with trio.fail_after(spec.timeout):
                    status, _ = await client.request(req.method, req.target, req.body)
            except trio.TooSlowError:
                status = 0
            except TRANSPORT_ERRORS:
                status = 0
            if status != 200:
                failures += 1

    async with trio.open_nursery() as nursery:
        for client in clients:
            nursery.start_soon(fill, client)
    return failures


async def _progress_loop(run: _Run, on_progress: ProgressFn, interval: float) -> None:
    start = trio.current_time()
    while not run.recording:
        on_progress("warmup", 0, trio.current_time() - start)
        await trio.sleep(interval)
    start = trio.current_time()
    while True:
        on_progress("run", run.completed, trio.current_time() - start)
        await trio.sleep(interval)


def _merge(run: _Run) -> tuple[array[float], array[int], array[int], array[float]]:
    """Every worker's per-request records, merged in completion order."""
    rows: list[tuple[float, int, int, float]] = []
    for st in run.stats:
        rows.extend(zip(st.done_at, st.op_index, st.good, st.latency, strict=True))
    rows.sort()
    return (
        array("d", (r[0] for r in rows)),
        array("B", (r[1] for r in rows)),
        array("B", (r[2] for r in rows)),
        array("d", (r[3] for r in rows)),
    )


async def run_load(
    spec: LoadSpec,
    *,
    on_progress: ProgressFn | None = None,
    progress_interval: float = 0.25,
    on_window: WindowFn | None = None,
) -> LoadResult:
    """Run one bounded load test as described by ``spec`` and return what it measured."""
    targets, leader = await find_targets(spec.endpoints, spec.target, protocol=spec.protocol)
    workload = Workload(
        keys=spec.keys,
        key_size=spec.key_size,
        value_size=spec.value_size,
        mix=spec.mix,
        consistency=spec.consistency,
        path=spec.path,
        seed=spec.seed,
        protocol=spec.protocol,
    )
    ops = tuple(dict.fromkeys(name for name, _ in spec.mix))
    run = _Run(spec, ops)
    notes: list[str] = []
    pool: httpx.AsyncClient | None = None
    clients: list[Client] = []
    if spec.client == "httpx":
        limits = httpx.Limits(
            max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency
        )
        pool = httpx.AsyncClient(limits=limits, timeout=spec.timeout, http1=True, http2=False)
        clients = [HttpxClient(pool, targets[i % len(targets)]) for i in range(spec.concurrency)]
    else:
        clients = [RawClient(targets[i % len(targets)]) for i in range(spec.concurrency)]
    window_open = False
    try:
        if spec.prefill:
            failed = await _prefill(spec, clients, workload)
            if failed:
                notes.append(f"prefill: {failed} of {spec.keys} writes failed")
        async with trio.open_nursery() as nursery:
            if on_progress is not None:
                nursery.start_soon(_progress_loop, run, on_progress, progress_interval)
            for i, client in enumerate(clients):
                nursery.start_soon(_worker, run, i, client, workload)
            if spec.warmup > 0:
                await trio.sleep(spec.warmup)
            if on_window is not None:
                on_window("start")
                window_open = True
            run.t_start = t_start = time.perf_counter()
            run.recording = True
            with trio.move_on_after(spec.duration) as timer:
                await run.done.wait()
            t_end = time.perf_counter() if timer.cancelled_caught else max(run.last_done, t_start)
            if on_window is not None:
                window_open = False
                on_window("end")
            nursery.cancel_scope.cancel()
    finally:
        if window_open and on_window is not None:
            on_window("end")
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
        for (op, outcome), n in st.outcomes.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + n
            per_op = by_op.setdefault(op, {})
            per_op[outcome] = per_op.get(outcome, 0) + n
    done_at, op_index, good, latency = _merge(run)
    op_lat: dict[str, list[float]] = {op: [] for op in ops}
    for i, g, ms in zip(op_index, good, latency, strict=True):
        if g:
            op_lat[ops[i]].append(ms)
    for values in op_lat.values():
        values.sort()
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
        op_latencies_ms={op: v for op, v in op_lat.items() if op in by_op},
        ops=ops,
        done_at=done_at,
        op_index=op_index,
        good=good,
        latency_ms=latency,
    )
