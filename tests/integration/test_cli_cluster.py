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


async def test_cluster_grow_adds_a_voter_that_stays_a_member(tmp_path):
    """`trioraft cluster grow` (issue 12): the next node joins the running local
    cluster as a learner and is promoted; stopping grow stops the node but it stays a
    member (removal is `trioraft member remove`)."""
    base = free_port_range(4)
    data_dir = tmp_path / "data"
    procs: list[subprocess.Popen[bytes]] = []
    outs = [tmp_path / "cluster.out", tmp_path / "grow.out"]

    def spawn(args: list[str], out_path: Path) -> subprocess.Popen[bytes]:
        with open(out_path, "w") as out:
            p = subprocess.Popen([sys.executable, "-m", "trioraft", "cluster", *args,
                                  "--base-port", str(base), "--data-dir", str(data_dir)],
                                 stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(p)
        return p

    try:
        spawn(["--nodes", "3"], outs[0])
        await wait_for_output(outs[0], LEADER_LINE, timeout=20)
        ep = ["--endpoints", ",".join(f"http://127.0.0.1:{base + k}" for k in range(3))]
        assert (await cli("put", "before", "1", *ep)).returncode == 0
        grow = spawn(["grow"], outs[1])
        text = await wait_for_output(outs[1], re.compile(r"node4 is a (voter|learner)"), 60)
        assert "node4 is a voter (member id node4-" in text, text
        node4 = ["--endpoints", f"http://127.0.0.1:{base + 3}"]
        r = await cli("get", "before", *node4)  # linearizable, through the new member
        assert (r.returncode, r.stdout) == (0, "1\n"), r
        r = await cli("member", "list", "--json", *ep)
        assert r.returncode == 0, r
        members = {m["name"]: m for m in json.loads(r.stdout)["members"]}
        assert sorted(members) == ["node1", "node2", "node3", "node4"]
        assert members["node4"]["voter"] is True
        # Ctrl-C on grow: node4 stops, and stays a member (a 4-voter cluster, one down).
        grow.send_signal(signal.SIGINT)
        with trio.fail_after(15):
            while grow.poll() is None:
                await trio.sleep(0.05)
        assert grow.returncode == 0, outs[1].read_text()
        r = await cli("member", "list", "--json", *ep)
        assert "node4" in {m["name"] for m in json.loads(r.stdout)["members"]}, r.stdout
        assert (await cli("put", "after", "2", *ep)).returncode == 0  # 3 of 4 voters
        # A second grow with --tls-dir is refused with a usage message.
        r = await cli("cluster", "grow", "--tls-dir", str(tmp_path), "--base-port", str(base))
        assert r.returncode == 2, r
        assert "does not support --tls-dir" in r.stderr, r
    except BaseException:
        print(node_logs(data_dir), *(p.read_text() for p in outs if p.exists()))
        raise
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
