"""`trioraft snapshot save` and `trioraft restore` (issue 12, "Disk replacement and
disaster recovery"): the documented whole-cluster restore, end to end, with real
processes and the CLI (docs/operations.md "Backup and restore")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from trioraft.testing.procs import HTTPX_BYTESTREAM_WARNING, ProcCluster

pytestmark = [pytest.mark.processes, pytest.mark.filterwarnings(HTTPX_BYTESTREAM_WARNING)]

FAST = {"election_timeout_ms": "150-300", "heartbeat_ms": 50}


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    with trio.fail_after(60):
        r = await trio.run_process([sys.executable, "-m", "trioraft", *args], check=False,
                                   capture_stdout=True, capture_stderr=True)  # fmt: skip
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(),
                                       r.stderr.decode())  # fmt: skip


async def test_a_backup_seeds_a_new_cluster_that_the_others_join(tmp_path: Path) -> None:
    backup = tmp_path / "backup.trb"
    async with ProcCluster(3, tmp_path / "old", **FAST) as old:  # type: ignore[arg-type]
        for i in range(30):
            await old.put(f"k{i}", f"v{i}")
        leader = await old.wait_for_leader()
        follower = next(n for n in old.ids if n != leader)
        # Online, through any node (a follower here): every acknowledged write is in it.
        r = await cli("snapshot", "save", str(backup), "--endpoints", old.url(follower))
        assert r.returncode == 0, r
        status = await old.status(leader)
        assert status is not None
        old_cluster = status["cluster_id"]
        await old.put("after-the-backup", "x")

    new = ProcCluster(2, tmp_path / "new", **FAST)  # type: ignore[arg-type]
    try:
        node1 = new["node1"]
        r = await cli("restore", str(backup), "--data-dir", str(node1.data_dir),
                      "--id", "node1", "--advertise", node1.url)  # fmt: skip
        assert r.returncode == 0, r
        # Never over an existing data dir: nothing written, a clear message.
        again = await cli("restore", str(backup), "--data-dir", str(node1.data_dir),
                          "--id", "node1", "--advertise", node1.url)  # fmt: skip
        assert again.returncode == 1, again
        assert "not empty" in again.stderr, again
        # node1 alone is a new cluster holding the backup; it leads by itself.
        new.start("node1")
        assert await new.wait_for_leader(30, among=["node1"]) == "node1"
        st = await new.status("node1")
        assert st is not None
        assert st["cluster_id"] != old_cluster
        assert sorted(st["members"]) == ["node1"]
        assert [await new.get(f"k{i}", "node1") for i in range(30)] == [
            f"v{i}" for i in range(30)
        ]
        assert await new.get("after-the-backup", "node1") is None
        # node2 starts empty (its --peer names node1): it waits, and is added.
        new.start("node2")
        added = await new.member_add("node2")
        assert added["voter"] is True
        await new.put("new", "cluster")
        assert await new.get("k7", "node2") == "v7"
        assert await new.get("new", "node2") == "cluster"
    finally:
        await new.aclose()
