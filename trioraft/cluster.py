"""`trioraft cluster`: run node1..nodeN as local OS processes (docs/quickstart.md).

Lifecycle:

1. Plan every node (ports base-port.., data in DIR/nodeK, log in DIR/nodeK.log) and
   validate each node's `serve` arguments before starting anything.
2. Start the children, print each node's URL, pid and log file.
3. Poll ``GET /status`` on every node (every 100 ms) and print ``leader: nodeK`` when
   a leader is first known and whenever it changes; ``no leader (was nodeK)`` when it
   is lost. Every child that exits on its own is reported, each on its own line with
   its log file: exit status 0 as "stopped" (a clean shutdown, e.g. a SIGTERM sent
   to it), anything else as "exited unexpectedly" with the status or signal. When
   all have exited (and been reported) the command ends with status 1.
4. On SIGINT (Ctrl-C) or SIGTERM: SIGTERM every child, wait up to the grace period,
   SIGKILL whatever is left, reap everything, exit 0. A second signal during the
   grace period kills at once. Ctrl-C in a terminal signals the whole process group,
   children included; that is fine, they shut down gracefully on SIGINT too.

The spawn command is a parameter (:data:`SpawnCommand`) so tests can run the whole
lifecycle against a fake node.

TLS (``--tls-dir DIR``, the layout ``compose/make-certs.sh`` writes): node K gets
``--tls-cert DIR/nodeK.pem --tls-key DIR/nodeK-key.pem --tls-ca DIR/ca.pem``
(HTTPS and peer mutual TLS), its URL is ``https://``, and the leader poll trusts
``DIR/ca.pem``.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

import httpx
import trio

from .config import (
    SERVE_ENV_VARS,
    ConfigError,
    build_serve_parser,
    config_from_args,
    format_host_port,
)

__all__ = [
    "ClusterOptions",
    "NodeSpec",
    "SpawnCommand",
    "check_ports_free",
    "default_command",
    "exit_line",
    "grow",
    "plan_cluster",
    "plan_joiner",
    "run_cluster",
]


@dataclass(frozen=True)
class ClusterOptions:
    nodes: int = 3
    base_port: int = 3001
    host: str = "127.0.0.1"
    data_dir: Path = Path("data")
    # Extra `serve` flags given to every node (timeouts, token, --no-fsync, ...).
    serve_args: tuple[str, ...] = ()
    # TLS: certificates in this directory (see tls_args); None: plain HTTP.
    tls_dir: Path | None = None


def tls_args(tls_dir: Path, node_id: str) -> list[str]:
    """The `serve` TLS flags of one node, from the layout of compose/make-certs.sh."""
    return ["--tls-cert", str(tls_dir / f"{node_id}.pem"),
            "--tls-key", str(tls_dir / f"{node_id}-key.pem"),
            "--tls-ca", str(tls_dir / "ca.pem")]  # fmt: skip


@dataclass(frozen=True)
class NodeSpec:
    id: str
    host: str
    port: int
    url: str
    data_dir: Path
    log_path: Path
    # The complete `trioraft serve` argument list for this node.
    serve_argv: tuple[str, ...] = field(default=())


SpawnCommand = Callable[[NodeSpec], Sequence[str]]


def default_command(spec: NodeSpec) -> list[str]:
    """``python -m trioraft serve ...`` with this interpreter."""
    return [sys.executable, "-m", "trioraft", "serve", *spec.serve_argv]


def plan_cluster(opts: ClusterOptions) -> list[NodeSpec]:
    """One spec per node; raises ConfigError if any node's configuration is invalid."""
    if opts.nodes < 1:
        raise ConfigError("--nodes must be at least 1")
    if opts.base_port < 1 or opts.base_port + opts.nodes - 1 > 65535:
        raise ConfigError(
            f"--base-port {opts.base_port}: ports {opts.base_port}-"
            f"{opts.base_port + opts.nodes - 1} are not all in 1-65535"
        )
    # Bind where asked, but advertise an address one can connect to.
    reach = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(opts.host, opts.host)
    ids = [f"node{k}" for k in range(1, opts.nodes + 1)]
    scheme = "https" if opts.tls_dir is not None else "http"
    urls = {
        node_id: f"{scheme}://{format_host_port(reach, opts.base_port + i)}"
        for i, node_id in enumerate(ids)
    }
    specs = []
    for i, node_id in enumerate(ids):
        port = opts.base_port + i
        data_dir = opts.data_dir / node_id
        argv = [
            "--id", node_id,
            "--listen", format_host_port(opts.host, port),
            "--advertise", urls[node_id],
            *[f"--peer={peer}={url}" for peer, url in urls.items() if peer != node_id],
            "--data-dir", str(data_dir),
            *opts.serve_args,
            *(tls_args(opts.tls_dir, node_id) if opts.tls_dir is not None else []),
        ]  # fmt: skip
        # Validate now, before any process starts (raises ConfigError with the reason).
        config_from_args(build_serve_parser().parse_args(argv), {})
        specs.append(
            NodeSpec(
                id=node_id,
                host=opts.host,
                port=port,
                url=urls[node_id],
                data_dir=data_dir,
                log_path=opts.data_dir / f"{node_id}.log",
                serve_argv=tuple(argv),
            )
        )
    return specs


def check_ports_free(specs: Sequence[NodeSpec]) -> list[str]:
    """Problems binding the planned ports (empty when all are free)."""
    problems = []
    for spec in specs:
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((spec.host, spec.port))
            except OSError as exc:
                problems.append(
                    f"{spec.id}: cannot bind {format_host_port(spec.host, spec.port)}: "
                    f"{exc.strerror or exc}"
                )
    return problems


def _child_env() -> dict[str, str]:
    # The children's configuration is exactly what we planned: drop serve's env vars.
    return {k: v for k, v in os.environ.items() if k not in SERVE_ENV_VARS}


def exit_line(spec: NodeSpec, code: int) -> str:
    """How a child's exit is reported: 0 is a clean stop, anything else is not."""
    if code == 0:
        return f"{spec.id} stopped (exit status 0: a clean shutdown); see {spec.log_path}"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"killed by {name}"
    else:
        how = f"exit status {code}"
    return f"{spec.id} exited unexpectedly ({how}); see {spec.log_path}"


def _leader_of(statuses: Sequence[dict[str, Any] | None]) -> tuple[str | None, int]:
    """The leader reported with the highest term (a deposed leader reports a lower one)."""
    best: tuple[int, str] | None = None
    for status in statuses:
        if status is None:
            continue
        leader, term = status.get("leader"), status.get("term")
        if isinstance(leader, str) and isinstance(term, int) and (best is None or term > best[0]):
            best = (term, leader)
    return (best[1], best[0]) if best else (None, 0)


class _Runner:
    def __init__(
        self,
        specs: Sequence[NodeSpec],
        command: SpawnCommand,
        out: TextIO,
        grace: float,
        poll_interval: float,
        cafile: Path | None = None,
    ) -> None:
        self.cafile = cafile  # TLS: the CA the leader poll trusts
        self.specs = list(specs)
        self.command = command
        self.out = out
        self.grace = grace
        self.poll_interval = poll_interval
        self.procs: dict[str, trio.Process] = {}
        self.stopping = False
        self.exit_code = 0
        self.reported = 0  # children whose exit has been reported

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    async def start(self, logs: ExitStack) -> None:
        for spec in self.specs:
            spec.data_dir.parent.mkdir(parents=True, exist_ok=True)
            log: IO[bytes] = logs.enter_context(open(spec.log_path, "ab"))  # noqa: ASYNC230, SIM115
            self.procs[spec.id] = await trio.lowlevel.open_process(
                list(self.command(spec)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
            )
            self.say(f"{spec.id}  {spec.url}  pid {self.procs[spec.id].pid}  log {spec.log_path}")

    def running(self) -> Iterator[trio.Process]:
        return (p for p in self.procs.values() if p.returncode is None)

    async def watch_child(
        self, spec: NodeSpec, proc: trio.Process, cancel: trio.CancelScope
    ) -> None:
        code = await proc.wait()
        # Ctrl-C reaches the children too; give our own SIGINT a moment to be seen
        # first so a node stopping on Ctrl-C is not reported as a crash.
        await trio.sleep(0.3)
        if self.stopping:
            return
        self.say(exit_line(spec, code))
        # Count reports, not running processes: when several nodes die at once,
        # the last one to be reported ends the run, so none goes unreported.
        self.reported += 1
        if self.reported == len(self.procs):
            self.say("all nodes have exited")
            self.exit_code = 1
            cancel.cancel()

    async def watch_signals(self, signals: Any, cancel: trio.CancelScope) -> None:
        async for signum in signals:
            self.stopping = True
            self.say(f"received {signal.Signals(signum).name}, stopping the nodes")
            cancel.cancel()
            return

    async def poll_leader(self) -> None:
        leader: str | None = None
        self.say("waiting for a leader ...")
        verify: ssl.SSLContext | bool = True
        if self.cafile is not None:
            verify = ssl.create_default_context(cafile=str(self.cafile))
        async with httpx.AsyncClient(trust_env=False, timeout=0.5, verify=verify) as http:

            async def fetch(i: int, spec: NodeSpec, out: list[dict[str, Any] | None]) -> None:
                try:
                    resp = await http.get(spec.url + "/status")
                    body = resp.json() if resp.status_code == 200 else None
                except (httpx.HTTPError, ValueError):
                    body = None
                out[i] = body if isinstance(body, dict) else None

            while True:
                statuses: list[dict[str, Any] | None] = [None] * len(self.specs)
                async with trio.open_nursery() as nursery:
                    for i, spec in enumerate(self.specs):
                        if self.procs[spec.id].returncode is None:
                            nursery.start_soon(fetch, i, spec, statuses)
                new, _term = _leader_of(statuses)
                if new != leader and not (new is None and not any(statuses)):
                    if new is not None:
                        self.say(f"leader: {new}")
                    else:
                        self.say(f"no leader (was {leader})")
                    leader = new
                await trio.sleep(self.poll_interval)

    async def shutdown(self, signals: Any) -> None:
        """SIGTERM all, wait up to `grace`, SIGKILL the rest, reap all. Never raises."""
        self.stopping = True
        for proc in self.running():
            with suppress(ProcessLookupError):  # exited meanwhile
                proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.grace) as waited:
            async with trio.open_nursery() as nursery:

                async def second_signal() -> None:
                    async for _ in signals:
                        self.say("second signal: killing the nodes now")
                        nursery.cancel_scope.cancel()
                        return

                async def wait_all() -> None:
                    for proc in list(self.procs.values()):
                        await proc.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(second_signal)
                nursery.start_soon(wait_all)
        if waited.cancelled_caught and any(self.running()):
            self.say(f"nodes still running after {self.grace:g}s, killing them")
        for proc in self.running():
            with suppress(ProcessLookupError):  # exited meanwhile
                proc.kill()
        for proc in self.procs.values():
            await proc.wait()
        self.say("all nodes stopped")


async def run_cluster(
    specs: Sequence[NodeSpec],
    *,
    command: SpawnCommand = default_command,
    out: TextIO | None = None,
    grace: float = 5.0,
    poll_interval: float = 0.1,
    cafile: Path | None = None,
    after_start: Callable[[Callable[[str], None]], Any] | None = None,
) -> int:
    """Run the nodes until SIGINT/SIGTERM (exit 0) or until all of them exit (exit 1).

    Leaves no child process behind, whatever happens.
    """
    runner = _Runner(specs, command, out or sys.stdout, grace, poll_interval, cafile)
    # Install the handlers before the first child exists: from here on a signal is
    # an orderly shutdown, never a KeyboardInterrupt traceback.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals, ExitStack() as logs:
        try:
            await runner.start(logs)
            data_dirs = sorted({str(spec.log_path.parent) for spec in specs})
            runner.say(f"node output goes to {', '.join(data_dirs)}/<id>.log; Ctrl-C stops all")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runner.watch_signals, signals, nursery.cancel_scope)
                nursery.start_soon(runner.poll_leader)
                if after_start is not None:
                    nursery.start_soon(after_start, runner.say)
                for spec in specs:
                    nursery.start_soon(
                        runner.watch_child, spec, runner.procs[spec.id], nursery.cancel_scope
                    )
        finally:
            with trio.CancelScope(shield=True):
                await runner.shutdown(signals)
    return runner.exit_code


# ----------------------------------------------------------------- grow (issue 12)


def _member_names(opts: ClusterOptions, timeout: float = 3.0) -> tuple[list[str], list[str]]:
    """(names, URLs) of the running local cluster's members, from any node that answers
    GET /cluster/members on the usual ports (base-port and up)."""
    reach = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(opts.host, opts.host)
    with httpx.Client(trust_env=False, timeout=timeout) as http:
        for k in range(64):
            url = f"http://{format_host_port(reach, opts.base_port + k)}"
            try:
                r = http.get(url + "/cluster/members")
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                members = r.json()["members"]
                return [m["name"] for m in members], [m["url"] for m in members]
    raise ConfigError(
        f"no running cluster answers on {reach} ports {opts.base_port}..: start one with "
        "`trioraft cluster` first (same --base-port)"
    )


def plan_joiner(opts: ClusterOptions, names: Sequence[str], urls: Sequence[str]) -> NodeSpec:
    """The next node (nodeK, K one past the highest nodeK, on base-port+K-1) as a joiner."""
    numbers = [int(n[4:]) for n in names if n.startswith("node") and n[4:].isdigit()]
    k = max(numbers, default=0) + 1
    node_id, port = f"node{k}", opts.base_port + k - 1
    reach = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(opts.host, opts.host)
    url = f"http://{format_host_port(reach, port)}"
    data_dir = opts.data_dir / node_id
    argv = ["--id", node_id, "--listen", format_host_port(opts.host, port), "--advertise", url,
            f"--join={','.join(urls)}", "--data-dir", str(data_dir), *opts.serve_args]
    config_from_args(build_serve_parser().parse_args(argv), {})
    return NodeSpec(node_id, opts.host, port, url, data_dir, opts.data_dir / f"{node_id}.log",
                    tuple(argv))  # fmt: skip


def grow(
    opts: ClusterOptions, *, command: SpawnCommand = default_command, grace: float = 5.0,
    token: str | None = None,
) -> int:
    """`trioraft cluster grow`: start the next node as a joiner, add it to the running
    local cluster (learner, then voter once caught up), and run it until Ctrl-C."""
    if opts.tls_dir is not None:
        # The local cluster's nodes all get their certificates at start (one
        # make-certs run); a joiner's certificate would need the same CA key.
        print("trioraft cluster: grow does not support --tls-dir; start the node with "
              "`trioraft serve --join URL` and its certificate, then `trioraft member add`",
              file=sys.stderr)  # fmt: skip
        return 2
    names, urls = _member_names(opts)
    spec = plan_joiner(opts, names, urls)
    if spec.data_dir.exists() and any(spec.data_dir.iterdir()):
        print(f"trioraft cluster: {spec.data_dir} is not empty: {spec.id} was a member "
              "before; start it with `trioraft serve` or empty that directory", file=sys.stderr)
        return 1
    if problems := check_ports_free([spec]):
        print(f"trioraft cluster: {problems[0]}", file=sys.stderr)
        return 1
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def add(say: Callable[[str], None]) -> None:
        say(f"adding {spec.id} to the cluster ({', '.join(names)}) ...")
        async with httpx.AsyncClient(trust_env=False, timeout=130.0, headers=headers) as http:
            for _ in range(600):  # until the new node answers (its process starts)
                try:
                    if (await http.get(spec.url + "/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.1)
            body = {"name": spec.id, "url": spec.url, "promote": True, "timeout_ms": 120_000}
            for attempt in range(100):
                target = urls[attempt % len(urls)]
                try:
                    r = await http.post(target + "/cluster/members", json=body)
                except httpx.HTTPError as exc:
                    say(f"  {target}: {exc!r}; retrying")
                    await trio.sleep(0.5)
                    continue
                if r.status_code in (503,) or (r.status_code == 409 and
                                               r.json().get("code") == "change_in_progress"):
                    await trio.sleep(0.3)
                    continue
                if r.status_code == 200:
                    b = r.json()
                    role = "voter" if b["voter"] else "learner"
                    say(f"{spec.id} is a {role} (member id {b['member_id']})"
                        + (f": {b['note']}" if b.get("note") else ""))
                else:
                    say(f"adding {spec.id} failed ({r.status_code}): {r.text[:300]}")
                return

    try:
        return trio.run(lambda: run_cluster([spec], command=command, grace=grace,
                                            after_start=add))  # fmt: skip
    except KeyboardInterrupt:
        return 130


def main(
    opts: ClusterOptions, *, command: SpawnCommand = default_command, grace: float = 5.0
) -> int:
    """Plan, check ports, and run (the body of `trioraft cluster`)."""
    specs = plan_cluster(opts)  # ConfigError -> the CLI turns it into a usage error
    if problems := check_ports_free(specs):
        for problem in problems:
            print(f"trioraft cluster: {problem}", file=sys.stderr)
        print(
            "trioraft cluster: choose another --base-port or stop what uses them", file=sys.stderr
        )
        return 1
    try:
        cafile = opts.tls_dir / "ca.pem" if opts.tls_dir is not None else None
        return trio.run(lambda: run_cluster(specs, command=command, grace=grace, cafile=cafile))
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were installed
        return 130
