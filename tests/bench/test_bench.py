"""The load generator against in-process servers: bounded, counted, well-shaped."""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Literal

import pytest
import trio
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from trioraft.bench import LoadSpec, add_arguments, parse_mix, run_load, spec_from_args
from trioraft.bench._echo import create_echo_app, hypercorn_config, serve_raw
from trioraft.bench._report import print_json, print_table
from trioraft.bench.matrix import BEGIN, END, Row, render_markdown, replace_section

PERCENTILES = ["min", "p50", "p90", "p99", "p99.9", "max"]


@asynccontextmanager
async def serving(app: QuartTrio) -> AsyncIterator[str]:
    """Serve ``app`` with the node's hypercorn config on a free port; yield its URL."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        urls = await nursery.start(
            lambda task_status: serve(
                app,
                hypercorn_config("127.0.0.1:0"),
                shutdown_trigger=stop.wait,
                task_status=task_status,
            )
        )
        try:
            yield urls[0]
        finally:
            stop.set()


def fake_kv(fail: Callable[[int], bool] = lambda n: False) -> QuartTrio:
    """A pretend node: a dict behind the client API; request n fails with 503 if fail(n)."""
    app = QuartTrio("fake-kv")
    data: dict[str, str] = {}
    seen = [0]

    def unavailable() -> Response | None:
        seen[0] += 1
        if fail(seen[0]):
            body = json.dumps({"error": "no leader", "code": "no_leader"})
            return Response(body, status=503, content_type="application/json")
        return None

    @app.put("/kv/<key>")
    async def put(key: str) -> Response | dict[str, object]:
        if (err := unavailable()) is not None:
            return err
        data[key] = (await request.get_json())["value"]
        return {"key": key, "value": data[key], "index": len(data)}

    @app.get("/kv/<key>")
    async def get(key: str) -> Response | dict[str, object]:
        if (err := unavailable()) is not None:
            return err
        if key not in data:
            return Response(
                '{"error":"absent","code":"not_found"}', status=404, content_type="application/json"
            )
        return {"key": key, "value": data[key], "consistency": request.args["consistency"]}

    @app.post("/kv/<key>/cas")
    async def cas(key: str) -> Response | dict[str, object]:
        body = await request.get_json()
        if data.get(key) != body["expected"]:
            return Response(
                json.dumps({"ok": False, "current": data.get(key)}),
                status=409,
                content_type="application/json",
            )
        data[key] = body["value"]
        return {"ok": True}

    @app.get("/status")
    async def status() -> dict[str, object]:
        return {"id": "node1", "role": "leader", "leader": "node1", "members": {}}

    return app


def assert_consistent(result_json: dict[str, object]) -> None:
    outcomes = result_json["outcomes"]
    by_op = result_json["by_op"]
    assert isinstance(outcomes, dict)
    assert isinstance(by_op, dict)
    assert sum(outcomes.values()) == result_json["total"]
    assert sum(sum(c.values()) for c in by_op.values()) == result_json["total"]
    assert result_json["ok"] + result_json["errors"] == result_json["total"]


async def test_echo_run_counts_add_up_and_percentiles_are_monotonic() -> None:
    async with serving(create_echo_app()) as url:
        spec = LoadSpec(
            endpoints=(url,),
            concurrency=4,
            mix=parse_mix("echo"),
            requests=200,
            duration=10.0,
            value_size=64,
        )
        result = await run_load(spec)
    assert result.total == 200
    assert result.ok == 200
    assert result.outcomes == {"200": 200}
    assert len(result.latencies_ms) == 200
    assert all(x > 0 for x in result.latencies_ms)
    pct = result.percentiles()
    values = [pct[name] for name in PERCENTILES]
    assert values == sorted(values)
    assert pct["min"] > 0
    assert result.ops_per_s > 0


async def test_raw_h11_server_and_httpx_client_agree() -> None:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_raw)
        clients: tuple[Literal["raw", "httpx"], ...] = ("raw", "httpx")
        for client in clients:
            spec = LoadSpec(
                endpoints=(url,),
                concurrency=3,
                mix=parse_mix("echo=1,get=1"),
                requests=90,
                client=client,
            )
            result = await run_load(spec)
            assert result.total == result.ok == 90
            assert set(result.by_op) == {"echo", "get"}
        nursery.cancel_scope.cancel()


async def test_kv_mix_sends_the_api_requests_and_404_409_are_answers() -> None:
    async with serving(fake_kv()) as url:
        spec = LoadSpec(
            endpoints=(url,),
            concurrency=4,
            keys=20,
            requests=300,
            mix=parse_mix("write=0.4,read=0.4,cas=0.2"),
            consistency="stale",
        )
        result = await run_load(spec)
    assert result.total == 300
    assert result.errors == 0
    assert set(result.by_op) == {"write", "read", "cas"}
    labels = set(result.outcomes)
    assert labels <= {"200", "404 not_found", "409"}


async def test_503_is_counted_and_the_run_goes_on() -> None:
    async with serving(fake_kv(fail=lambda n: n % 3 == 0)) as url:
        spec = LoadSpec(endpoints=(url,), concurrency=3, requests=150)
        result = await run_load(spec)
    assert result.total == 150
    assert result.outcomes["503 no_leader"] == 50
    assert result.ok == 100
    assert result.errors == 50
    assert len(result.latencies_ms) == 100  # percentiles over successes only
    assert_consistent(result.to_json())


async def test_unreachable_endpoint_counts_connection_errors() -> None:
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = LoadSpec(
        endpoints=(f"http://127.0.0.1:{port}",), concurrency=2, requests=10, mix=parse_mix("echo")
    )
    result = await run_load(spec)
    assert result.total == 10
    assert result.outcomes == {"conn_error": 10}
    assert result.percentiles() == {}


async def test_duration_bounds_the_run() -> None:
    async with serving(create_echo_app()) as url:
        spec = LoadSpec(
            endpoints=(url,), concurrency=2, mix=parse_mix("echo"), duration=0.5, warmup=0.2
        )
        t0 = time.perf_counter()
        result = await run_load(spec)
        wall = time.perf_counter() - t0
    # The measured window is the duration (not the warm-up); the bounds are loose
    # because a shared 2-core host can stall any process for a few hundred ms.
    assert 0.45 < result.elapsed < 2.0
    assert wall < 5.0
    assert result.total > 0


async def test_requests_bound_the_run_before_the_duration() -> None:
    async with serving(create_echo_app()) as url:
        spec = LoadSpec(
            endpoints=(url,), concurrency=8, mix=parse_mix("echo"), requests=37, duration=30.0
        )
        t0 = time.perf_counter()
        result = await run_load(spec)
    assert time.perf_counter() - t0 < 5.0
    assert result.total == 37


async def test_leader_target_uses_status() -> None:
    async with serving(fake_kv()) as url, serving(create_echo_app()) as other:
        # The echo server has no /status; the fake node names itself leader.
        spec = LoadSpec(endpoints=(other, url), target="leader", requests=20, concurrency=2)
        result = await run_load(spec)
    assert result.targets == (url,)
    assert result.leader == "node1"
    assert result.ok == 20


async def test_json_and_table_output() -> None:
    async with serving(create_echo_app()) as url:
        result = await run_load(
            LoadSpec(endpoints=(url,), concurrency=2, mix=parse_mix("echo"), requests=20)
        )
    out = io.StringIO()
    print_json(result, out)
    data = json.loads(out.getvalue())
    assert {
        "spec",
        "ops_per_s",
        "total",
        "ok",
        "errors",
        "outcomes",
        "by_op",
        "latency_ms",
        "elapsed_s",
    } <= set(data)
    assert set(PERCENTILES) <= set(data["latency_ms"])
    assert data["total"] == 20
    assert_consistent(data)
    table = io.StringIO()
    print_table(result, table)
    assert "ops/s" in table.getvalue()


def test_cli_arguments_make_a_bounded_spec() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    spec = spec_from_args(parser.parse_args([]))
    assert spec.duration == 10.0
    assert spec.requests is None
    assert len(spec.endpoints) == 3
    spec = spec_from_args(
        parser.parse_args(
            [
                "--endpoints",
                "http://a:1,http://b:2",
                "--requests",
                "5",
                "--mix",
                "write=0.5,read=0.5,cas=0.1",
                "--consistency",
                "stale",
                "--target",
                "leader",
            ]
        )
    )
    assert spec.endpoints == ("http://a:1", "http://b:2")
    assert spec.requests == 5
    assert spec.duration == 10.0
    assert dict(spec.mix) == {"write": 0.5, "read": 0.5, "cas": 0.1}


@pytest.mark.parametrize("mix", ["", "write=-1", "frobnicate=1", "write=x"])
def test_bad_mix_is_refused(mix: str) -> None:
    with pytest.raises(ValueError, match=r"mix|weight|operation"):
        parse_mix(mix)


async def test_path_option_targets_the_raw_server_and_errors_are_labelled() -> None:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_raw)
        spec = LoadSpec(
            endpoints=(url,),
            concurrency=2,
            mix=parse_mix("echo"),
            path="/echo?status=503",
            requests=10,
        )
        result = await run_load(spec)
        nursery.cancel_scope.cancel()
    assert result.outcomes == {"503 status_503": 10}
    assert result.ok == 0


def test_matrix_report_replaces_only_its_section() -> None:
    spec = LoadSpec(endpoints=("http://x:1",), concurrency=64)
    section = render_markdown([Row("txn", spec, note="POST /txn is not served")], [], "quick")
    assert section.startswith(BEGIN)
    assert section.endswith(END)
    assert "| txn | 64 |" in section
    assert "CPUs" in section
    doc = f"# B\n\nbefore\n\n{BEGIN}\nold\n{END}\n\nafter\n"
    new = replace_section(doc, section)
    assert "old" not in new
    assert new.startswith("# B\n\nbefore\n\n")
    assert new.endswith("\n\nafter\n")
    assert replace_section("# B\n", section).endswith(section + "\n")


async def test_raw_client_reads_chunked_responses() -> None:
    app = QuartTrio("chunked")

    @app.get("/stream")
    async def stream() -> tuple[AsyncIterator[bytes], int]:
        async def body() -> AsyncIterator[bytes]:
            for part in (b'{"a":', b" 1", b"}"):
                yield part

        return body(), 200

    async with serving(app) as url:
        spec = LoadSpec(endpoints=(url,), concurrency=2, mix=parse_mix("get"), path="/stream",
                        requests=20)  # fmt: skip
        result = await run_load(spec)
    assert result.outcomes == {"200": 20}
