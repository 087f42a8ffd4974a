"""`trioraft cluster` lifecycle, run against fake nodes (tests/cli/fake_node.py).

The cluster runner is started as a process in its own session, so a "Ctrl-C" can be
sent the way a terminal sends it: SIGINT to the whole process group, children included.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trioraft import cluster
from trioraft.cluster import ClusterOptions, NodeSpec, plan_cluster
from trioraft.config import ConfigError, parse_serve_args

pytestmark = pytest.mark.processes

FAKE_NODE = Path(__file__).with_name("fake_node.py")

DRIVER = """
import json, sys
from pathlib import Path
from trioraft import cluster
fake, base, data, grace, modes = sys.argv[1:6]
modes = json.loads(modes)
opts = cluster.ClusterOptions(nodes=len(modes), base_port=int(base), data_dir=Path(data))
def command(spec):
    return [sys.executable, fake, spec.id, str(spec.port), modes[spec.id]]
sys.exit(cluster.main(opts, command=command, grace=float(grace)))
"""


def free_base_port(count: int) -> int:
    """A base port such that base..base+count-1 are all free on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(20_000, 60_000)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError("no free port range")


class Driver:
    def __init__(self, tmp_path: Path, modes: dict[str, str], grace: float = 5.0) -> None:
        self.base = free_base_port(len(modes))
        self.data = tmp_path / "data"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(FAKE_NODE), str(self.base), str(self.data),
             str(grace), json.dumps(modes)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, like a terminal job
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if match := re.search(pattern, line):
                    self.seen.remove(line)
                    return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r}; saw {self.seen}")
            with contextlib.suppress(queue.Empty):
                self.seen.append(self.lines.get(timeout=remaining))

    def node_pids(self, count: int) -> dict[str, int]:
        pids = {}
        for _ in range(count):
            match = self.wait_for(r"^(node\d+)\s+(http://\S+)\s+pid (\d+)\s+log (\S+)")
            node_id, url, pid, log = match.groups()
            assert url == f"http://127.0.0.1:{self.base + int(node_id[4:]) - 1}"
            assert log == str(self.data / f"{node_id}.log")
            pids[node_id] = int(pid)
        return pids

    def finish(self, timeout: float = 15.0) -> tuple[int, str]:
        returncode = self.proc.wait(timeout=timeout)
        assert self.proc.stderr is not None
        return returncode, self.proc.stderr.read()

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[object]:
    drivers: list[Driver] = []

    def factory(modes: dict[str, str], grace: float = 5.0) -> Driver:
        driver = Driver(tmp_path, modes, grace)
        drivers.append(driver)
        return driver

    yield factory
    for driver in drivers:  # never leave anything behind, even when a test fails
        driver.kill_group()
        for stream in (driver.proc.stdout, driver.proc.stderr):
            if stream is not None:
                stream.close()


def wait_listening(log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while "listening" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"{log} never said it was listening"
        time.sleep(0.02)


def assert_gone(pids: dict[str, int], group: int) -> None:
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)


OK3 = {"node1": "ok", "node2": "ok", "node3": "ok"}


def test_ctrl_c_stops_every_node(start):
    driver = start(OK3)
    pids = driver.node_pids(3)
    driver.wait_for(r"node output goes to .*<id>\.log")
    driver.wait_for(r"^leader: node1$")
    # Every fake node past its imports (the runner's "leader" line may come from
    # node2's answer while node1 is still starting on a fresh, slow machine).
    for node in OK3:
        wait_listening(driver.data / f"{node}.log")
    os.killpg(driver.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    driver.wait_for(r"all nodes stopped")
    returncode, err = driver.finish()
    assert returncode == 0
    assert "Traceback" not in err
    assert not any("unexpectedly" in line for line in driver.seen)
    assert_gone(pids, driver.proc.pid)
    assert (driver.data / "node1.log").read_text().startswith("fake node1 listening")


def test_sigterm_to_the_runner_alone_stops_every_node(start):
    driver = start(OK3)
    pids = driver.node_pids(3)
    driver.wait_for(r"^leader: node1$")
    driver.proc.send_signal(signal.SIGTERM)
    driver.wait_for(r"received SIGTERM")
    returncode, err = driver.finish()
    assert returncode == 0
    assert "Traceback" not in err
    assert_gone(pids, driver.proc.pid)


def test_a_node_that_dies_is_reported_and_the_rest_keep_running(start):
    driver = start({"node1": "ok", "node2": "ok", "node3": "die"})
    pids = driver.node_pids(3)
    match = driver.wait_for(r"node3 exited unexpectedly \(exit status 3\); see (\S+)")
    assert match.group(1).endswith("node3.log")
    os.kill(pids["node1"], 0)  # still running
    driver.proc.send_signal(signal.SIGINT)
    returncode, _ = driver.finish()
    assert returncode == 0
    assert_gone(pids, driver.proc.pid)


def test_a_node_ignoring_sigterm_is_killed_after_the_grace_period(start):
    driver = start({"node1": "ok", "node2": "stubborn"}, grace=0.5)
    pids = driver.node_pids(2)
    driver.wait_for(r"^leader: node1$")
    wait_listening(driver.data / "node2.log")  # its SIGTERM/SIGINT handlers are in place
    os.killpg(driver.proc.pid, signal.SIGINT)
    driver.wait_for(r"still running after 0.5s, killing them")
    returncode, err = driver.finish()
    assert returncode == 0
    assert "Traceback" not in err
    assert_gone(pids, driver.proc.pid)


def test_a_clean_stop_is_not_unexpected(start):
    driver = start({"node1": "ok", "node2": "clean"})
    pids = driver.node_pids(2)
    match = driver.wait_for(r"node2 stopped \(exit status 0: a clean shutdown\); see (\S+)")
    assert match.group(1).endswith("node2.log")
    assert not any("unexpectedly" in line for line in driver.seen)
    driver.proc.send_signal(signal.SIGINT)
    returncode, _ = driver.finish()
    assert returncode == 0
    assert_gone(pids, driver.proc.pid)


def test_when_every_node_exits_the_command_fails(start):
    # All three go within the same instant: every one of them is reported.
    driver = start({"node1": "die", "node2": "killed", "node3": "clean"})
    pids = driver.node_pids(3)
    driver.wait_for(r"node1 exited unexpectedly \(exit status 3\)")
    driver.wait_for(r"node2 exited unexpectedly \(killed by SIGKILL\)")
    driver.wait_for(r"node3 stopped \(exit status 0")
    driver.wait_for(r"all nodes have exited")
    returncode, _ = driver.finish()
    assert returncode == 1
    assert_gone(pids, driver.proc.pid)


# ---------------------------------------------------------------- planning


def test_plan_gives_each_node_a_valid_serve_command_line(tmp_path):
    specs = plan_cluster(
        ClusterOptions(nodes=3, base_port=4001, data_dir=tmp_path,
                       serve_args=("--heartbeat-ms=20", "--no-fsync"))
    )  # fmt: skip
    assert [s.id for s in specs] == ["node1", "node2", "node3"]
    assert [s.url for s in specs] == [f"http://127.0.0.1:{p}" for p in (4001, 4002, 4003)]
    config = parse_serve_args(list(specs[1].serve_argv), {})
    assert config.id == "node2"
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 4002)
    assert config.advertise_url == "http://127.0.0.1:4002"
    assert config.peers == {"node1": "http://127.0.0.1:4001", "node3": "http://127.0.0.1:4003"}
    assert config.data_dir == tmp_path / "node2"
    assert config.heartbeat_ms == 20
    assert config.fsync is False
    assert specs[1].log_path == tmp_path / "node2.log"


def test_five_nodes():
    specs = plan_cluster(ClusterOptions(nodes=5))
    assert [s.port for s in specs] == [3001, 3002, 3003, 3004, 3005]
    assert len(parse_serve_args(list(specs[4].serve_argv), {}).peers) == 4


def test_binding_all_interfaces_advertises_loopback():
    [spec] = plan_cluster(ClusterOptions(nodes=1, host="0.0.0.0",
                                         serve_args=("--cluster-token=t0ken",)))
    assert spec.url == "http://127.0.0.1:3001"
    assert "0.0.0.0:3001" in spec.serve_argv


def test_binding_all_interfaces_needs_peer_authentication():
    # Secure by default (issue 10): a non-loopback address needs a token.
    with pytest.raises(ConfigError, match="without peer authentication"):
        plan_cluster(ClusterOptions(nodes=1, host="0.0.0.0"))


def test_invalid_plans_are_config_errors():
    with pytest.raises(ConfigError, match="at least 1"):
        plan_cluster(ClusterOptions(nodes=0))
    with pytest.raises(ConfigError, match="65535"):
        plan_cluster(ClusterOptions(nodes=3, base_port=65534))
    with pytest.raises(ConfigError, match="below the minimum"):
        plan_cluster(ClusterOptions(serve_args=("--heartbeat-ms=400",)))


def test_default_command_runs_serve_with_this_interpreter():
    spec = NodeSpec("node1", "127.0.0.1", 3001, "http://x", Path("d"), Path("l"), ("--id", "a"))
    assert cluster.default_command(spec) == [sys.executable, "-m", "trioraft", "serve", "--id", "a"]


def test_children_do_not_inherit_serve_env_vars(monkeypatch):
    monkeypatch.setenv("PEER_IDS", "x:1")
    monkeypatch.setenv("NODE_ID", "x")
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    env = cluster._child_env()
    assert "PEER_IDS" not in env
    assert "NODE_ID" not in env
    assert env["SOMETHING_ELSE"] == "kept"


def test_a_port_in_use_is_reported_before_starting_anything(tmp_path, capsys):
    base = free_base_port(2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + 1))
        busy.listen()

        def must_not_spawn(spec: NodeSpec) -> list[str]:
            raise AssertionError("spawned")

        opts = ClusterOptions(nodes=2, base_port=base, data_dir=tmp_path)
        assert cluster.main(opts, command=must_not_spawn) == 1
    err = capsys.readouterr().err
    assert f"node2: cannot bind 127.0.0.1:{base + 1}" in err
