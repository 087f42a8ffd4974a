"""The load generator speaks etcd's v3 JSON gateway as well as trioraft's API,
records every request on a timeline, and calls its window hook around exactly
the measured window."""

from __future__ import annotations

import base64
import json
import random
import time
from dataclasses import replace

import pytest
import trio
from quart import request
from quart_trio import QuartTrio

from trioraft.bench import LoadSpec, parse_mix, run_load
from trioraft.bench._echo import create_echo_app
from trioraft.bench._workload import Workload

from .test_bench import serving


def fake_etcd(member: str, leader: str) -> QuartTrio:
    """etcd's gateway as far as the bench uses it: put, range, maintenance/status."""
    app = QuartTrio("fake-etcd")
    data: dict[bytes, bytes] = {}
    app.config["seen"] = []

    @app.post("/v3/kv/put")
    async def put() -> dict[str, object]:
        body = await request.get_json()
        data[base64.b64decode(body["key"])] = base64.b64decode(body["value"])
        app.config["seen"].append(("put", body))
        return {"header": {"revision": str(len(data))}}

    @app.post("/v3/kv/range")
    async def range_() -> dict[str, object]:
        body = await request.get_json()
        app.config["seen"].append(("range", body))
        key = base64.b64decode(body["key"])
        if key not in data:
            return {"header": {}}
        return {
            "header": {},
            "kvs": [{"key": body["key"], "value": base64.b64encode(data[key]).decode()}],
            "count": "1",
        }

    @app.post("/v3/maintenance/status")
    async def status() -> dict[str, object]:
        return {"header": {"member_id": member}, "leader": leader, "version": "3.4.23"}

    return app


def test_etcd_requests_carry_base64_keys_and_values() -> None:
    w = Workload(
        keys=10,
        key_size=16,
        value_size=100,
        mix=parse_mix("write=1,read=1"),
        consistency="linearizable",
        path="/echo",
        seed=1,
        protocol="etcd",
    )
    key = w.keys[3]
    put = w.for_key("write", key)
    assert (put.method, put.target) == (b"POST", b"/v3/kv/put")
    assert put.body is not None
    body = json.loads(put.body)
    assert base64.b64decode(body["key"]) == key
    assert base64.b64decode(body["value"]).decode() == w.value
    assert len(w.value) == 100
    rng = json.loads(w.for_key("read", key).body or b"")
    assert rng == {"key": body["key"]}  # linearizable: etcd's default
    stale = Workload(
        keys=10,
        key_size=16,
        value_size=100,
        mix=parse_mix("read"),
        consistency="stale",
        path="/echo",
        seed=1,
        protocol="etcd",
    )
    assert json.loads(stale.for_key("read", key).body or b"")["serializable"] is True
    # The same keys and value as trioraft's protocol gets: a fair side by side.
    ours = Workload(
        keys=10,
        key_size=16,
        value_size=100,
        mix=parse_mix("write"),
        consistency="linearizable",
        path="/echo",
        seed=1,
    )
    assert ours.keys == w.keys
    assert ours.value == w.value
    assert json.loads(ours.for_key("write", key).body or b"") == {"value": w.value}


@pytest.mark.parametrize("mix", ["cas", "txn", "echo", "write=1,bulk=1"])
def test_etcd_protocol_refuses_operations_it_lacks(mix: str) -> None:
    with pytest.raises(ValueError, match="etcd protocol has no"):
        LoadSpec(endpoints=("http://x:1",), mix=parse_mix(mix), protocol="etcd")


async def test_a_run_against_the_etcd_gateway_finds_the_leader_and_counts() -> None:
    leader_app = fake_etcd("11", "11")
    async with serving(fake_etcd("22", "11")) as follower, serving(leader_app) as lead:
        spec = LoadSpec(
            endpoints=(follower, lead),
            target="leader",
            protocol="etcd",
            concurrency=3,
            requests=120,
            keys=20,
            prefill=True,
            mix=parse_mix("write=1,read=1"),
        )
        result = await run_load(spec)
    assert result.targets == (lead,)
    assert result.leader == "11"
    assert result.total == result.ok == 120
    assert set(result.by_op) == {"write", "read"}
    kinds = {kind for kind, _ in leader_app.config["seen"]}
    assert kinds == {"put", "range"}


async def test_timeline_and_per_op_latencies_account_for_every_request() -> None:
    async with serving(create_echo_app()) as url:
        spec = LoadSpec(
            endpoints=(url,), concurrency=4, requests=300, mix=parse_mix("echo=2,get=1")
        )
        result = await run_load(spec)
    assert result.total == result.ok == 300
    assert set(result.op_latencies_ms) == {"echo", "get"}
    assert sum(len(v) for v in result.op_latencies_ms.values()) == 300
    for lat in result.op_latencies_ms.values():
        assert lat == sorted(lat)
    assert sorted(x for v in result.op_latencies_ms.values() for x in v) == result.latencies_ms
    tl = result.timeline(0.05)
    assert sum(sum(c) for c in tl["ok"].values()) + sum(tl["errors"]) == 300
    assert len(tl["errors"]) == len(tl["ok"]["echo"]) == len(tl["worst_ms"]["get"])
    assert list(result.done_at) == sorted(result.done_at)
    assert all(0 <= t <= result.elapsed + 0.05 for t in result.done_at)
    data = result.to_json()
    assert set(data["latency_ms_by_op"]) == {"echo", "get"}
    assert data["timeline"]["interval_s"] == 0.5


async def test_errors_land_on_the_timeline_not_in_latencies() -> None:
    async with serving(create_echo_app()) as url:
        spec = LoadSpec(
            endpoints=(url,),
            concurrency=2,
            requests=40,
            mix=parse_mix("echo"),
            path="/echo?status=503",
        )
        result = await run_load(spec)
    assert result.ok == 0
    assert result.op_latencies_ms == {"echo": []}
    assert sum(result.timeline(1.0)["errors"]) == 40


async def test_window_hook_brackets_exactly_the_measured_requests() -> None:
    marks: list[tuple[str, float]] = []
    async with serving(create_echo_app()) as url:
        spec = LoadSpec(
            endpoints=(url,), concurrency=3, requests=50, warmup=0.2, mix=parse_mix("echo")
        )

        def hook(phase: str) -> None:
            marks.append((phase, time.perf_counter()))

        t0 = time.perf_counter()
        result = await run_load(spec, on_window=hook)
    assert [phase for phase, _ in marks] == ["start", "end"]
    (_, start), (_, end) = marks
    assert start - t0 >= 0.2  # after the warm-up
    assert end - start >= result.elapsed  # the window holds every recorded request
    assert result.total == 50


async def test_window_hook_end_runs_even_when_the_run_is_cancelled() -> None:
    phases: list[str] = []
    async with serving(create_echo_app()) as url:
        spec = LoadSpec(endpoints=(url,), concurrency=2, duration=30, mix=parse_mix("echo"))
        with trio.move_on_after(0.3):
            await run_load(spec, on_window=phases.append)
    assert phases == ["start", "end"]


def test_seeded_workloads_pick_the_same_requests() -> None:
    spec = LoadSpec(endpoints=("http://x:1",), mix=parse_mix("write=1,read=1"), seed=7)
    ws = [
        Workload(
            keys=spec.keys,
            key_size=16,
            value_size=10,
            mix=spec.mix,
            consistency="stale",
            path="/",
            seed=7,
        )
        for _ in range(2)
    ]
    a = [ws[0].pick(random.Random(3)).target for _ in range(5)]
    b = [ws[1].pick(random.Random(3)).target for _ in range(5)]
    assert a == b
    assert replace(spec, protocol="etcd").protocol == "etcd"
