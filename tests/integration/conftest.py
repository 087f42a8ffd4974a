"""Fixtures for the integration tests: real `trioraft serve` processes on loopback.

``make_cluster(n, **kwargs)`` starts a :class:`~trioraft.testing.procs.ProcCluster`
(fsync on), waits until every node answers and a leader is elected, and returns it
(``cluster.first_leader`` may have been deposed meanwhile on a loaded machine; the
helper's put/get find the current one). Every cluster a test made is
stopped by pid when the test ends, whatever happened; when the test fails, each
node's status and log tail are added to the report as a "node logs" section.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from trioraft.testing.procs import ProcCluster, pid_alive

CLUSTERS = pytest.StashKey[list[ProcCluster]]()

MakeCluster = Callable[..., Awaitable[ProcCluster]]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and call.when in ("call", "setup"):
        for k, cluster in enumerate(item.stash.get(CLUSTERS, [])):
            report.sections.append(
                (f"node logs (cluster {k}, {cluster.base_dir})", cluster.logs(tail_lines=80))
            )
    return report


@pytest.fixture
async def make_cluster(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MakeCluster]:
    clusters: list[ProcCluster] = []
    request.node.stash[CLUSTERS] = clusters

    async def make(n: int = 3, **kwargs: Any) -> ProcCluster:
        cluster = ProcCluster(n, tmp_path / f"cluster{len(clusters)}", **kwargs)
        clusters.append(cluster)
        await cluster.boot()
        return cluster

    try:
        yield make
    finally:
        # SIGTERM, then SIGKILL after 1 s: a graceful stop currently takes 5 s
        # (test_sigterm_stops_a_node_promptly); tests that check it use stop().
        for cluster in clusters:
            cluster.close(grace=1.0)
            await cluster.aclose()
        leftovers = [
            (c.base_dir, pid)
            for c in clusters
            for n in c.nodes.values()
            for pid in n.pids
            if pid_alive(pid)
        ]
        assert not leftovers, f"processes left behind: {leftovers}"
