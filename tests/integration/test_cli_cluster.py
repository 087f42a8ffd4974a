"""`trioraft cluster --nodes 3` as a subprocess, driven by the `trioraft` CLI client.

Checks the printed URLs and ``leader: nodeK``, the client commands' exit statuses
(API.md §6: 0 success, 1 clean failure, 3 unreachable), and that SIGINT stops every
node the command started.
"""

# The test drives a separate process: small blocking file reads, Popen (it must
# outlive a cancelled test until `finally` stops it) and polling are deliberate.
# ruff: noqa: ASYNC110, ASYNC220, ASYNC230, ASYNC240, ASYNC251

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from trioraft.testing.procs import free_port_range, free_ports, pid_alive

pytestmark = pytest.mark.processes

NODE_LINE = re.compile(r"^(node\d+)\s+(http://\S+)\s+pid (\d+)", re.M)
LEADER_LINE = re.compile(r"^leader: (node\d+)$", re.M)


async def cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run `python -m trioraft ARGS`; returns the completed process (text)."""
    env = {k: v for k, v in os.environ.items() if k != "TRIORAFT_ENDPOINTS"}
    with trio.fail_after(timeout):
        result = await trio.run_process(
            [sys.executable, "-m", "trioraft", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


async def stage(
    commands: dict[tuple[str, ...], int],
) -> dict[tuple[str, ...], subprocess.CompletedProcess[str]]:
    """Run the CLI commands concurrently; assert each exits with its expected status."""
    results: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}

    async def one(args: tuple[str, ...]) -> None:
        results[args] = await cli(*args)

    async with trio.open_nursery() as nursery:
        for args in commands:
            nursery.start_soon(one, args)
    codes = {args: r.returncode for args, r in results.items()}
    assert codes == commands, "\n".join(
        f"{' '.join(a)} -> {r.returncode}: {r.stdout!r} {r.stderr!r}" for a, r in results.items()
    )
    return results


async def wait_for_output(out_path: Path, pattern: re.Pattern[str], timeout: float) -> str:
    with trio.move_on_after(timeout):
        while True:
            text = out_path.read_text()
            if pattern.search(text):
                return text
            await trio.sleep(0.05)
    raise AssertionError(
        f"{pattern.pattern!r} not printed within {timeout}s:\n{out_path.read_text()}"
    )


def node_logs(data_dir: Path) -> str:
    return "\n".join(
        f"----- {p.name} -----\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted(data_dir.glob("node*.log"))
    )


async def test_cluster_command_and_cli_client(tmp_path):
    base = free_port_range(3)
    data_dir = tmp_path / "data"
    out_path = tmp_path / "cluster.out"
    node_pids: list[int] = []
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trioraft", "cluster", "--nodes", "3",
             "--base-port", str(base), "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        text = await wait_for_output(out_path, LEADER_LINE, timeout=20)
        nodes = NODE_LINE.findall(text)
        assert [(n, u) for n, u, _ in nodes] == [
            (f"node{k}", f"http://127.0.0.1:{base + k - 1}") for k in (1, 2, 3)
        ], text
        node_pids = [int(pid) for _, _, pid in nodes]
        leader = LEADER_LINE.search(text).group(1)  # type: ignore[union-attr]
        endpoints = ",".join(u for _, u, _ in nodes)
        ep = ["--endpoints", endpoints]

        # Stages of independent commands run concurrently (each is a Python start-up).
        r = await cli("put", "greeting", "hello", *ep)
        assert (r.returncode, r.stdout.strip()) == (0, "OK"), r
        (dead,) = free_ports(1)
        unreachable = ["--endpoints", f"http://127.0.0.1:{dead}", "--timeout", "0.5"]
        r = await stage({
            ("get", "greeting", *ep): 0,
            ("get", "absent-key", *ep): 1,
            ("cas", "greeting", "--expected", "wrong", "--value", "x", *ep): 1,
            ("cas", "new-key", "--expected-absent", "--value", "1", *ep): 0,
            ("del", "absent-key", *ep): 1,
            ("status", *ep): 0,
            ("get",): 2,  # usage error
            ("get", "k", *unreachable): 3,
            ("put", "k", "v", *unreachable): 3,
            ("status", *unreachable): 3,
        })  # fmt: skip
        assert r[("get", "greeting", *ep)].stdout == "hello\n"
        assert "not found" in r[("get", "absent-key", *ep)].stderr
        assert (
            "CAS failed"
            in r[("cas", "greeting", "--expected", "wrong", "--value", "x", *ep)].stderr
        )
        table = r[("status", *ep)].stdout
        for node_id, url, _ in nodes:
            assert node_id in table
            assert url in table
        assert "leader" in table

        r = await stage({
            ("cas", "greeting", "--expected", "hello", "--value", "bye", *ep): 0,
            ("cas", "new-key", "--expected-absent", "--value", "2", *ep): 1,
        })  # fmt: skip
        r = await stage({("get", "greeting", "--json", *ep): 0, ("del", "new-key", *ep): 0})
        assert json.loads(r[("get", "greeting", "--json", *ep)].stdout) == {
            "key": "greeting",
            "value": "bye",
        }
        r = await stage({("get", "new-key", *ep): 1, ("del", "new-key", *ep): 1})

        # Ctrl-C: the command stops every node and exits 0.
        assert all(pid_alive(pid) for pid in node_pids)
        proc.send_signal(signal.SIGINT)
        with trio.fail_after(15):
            while proc.poll() is None:
                await trio.sleep(0.05)
        assert proc.returncode == 0, out_path.read_text()
        text = out_path.read_text()
        assert "all nodes stopped" in text
        assert [pid for pid in node_pids if pid_alive(pid)] == []
        print(f"\nleader was {leader}; cluster output:\n{text}")

        # Gone for good: the client now finds nothing.
        r = await cli("get", "greeting", *ep, "--timeout", "0.5")
        assert r.returncode == 3, r
    except BaseException:
        print(node_logs(data_dir))
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in node_pids:  # only if the cluster command failed to stop them
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(pid_alive(p) for p in node_pids) and time.monotonic() < deadline:
            time.sleep(0.05)
