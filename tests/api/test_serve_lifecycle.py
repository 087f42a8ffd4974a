"""Embedding `serve` in a nursery and cancelling it (as tests and in-process
clusters do) must not leak the node's sockets."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

from tests.api.api_helpers import assert_ok
from tests.api.conftest import make_configs, start_cluster


async def test_serve_cancelled_from_outside_closes_forwarding_connections(
    tmp_path: Path,
) -> None:
    async with start_cluster(make_configs(3, tmp_path / "data")) as cluster:
        r = await cluster.client.put(f"{cluster.follower_urls[0]}/kv/k", json={"value": "v"})
        assert_ok(r)  # forwarded: the follower now holds a keep-alive connection
        del cluster, r
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []
