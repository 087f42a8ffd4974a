"""A write load for membership tests: every write retried (same request id) until it is
acknowledged, so 'no failed or lost writes' means every one of them is in the state."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from trioraft.core import NotLeader, ProposalDropped
from trioraft.errors import NoLeader, NoQuorum, Overloaded, UnknownOutcome
from trioraft.kv import Put, encode_command
from trioraft.testing.cluster import Cluster

RETRYABLE = (NotLeader, NoLeader, NoQuorum, ProposalDropped, Overloaded, UnknownOutcome)


@dataclass
class Writes:
    acked: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # never acknowledged within the budget
    retries: int = 0
    latencies: list[float] = field(default_factory=list)


async def write_load(
    cluster: Cluster, out: Writes, stop: trio.Event, *, prefix: str = "w",
    interval: float = 0.01, budget_s: float = 20.0,
) -> None:
    """Write prefix0, prefix1, ... one at a time through the current leader until `stop`."""
    i = 0
    while not stop.is_set():
        key, value = f"{prefix}{i}", f"v{i}"
        data = encode_command(Put(key, value, request_id=f"{prefix}:{i}"))
        t0 = trio.current_time()
        with trio.move_on_after(budget_s):
            while True:
                leader = cluster.leader()
                if leader is None:
                    await trio.sleep(0.02)
                    continue
                try:
                    await leader.propose([data], timeout=2.0)
                except RETRYABLE:
                    out.retries += 1
                    await trio.sleep(0.02)
                    continue
                out.acked[key] = value
                out.latencies.append(trio.current_time() - t0)
                break
        if key not in out.acked:
            out.failed.append(key)
        i += 1
        await trio.sleep(interval)


def assert_all_present(cluster: Cluster, w: Writes) -> None:
    assert w.failed == []
    for node in cluster.running():
        missing = [k for k, v in w.acked.items() if node.kv.get(k) != v]
        assert missing == [], (node.name, missing[:10])
