"""Logs: text and JSON lines, structured events, escaping of anything from outside, the
access log, and the serve flags that choose them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import make_configs, start_cluster
from trioraft import logs
from trioraft.config import ConfigError, build_serve_parser, config_from_args, parse_serve_args


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, object]]:
    """Restore the root logger after a test configured it."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    access = logging.getLogger(logs.ACCESS_LOGGER)
    saved_access = access.level
    stream = io.StringIO()

    def setup(fmt: str, level: str = "info", access_log: bool = False) -> io.StringIO:
        logs.configure("node1", level, fmt, access_log=access_log, stream=stream)
        return stream

    yield stream, setup
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    access.setLevel(saved_access)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_an_event_in_text(capture) -> None:
    stream, setup = capture
    setup("text")
    logs.event(logging.getLogger("trioraft.node"), "leader_changed", term=7, leader="node2")
    [line] = lines(stream)
    assert line.endswith("INFO    node=node1 leader_changed term=7 leader=node2")
    assert line[:4].isdigit()


def test_an_event_in_json(capture) -> None:
    stream, setup = capture
    setup("json")
    logs.event(logging.getLogger("trioraft.node"), "snapshot_taken", index=1000, bytes=5)
    logging.getLogger("trioraft.server").warning("plain %s", "message")
    first, second = (json.loads(line) for line in lines(stream))
    assert set(first) == {"time", "level", "node", "event", "fields"}
    assert first["level"] == "info"
    assert first["node"] == "node1"
    assert first["event"] == "snapshot_taken"
    assert first["fields"] == {"index": 1000, "bytes": 5}
    assert first["time"].endswith("Z")
    assert second["event"] == "message"
    assert second["fields"] == {"logger": "trioraft.server", "message": "plain message"}


def test_info_is_off_at_the_default_level(capture) -> None:
    stream, setup = capture
    setup("text", level="warning")
    logs.event(logging.getLogger("trioraft.node"), "leader_changed", term=1)
    assert lines(stream) == []


FORGED = "k\n2026-01-01T00:00:00.000Z ERROR   node=node1 forged\r\x1b[31m\u2028"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_nothing_from_outside_can_start_a_line(capture, fmt) -> None:
    stream, setup = capture
    setup(fmt)
    log = logging.getLogger("trioraft.api")
    logs.event(log, "bad_request", path="/kv/" + FORGED)
    log.info("unhandled error in GET %s", "/kv/" + FORGED)
    try:
        raise ValueError(FORGED)
    except ValueError:
        log.exception("crash on %s", FORGED)
    out = lines(stream)
    # Each record is exactly one line (a traceback's lines are indented under it).
    records = [line for line in out if not line.startswith(" ")]
    assert len(records) == 3
    assert not any("forged" in line and line.startswith("2026-01-01") for line in out)
    for line in out:
        assert "\r" not in line
        assert "\x1b" not in line
        assert "\u2028" not in line
    if fmt == "json":
        assert [json.loads(r)["level"] for r in records] == ["info", "info", "error"]
    else:
        assert "\\n2026-01-01" in records[0]
        assert "\\x1b" in records[1]


def test_escape() -> None:
    assert logs.escape("a\nb\tc\x00\x7f\x85") == "a\\nb\\tc\\x00\\x7f\\x85"
    assert logs.escape("café/ok") == "café/ok"


async def test_the_access_log_writes_the_encoded_path(capture, tmp_path: Path) -> None:
    stream, setup = capture
    setup("json", level="warning", access_log=True)
    async with start_cluster(make_configs(1, tmp_path)) as c:
        r = await c.client.put(f"{c.leader_url}/kv/a%0Ab", json={"value": "v"})
        assert r.status_code == 200
        await c.client.get(f"{c.leader_url}/status")
    records = [json.loads(line) for line in lines(stream)]
    access = [r for r in records if r["event"] == "http_request"]
    put = next(r["fields"] for r in access if r["fields"]["method"] == "PUT")
    assert put["path"] == "/kv/a%0Ab"  # as sent: never the decoded newline
    assert put["status"] == 200
    assert put["bytes"] > 0
    assert put["duration_ms"] >= 0
    assert put["client"].startswith("127.0.0.1:")
    assert any(r["fields"]["path"] == "/status" for r in access)


async def test_no_access_log_by_default(capture, tmp_path: Path) -> None:
    stream, setup = capture
    setup("json", level="info")
    async with start_cluster(make_configs(1, tmp_path)) as c:
        await c.client.get(f"{c.leader_url}/status")
    assert not [line for line in lines(stream) if "http_request" in line]


def test_serve_flags_and_env() -> None:
    config = parse_serve_args(["--log-format", "json", "--access-log"], {})
    assert (config.log_format, config.access_log) == ("json", True)
    config = parse_serve_args([], {"LOG_FORMAT": "JSON", "ACCESS_LOG": "1"})
    assert (config.log_format, config.access_log) == ("json", True)
    config = parse_serve_args(["--no-access-log"], {"ACCESS_LOG": "yes"})
    assert (config.log_format, config.access_log) == ("text", False)
    with pytest.raises(SystemExit):
        parse_serve_args(["--log-format", "xml"], {})
    args = build_serve_parser().parse_args([])
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        config_from_args(args, {"LOG_FORMAT": "yaml"})
