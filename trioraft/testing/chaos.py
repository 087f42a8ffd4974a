"""Jepsen-style chaos run: real ``trioraft serve`` processes, faults, a linearizability check.

    python -m trioraft.testing.chaos --duration 60 --nodes 5 [--seed N] [--clients 8]
                                     [--keys 10] [--out DIR] [--keep]

What it does (see docs/verification.md for the why):

1. Starts N nodes (:class:`~trioraft.testing.procs.ProcCluster`, fsync on). Their
   Raft traffic goes through a :class:`~trioraft.testing.proxy.ProxyMesh`: node A
   reaches node B at a proxy that forwards to B, so the run can partition, delay
   and break every ordered link. Clients talk to the nodes' real ports.
2. For ``--duration`` seconds, ``--clients`` concurrent clients do random get,
   put, cas and (rarely) delete on ``--keys`` keys through random nodes, one raw
   HTTP attempt per history operation (no retries, no Idempotency-Key), each
   value unique. Meanwhile a nemesis (seeded) injects faults: SIGKILL then
   restart of the leader or a random node, SIGSTOP/SIGCONT pauses, partitions
   (random majority/minority, isolated leader, bridge), link delay and loss.
3. Then it heals everything, restarts and resumes every node, reads every key
   once more with linearizable reads (appended to the history, so a lost
   acknowledged write shows up as a violation), waits until all nodes report
   the same applied index and identical state (which must equal those reads),
   and checks the history with :func:`trioraft.testing.linearizability.check`.
4. Prints one summary line and exits 0 only if the history is linearizable and
   the nodes converged. A failing run keeps its directory (history.jsonl,
   faults.jsonl, node logs and data) and prints its path.

Every run is bounded: in time (``--duration`` plus bounded start and end phases),
in requests (``--max-ops``), and it stops only the processes it started, by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import trio

from trioraft.testing import nemesis_membership
from trioraft.testing.linearizability import (
    CheckResult,
    Operation,
    Outcome,
    check,
    save_history,
)
from trioraft.testing.procs import ClusterTimeout, ProcCluster, free_port_range
from trioraft.testing.proxy import ProxyMesh

__all__ = ["ChaosConfig", "ChaosResult", "main", "parse_args", "run_chaos"]

FAULT_KINDS = ("kill", "pause", "partition", "delay")


@dataclass(frozen=True)
class ChaosConfig:
    duration: float = 60.0
    """Seconds of client load under faults."""
    nodes: int = 5
    seed: int = 0
    clients: int = 8
    keys: int = 10
    out: Path = Path(".chaos")
    """The run's directory: node data and logs, history.jsonl, faults.jsonl."""
    keep: bool = False
    """Keep `out` even when the run passes."""
    client_timeout: float = 2.0
    """Seconds before a client gives up on one HTTP attempt (outcome unknown)."""
    fault_interval: tuple[float, float] = (1.0, 4.0)
    """Seconds between nemesis steps, drawn uniformly."""
    max_ops: int = 500_000
    """Stop the clients after this many operations, whatever the time."""
    election_timeout_ms: str | None = None
    heartbeat_ms: int | None = None
    faults: frozenset[str] = frozenset(FAULT_KINDS)
    """Which fault kinds the nemesis may use (empty: none)."""
    check_timeout: float = 120.0
    """Seconds of linearizability search per key before the verdict is 'undecided'."""
    log_level: str = "info"
    snapshot_entries: int | None = 100
    """The nodes' ``--snapshot-entries`` (None: the server default, 10000). Small, so
    snapshots, log compaction and InstallSnapshot happen under faults."""
    read_consistency: str = "linearizable"
    """The clients' ``?consistency=``; ``stale`` is the harness's own sanity check: it
    must end in VIOLATION (the final reads stay linearizable)."""
    membership: bool = False
    """Also change the membership (remove/add, wipe-and-readmit, transfer):
    trioraft.testing.nemesis_membership."""


@dataclass
class FaultEvent:
    t: float
    action: str  # "start" | "stop"
    kind: str  # one of FAULT_KINDS, or "heal"
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 4), "action": self.action, "kind": self.kind,
                "detail": self.detail}  # fmt: skip


@dataclass
class ChaosResult:
    config: ChaosConfig
    history: list[Operation]
    faults: list[FaultEvent]
    check: CheckResult | None
    converged: bool
    final_state: dict[str, str] | None
    out: Path
    problems: list[str] = field(default_factory=list)
    """Everything that went wrong besides the verdict (e.g. no convergence)."""
    log_errors: list[str] = field(default_factory=list)
    """ERROR/CRITICAL/Traceback lines from the node logs (reported, not a failure)."""

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(op.outcome for op in self.history)

    @property
    def fault_counts(self) -> Counter[str]:
        c: Counter[str] = Counter({k: 0 for k in FAULT_KINDS})
        c.update(f.kind for f in self.faults if f.action == "start" and f.kind in FAULT_KINDS)
        return c

    @property
    def verdict(self) -> str:
        if self.check is None:
            return "unchecked"
        return {True: "linearizable", False: "VIOLATION", None: "undecided"}[self.check.ok]

    @property
    def ok(self) -> bool:
        return self.verdict == "linearizable" and self.converged and not self.problems

    def summary(self) -> str:
        o, f = self.outcomes, self.fault_counts
        return (
            f"chaos: seed={self.config.seed} nodes={self.config.nodes} "
            f"duration={self.config.duration:g}s ops={len(self.history)} "
            f"(ok={o['ok']}, fail={o['fail']}, unknown={o['unknown']}) "
            f"faults={sum(f.values())} ("
            + ", ".join(f"{k}={f[k]}" for k in FAULT_KINDS)
            + f") verdict={self.verdict} converged={'yes' if self.converged else 'no'}"
        )


# --------------------------------------------------------------------- clients


class _Recorder:
    """The history, the run's clock, and the clients' shared stop condition."""

    def __init__(self, max_ops: int) -> None:
        self.t0 = trio.current_time()
        self.wall_t0 = time.time()
        self.history: list[Operation] = []
        self.max_ops = max_ops
        self.stop = trio.Event()

    def now(self) -> float:
        return trio.current_time() - self.t0

    def add(self, op: Operation) -> int:
        """Append `op`; returns its slot, for :meth:`settle`."""
        self.history.append(op)
        if len(self.history) >= self.max_ops:
            self.stop.set()
        return len(self.history) - 1

    def settle(self, slot: int, op: Operation) -> None:
        """Replace the operation recorded (as unknown) at `slot` by its outcome."""
        self.history[slot] = op


def _key_path(key: str) -> str:
    return "/kv/" + quote(key, safe="")


class _Body(httpx.AsyncByteStream):
    """A request body that is not an async generator.

    httpx's own body streams are async generators; when sending fails halfway
    (a reset, a timeout, a cancellation) the generator is left suspended and
    Trio warns when it is collected (a ResourceWarning, an error under
    ``filterwarnings = error``). A plain iterator has nothing to finalize.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Once(self._data)


class _Once:
    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Once:
        return self

    async def __anext__(self) -> bytes:
        if self._data is None:
            raise StopAsyncIteration
        data, self._data = self._data, None
        return data


async def _attempt(
    http: httpx.AsyncClient, method: str, url: str, seconds: float,
    body: dict[str, Any] | None = None, params: dict[str, str] | None = None,
) -> httpx.Response | Literal["fail", "unknown"]:  # fmt: skip
    """One HTTP attempt: the response, or ``"fail"`` (certainly not sent) or ``"unknown"``.

    httpx's timeout (each phase) bounds it; the outer bound is a safety net."""
    content = b"" if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else None
    request = http.build_request(method, url, content=content or None, params=params,
                                 headers=headers, timeout=seconds)  # fmt: skip
    request.stream = _Body(content)
    with trio.move_on_after(3 * seconds):
        try:
            return await http.send(request)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            return "fail"  # no connection: not a byte of the request left
        except httpx.HTTPError:
            return "unknown"
    return "unknown"


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


async def _do_get(
    rec: _Recorder, http: httpx.AsyncClient, client: str | int, base: str, key: str,
    seconds: float, consistency: str = "linearizable",
) -> Operation:  # fmt: skip
    call = rec.now()
    r = await _attempt(http, "GET", base + _key_path(key), seconds,
                       params={"consistency": consistency})  # fmt: skip
    ret = rec.now()
    if isinstance(r, str):
        op = Operation.get(client, key, None, call, ret, outcome=r)
    elif r.status_code == 200 and isinstance(v := _json(r).get("value"), str):
        op = Operation.get(client, key, v, call, ret)
    elif r.status_code == 404:
        op = Operation.get(client, key, None, call, ret)
    elif r.status_code in (400, 413, 503):
        op = Operation.get(client, key, None, call, ret, outcome="fail")
    else:
        op = Operation.get(client, key, None, call, ret, outcome="unknown")
    rec.add(op)
    return op


def _write_outcome(r: httpx.Response | Literal["fail", "unknown"]) -> Outcome:
    """ok / fail / unknown for a write's raw answer (API.md §3 Errors)."""
    if isinstance(r, str):
        return r
    if r.status_code in (200, 409):
        return "ok"
    if r.status_code in (400, 404, 413, 503):
        return "fail"  # never took effect and never will
    return "unknown"  # 504, 5xx, anything unexpected


async def _client(
    cid: int, cfg: ChaosConfig, rec: _Recorder, http: httpx.AsyncClient, urls: list[str],
    keys: list[str],
) -> None:  # fmt: skip
    rng = random.Random(f"{cfg.seed}-client-{cid}")
    seen: dict[str, str | None] = {}  # last value this client saw per key: cas targets
    counter = 0
    t = cfg.client_timeout
    last: Outcome = "ok"
    while not rec.stop.is_set():
        if last == "fail":
            # A refused connection or a 503 comes back at once: back off a little
            # rather than spin (while every node is down, say).
            await trio.sleep(rng.uniform(0.05, 0.15))
        key = rng.choice(keys)
        base = rng.choice(urls)
        r = rng.random()
        if r < 0.40:
            op = await _do_get(rec, http, cid, base, key, t, cfg.read_consistency)
            last = op.outcome
            if op.outcome == "ok":
                seen[key] = op.result
            continue
        counter += 1
        value = f"c{cid}-{counter}"
        path = base + _key_path(key)
        call = rec.now()
        # Recorded as unknown before it is sent, settled when the answer comes: a
        # write cancelled mid-flight stays in the history as what it is, unknown.
        if r < 0.70:
            slot = rec.add(Operation.put(cid, key, value, call, None, "unknown"))
            resp = await _attempt(http, "PUT", path, t, {"value": value})
            outcome = last = _write_outcome(resp)
            rec.settle(slot, Operation.put(cid, key, value, call, rec.now(), outcome))
            if outcome == "ok":
                seen[key] = value
        elif r < 0.95:
            expected = seen.get(key) if rng.random() < 0.8 else None
            slot = rec.add(Operation.cas(cid, key, expected, value, None, call, None, "unknown"))
            resp = await _attempt(http, "POST", path + "/cas", t,
                                  {"expected": expected, "value": value})  # fmt: skip
            ret = rec.now()
            outcome = last = _write_outcome(resp)
            ok: bool | None = None
            if isinstance(resp, httpx.Response) and outcome == "ok":
                ok = resp.status_code == 200
                body = _json(resp)
                if ok:
                    seen[key] = value
                elif "current" in body and isinstance(body["current"], (str, type(None))):
                    # The refused cas read `current` atomically: record that read too.
                    seen[key] = body["current"]
                    rec.add(Operation.get(cid, key, body["current"], call, ret))
            rec.settle(slot, Operation.cas(cid, key, expected, value, ok, call, ret, outcome))
        else:
            slot = rec.add(Operation.delete(cid, key, None, call, None, "unknown"))
            resp = await _attempt(http, "DELETE", path, t)
            outcome = last = _write_outcome(resp)
            deleted = None
            if isinstance(resp, httpx.Response) and outcome == "ok":
                d = _json(resp).get("deleted")
                deleted = d if isinstance(d, bool) else None
                seen[key] = None
            rec.settle(slot, Operation.delete(cid, key, deleted, call, rec.now(), outcome))


# --------------------------------------------------------------------- nemesis


class _Nemesis:
    """Random faults, at most a minority of nodes down at once, every one recorded."""

    def __init__(
        self, cfg: ChaosConfig, cluster: ProcCluster, mesh: ProxyMesh, rec: _Recorder
    ) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.mesh = mesh
        self.rec = rec
        self.rng = random.Random(cfg.seed)
        self.ids = cluster.ids
        self.events: list[FaultEvent] = []
        # Active faults, oldest first: (kind, what to undo).
        self.active: list[tuple[str, str, Callable[[], None]]] = []
        self.down: set[str] = set()  # killed or paused
        self.partitioned = False
        self.degraded = False
        self.crashes: list[str] = []  # nodes that exited without being killed
        self._seen_exits: set[int] = set()

    def log(self, action: str, kind: str, detail: str) -> None:
        self.events.append(FaultEvent(self.rec.now(), action, kind, detail))

    async def leader(self) -> str | None:
        with trio.move_on_after(1.5):
            return await self.cluster.leader([i for i in self.ids if i not in self.down])
        return None

    async def target(self) -> str:
        """The leader half of the time (if one is known), else a random live node."""
        up = [i for i in self.ids if i not in self.down]
        if self.rng.random() < 0.5:
            leader = await self.leader()
            if leader is not None and leader in up:
                return leader
        return self.rng.choice(up)

    async def run(self, stop: trio.Event) -> None:
        if not self.cfg.faults:
            await stop.wait()
            return
        await self._sleep(stop, self.rng.uniform(*self.cfg.fault_interval))
        while not stop.is_set():
            self.check_crashes(restart=True)
            try:
                if self.active and (len(self.active) >= 2 or self.rng.random() < 0.5):
                    self._undo(self.active.pop(0))
                else:
                    await self._inject()
            except Exception as exc:  # a fault that could not be applied is not a verdict
                self.log("error", "nemesis", repr(exc))
            await self._sleep(stop, self.rng.uniform(*self.cfg.fault_interval))

    @staticmethod
    async def _sleep(stop: trio.Event, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await stop.wait()

    def _undo(self, fault: tuple[str, str, Callable[[], None]]) -> None:
        kind, detail, undo = fault
        undo()
        self.log("stop", kind, detail)

    async def _inject(self) -> None:
        choices = [k for k in FAULT_KINDS if k in self.cfg.faults]
        max_down = (len(self.ids) - 1) // 2
        if len(self.down) >= max_down:
            choices = [k for k in choices if k not in ("kill", "pause")]
        if self.partitioned:
            choices = [k for k in choices if k != "partition"]
        if self.degraded:
            choices = [k for k in choices if k != "delay"]
        if not choices:
            return
        kind = self.rng.choice(choices)
        if kind == "kill" and not self.down and self.rng.random() < 0.15:
            # Every node at once: only what was fsync'd survives, and everything
            # acknowledged must be among it.
            self.cluster.kill_all()
            self.down.update(self.ids)

            def restart_all() -> None:
                for node in self.ids:
                    self.cluster.start(node)
                self.down.clear()

            self._start(kind, "SIGKILL all nodes", restart_all)
        elif kind == "kill":
            node = await self.target()
            self.cluster.kill(node)
            self.down.add(node)

            def restart(node: str = node) -> None:
                self.cluster.start(node)
                self.down.discard(node)

            self._start(kind, f"SIGKILL {node}", restart)
        elif kind == "pause":
            node = await self.target()
            self.cluster.pause(node)
            self.down.add(node)

            def resume(node: str = node) -> None:
                self.cluster.resume(node)
                self.down.discard(node)

            self._start(kind, f"SIGSTOP {node}", resume)
        elif kind == "partition":
            detail = await self._partition()

            def heal() -> None:
                self.mesh.heal_partitions()
                self.partitioned = False

            self.partitioned = True
            self._start(kind, detail, heal)
        else:
            detail = self._degrade()

            def clear() -> None:
                for link in self.mesh.links.values():
                    link.delay = 0.0
                    link.loss = 0.0
                self.degraded = False

            self.degraded = True
            self._start(kind, detail, clear)

    def _start(self, kind: str, detail: str, undo: Callable[[], None]) -> None:
        self.active.append((kind, detail, undo))
        self.log("start", kind, detail)

    async def _partition(self) -> str:
        ids = list(self.ids)
        mode = self.rng.choice(["split", "isolate-leader", "bridge"] if len(ids) >= 3
                               else ["split"])  # fmt: skip
        if mode == "isolate-leader":
            node = await self.leader() or self.rng.choice(ids)
            self.mesh.isolate(node)
            return f"isolate {node}"
        self.rng.shuffle(ids)
        if mode == "bridge":
            half = (len(ids) - 1) // 2
            left, bridge, right = ids[:half], ids[half], ids[half + 1 :]
            self.mesh.bridge(left, bridge, right)
            return f"bridge {sorted(left)} <-{bridge}-> {sorted(right)}"
        minority = ids[: self.rng.randint(1, (len(ids) - 1) // 2 or 1)]
        majority = ids[len(minority) :]
        self.mesh.partition([minority, majority])
        return f"split {sorted(minority)} | {sorted(majority)}"

    def _degrade(self) -> str:
        """Delay and/or loss on the links into and out of one node, or on random links."""
        if self.rng.random() < 0.5:
            node = self.rng.choice(self.ids)
            links = [(a, b) for a, b in self.mesh.links if node in (a, b)]
            where = f"links of {node}"
        else:
            links = self.rng.sample(sorted(self.mesh.links), k=len(self.mesh.links) // 2)
            where = f"{len(links)} random links"
        delay = self.rng.choice([0.0, 0.02, 0.1, 0.3, 0.8])
        loss = self.rng.choice([0.0, 0.0, 0.05, 0.2]) if delay else self.rng.choice([0.05, 0.2])
        for a, b in links:
            self.mesh.set_delay(a, b, delay)
            self.mesh.set_loss(a, b, loss)
        return f"{where}: delay={delay:g}s loss={loss:g}"

    def check_crashes(self, restart: bool) -> None:
        """Record every node process that exited although the nemesis did not kill it
        (a product failure: API.md says a node only stops when told to), and start
        it again if `restart`, as a supervisor would."""
        for node_id, node in self.cluster.nodes.items():
            if node_id in self.down or node.proc is None or node.proc.poll() is None:
                continue
            pid = node.proc.pid
            if pid in self._seen_exits:
                continue
            self._seen_exits.add(pid)
            what = f"{node_id} (pid {pid}) exited with status {node.proc.returncode}"
            self.crashes.append(what)
            self.log("crash", "crash", what)
            if restart:
                self.cluster.start(node_id)

    def heal_all(self) -> None:
        """Undo every active fault, then make sure nothing at all is left."""
        self.check_crashes(restart=False)
        while self.active:
            with contextlib.suppress(Exception):
                self._undo(self.active.pop(0))
        self.mesh.heal()
        for node_id, node in self.cluster.nodes.items():
            if node.paused:
                self.cluster.resume(node_id)
            if not node.running:
                self.cluster.start(node_id)
        self.down.clear()
        self.partitioned = self.degraded = False
        self.log("start", "heal", "all links healed, all nodes running")


# ------------------------------------------------------------------------- run


async def _final_reads(
    rec: _Recorder, http: httpx.AsyncClient, cluster: ProcCluster, keys: list[str],
    seconds: float,
) -> dict[str, str | None]:  # fmt: skip
    """A linearizable read of every key (through the leader), each appended to the history."""
    out: dict[str, str | None] = {}
    with trio.fail_after(60):
        for key in keys:
            while True:
                leader = await cluster.wait_for_leader(30)
                op = await _do_get(rec, http, "final", cluster.url(leader), key, seconds)
                if op.outcome == "ok":
                    out[key] = op.result
                    break
                await trio.sleep(0.2)
    return out


async def run_chaos(cfg: ChaosConfig) -> ChaosResult:
    """One chaos run (see the module docstring). Never leaves a process behind."""
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    keys = [f"k{i}" for i in range(cfg.keys)]
    ids = [f"n{i}" for i in range(1, cfg.nodes + 1)]
    problems: list[str] = []
    final_state: dict[str, str] | None = None
    converged = False
    result_check: CheckResult | None = None
    rec = _Recorder(cfg.max_ops)
    nemesis: _Nemesis | None = None
    cluster: ProcCluster | None = None
    try:
        async with trio.open_nursery() as proxies:
            mesh = await ProxyMesh.open(proxies, ids, random.Random(f"{cfg.seed}-mesh"))
            base = free_port_range(cfg.nodes)
            cluster = ProcCluster(
                cfg.nodes, out, ids=ids, ports=range(base, base + cfg.nodes),
                election_timeout_ms=cfg.election_timeout_ms, heartbeat_ms=cfg.heartbeat_ms,
                log_level=cfg.log_level, http_timeout=1.0,
                extra_args=[] if cfg.snapshot_entries is None
                else [f"--snapshot-entries={cfg.snapshot_entries}"],
            )  # fmt: skip
            mesh.set_targets({i: n.port for i, n in cluster.nodes.items()})
            _route_peers_through(cluster, mesh)
            async with httpx.AsyncClient(
                trust_env=False, limits=httpx.Limits(max_connections=4 * cfg.clients + 16)
            ) as http:
                await cluster.boot(timeout=30)
                rec.t0, rec.wall_t0 = trio.current_time(), time.time()
                _save_run_info(out, cfg, cluster, mesh, rec.wall_t0)
                nemesis = _Nemesis(cfg, cluster, mesh, rec)
                # Membership nemesis (issue 12): a hook, the module holds the rest.
                members = nemesis_membership.attach(cfg, cluster, nemesis, rec) \
                    if cfg.membership else None
                urls = [cluster.url(i) for i in ids]
                async with trio.open_nursery() as load:
                    load.start_soon(nemesis.run, rec.stop)
                    if members is not None:
                        load.start_soon(members.run, rec.stop)
                    for cid in range(cfg.clients):
                        load.start_soon(_client, cid, cfg, rec, http, urls, keys)
                    with trio.move_on_after(cfg.duration):
                        await rec.stop.wait()
                    rec.stop.set()
                    # Clients finish their current attempt (bounded by their timeout).
                    load.cancel_scope.deadline = trio.current_time() + 3 * cfg.client_timeout + 2
                if members is not None:
                    members.before_heal()
                nemesis.heal_all()
                if members is not None:
                    await members.after_heal()
                    problems += [f"membership: {e}" for e in members.errors
                                 if "could not be added back" in e]  # fmt: skip
                    nemesis.log("start", "membership", members.summary())
                converged, final_state = await _settle(rec, http, cluster, keys, cfg, problems)
                nemesis.check_crashes(restart=False)
                problems += [f"node crashed: {what}" for what in nemesis.crashes]
            proxies.cancel_scope.cancel()
    except ClusterTimeout as exc:
        problems.append(f"cluster: {str(exc).splitlines()[0]}")
    finally:
        if cluster is not None:
            with trio.CancelScope(shield=True):
                await cluster.aclose()
            leftovers = [p for n in cluster.nodes.values() for p in n.pids if _alive(p)]
            if leftovers:
                problems.append(f"processes left behind: {leftovers}")
        _save(out, rec.history, nemesis.events if nemesis is not None else [])
    result_check = await trio.to_thread.run_sync(
        lambda: check(rec.history, timeout=cfg.check_timeout)
    )
    if result_check.explanation:
        (out / "explanation.txt").write_text(result_check.explanation + "\n")
    return ChaosResult(
        cfg, rec.history, nemesis.events if nemesis else [], result_check, converged,
        final_state, out, problems, _log_errors(out, ids),
    )  # fmt: skip


def _log_errors(out: Path, ids: list[str]) -> list[str]:
    found = []
    for node_id in ids:
        try:
            text = (out / f"{node_id}.log").read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if " ERROR " in line or " CRITICAL " in line or "Traceback" in line:
                found.append(f"{node_id}: {line.strip()}")
    return found


def _save_run_info(
    out: Path, cfg: ChaosConfig, cluster: ProcCluster, mesh: ProxyMesh, wall_t0: float
) -> None:
    """run.json: the settings, and what maps history times (seconds since the load
    began) to the node logs' wall-clock times."""
    info = {
        "seed": cfg.seed, "nodes": cfg.nodes, "duration": cfg.duration,
        "clients": cfg.clients, "keys": cfg.keys, "client_timeout": cfg.client_timeout,
        "faults": sorted(cfg.faults), "read_consistency": cfg.read_consistency,
        "fault_interval": cfg.fault_interval, "snapshot_entries": cfg.snapshot_entries,
        "t0_unix": wall_t0, "t0_local": time.strftime("%Y-%m-%d %H:%M:%S",
                                                      time.localtime(wall_t0)),
        "ports": {i: n.port for i, n in cluster.nodes.items()},
        "proxies": {f"{a}->{b}": link.port for (a, b), link in mesh.links.items()},
    }  # fmt: skip
    (out / "run.json").write_text(json.dumps(info, indent=1) + "\n")


def _save(out: Path, history: list[Operation], events: list[FaultEvent]) -> None:
    save_history(out / "history.jsonl", history)
    with open(out / "faults.jsonl", "w", encoding="utf-8") as f:
        for ev in events:
            f.write(json.dumps(ev.to_dict()) + "\n")


def _alive(pid: int) -> bool:
    from trioraft.testing.procs import pid_alive

    return pid_alive(pid)


def _route_peers_through(cluster: ProcCluster, mesh: ProxyMesh) -> None:
    """Point every node's ``--peer B=URL`` at the proxy for that ordered pair."""
    for a, node in cluster.nodes.items():
        routed = 0
        for k, arg in enumerate(node.argv):
            if arg.startswith("--peer="):
                b = arg[len("--peer=") :].partition("=")[0]
                node.argv[k] = f"--peer={b}={mesh.url(a, b)}"
                routed += 1
        if routed != len(cluster.nodes) - 1:
            raise RuntimeError(f"expected --peer=ID=URL flags in {node.argv}")


async def _settle(
    rec: _Recorder, http: httpx.AsyncClient, cluster: ProcCluster, keys: list[str],
    cfg: ChaosConfig, problems: list[str],
) -> tuple[bool, dict[str, str] | None]:  # fmt: skip
    """After healing: final reads, convergence, and reads == converged state.

    A request a client gave up on may still land late (held by a paused node or a
    delayed link), so reads and state are compared and retaken until they agree.
    """
    state: dict[str, str] | None = None
    for _attempt_no in range(5):
        try:
            await cluster.wait_for_leader(30)
            reads = await _final_reads(rec, http, cluster, keys, cfg.client_timeout)
            state = await cluster.wait_converged(timeout=30)
        except (ClusterTimeout, trio.TooSlowError) as exc:
            problems.append(f"no convergence after healing: {str(exc).splitlines()[0]}")
            return False, state
        expected = {k: v for k, v in reads.items() if v is not None}
        if {k: v for k, v in state.items() if k in set(keys)} == expected:
            return True, state
        await trio.sleep(1.0)
    problems.append("the converged state never matched the final reads")
    return False, state


# ------------------------------------------------------------------ command line


def _default_out(seed: int) -> Path:
    return Path(".chaos") / f"{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}"


def parse_args(argv: Sequence[str] | None = None) -> ChaosConfig:
    parser = argparse.ArgumentParser(
        prog="python -m trioraft.testing.chaos",
        description="Fault injection against real trioraft processes, with a "
        "linearizability check. Exit status 0 only if linearizable and converged.",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load [60]")
    parser.add_argument("--nodes", type=int, default=5, help="cluster size [5]")
    parser.add_argument("--seed", type=int, default=None, help="nemesis/client seed [random]")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients [8]")
    parser.add_argument("--keys", type=int, default=10, help="number of keys [10]")
    parser.add_argument("--out", type=Path, default=None,
                        help="run directory [.chaos/<time>-seed<S>]")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep --out even when passing")
    parser.add_argument("--client-timeout", type=float, default=2.0,
                        help="seconds per HTTP attempt [2]")  # fmt: skip
    parser.add_argument("--max-ops", type=int, default=500_000, help="operation cap [500000]")
    parser.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"comma-separated subset of {','.join(FAULT_KINDS)}; '' for none",
    )
    parser.add_argument("--election-timeout-ms", default=None, metavar="MIN-MAX")
    parser.add_argument("--heartbeat-ms", type=int, default=None)
    parser.add_argument("--log-level", default="info", help="the nodes' --log-level [info]")
    parser.add_argument(
        "--snapshot-entries",
        type=int,
        default=100,
        metavar="N",
        help="the nodes' --snapshot-entries; 0: the server default [100]",
    )
    parser.add_argument(
        "--fault-interval",
        default="1-4",
        metavar="MIN-MAX",
        help="seconds between nemesis steps [1-4]",
    )
    parser.add_argument("--membership", action="store_true",
                        help="also change the membership: remove and re-add, wipe and "
                        "re-admit, transfer leadership (trioraft.testing.nemesis_membership)")
    parser.add_argument("--stale-reads", action="store_true",
                        help="clients read with ?consistency=stale: a sanity check of the "
                        "harness itself, which must then report VIOLATION")  # fmt: skip
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.clients < 1 or args.keys < 1 or args.duration <= 0:
        parser.error("--nodes, --clients, --keys and --duration must be positive")
    faults = frozenset(f.strip() for f in args.faults.split(",") if f.strip())
    if bad := faults - set(FAULT_KINDS):
        parser.error(f"unknown fault kinds: {sorted(bad)}")
    try:
        low, _, high = args.fault_interval.partition("-")
        interval = (float(low), float(high or low))
    except ValueError:
        parser.error("--fault-interval: expected MIN-MAX seconds, as 1-4")
    if not 0 < interval[0] <= interval[1]:
        parser.error("--fault-interval: expected 0 < MIN <= MAX")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big") % 100_000
    return ChaosConfig(
        duration=args.duration, nodes=args.nodes, seed=seed, clients=args.clients,
        keys=args.keys, out=args.out or _default_out(seed), keep=args.keep,
        client_timeout=args.client_timeout, max_ops=args.max_ops, faults=faults,
        election_timeout_ms=args.election_timeout_ms, heartbeat_ms=args.heartbeat_ms,
        log_level=args.log_level,
        read_consistency="stale" if args.stale_reads else "linearizable",
        snapshot_entries=args.snapshot_entries or None, fault_interval=interval,
        membership=args.membership,
    )  # fmt: skip


def report(result: ChaosResult) -> str:
    """What a failing run prints before its summary line."""
    lines = []
    if result.check is not None and result.check.explanation:
        text = result.check.explanation
        shown = text.splitlines()
        if len(shown) > 40:
            lines += shown[:40]
            lines.append(f"... {len(shown) - 40} more lines in {result.out / 'explanation.txt'}")
        else:
            lines.append(text)
    lines += result.problems
    if result.log_errors:
        lines.append(f"chaos: {len(result.log_errors)} error line(s) in the node logs, "
                     f"first: {result.log_errors[0]}")  # fmt: skip
    if not result.ok:
        lines.append(f"chaos: kept {result.out} (history.jsonl, faults.jsonl, n*.log, n*/)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    stale = " (clients read stale: expect VIOLATION)" if cfg.read_consistency == "stale" else ""
    print(f"chaos: seed={cfg.seed} out={cfg.out}{stale}", flush=True)
    result = trio.run(run_chaos, cfg)
    text = report(result)
    if text:
        print(text)
    if result.ok and not cfg.keep:
        shutil.rmtree(cfg.out, ignore_errors=True)
    print(result.summary(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
