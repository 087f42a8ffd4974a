"""The `trioraft` command line: output and exit status (0 ok, 1 clean failure, 2 usage,
3 cluster unreachable), against a fake cluster behind httpx.MockTransport."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from trioraft import cli
from trioraft.client import DEFAULT_ENDPOINTS, Client


def run(*argv: str, env: dict[str, str] | None = None) -> int:
    return cli.run(list(argv), env or {})


def usage(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        run(*argv)
    assert info.value.code == 2
    return capsys.readouterr().err


# ---------------------------------------------------------------- usage errors: 2


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["get"],
        ["put", "k"],
        ["put", "k", "v", "extra"],
        ["cas", "k", "--expected", "a"],
        ["cas", "k", "--value", "b"],
        ["cas", "k", "--expected", "a", "--expected-absent", "--value", "b"],
        ["cas", "k", "--expected", "a", "--value", "b", "--delete"],
        ["get", "k", "--consistency", "eventual"],
        ["get", "k", "--timeout", "0"],
        ["get", "k", "--timeout", "soon"],
        ["range", "--limit", "0"],
        ["cluster", "--nodes", "0"],
        ["cluster", "--base-port", "x"],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    assert "usage:" in usage(capsys, *argv)


def test_empty_key_is_a_usage_error(capsys):
    assert "KEY must not be empty" in usage(capsys, "get", "")


def test_bad_endpoints_are_a_usage_error(capsys):
    assert "--endpoints" in usage(capsys, "get", "k", "--endpoints", "ftp://x:1")
    assert "--endpoints" in usage(capsys, "get", "k", "--endpoints", " , ")


def test_invalid_serve_config_is_a_usage_error_before_starting(capsys):
    err = usage(capsys, "serve", "--heartbeat-ms", "500")
    assert "trioraft serve: error:" in err
    assert "below the minimum election timeout" in err
    assert "own id" in usage(capsys, "serve", "--id", "a", "--peer", "a=http://a:1")


def test_invalid_cluster_flags_are_a_usage_error(capsys):
    err = usage(capsys, "cluster", "--election-timeout-ms", "300-100")
    assert "trioraft cluster: error:" in err
    assert "greater than maximum" in err


# ---------------------------------------------------------------- success: 0


def test_put_get_del(node, capsys):
    assert run("put", "greeting", "hello world") == 0
    assert capsys.readouterr().out == "OK\n"
    assert run("get", "greeting") == 0
    assert capsys.readouterr().out == "hello world\n"
    assert run("del", "greeting") == 0
    assert capsys.readouterr().out == "OK\n"
    assert node.data == {}


def test_get_prints_the_value_exactly(node, capsys):
    node.data["k"] = "  spaced\tand\nmultiline "
    assert run("get", "k") == 0
    assert capsys.readouterr().out == "  spaced\tand\nmultiline \n"


def test_cas_forms(node, capsys):
    assert run("cas", "k", "--expected-absent", "--value", "1") == 0
    assert run("cas", "k", "--expected", "1", "--value", "2") == 0
    assert node.data == {"k": "2"}
    assert run("cas", "k", "--expected", "2", "--delete") == 0
    assert node.data == {}


def test_range(node, capsys):
    node.data.update({"a": "1", "b": "2"})
    assert run("range") == 0
    assert capsys.readouterr().out == "a\t1\nb\t2\n"


def test_json_output(node, capsys):
    assert run("put", "k", "v", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"key": "k", "value": "v", "index": 7}
    assert run("--json", "get", "k") == 0
    assert json.loads(capsys.readouterr().out) == {"key": "k", "value": "v"}
    assert run("del", "k", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"key": "k", "deleted": True}
    assert run("cas", "k", "--expected-absent", "--value", "x", "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"key": "k", "ok": True}
    assert run("status", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["url"] for row in rows] == list(DEFAULT_ENDPOINTS)
    assert rows[0]["status"]["role"] == "leader"


def test_status_table(node, capsys):
    assert run("status") == 0
    out = capsys.readouterr().out
    for column in ("id", "url", "role", "term", "leader", "commit", "applied", "last log",
                   "snapshot"):  # fmt: skip
        assert column in out
    assert "node1" in out
    assert "http://127.0.0.1:3001" in out


def test_status_shows_unreachable_nodes(node, capsys, closed_port, monkeypatch):
    monkeypatch.setattr(cli, "Client", Client)  # real HTTP: nothing listens there
    assert run("status", "--endpoints", f"http://127.0.0.1:{closed_port}", "--timeout", "1") == 3
    captured = capsys.readouterr()
    assert f"127.0.0.1:{closed_port}" in captured.out
    assert "unreachable" in captured.out
    assert "no node could be reached" in captured.err


# ---------------------------------------------------------------- endpoints


def test_endpoints_default(node):
    run("get", "k")
    assert node.endpoints_seen == [
        ("http://127.0.0.1:3001", "http://127.0.0.1:3002", "http://127.0.0.1:3003")
    ]


def test_endpoints_from_env_and_flag(node):
    run("get", "k", env={"TRIORAFT_ENDPOINTS": "http://a:1,http://b:2"})
    run("get", "k", "--endpoints", "c:3", env={"TRIORAFT_ENDPOINTS": "http://a:1"})
    run("--endpoints", "http://d:4", "get", "k")
    assert node.endpoints_seen == [("http://a:1", "http://b:2"), ("http://c:3",), ("http://d:4",)]


# ---------------------------------------------------------------- clean failures: 1


def test_get_absent_exits_1(node, capsys):
    assert run("get", "missing") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "not found" in captured.err


def test_del_absent_exits_1(node, capsys):
    assert run("del", "missing") == 1
    assert "not found" in capsys.readouterr().err


def test_cas_failure_exits_1(node, capsys):
    node.data["k"] = "actual"
    assert run("cas", "k", "--expected", "other", "--value", "new") == 1
    assert "CAS failed" in capsys.readouterr().err
    assert node.data == {"k": "actual"}


@pytest.mark.parametrize(("status", "code"), [(400, "bad_request"), (413, "too_large")])
def test_rejected_requests_exit_1(node, capsys, status, code):
    node.forced.append(httpx.Response(status, json={"error": "rejected", "code": code}))
    assert run("put", "k", "v") == 1
    assert code in capsys.readouterr().err


# ---------------------------------------------------------------- unreachable: 3


@pytest.mark.parametrize(
    "argv", [["get", "k"], ["put", "k", "v"], ["del", "k"], ["cas", "k", "--expected-absent",
                                                             "--value", "v"]]
)  # fmt: skip
def test_unreachable_cluster_exits_3(capsys, closed_port, argv):
    endpoints = f"http://127.0.0.1:{closed_port}"
    assert run(*argv, "--endpoints", endpoints, "--timeout", "0.3") == 3
    assert "unavailable" in capsys.readouterr().err


def test_unknown_outcome_exits_3(node, capsys):
    node.forced.extend(
        [httpx.Response(504, json={"error": "slow", "code": "unknown_outcome"})] * 10_000
    )
    assert run("put", "k", "v", "--timeout", "0.2") == 3
    assert "may or may not" in capsys.readouterr().err


# ---------------------------------------------------------------- entry points


def test_main_raises_systemexit_only_on_failure(node):
    cli.main(["put", "k", "v"])
    with pytest.raises(SystemExit) as info:
        cli.main(["get", "absent"])
    assert info.value.code == 1


def test_python_dash_m_works():
    help_run = subprocess.run(
        [sys.executable, "-m", "trioraft", "--help"], capture_output=True, text=True, check=False
    )
    assert help_run.returncode == 0
    assert "serve" in help_run.stdout
    assert "cluster" in help_run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "trioraft", "get"], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


# ---------------------------------------------------------------- serve and bench wiring


@pytest.fixture
def fake_node_module(monkeypatch):
    """Stand in for trioraft.server: record the config served."""
    import logging
    import types

    import trioraft

    served: list[Any] = []

    async def serve(config: Any) -> None:
        served.append(config)

    module = types.ModuleType("trioraft.server")
    module.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "trioraft.server", module)
    monkeypatch.setattr(trioraft, "server", module, raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield served
    root.handlers[:] = handlers  # serve configured logging: undo it for other tests
    root.setLevel(level)


def test_serve_runs_the_node_with_flags_and_env(fake_node_module):
    env = {"NODE_ID": "envnode", "PEER_IDS": "b:3000"}
    assert cli.run(["serve", "--listen", "127.0.0.1:0", "--log-level", "info"], env) == 0
    [config] = fake_node_module
    assert config.id == "envnode"
    assert config.listen_port == 0
    assert config.peers == {"b": "http://b:3000"}
    assert config.log_level == "info"


def test_serve_logs_carry_the_node_id(fake_node_module, capsys):
    import logging

    cli.run(["serve", "--id", "n9", "--log-level", "debug"], {})
    logging.getLogger("trioraft.test").info("hello")
    err = capsys.readouterr().err
    assert "node=n9" in err
    assert "hello" in err


def test_cli_works_without_the_bench_module(node, monkeypatch, capsys):
    import trioraft

    monkeypatch.delattr(trioraft, "bench", raising=False)
    monkeypatch.setitem(sys.modules, "trioraft.bench", None)  # "not installed"
    assert "bench" not in cli.build_parser().format_help()
    assert run("put", "k", "v") == 0
