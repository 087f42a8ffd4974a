"""The CLI's values from stdin and files, keys of every shape, del --prefix, range paging,
status lag columns, and failing fast on a cluster that is down."""

from __future__ import annotations

import io
import json
import sys

import httpx
import pytest

from tests.cli.test_cli import run, usage
from trioraft import cli, kv
from trioraft.client import EndpointStatus


@pytest.fixture
def stdin(monkeypatch):
    def feed(data: bytes) -> None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))

    return feed


# ---------------------------------------------------------------- values


def test_put_dash_reads_stdin_byte_for_byte(node, stdin, capsys):
    stdin("line one\nline two\n\ttabbed é\n".encode())
    assert run("put", "k", "-") == 0
    assert node.data["k"] == "line one\nline two\n\ttabbed é\n"


def test_put_file(node, tmp_path):
    path = tmp_path / "v.txt"
    path.write_bytes(b"from a file\n")
    assert run("put", "k", "--file", str(path)) == 0
    assert node.data["k"] == "from a file\n"


def test_put_a_value_at_the_limit(node, stdin):
    value = "x" * kv.MAX_VALUE_BYTES
    stdin(value.encode())
    assert run("put", "big", "-") == 0
    assert node.data["big"] == value


def test_put_a_value_over_the_limit_sends_nothing(node, stdin, capsys):
    stdin(b"x" * (kv.MAX_VALUE_BYTES + 1))
    with pytest.raises(SystemExit) as info:
        run("put", "big", "-")
    assert info.value.code == 1
    assert "over the limit" in capsys.readouterr().err
    assert node.requests == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["put", "k"], "give VALUE"),
        (["put", "k", "v", "--file", "f"], "not both"),
        (["put", "k", "--file", "/nonexistent/v"], "cannot read the value"),
    ],
)
def test_put_value_usage_errors(capsys, argv, message):
    assert message in usage(capsys, *argv)


def test_put_non_utf8_is_a_usage_error(capsys, stdin):
    stdin(b"\xff\xfe")
    assert "not UTF-8" in usage(capsys, "put", "k", "-")


# ---------------------------------------------------------------- keys


@pytest.mark.parametrize("key", ["/lead", ".", "..", "%", "%2F", "a/../b"])
def test_every_key_shape(node, capsys, key):
    assert run("put", "--", key, "v") == 0
    assert node.data == {key: "v"}
    assert run("get", "--", key) == 0
    assert capsys.readouterr().out.endswith("v\n")
    assert run("del", "--", key) == 0
    assert node.data == {}


def test_a_404_that_is_not_the_stores_exits_1_and_says_so(node, capsys):
    node.forced.append(httpx.Response(404, text="<html>no such page</html>"))
    assert run("get", "k") == 1
    err = capsys.readouterr().err
    assert "not a trioraft 'key not found'" in err
    assert "key not found: k" not in err


# ---------------------------------------------------------------- del --prefix, range


def test_del_prefix_prints_the_count(node, capsys):
    node.data.update({"p/1": "a", "p/2": "b", "q": "c"})
    assert run("del", "--prefix", "p/") == 0
    assert capsys.readouterr().out == "2\n"
    assert node.data == {"q": "c"}
    assert run("del", "--prefix", "p/", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"prefix": "p/", "deleted": 0}


def test_range_lists_everything_page_by_page(node, capsys, monkeypatch):
    monkeypatch.setattr(cli, "MAX_PAGE", 3)  # small pages: several requests
    node.data.update({f"k{i}": str(i) for i in range(8)})
    assert run("range", "k") == 0
    assert capsys.readouterr().out == "".join(f"k{i}\t{i}\n" for i in range(8))
    afters = [r.url.params.get("after") for r in node.requests if r.url.path == "/kv"]
    assert afters == [None, "k2", "k5"]


def test_range_limit_and_after(node, capsys):
    node.data.update({f"k{i}": str(i) for i in range(8)})
    assert run("range", "k", "--limit", "2", "--after", "k3") == 0
    captured = capsys.readouterr()
    assert captured.out == "k4\t4\nk5\t5\n"
    assert "--after 'k5'" in captured.err
    assert run("range", "--limit", "3", "--json") == 0
    body = json.loads(capsys.readouterr().out)
    assert [i["key"] for i in body["items"]] == ["k0", "k1", "k2"]
    assert body["more"] is True


# ---------------------------------------------------------------- status


def status(node_id: str, role: str, **extra: object) -> EndpointStatus:
    body = {"id": node_id, "role": role, "term": 3, "last_log_index": 100, **extra}
    return EndpointStatus(f"http://{node_id}", body)


def test_replication_lag_comes_from_the_leaders_progress():
    leader = status("n1", "leader", progress={
        "n2": {"match_index": 100, "next_index": 101, "state": "replicate"},
        "n3": {"match_index": 60, "next_index": 61, "state": "probe"},
    }).status  # fmt: skip
    assert cli.replication_lag(leader, leader) == "-"
    assert cli.replication_lag(status("n2", "follower").status, leader) == "0"
    assert cli.replication_lag(status("n3", "follower").status, leader) == "40 (probe)"
    assert cli.replication_lag(status("n4", "follower").status, leader) == "?"
    assert cli.replication_lag(status("n2", "follower").status, None) == "?"


def test_loop_lag_is_shown_when_present():
    assert cli.loop_lag({"loop_lag_ms": 12.4}) == "12 ms"
    assert cli.loop_lag({}) == "-"


def test_status_table_has_the_lag_columns(node, capsys):
    node.status_extra = {"loop_lag_ms": 3.2, "progress": {}}
    assert run("status") == 0
    out = capsys.readouterr().out
    assert "lag" in out
    assert "loop lag" in out
    assert "3 ms" in out


# ---------------------------------------------------------------- a cluster that is down


@pytest.mark.parametrize("argv", [["get", "k"], ["put", "k", "v"], ["range"]])
def test_a_down_cluster_fails_fast_not_after_the_timeout(capsys, closed_port, argv):
    endpoints = f"http://127.0.0.1:{closed_port},http://127.0.0.1:{closed_port}"
    assert run(*argv, "--endpoints", endpoints, "--timeout", "60",
               "--unreachable-timeout", "0.2") == 3  # fmt: skip
    assert "no node reachable" in capsys.readouterr().err


def test_a_node_process_tunes_the_interpreter_for_a_responsive_loop() -> None:
    """`trioraft serve` shortens the GIL switch interval (the storage thread wins the
    GIL back sooner after each SQLite call) and freezes the start-up objects out of
    the cyclic GC (full collections stop walking them): issue 11 #4."""
    import gc
    import sys

    from trioraft import cli

    before = sys.getswitchinterval()
    try:
        cli.tune_interpreter()
        assert sys.getswitchinterval() == pytest.approx(cli.SWITCH_INTERVAL_S)
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
        sys.setswitchinterval(before)


def test_the_stability_benchmark_settles_after_the_fill_by_default() -> None:
    import argparse

    from trioraft.bench.soak import SoakSpec, add_soak_arguments, spec_from
    from trioraft.bench.stability import DEFAULTS

    p = argparse.ArgumentParser()
    add_soak_arguments(p, DEFAULTS)
    assert spec_from(p.parse_args([])).settle == 11.0
    assert spec_from(p.parse_args(["--settle", "0"])).settle == 0.0
    p = argparse.ArgumentParser()
    add_soak_arguments(p, SoakSpec())
    assert spec_from(p.parse_args([])).settle == 0.0
