"""Processes the benchmarks start: echo servers, trioraft clusters, etcd clusters.

Everything runs on 127.0.0.1 on ports from :func:`trioraft.testing.procs.free_ports`.
:class:`Processes` remembers every process it started and stops them by PID
(SIGTERM, then SIGKILL after a timeout), never by name; each child also gets
``PR_SET_PDEATHSIG`` so a killed benchmark leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, TypeVar

import httpx

from trioraft.config import SERVE_ENV_VARS
from trioraft.testing.procs import free_ports

__all__ = [
    "ETCD_INSTALL_HINT",
    "NODE_MODULE",
    "Cluster",
    "Processes",
    "StartError",
    "etcd_available",
    "start_cluster",
    "start_echo",
    "start_etcd",
    "workdir",
]

STOP_TIMEOUT = 10.0

T = TypeVar("T")

#: `python -m NODE_MODULE serve ...` starts a node (overridable to test the tools).
NODE_MODULE = os.environ.get("TRIORAFT_BENCH_NODE_MODULE", "trioraft")

ETCD_INSTALL_HINT = (
    "etcd and etcdctl are not installed; on Debian/Ubuntu: "
    "sudo apt-get install etcd-server etcd-client"
)

EchoKind = Literal["asgi", "quart", "raw"]


class StartError(RuntimeError):
    """A server did not come up; the message says why and shows its log."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Processes:
    """Subprocesses started by a benchmark, stopped by PID, never by name."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: list[tuple[subprocess.Popen[bytes], Path, IO[bytes]]] = []

    def start(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("ab")
        # Variables `trioraft serve` or etcd read as flags: the children get exactly ours.
        child_env = {
            k: v
            for k, v in os.environ.items()
            if k not in SERVE_ENV_VARS and not k.startswith("ETCD")
        }
        child_env.update(env or {})
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=child_env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self.running.append((proc, log_path, log))
        return proc

    def log_path(self, proc: subprocess.Popen[bytes]) -> Path | None:
        return next((path for p, path, _ in self.running if p is proc), None)

    def log_tail(self, proc: subprocess.Popen[bytes], lines: int = 15) -> str:
        path = self.log_path(proc)
        if path is None:
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, procs: list[subprocess.Popen[bytes]] | None = None) -> None:
        """SIGTERM each, wait, then SIGKILL whatever is left."""
        chosen = [e for e in self.running if procs is None or e[0] in procs]
        for proc, _, _ in chosen:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc, _, log in chosen:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        self.running = [e for e in self.running if e not in chosen]


def wait_until(
    check: Callable[[httpx.Client], T | None],
    proc_list: list[subprocess.Popen[bytes]],
    procs: Processes,
    what: str,
    timeout: float,
) -> T:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            for proc in proc_list:
                if proc.poll() is not None:
                    raise StartError(
                        f"{what}: process {proc.pid} exited with {proc.returncode}:\n"
                        + procs.log_tail(proc)
                    )
            value = check(client)
            if value is not None:
                return value
            time.sleep(0.1)  # waiting on another process to come up: nothing to wait on
    tails = "\n".join(procs.log_tail(p) for p in proc_list)
    raise StartError(f"{what}: not ready after {timeout:.0f}s\n{tails}")


def start_echo(procs: Processes, kind: EchoKind = "quart") -> tuple[str, subprocess.Popen[bytes]]:
    """An echo server: quart-trio or bare ASGI under the node's hypercorn settings, or raw."""
    port = free_ports(1)[0]
    cmd = [sys.executable, "-m", "trioraft.bench._echo", "--port", str(port)]
    if kind != "quart":
        cmd.append(f"--{kind}")
    proc = procs.start(f"echo-{kind}-{port}", cmd)
    url = f"http://127.0.0.1:{port}"

    def ready(client: httpx.Client) -> str | None:
        try:
            return url if client.get(url + "/echo").status_code == 200 else None
        except httpx.HTTPError:
            return None

    return wait_until(ready, [proc], procs, f"{kind} echo server", 15.0), proc


@dataclass(slots=True)
class Cluster:
    """A started cluster: client URLs, one process per member, the leader's id."""

    kind: str  # "trioraft" or "etcd"
    urls: tuple[str, ...]
    procs: list[subprocess.Popen[bytes]]
    leader: str
    names: tuple[str, ...] = ()

    @property
    def pids(self) -> dict[str, int]:
        names = self.names or tuple(f"{self.kind}{k + 1}" for k in range(len(self.procs)))
        return {name: p.pid for name, p in zip(names, self.procs, strict=True)}


def start_cluster(
    procs: Processes, n: int, data_root: Path, extra: list[str] | None = None
) -> tuple[tuple[str, ...], list[subprocess.Popen[bytes]], str]:
    """Start an n-node fsync'd trioraft cluster; wait until every node knows one leader."""
    ports = free_ports(n)
    ids = [f"node{k + 1}" for k in range(n)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    started = []
    for k, (node_id, port, url) in enumerate(zip(ids, ports, urls, strict=True)):
        cmd = [sys.executable, "-m", NODE_MODULE, "serve", "--id", node_id, "--fsync"]
        cmd += ["--listen", f"127.0.0.1:{port}", "--advertise", url]
        cmd += ["--data-dir", str(data_root / f"{n}-{node_id}-{port}"), *(extra or [])]
        for j, (peer_id, peer_url) in enumerate(zip(ids, urls, strict=True)):
            if j != k:
                cmd += ["--peer", f"{peer_id}={peer_url}"]
        started.append(procs.start(f"cluster{n}-{node_id}-{port}", cmd))

    def leader_known(client: httpx.Client) -> str | None:
        leaders = set()
        for url in urls:
            try:
                resp = client.get(url + "/status")
                leaders.add(resp.json().get("leader") if resp.status_code == 200 else None)
            except (httpx.HTTPError, ValueError, AttributeError):
                return None
        if len(leaders) == 1 and isinstance(leader := leaders.pop(), str):
            return leader
        return None

    leader = wait_until(leader_known, started, procs, f"{n}-node cluster", 60.0)
    return tuple(urls), started, leader


def etcd_available() -> str | None:
    """None when ``etcd`` and ``etcdctl`` are on PATH, else how to install them."""
    if shutil.which("etcd") and shutil.which("etcdctl"):
        return None
    return ETCD_INSTALL_HINT


def start_etcd(procs: Processes, n: int, data_root: Path) -> Cluster:
    """Start an n-member etcd cluster on loopback with etcd's default settings (fsync
    on, 100 ms heartbeat, 1 s election timeout); wait until every member names one
    leader. Only the addresses, names and data dirs are given."""
    ports = free_ports(2 * n)
    client_ports, peer_ports = ports[:n], ports[n:]
    names = tuple(f"etcd{k + 1}" for k in range(n))
    initial = ",".join(
        f"{name}=http://127.0.0.1:{p}" for name, p in zip(names, peer_ports, strict=True)
    )
    token = f"trioraft-bench-{os.getpid()}-{client_ports[0]}"
    urls = tuple(f"http://127.0.0.1:{p}" for p in client_ports)
    started = []
    for name, cport, pport in zip(names, client_ports, peer_ports, strict=True):
        cmd = [
            shutil.which("etcd") or "etcd",
            "--name",
            name,
            "--data-dir",
            str(data_root / f"{name}-{cport}"),
            "--listen-client-urls",
            f"http://127.0.0.1:{cport}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{cport}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{pport}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{pport}",
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            token,
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        started.append(procs.start(f"{name}-{cport}", cmd))

    def leader_known(client: httpx.Client) -> str | None:
        leaders = set()
        for url in urls:
            try:
                resp = client.post(url + "/v3/maintenance/status", json={})
                leaders.add(str(resp.json().get("leader")) if resp.status_code == 200 else None)
            except (httpx.HTTPError, ValueError, AttributeError):
                return None
        if len(leaders) == 1 and (leader := leaders.pop()) not in (None, "0", "None"):
            return leader
        return None

    leader = wait_until(leader_known, started, procs, f"{n}-member etcd", 60.0)
    return Cluster("etcd", urls, started, leader, names)


@contextmanager
def workdir(prefix: str = "trioraft-bench-") -> Iterator[Path]:
    """A scratch directory, removed afterwards unless TRIORAFT_BENCH_KEEP is set
    (then its path is printed, with the nodes' logs in it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if os.environ.get("TRIORAFT_BENCH_KEEP"):
            print(f"kept: {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)
