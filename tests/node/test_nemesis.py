"""Randomized: clients against a cluster under partitions, crashes and restarts.

Several client tasks do random put / get / cas through `propose` and
`read_barrier` while a nemesis partitions, isolates, crashes and restarts
nodes, for a bounded virtual duration. Every request is recorded with its
call and return times and its outcome. At the end the network heals, every
node restarts, and the cluster must converge: all digests equal, the final
values explained by the writes, and the whole history linearizable.

The seed is printed (pytest shows it on failure). Replay one with
``TRIORAFT_NEMESIS_SEED=1234 pytest tests/node/test_nemesis.py``; trio's own
scheduling order is not seeded, so a replay is close to, not exactly, the run.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import trio

from trioraft.errors import (
    NoLeader,
    NoQuorum,
    NotLeader,
    Overloaded,
    ProposalDropped,
    RaftError,
    ShuttingDown,
    UnknownOutcome,
)
from trioraft.kv import Cas, CasResult, Put, PutResult, encode_command
from trioraft.node import RaftNode
from trioraft.testing.cluster import Cluster, open_cluster
from trioraft.testing.linearizability import Operation, check, save_history

KEYS = ("a", "b", "c")
CLIENTS = 4
DURATION = 10.0  # virtual seconds of faults
# Errors that promise the operation did not and will not take effect.
DEFINITE_FAILURES: tuple[type[RaftError], ...] = (
    NotLeader, NoLeader, NoQuorum, ProposalDropped, Overloaded, ShuttingDown,
)  # fmt: skip


def _seeds() -> list[int]:
    if env := os.environ.get("TRIORAFT_NEMESIS_SEED"):
        return [int(env)]
    return [random.SystemRandom().randrange(1 << 32) for _ in range(2)]


@dataclass
class Recorder:
    history: list[Operation] = field(default_factory=list)
    # For the final-value check: every write that may have taken effect.
    writes: list[Operation] = field(default_factory=list)

    def add(self, op: Operation) -> None:
        self.history.append(op)
        if op.kind in ("put", "cas") and op.outcome != "fail" and op.ok is not False:
            self.writes.append(op)


def _pick_node(cluster: Cluster, rng: random.Random) -> RaftNode:
    leader = cluster.leader()
    if leader is not None and rng.random() < 0.8:
        return leader
    return cluster.nodes[rng.choice(cluster.up)]


async def _client(
    cid: int, cluster: Cluster, rec: Recorder, rng: random.Random, until: float
) -> None:
    seq = 0
    last_seen: dict[str, str | None] = dict.fromkeys(KEYS)
    while trio.current_time() < until:
        seq += 1
        key = rng.choice(KEYS)
        node = _pick_node(cluster, rng)
        call = trio.current_time()
        kind = rng.choice(("put", "get", "cas"))
        value = f"c{cid}-{seq}"
        if kind == "get":
            try:
                await node.read_barrier()
                got = node.kv.get(key)  # no await since the barrier: a state at ret
            except DEFINITE_FAILURES:
                rec.add(Operation.get(cid, key, None, call, trio.current_time(), "fail"))
            else:
                last_seen[key] = got
                rec.add(Operation.get(cid, key, got, call, trio.current_time()))
        else:
            # Each request a fresh id: this test checks single attempts; the
            # exactly-once retry path has its own tests.
            rid = f"c{cid}:{seq}"
            if kind == "put":
                cmd: Put | Cas = Put(key, value, rid)
            else:
                cmd = Cas(key, last_seen[key], value, rid)
            outcome: Literal["ok", "fail", "unknown"]
            ok: bool | None
            try:
                [result] = await node.propose([encode_command(cmd)])
            except UnknownOutcome:
                outcome, ok = "unknown", None
            except DEFINITE_FAILURES:
                outcome, ok = "fail", None
            else:
                outcome = "ok"
                if isinstance(result, CasResult):
                    ok = result.ok
                    last_seen[key] = result.current
                else:
                    assert isinstance(result, PutResult), result
                    ok = None
                    last_seen[key] = value
            ret = trio.current_time() if outcome != "unknown" else None
            if isinstance(cmd, Put):
                rec.add(Operation.put(cid, key, value, call, ret, outcome))
            else:
                rec.add(Operation.cas(cid, key, cmd.expected, value, ok, call, ret, outcome))
        await trio.sleep(rng.uniform(0, 0.05))


async def _nemesis(cluster: Cluster, rng: random.Random, until: float) -> list[str]:
    log: list[str] = []
    n = len(cluster.ids)
    max_down = (n - 1) // 2
    while True:
        await trio.sleep(rng.uniform(0.1, 1.0))
        now = trio.current_time()
        if now >= until:
            return log
        down = [i for i in cluster.ids if not cluster.is_up(i)]
        action = rng.choice(("partition", "isolate_leader", "heal", "crash", "restart"))
        if action == "partition":
            ids = list(cluster.ids)
            rng.shuffle(ids)
            cut = rng.randrange(1, n)
            cluster.network.partition(set(ids[:cut]), set(ids[cut:]))
            log.append(f"{now:.2f} partition {sorted(ids[:cut])} | {sorted(ids[cut:])}")
        elif action == "isolate_leader" and (leader := cluster.leader()) is not None:
            cluster.network.isolate(leader.id)
            log.append(f"{now:.2f} isolate leader {leader.id}")
        elif action == "heal":
            cluster.network.heal()
            log.append(f"{now:.2f} heal")
        elif action == "crash" and len(down) < max_down:
            victim = rng.choice(cluster.up)
            await cluster.crash(victim)
            log.append(f"{now:.2f} crash {victim}")
        elif action == "restart" and down:
            back = rng.choice(down)
            await cluster.restart(back)
            log.append(f"{now:.2f} restart {back}")


def _check_final_values(cluster: Cluster, rec: Recorder) -> None:
    node = next(iter(cluster.running()))
    for key in KEYS:
        final = node.kv.get(key)
        writes = [w for w in rec.writes if w.key == key]
        # The final value was written by a write that was acknowledged or unknown.
        possible = {w.value for w in writes}
        assert final is None or final in possible, (key, final)
        if final is None:
            # Every write here sets a value: absent means none applied.
            assert not any(w.outcome == "ok" for w in writes), (key, "acknowledged write lost")
        # An acknowledged write that no other write can follow must be the final value.
        for w in writes:
            if w.outcome != "ok":
                continue
            later = [
                o for o in writes
                if o is not w and not (o.outcome == "ok" and o.ret is not None
                                        and w.ret is not None and o.ret < w.call)
            ]  # fmt: skip
            if not later:
                assert final == w.value, (key, final, w)


@pytest.mark.parametrize("seed", _seeds())
@pytest.mark.parametrize("nodes", [3, 5])
async def test_clients_under_a_nemesis_stay_linearizable(
    nodes: int, seed: int, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    print(f"nemesis seed: {seed} (replay: TRIORAFT_NEMESIS_SEED={seed})")
    rec = Recorder()
    async with open_cluster(
        nodes, seed=seed, request_timeout_s=1.0, snapshot_entries=50
    ) as cluster:
        await cluster.wait_for_leader()
        until = trio.current_time() + DURATION
        async with trio.open_nursery() as nursery:
            for cid in range(CLIENTS):
                nursery.start_soon(
                    _client, cid, cluster, rec, random.Random(f"{seed}:{cid}"), until
                )
            faults = await _nemesis(cluster, random.Random(f"{seed}:nemesis"), until)
        print("\n".join(faults))

        cluster.network.heal()
        for i in cluster.ids:
            if not cluster.is_up(i):
                await cluster.restart(i)
        digest = await cluster.wait_converged(timeout_s=30)
        assert set(cluster.digests().values()) == {digest}

        acked = sum(1 for op in rec.history if op.outcome == "ok" and op.kind != "get")
        print(f"{len(rec.history)} operations, {acked} acknowledged writes")
        assert acked > 10, "the nemesis left no room for progress: the test checks nothing"
        _check_final_values(cluster, rec)

    result = check(rec.history, timeout=30)
    if result.ok is not True:
        path = tmp_path / f"history-{seed}.jsonl"
        save_history(path, rec.history)
        print(f"history saved: python -m trioraft.testing.linearizability {path} -v")
    assert result.ok is True, result.explanation
