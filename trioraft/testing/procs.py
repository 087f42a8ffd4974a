"""Run a cluster of real ``trioraft serve`` processes on loopback, for tests.

Every node is a separate OS process started with this interpreter
(``python -m trioraft serve``), fsync on, its own data directory and its own log
file. The helper starts, kills, stops, pauses and restarts nodes by id, finds the
leader through ``GET /status``, waits for nodes to catch up, and puts the node logs
and statuses into the message of every timeout it raises::

    from trioraft.testing.procs import ProcCluster

    async with ProcCluster(3, tmp_path) as cluster:   # starts node1..node3
        leader = await cluster.wait_for_leader()      # "node2"
        await cluster.put("k", "v")                   # on the leader (retried), or raises
        cluster.kill(leader)                          # SIGKILL
        new = await cluster.wait_for_leader(exclude={leader})
        cluster.start(leader)                         # same port, same data dir
        await cluster.wait_caught_up()
    # leaving the block stops every process it started (SIGTERM, then SIGKILL)

``boot()`` = ``start_all()``, then wait until every node answers ``/status`` and
one is leader; it records ``first_leader``, ``first_election_s`` (first spawn to
the first ``role: leader``), ``quorum_up_s`` and ``all_up_s``.

Process control (synchronous; they only send signals or spawn):

=========================  =====================================================
``start(id)``              spawn the node (again), same port and data directory
``start_all()``            spawn every node that is not running
``kill(id, sig=SIGKILL)``  send a signal and wait for the process to be gone
``kill_all(sig=SIGKILL)``  signal every running node at once, then reap them
``send_signal(id, sig)``   just send it
``pause(id)`` / ``resume``  SIGSTOP / SIGCONT
``close()``                stop everything this cluster started; idempotent, never
                           raises, also run at interpreter exit as a safety net
=========================  =====================================================

Async (Trio) helpers: ``stop(id)`` (SIGTERM, wait, SIGKILL after a grace period),
``stop_all()``, ``status(id)``, ``statuses()``, ``leader()``,
``wait_for_leader()``, ``wait_caught_up()``, ``wait_converged()``,
``state_machine(id)``, ``put()``/``get()`` over HTTP (on the leader by default,
retried on 503/504/connection errors with one ``Idempotency-Key``), ``request()``
for anything else (no retries). Failures raise
:class:`ClusterTimeout` (an ``AssertionError``) whose message holds every node's
``/status`` and the tail of every node's log; :meth:`ProcCluster.describe` gives
the same text on demand, and :meth:`ProcCluster.logs` just the logs.

:func:`eventually` retries an async check until its assertions hold.

TLS: ``ProcCluster(3, tmp, tls=ProcTls(ca, certs, ...))`` runs every node with
``--tls-cert/--tls-key`` (HTTPS, ``https://`` URLs) and ``--tls-ca`` (peer
mutual TLS), optionally ``--tls-client-ca``; the helper's own HTTP client
trusts the CA and presents the client certificate, and :meth:`ProcCluster.client_args`
gives the matching CLI flags. The certificates are the caller's (tests make
them with ``trustme``).

Ports come from :func:`free_ports` unless given: bound-checked, below the
kernel's ephemeral range (so no outgoing connection takes a down node's port),
never the 3001-3005 a developer's own cluster uses. Children get
``PR_SET_PDEATHSIG`` on Linux, so even a SIGKILLed test run leaves no node behind
(it follows the spawning *thread*: call ``start()`` from the Trio thread, not from
``trio.to_thread``).

Note: a graceful stop (SIGTERM) currently takes about 5 s whenever a keep-alive
connection is open to the node (see tests/integration/test_durability.py,
``test_sigterm_stops_a_node_promptly``); pass a short ``grace`` to ``close()``
where a clean exit does not matter.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import trio

__all__ = [
    "HTTPX_BYTESTREAM_WARNING",
    "ClusterTimeout",
    "NodeProc",
    "ProcCluster",
    "ProcTls",
    "eventually",
    "free_port_range",
    "free_ports",
    "pid_alive",
]

T = TypeVar("T")

#: A ``filterwarnings`` entry for tests that kill servers under httpx.AsyncClient:
#: a request cut off while sending its body leaves httpx's ``ByteStream.__aiter__``
#: async generator unfinished, and Trio warns when it is collected (httpx issue
#: #3686, fix pending in encode/httpx#3777). Harmless; with ``filterwarnings =
#: error`` it would fail the test. Use ``pytest.mark.filterwarnings(HTTPX_...)``.
HTTPX_BYTESTREAM_WARNING = (
    "ignore:Async generator 'httpx._content.ByteStream.__aiter__' was garbage "
    "collected:ResourceWarning"
)

#: Ports a developer's own `trioraft cluster` uses; never handed out here.
RESERVED_PORTS = frozenset(range(3001, 3006))


class ClusterTimeout(AssertionError):
    """A wait on the cluster did not succeed in time. The message has statuses and logs."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _try_bind(host: str, ports: Iterable[int]) -> bool:
    socks: list[socket.socket] = []
    try:
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, port))
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()
    return True


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct ports that can be bound now.

    Chosen at random below the kernel's ephemeral range (checked by binding them),
    not with port 0: a port from the ephemeral range can be taken as the source
    port of some outgoing connection while its node is down -- on loopback even by
    a peer's own reconnect attempt to it (TCP self-connect) -- and then the node
    cannot restart on it. Falls back to port 0 if that range is too small. Never
    3001-3005."""
    low, high = 20000, _ephemeral_low()
    rng = random.Random()
    ports: list[int] = []
    if high - low > 100 * n:
        for _ in range(100 * n):
            port = rng.randrange(low, high)
            if port in ports or port in RESERVED_PORTS:
                continue
            if _try_bind(host, [port]):
                ports.append(port)
                if len(ports) == n:
                    return ports
    socks: list[socket.socket] = []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
            port = s.getsockname()[1]
            if port not in RESERVED_PORTS and port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def free_port_range(
    n: int, host: str = "127.0.0.1", low: int = 20000, high: int | None = None
) -> int:
    """A base port B such that B..B+n-1 can all be bound now (for ``--base-port``),
    at random in [low, high); `high` defaults to the start of the kernel's ephemeral
    range, for the reason given in :func:`free_ports`."""
    if high is None:
        high = max(_ephemeral_low(), low + 200 * n)
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high - n)
        block = range(base, base + n)
        if not any(p in RESERVED_PORTS for p in block) and _try_bind(host, block):
            return base
    raise RuntimeError(f"no {n} consecutive free ports found in {low}-{high}")


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # not Linux, or it just went away: kill(0) said it existed
    return stat.rpartition(")")[2].split()[0] != "Z"


async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = 10.0, poll: float = 0.05
) -> T:
    """Run ``await check()`` until it returns without raising AssertionError (or an
    httpx error); return its result. After `timeout`, the last error propagates."""
    deadline = trio.current_time() + timeout
    while True:
        try:
            return await check()
        except (AssertionError, httpx.HTTPError):
            if trio.current_time() >= deadline:
                raise
        await trio.sleep(poll)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """preexec_fn: SIGKILL this child when the process that spawned it dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class NodeProc:
    """One node: its fixed identity (id, port, data dir, log) and its current process."""

    id: str
    port: int
    url: str
    data_dir: Path
    log_path: Path
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    #: Every pid this node has had, oldest first.
    pids: list[int] = field(default_factory=list)
    starts: int = 0
    paused: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        """Started and not exited (a paused process counts as running)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None


# ---------------------------------------------------------------- TLS


@dataclass(frozen=True)
class ProcTls:
    """Certificate files for a TLS cluster (PEM)."""

    #: The cluster CA: every node's --tls-ca, and what the helper's client trusts.
    ca: Path
    #: node id -> (certificate, key): its --tls-cert/--tls-key (also its peer one).
    certs: Mapping[str, tuple[Path, Path]]
    #: --tls-client-ca for every node (client certificates required), or None.
    client_ca: Path | None = None
    #: (certificate, key) the helper presents as a client, or None.
    client_cert: tuple[Path, Path] | None = None

    def serve_args(self, node_id: str) -> list[str]:
        cert, key = self.certs[node_id]
        args = ["--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(self.ca)]
        if self.client_ca is not None:
            args += ["--tls-client-ca", str(self.client_ca)]
        return args

    def client_args(self) -> list[str]:
        """`trioraft` client flags that trust the CA and present the client certificate."""
        args = ["--cacert", str(self.ca)]
        if self.client_cert is not None:
            args += ["--cert", str(self.client_cert[0]), "--key", str(self.client_cert[1])]
        return args

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if self.client_cert is not None:
            ctx.load_cert_chain(str(self.client_cert[0]), str(self.client_cert[1]))
        return ctx


_LIVE: weakref.WeakSet[ProcCluster] = weakref.WeakSet()


@atexit.register
def _close_all_at_exit() -> None:
    for cluster in list(_LIVE):
        cluster.close()


class ProcCluster:
    """`n` ``trioraft serve`` processes, node1..nodeN, on 127.0.0.1.

    Args:
        n: number of nodes (ignored if `ids` is given).
        base_dir: node K keeps its data in ``base_dir/nodeK`` and its output (all
            starts appended, each headed by a ``=== start`` line) in
            ``base_dir/nodeK.log``.
        ports: one per node; default :func:`free_ports`.
        ids: node ids; default ``node1..nodeN``.
        election_timeout_ms: ``"MIN-MAX"`` or None for the server default.
        heartbeat_ms: or None for the server default.
        cluster_token: passed as ``--cluster-token`` to every node.
        fsync: ``--fsync`` (default) or ``--no-fsync``.
        log_level: the nodes' ``--log-level``.
        extra_args: more ``serve`` flags for every node.
        env: extra environment for the children (serve's own variables are removed).
        http_timeout: per-request timeout of the helper's own HTTP calls.
        status_timeout: timeout of one ``/status`` poll (a node that does not answer
            in time counts as down for that poll).
        tls: run every node on TLS with these certificates (:class:`ProcTls`).
    """

    def __init__(
        self,
        n: int,
        base_dir: Path | str,
        *,
        ports: Sequence[int] | None = None,
        ids: Sequence[str] | None = None,
        election_timeout_ms: str | None = None,
        heartbeat_ms: int | None = None,
        cluster_token: str | None = None,
        fsync: bool = True,
        log_level: str = "info",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        http_timeout: float = 5.0,
        status_timeout: float = 1.0,
        tls: ProcTls | None = None,
    ) -> None:
        ids = list(ids) if ids is not None else [f"node{k}" for k in range(1, n + 1)]
        ports = list(ports) if ports is not None else free_ports(len(ids))
        if len(ports) != len(ids) or len(set(ports)) != len(ports):
            raise ValueError("need one distinct port per node")
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.cluster_token = cluster_token
        self.http_timeout = http_timeout
        self.status_timeout = status_timeout
        self.tls = tls
        scheme = "https" if tls is not None else "http"
        urls = {i: f"{scheme}://127.0.0.1:{p}" for i, p in zip(ids, ports, strict=True)}
        common = ["--fsync" if fsync else "--no-fsync", f"--log-level={log_level}"]
        if election_timeout_ms is not None:
            common.append(f"--election-timeout-ms={election_timeout_ms}")
        if heartbeat_ms is not None:
            common.append(f"--heartbeat-ms={heartbeat_ms}")
        if cluster_token is not None:
            common.append(f"--cluster-token={cluster_token}")
        common += list(extra_args)
        self._common = list(common)
        self.nodes: dict[str, NodeProc] = {}
        for node_id, port in zip(ids, ports, strict=True):
            data_dir = self.base_dir / node_id
            argv = [
                sys.executable, "-m", "trioraft", "serve",
                "--id", node_id,
                "--listen", f"127.0.0.1:{port}",
                "--advertise", urls[node_id],
                *[f"--peer={p}={u}" for p, u in urls.items() if p != node_id],
                "--data-dir", str(data_dir),
                *common,
                *(tls.serve_args(node_id) if tls is not None else []),
            ]  # fmt: skip
            self.nodes[node_id] = NodeProc(
                node_id, port, urls[node_id], data_dir, self.base_dir / f"{node_id}.log", argv
            )
        from trioraft.config import SERVE_ENV_VARS

        self._env = {k: v for k, v in os.environ.items() if k not in SERVE_ENV_VARS}
        self._env.update(env or {})
        self._env.setdefault("PYTHONUNBUFFERED", "1")
        self._http: httpx.AsyncClient | None = None
        self._closed = False
        self._client_id = f"procs-{os.getpid()}-{id(self):x}"
        self._seq = itertools.count(1)
        #: Set by :meth:`boot`: the first leader, and seconds from the first spawn to
        #: the first node reporting ``role: leader``.
        self.first_leader: str | None = None
        self.first_election_s: float | None = None
        self.quorum_up_s: float | None = None
        self.all_up_s: float | None = None
        _LIVE.add(self)

    # ------------------------------------------------------------ identity

    @property
    def ids(self) -> list[str]:
        return list(self.nodes)

    @property
    def urls(self) -> dict[str, str]:
        return {i: n.url for i, n in self.nodes.items()}

    def url(self, node_id: str) -> str:
        return self.nodes[node_id].url

    def endpoints(self, ids: Iterable[str] | None = None) -> str:
        """Comma-separated URLs, for ``--endpoints`` (all nodes by default)."""
        return ",".join(self.nodes[i].url for i in (ids if ids is not None else self.nodes))

    def client_args(self, ids: Iterable[str] | None = None) -> list[str]:
        """`trioraft` client flags for this cluster: ``--endpoints`` and, on TLS, the CA
        and client certificate."""
        tls_args = self.tls.client_args() if self.tls is not None else []
        return ["--endpoints", self.endpoints(ids), *tls_args]

    def running(self) -> list[str]:
        return [i for i, n in self.nodes.items() if n.running]

    def __getitem__(self, node_id: str) -> NodeProc:
        return self.nodes[node_id]

    # ------------------------------------------------------- process control

    def start(self, node_id: str) -> NodeProc:
        """Spawn the node (again) with its port and data directory. No wait."""
        node = self.nodes[node_id]
        if self._closed:
            raise RuntimeError("cluster is closed")
        if node.running:
            raise RuntimeError(f"{node_id} is already running (pid {node.pid})")
        node.starts += 1
        with open(node.log_path, "ab") as log:
            stamp = time.strftime("%H:%M:%S")
            log.write(f"=== start #{node.starts} of {node_id} at {stamp} ===\n".encode())
            log.flush()
            node.proc = subprocess.Popen(
                node.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        node.paused = False
        node.pids.append(node.proc.pid)
        return node

    def start_all(self) -> None:
        for node_id, node in self.nodes.items():
            if not node.running:
                self.start(node_id)

    def send_signal(self, node_id: str, sig: int) -> None:
        """Send `sig` to the node's process (no-op if it is not running)."""
        node = self.nodes[node_id]
        if node.proc is not None and node.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                node.proc.send_signal(sig)

    def kill(self, node_id: str, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Send `sig` (SIGKILL by default) and wait until the process is gone (SIGKILL
        after `timeout`). Returns the exit status (negative: killed by that signal)."""
        node = self.nodes[node_id]
        if node.proc is None:
            return None
        self.send_signal(node_id, sig)
        if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT) and node.paused:
            self.send_signal(node_id, signal.SIGCONT)
        try:
            return node.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            return node.proc.wait()
        finally:
            node.paused = False

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Signal every running node first (as close to simultaneous as possible), then
        wait for all of them."""
        live = self.running()
        for node_id in live:
            self.send_signal(node_id, sig)
        for node_id in live:
            self.kill(node_id, sig)

    def pause(self, node_id: str) -> None:
        """SIGSTOP: the process stays, but answers nothing (a crude partition)."""
        self.send_signal(node_id, signal.SIGSTOP)
        self.nodes[node_id].paused = True

    def resume(self, node_id: str) -> None:
        """SIGCONT after :meth:`pause`."""
        self.send_signal(node_id, signal.SIGCONT)
        self.nodes[node_id].paused = False

    async def stop(self, node_id: str, grace: float = 10.0) -> int | None:
        """Graceful stop: SIGTERM (SIGCONT first if paused), wait up to `grace`
        seconds, then SIGKILL. Returns the exit status."""
        node = self.nodes[node_id]
        if node.proc is None:
            return None
        self.send_signal(node_id, signal.SIGTERM)
        if node.paused:
            self.resume(node_id)
        with trio.move_on_after(grace):
            while node.proc.poll() is None:  # noqa: ASYNC110 - polling a Popen
                await trio.sleep(0.02)
        if node.proc.poll() is None:
            node.proc.kill()
        return node.proc.wait()

    async def stop_all(self, grace: float = 10.0) -> dict[str, int | None]:
        """SIGTERM every running node at once, wait for all; their exit statuses."""
        codes: dict[str, int | None] = {}

        async def one(node_id: str) -> None:
            codes[node_id] = await self.stop(node_id, grace)

        async with trio.open_nursery() as nursery:
            for node_id in self.running():
                nursery.start_soon(one, node_id)
        return codes

    def close(self, grace: float = 5.0) -> None:
        """Stop every process this cluster ever started: SIGCONT, SIGTERM, wait up to
        `grace`, SIGKILL, reap. Idempotent; never raises. Synchronous on purpose, so a
        ``finally`` can run it even while the test is being cancelled."""
        self._closed = True
        procs = [n.proc for n in self.nodes.values() if n.proc is not None]
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGCONT)
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        for n in self.nodes.values():
            n.paused = False
        _LIVE.discard(self)

    # -------------------------------------------------------------- HTTP

    @property
    def http(self) -> httpx.AsyncClient:
        """The helper's HTTP client (created on first use, closed by :meth:`aclose`)."""
        if self._http is None:
            verify: ssl.SSLContext | bool = True
            if self.tls is not None:
                verify = self.tls.ssl_context()
            self._http = httpx.AsyncClient(trust_env=False, timeout=self.http_timeout,
                                           verify=verify)  # fmt: skip
        return self._http

    async def close_http(self) -> None:
        """Close the helper's HTTP client only (a new one is made on next use): for a
        cluster shared by several tests, each running its own Trio loop."""
        if self._http is not None:
            with trio.CancelScope(shield=True):
                await self._http.aclose()
            self._http = None

    async def aclose(self) -> None:
        """:meth:`close` plus closing the HTTP client."""
        self.close()
        if self._http is not None:
            with trio.CancelScope(shield=True):
                await self._http.aclose()
            self._http = None

    async def boot(self, timeout: float = 30.0, poll: float = 0.02) -> str:
        """Start every node; wait until there is a leader, every node answers
        ``/status`` and every node knows the leader (a node that started last hears
        from the leader once its peer stream opens). Records :attr:`first_leader`;
        :attr:`first_election_s`, from the first spawn to a node first reporting
        ``role: leader``; :attr:`quorum_up_s`,
        from the first spawn to a majority answering ``/status`` (process start-up,
        mostly imports); :attr:`all_up_s`, to every node answering. Returns the
        current leader."""
        t0 = time.monotonic()
        self.start_all()
        majority = len(self.nodes) // 2 + 1
        with trio.move_on_after(timeout):
            while True:
                sts = await self.statuses()
                now = time.monotonic() - t0
                answering = [st for st in sts.values() if st is not None]
                if self.quorum_up_s is None and len(answering) >= majority:
                    self.quorum_up_s = now
                if self.all_up_s is None and len(answering) == len(self.nodes):
                    self.all_up_s = now
                leaders = [
                    (int(st["term"]), i)
                    for i, st in sts.items()
                    if st is not None and st.get("role") == "leader"
                ]
                if leaders and self.first_election_s is None:
                    self.first_election_s = now
                    self.first_leader = max(leaders)[1]
                    if self.quorum_up_s is None:
                        self.quorum_up_s = now
                if leaders and self.all_up_s is not None:
                    leader = max(leaders)[1]
                    if all(st is not None and st.get("leader") == leader
                           for st in sts.values()):  # fmt: skip
                        return leader
                await trio.sleep(poll)
        raise ClusterTimeout(
            f"no leader, or not every node up, within {timeout:g}s of starting\n"
            + await self.describe()
        )

    async def __aenter__(self) -> Self:
        """:meth:`boot`: start every node and wait for a leader."""
        try:
            await self.boot()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def request(self, node_id: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP request to one node (raises httpx errors as they come)."""
        return await self.http.request(method, self.nodes[node_id].url + path, **kwargs)

    async def status(self, node_id: str) -> dict[str, Any] | None:
        """The node's ``/status`` JSON, or None if it does not answer."""
        node = self.nodes[node_id]
        if not node.running or node.paused:
            return None
        try:
            resp = await self.http.get(node.url + "/status", timeout=self.status_timeout)
            body = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    async def statuses(self, ids: Iterable[str] | None = None) -> dict[str, dict[str, Any] | None]:
        """``/status`` of the given nodes (all by default), fetched concurrently."""
        ids = list(ids) if ids is not None else self.ids
        out: dict[str, dict[str, Any] | None] = dict.fromkeys(ids)

        async def one(node_id: str) -> None:
            out[node_id] = await self.status(node_id)

        async with trio.open_nursery() as nursery:
            for node_id in ids:
                nursery.start_soon(one, node_id)
        return out

    async def leader(self, among: Iterable[str] | None = None) -> str | None:
        """The node that says it is leader with the highest term, among live nodes."""
        best: tuple[int, str] | None = None
        for node_id, st in (await self.statuses(among)).items():
            if st and st.get("role") == "leader":
                term = int(st.get("term", 0))
                if best is None or term > best[0]:
                    best = (term, node_id)
        return best[1] if best else None

    async def wait_for_leader(
        self,
        timeout: float = 15.0,
        *,
        exclude: Iterable[str] = (),
        among: Iterable[str] | None = None,
        min_term: int = 0,
        poll: float = 0.02,
    ) -> str:
        """Wait until a node in `among` (default all) and not in `exclude` reports itself
        leader with a term of at least `min_term` (the highest term wins if several do).
        Returns its id; raises :class:`ClusterTimeout`."""
        exclude = set(exclude)
        candidates = [i for i in (among if among is not None else self.ids) if i not in exclude]
        with trio.move_on_after(timeout):
            while True:
                sts = await self.statuses(candidates)
                leaders = [
                    (int(st["term"]), i)
                    for i, st in sts.items()
                    if st and st.get("role") == "leader" and int(st.get("term", 0)) >= min_term
                ]
                if leaders:
                    _term, leader = max(leaders)
                    return leader
                await trio.sleep(poll)
        raise ClusterTimeout(
            f"no leader among {candidates} within {timeout:g}s\n" + await self.describe()
        )

    async def wait_caught_up(
        self, ids: Iterable[str] | None = None, timeout: float = 20.0, poll: float = 0.05
    ) -> int:
        """Wait until the leader is known and each node in `ids` (default: all running)
        has applied at least the leader's commit index as read at that moment. Returns
        that index."""
        with trio.move_on_after(timeout):
            while True:
                targets = list(ids) if ids is not None else self.running()
                leader = await self.leader()
                if leader is not None:
                    sts = await self.statuses({leader, *targets})
                    lst = sts[leader]
                    if lst is not None:
                        commit = int(lst["commit_index"])
                        if all(
                            (st := sts[i]) is not None and int(st["applied_index"]) >= commit
                            for i in targets
                        ):
                            return commit
                await trio.sleep(poll)
        raise ClusterTimeout(
            f"nodes did not catch up within {timeout:g}s\n" + await self.describe()
        )

    async def state_machine(self, node_id: str) -> dict[str, str]:
        """The node's whole key-value state (``/debug`` ``stateMachine``; no checks)."""
        resp = await self.request(node_id, "GET", "/debug")
        resp.raise_for_status()
        sm = resp.json()["stateMachine"]
        assert isinstance(sm, dict)
        return sm

    async def wait_converged(
        self, ids: Iterable[str] | None = None, timeout: float = 20.0, poll: float = 0.1
    ) -> dict[str, str]:
        """Wait until all nodes in `ids` (default: all running) report the same
        applied index and identical state machines. Returns that state."""
        last: dict[str, Any] = {}
        with trio.move_on_after(timeout):
            while True:
                targets = list(ids) if ids is not None else self.running()
                sts = await self.statuses(targets)
                applied = {i: st and st.get("applied_index") for i, st in sts.items()}
                if None not in applied.values() and len(set(applied.values())) == 1:
                    try:
                        states = {i: await self.state_machine(i) for i in targets}
                    except (httpx.HTTPError, ValueError, KeyError):
                        states = {}
                    if states:
                        first = next(iter(states.values()))
                        if all(s == first for s in states.values()):
                            return first
                        last = {"applied": applied, "sizes": {i: len(s) for i, s in states.items()}}
                else:
                    last = {"applied": applied}
                await trio.sleep(poll)
        raise ClusterTimeout(
            f"nodes did not converge within {timeout:g}s (last: {last})\n" + await self.describe()
        )

    async def put(
        self, key: str, value: str, node_id: str | None = None, *, timeout: float = 20.0
    ) -> dict[str, Any]:
        """PUT key=value and return the 200 body.

        The first attempt goes to `node_id` (default: the current leader). A 503,
        504 or connection error is retried on the current leader until `timeout`,
        always with the same ``Idempotency-Key``, so the write applies at most once.
        Any other answer fails the test (AssertionError)."""
        headers = {"Idempotency-Key": f"{self._client_id}:{next(self._seq)}"}
        body = await self._retrying(
            "PUT", key, node_id, timeout, json={"value": value}, headers=headers
        )
        assert isinstance(body, dict), body
        return body

    async def get(
        self,
        key: str,
        node_id: str | None = None,
        consistency: str = "linearizable",
        *,
        timeout: float = 20.0,
    ) -> str | None:
        """GET key on `node_id` (default: the leader): the value, or None on 404.

        Retried like :meth:`put` (on `node_id` again if it was given: a stale read
        must come from the node asked)."""
        body = await self._retrying(
            "GET", key, node_id, timeout, params={"consistency": consistency},
            sticky=node_id is not None,
        )  # fmt: skip
        if body is None:
            return None
        value = body["value"]
        assert isinstance(value, str)
        return value

    async def _retrying(
        self,
        method: str,
        key: str,
        node_id: str | None,
        timeout: float,
        sticky: bool = False,
        **kwargs: Any,
    ) -> Any:
        path = "/kv/" + _quote(key)
        last = "no attempt"
        with trio.move_on_after(timeout):
            target = node_id
            while True:
                if target is None:
                    target = await self.wait_for_leader(timeout)
                try:
                    resp = await self.request(target, method, path, **kwargs)
                except httpx.HTTPError as exc:
                    last = f"{target}: {type(exc).__name__}: {exc}"
                else:
                    if resp.status_code == 200:
                        return resp.json()
                    if resp.status_code == 404 and method == "GET":
                        return None
                    last = f"{target}: {resp.status_code} {resp.text}"
                    if resp.status_code not in (502, 503, 504):
                        raise AssertionError(f"{method} {key} on {last}")
                await trio.sleep(0.05)
                target = node_id if sticky else None
        raise ClusterTimeout(
            f"{method} {key} not answered within {timeout:g}s (last: {last})\n"
            + await self.describe()
        )

    # ------------------------------------------------------- membership (issue 12)

    def add_node(
        self, node_id: str, *, join: Iterable[str] | None = None, port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> NodeProc:
        """Plan a new node that joins the running cluster (``--join``; not started).

        It gets a free port, ``base_dir/<id>`` and the common flags; `join` are the
        URLs it asks (default: every other node's). Start it with :meth:`start`,
        then add it (:meth:`member_add`) -- or, if `node_id` is already a member
        (a wiped disk), it is re-admitted by itself.
        """
        if node_id in self.nodes:
            raise ValueError(f"{node_id} exists")
        port = port if port is not None else free_ports(1)[0]
        url = f"http://127.0.0.1:{port}"
        urls = list(join) if join is not None else [n.url for n in self.nodes.values()]
        argv = [
            sys.executable, "-m", "trioraft", "serve",
            "--id", node_id, "--listen", f"127.0.0.1:{port}", "--advertise", url,
            f"--join={','.join(urls)}", "--data-dir", str(self.base_dir / node_id),
            *self._common, *extra_args,
        ]  # fmt: skip
        node = NodeProc(node_id, port, url, self.base_dir / node_id,
                        self.base_dir / f"{node_id}.log", argv)  # fmt: skip
        self.nodes[node_id] = node
        return node

    def wipe(self, node_id: str) -> None:
        """Delete the node's data dir (it must not be running): a lost disk."""
        import shutil

        node = self.nodes[node_id]
        if node.running:
            raise RuntimeError(f"{node_id} is running")
        shutil.rmtree(node.data_dir, ignore_errors=True)

    def forget(self, node_id: str) -> NodeProc:
        """Stop tracking a node (after it was removed and has exited)."""
        node = self.nodes[node_id]
        if node.running:
            raise RuntimeError(f"{node_id} is running")
        return self.nodes.pop(node_id)

    async def members(self, node_id: str | None = None) -> dict[str, Any]:
        """``GET /cluster/members`` (on `node_id`, default the leader)."""
        target = node_id or await self.wait_for_leader()
        resp = await self.request(target, "GET", "/cluster/members")
        resp.raise_for_status()
        body = resp.json()
        assert isinstance(body, dict)
        return body

    async def member_change(
        self, method: str, path: str, body: dict[str, Any] | None = None, *,
        timeout: float = 60.0, accept: Iterable[int] = (200,),
    ) -> httpx.Response:
        """A membership request on the leader, retried on 503 and 409
        change_in_progress (both definite: nothing changed) until `timeout`."""
        last = "no attempt"
        with trio.move_on_after(timeout):
            while True:
                target = await self.wait_for_leader(timeout)
                try:
                    resp = await self.request(target, method, path, json=body,
                                              timeout=timeout)  # fmt: skip
                except httpx.HTTPError as exc:
                    last = f"{target}: {exc!r}"
                else:
                    if resp.status_code in set(accept):
                        return resp
                    last = f"{target}: {resp.status_code} {resp.text}"
                    retry = resp.status_code == 503 or (
                        resp.status_code == 409 and resp.json().get("code") == "change_in_progress"
                    )
                    if not retry:
                        raise AssertionError(f"{method} {path}: {last}")
                await trio.sleep(0.1)
        raise ClusterTimeout(f"{method} {path} not done within {timeout:g}s (last: {last})\n"
                             + await self.describe())  # fmt: skip

    async def member_add(self, node_id: str, *, promote: bool = True,
                         timeout: float = 60.0) -> dict[str, Any]:  # fmt: skip
        """Add a started joiner (:meth:`add_node`) as a learner, and promote it."""
        await self.wait_serving(node_id, timeout)
        body = {"name": node_id, "url": self.nodes[node_id].url, "promote": promote,
                "timeout_ms": int(timeout * 1000)}  # fmt: skip
        resp = await self.member_change("POST", "/cluster/members", body, timeout=timeout)
        out = resp.json()
        assert isinstance(out, dict)
        return out

    async def wait_serving(self, node_id: str, timeout: float = 30.0) -> None:
        """Wait until the node answers ``GET /health`` (its process is up)."""
        with trio.move_on_after(timeout):
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if (await self.request(node_id, "GET", "/health")).status_code == 200:
                        return
                await trio.sleep(0.05)
        raise ClusterTimeout(f"{node_id} did not serve within {timeout:g}s\n"
                             + await self.describe())  # fmt: skip

    async def member_remove(self, node_id: str, *, timeout: float = 60.0) -> dict[str, Any]:
        resp = await self.member_change("DELETE", f"/cluster/members/{node_id}",
                                        timeout=timeout)  # fmt: skip
        out = resp.json()
        assert isinstance(out, dict)
        return out

    async def wait_members(
        self, voters: Iterable[str], learners: Iterable[str] = (), timeout: float = 60.0
    ) -> dict[str, Any]:
        """Wait until the leader's configuration has exactly these voters and learners
        (by name) and no change is in progress."""
        want = (sorted(voters), sorted(learners))
        last: Any = None
        with trio.move_on_after(timeout):
            while True:
                try:
                    body = await self.members()
                except (httpx.HTTPError, AssertionError, ClusterTimeout) as exc:
                    last = repr(exc)
                else:
                    got = (sorted(m["name"] for m in body["members"] if m["voter"]),
                           sorted(m["name"] for m in body["members"] if not m["voter"]))
                    last = got
                    if got == want and not body["change_in_progress"]:
                        return body
                await trio.sleep(0.1)
        raise ClusterTimeout(f"members never became {want} (last: {last})\n"
                             + await self.describe())  # fmt: skip

    # -------------------------------------------------------- diagnostics

    def logs(self, tail_lines: int = 60, ids: Iterable[str] | None = None) -> str:
        """The last `tail_lines` lines of each node's log, headed by its id and pids."""
        parts = []
        for node_id in ids if ids is not None else self.ids:
            node = self.nodes[node_id]
            try:
                lines = node.log_path.read_text(errors="replace").splitlines()
            except OSError:
                lines = ["(no log)"]
            state = (
                "paused" if node.paused else "running" if node.running
                else f"exited {node.returncode}" if node.proc else "never started"
            )  # fmt: skip
            parts.append(
                f"----- {node_id} {node.url} pids {node.pids} ({state}) {node.log_path} -----\n"
                + "\n".join(lines[-tail_lines:])
            )
        return "\n".join(parts)

    async def describe(self, tail_lines: int = 60) -> str:
        """Every node's ``/status`` (abridged) and log tail: for failure messages."""
        sts: dict[str, dict[str, Any] | None] = {}
        with trio.CancelScope(shield=True), trio.move_on_after(3):
            sts = await self.statuses()
        lines = ["node statuses:"]
        for node_id in self.ids:
            st = sts.get(node_id)
            if st is None:
                lines.append(f"  {node_id}: no answer")
            else:
                keep = ("role", "term", "leader", "commit_index", "applied_index",
                        "last_log_index", "snapshot_index")  # fmt: skip
                lines.append(f"  {node_id}: " + ", ".join(f"{k}={st.get(k)}" for k in keep))
        return "\n".join(lines) + "\n" + self.logs(tail_lines)


def _quote(key: str) -> str:
    from urllib.parse import quote

    return quote(key, safe="")
