"""A short chaos run with the membership nemesis (remove/add, wipe-and-readmit,
transfer) beside kills, pauses, partitions and link faults; the long runs are
`nox -s chaos -- --membership --duration 60 --nodes 5`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trioraft.testing.chaos import ChaosConfig, run_chaos


@pytest.mark.processes
async def test_short_chaos_run_with_membership_changes(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", "3"))
    # Partitions and link faults only: with three nodes, one killed or paused node
    # would use the whole budget of impaired nodes the membership nemesis needs.
    # (The long runs, nox -s chaos -- --membership, use every fault on 5 nodes.)
    cfg = ChaosConfig(duration=24, nodes=3, seed=seed, clients=6, keys=5, healthy_tail=14,
                      out=tmp_path / "run", fault_interval=(0.8, 2.0), membership=True,
                      faults=frozenset({"partition", "delay"}))
    result = await run_chaos(cfg)
    detail = f"{result.summary()}\n{result.problems}\nkept in {result.out}"
    assert result.verdict == "linearizable", detail
    assert result.converged, detail
    assert not result.problems, detail
    assert result.outcomes["ok"] > 100, detail
    lines = (tmp_path / "run" / "faults.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    done = [e["detail"] for e in events if e["kind"] == "membership"]
    # The nemesis changed the membership for real, and every node ended a member.
    assert any(d.endswith(": re-admitted") or (d.startswith("add ") and ": 200 " in d)
               for d in done), done
    summary = done[-1]
    assert summary.startswith("membership:"), done
