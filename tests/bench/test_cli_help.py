"""`trioraft bench --help` describes the tool and every option; --plot draws
reads and writes apart, over time."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from trioraft.bench import LoadSpec, add_arguments, parse_mix, run_load
from trioraft.bench._echo import create_echo_app
from trioraft.bench._report import plot_run

from .test_bench import fake_kv, serving


def bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trioraft bench")
    add_arguments(parser)
    return parser


def test_help_describes_the_tool_and_every_option() -> None:
    parser = bench_parser()
    text = parser.format_help()
    assert "Load-test running trioraft nodes" in text
    assert "bounded and stops by itself" in text
    assert "examples:" in text
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings} has no help"
    # Every operation the load generator knows is explained in the description.
    for op in ("write", "read", "cas", "delete", "txn", "bulk", "echo", "get"):
        assert re.search(rf"\b{op}\b\s+\(", text), op


def test_trioraft_bench_help_is_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    from trioraft import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0
    assert "Load-test running trioraft nodes" in capsys.readouterr().out


async def test_plot_separates_reads_and_writes(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the 'plot' extra)")
    async with serving(fake_kv()) as url:
        spec = LoadSpec(
            endpoints=(url,),
            concurrency=3,
            requests=200,
            keys=10,
            mix=parse_mix("write=1,read=1"),
            consistency="stale",
        )
        result = await run_load(spec)
    path = tmp_path / "run.png"
    plot_run(result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(result.op_latencies_ms) == {"write", "read"}


async def test_plot_of_a_run_with_only_errors(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the 'plot' extra)")
    async with serving(create_echo_app()) as url:
        spec = LoadSpec(
            endpoints=(url,),
            concurrency=2,
            requests=20,
            mix=parse_mix("echo"),
            path="/echo?status=500",
        )
        result = await run_load(spec)
    plot_run(result, tmp_path / "errors.png")
    assert (tmp_path / "errors.png").stat().st_size > 1000
