"""`trioraft serve` configuration: every flag and env var of API.md §1, precedence, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from trioraft.config import (
    SERVE_ENV_VARS,
    ConfigError,
    NodeConfig,
    format_host_port,
    parse_host_port,
    parse_serve_args,
)


def parse(*argv: str, **env: str) -> NodeConfig:
    return parse_serve_args(list(argv), env)


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str, **env: str) -> str:
    """Assert that parsing fails as a usage error (exit 2); return the message."""
    with pytest.raises(SystemExit) as info:
        parse_serve_args(list(argv), env)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: trioraft serve" in err
    return err


# ---------------------------------------------------------------- defaults


def test_defaults_match_the_contract():
    config = parse()
    assert config == NodeConfig(
        id="node1",
        listen_host="127.0.0.1",
        listen_port=3000,
        advertise_url="http://node1:3000",
        peers={},
        data_dir=Path("data/node1"),
        election_timeout_ms=(150, 300),
        heartbeat_ms=50,
        cluster_token=None,
        snapshot_entries=10_000,
        fsync=True,
        log_level="warning",
        request_timeout_s=5.0,
    )


def test_advertise_and_data_dir_defaults_follow_id_and_port():
    config = parse("--id", "n7", "--listen", "127.0.0.1:4100")
    assert config.advertise_url == "http://n7:4100"
    assert config.data_dir == Path("data/n7")


def test_members_includes_self():
    config = parse("--id", "a", "--peer", "b=http://b:1")
    assert config.members == {"a": "http://a:3000", "b": "http://b:1"}


# ---------------------------------------------------------------- each flag


def test_the_full_command_line_of_the_contract():
    config = parse(
        "--id", "node1", "--listen", "0.0.0.0:3000", "--cluster-token", "s3cret",
        "--peer", "node2=http://node2:3000", "--peer", "node3=http://node3:3000",
        "--data-dir", "./data/node1",
    )  # fmt: skip
    assert config.id == "node1"
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 3000)
    assert config.peers == {"node2": "http://node2:3000", "node3": "http://node3:3000"}
    assert config.data_dir == Path("data/node1")


def test_every_flag():
    config = parse(
        "--id", "x1",
        "--listen", "10.0.0.5:4000",
        "--advertise", "https://x1.example:443/",
        "--peer", "x2=http://x2:4000/",
        "--data-dir", "/var/lib/x1",
        "--election-timeout-ms", "500-900",
        "--heartbeat-ms", "100",
        "--cluster-token", "s3cret",
        "--snapshot-entries", "42",
        "--no-fsync",
        "--log-level", "DEBUG",
        "--request-timeout-ms", "2500",
    )  # fmt: skip
    assert config == NodeConfig(
        id="x1",
        listen_host="10.0.0.5",
        listen_port=4000,
        advertise_url="https://x1.example:443",
        peers={"x2": "http://x2:4000"},
        data_dir=Path("/var/lib/x1"),
        election_timeout_ms=(500, 900),
        heartbeat_ms=100,
        cluster_token="s3cret",
        snapshot_entries=42,
        fsync=False,
        log_level="debug",
        request_timeout_s=2.5,
    )


def test_every_env_var():
    config = parse(
        NODE_ID="x1",
        HOST="10.0.0.5",
        PORT="4000",
        ADVERTISE_URL="http://x1.internal:4000",
        PEERS="x2=http://x2:4000, x3=http://x3:4000",
        DATA_DIR="/srv/x1",
        ELECTION_TIMEOUT_MS="500-900",
        HEARTBEAT_MS="100",
        CLUSTER_TOKEN="tok",
        SNAPSHOT_ENTRIES="7",
        FSYNC="0",
        LOG_LEVEL="info",
        REQUEST_TIMEOUT_MS="1000",
    )
    assert config == NodeConfig(
        id="x1",
        listen_host="10.0.0.5",
        listen_port=4000,
        advertise_url="http://x1.internal:4000",
        peers={"x2": "http://x2:4000", "x3": "http://x3:4000"},
        data_dir=Path("/srv/x1"),
        election_timeout_ms=(500, 900),
        heartbeat_ms=100,
        cluster_token="tok",
        snapshot_entries=7,
        fsync=False,
        log_level="info",
        request_timeout_s=1.0,
    )


def test_serve_env_vars_lists_every_variable_read():
    assert set(SERVE_ENV_VARS) >= {
        "NODE_ID", "HOST", "PORT", "ADVERTISE_URL", "PEERS", "PEER_IDS", "DATA_DIR",
        "ELECTION_TIMEOUT_MS", "HEARTBEAT_MS", "CLUSTER_TOKEN", "SNAPSHOT_ENTRIES", "FSYNC",
        "LOG_LEVEL", "REQUEST_TIMEOUT_MS",
    }  # fmt: skip


def test_course_form_peer_ids():
    config = parse(NODE_ID="node1", PEER_IDS="node2:3000,node3:3000", PORT="3000")
    assert config.peers == {"node2": "http://node2:3000", "node3": "http://node3:3000"}
    assert config.advertise_url == "http://node1:3000"
    assert config.listen_port == 3000


def test_course_form_ignores_empty_items():
    assert parse(PEER_IDS="node2:5000,").peers == {"node2": "http://node2:5000"}


def test_port_alone_keeps_the_default_host():
    config = parse(PORT="5000")
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 5000)


def test_host_alone_keeps_the_default_port():
    config = parse(HOST="127.0.0.1")
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 3000)


def test_ipv6_listen():
    config = parse("--listen", "[::]:3001", "--insecure")
    assert (config.listen_host, config.listen_port) == ("::", 3001)
    assert parse("--listen", "[::1]:3001").listen_host == "::1"


def test_port_zero_is_allowed_for_ephemeral_binding():
    assert parse("--listen", "127.0.0.1:0").listen_port == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("on", True), ("0", False), ("No", False), ("off", False)],
)
def test_fsync_env_spellings(text, expected):
    assert parse(FSYNC=text).fsync is expected


def test_empty_env_vars_count_as_unset():
    config = parse(NODE_ID="", PEERS="", CLUSTER_TOKEN="", PORT="", FSYNC="")
    assert config.id == "node1"
    assert config.peers == {}
    assert config.cluster_token is None
    assert config.listen_port == 3000
    assert config.fsync is True


def test_config_is_frozen():
    config = parse()
    with pytest.raises(AttributeError):
        config.id = "other"  # type: ignore[misc]


# ---------------------------------------------------------------- precedence


def test_flags_override_env():
    config = parse(
        "--id", "flag-id", "--listen", "1.2.3.4:1", "--advertise", "http://adv:1",
        "--data-dir", "flagdir", "--election-timeout-ms", "400-800", "--heartbeat-ms", "20",
        "--cluster-token", "flagtok", "--snapshot-entries", "5", "--fsync",
        "--log-level", "error", "--request-timeout-ms", "100",
        NODE_ID="env-id", HOST="9.9.9.9", PORT="9", ADVERTISE_URL="http://envadv:9",
        DATA_DIR="envdir", ELECTION_TIMEOUT_MS="1000-2000", HEARTBEAT_MS="999",
        CLUSTER_TOKEN="envtok", SNAPSHOT_ENTRIES="9", FSYNC="0", LOG_LEVEL="debug",
        REQUEST_TIMEOUT_MS="9999",
    )  # fmt: skip
    assert config == NodeConfig(
        id="flag-id",
        listen_host="1.2.3.4",
        listen_port=1,
        advertise_url="http://adv:1",
        peers={},
        data_dir=Path("flagdir"),
        election_timeout_ms=(400, 800),
        heartbeat_ms=20,
        cluster_token="flagtok",
        snapshot_entries=5,
        fsync=True,
        log_level="error",
        request_timeout_s=0.1,
    )


def test_peer_flags_replace_env_peers():
    config = parse("--peer", "a=http://a:1", PEERS="b=http://b:2", PEER_IDS="c:3")
    assert config.peers == {"a": "http://a:1"}


def test_empty_cluster_token_flag_disables_env_token():
    assert parse("--cluster-token", "", CLUSTER_TOKEN="envtok").cluster_token is None


def test_listen_flag_overrides_both_host_and_port_env():
    config = parse("--listen", "127.0.0.1:7000", HOST="0.0.0.0", PORT="9000")
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 7000)
    assert config.advertise_url == "http://node1:7000"


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--listen", "3000"], {}, "expected HOST:PORT"),
        (["--listen", ":3000"], {}, "missing host"),
        (["--listen", "host:http"], {}, "port must be a number"),
        (["--listen", "host:70000"], {}, "out of range"),
        (["--listen", "::1:3000"], {}, "brackets"),
        ([], {"PORT": "abc"}, "PORT: port must be a number"),
        (["--id", "bad id"], {}, "invalid node id"),
        ([], {"NODE_ID": "-x"}, "NODE_ID: invalid node id"),
        (["--advertise", "node1:3000"], {}, "http:// or https://"),
        (["--advertise", "http://x:1/?q=1"], {}, "query"),
        (["--advertise", "http://x:99999"], {}, "bad port"),
        (["--peer", "node2"], {}, "expected ID=URL"),
        (["--peer", "node2=ftp://x"], {}, "http:// or https://"),
        (["--peer", "n2=http://a:1", "--peer", "n2=http://b:1"], {}, "'n2' is given twice"),
        ([], {"PEERS": "n2=http://a:1,n2=http://b:1"}, "given twice"),
        ([], {"PEER_IDS": "n2:1,n2:2"}, "given twice"),
        (["--peer", "node1=http://x:1"], {}, "this node's own id"),
        ([], {"PEER_IDS": "node1:3000,node2:3000"}, "this node's own id"),
        (["--peer", "a=http://x:1", "--peer", "b=http://x:1"], {}, "same URL"),
        (["--advertise", "http://x:1", "--peer", "b=http://x:1"], {}, "same URL"),
        ([], {"PEERS": "a=http://a:1", "PEER_IDS": "b:1"}, "PEERS or PEER_IDS, not both"),
        ([], {"PEER_IDS": "node2"}, "PEER_IDS: expected HOST:PORT"),
        (["--election-timeout-ms", "300-150"], {}, "greater than maximum"),
        (["--election-timeout-ms", "300"], {}, "expected MIN-MAX"),
        (["--election-timeout-ms", "0-10"], {}, "at least 1 ms"),
        ([], {"ELECTION_TIMEOUT_MS": "a-b"}, "ELECTION_TIMEOUT_MS: expected MIN-MAX"),
        (["--heartbeat-ms", "150"], {}, "must be below the minimum election timeout"),
        (["--heartbeat-ms", "60", "--election-timeout-ms", "50-100"], {}, "below the minimum"),
        (["--heartbeat-ms", "0"], {}, "at least 1"),
        (["--heartbeat-ms", "fast"], {}, "expected an integer"),
        ([], {"HEARTBEAT_MS": "500"}, "must be below"),
        (["--snapshot-entries", "0"], {}, "--snapshot-entries: must be at least 1"),
        ([], {"FSYNC": "maybe"}, "FSYNC: expected"),
        (["--log-level", "loud"], {}, "--log-level: expected one of"),
        (["--request-timeout-ms", "0"], {}, "at least 1"),
        (["--bogus"], {}, "unrecognized arguments"),
    ],
)
def test_invalid_settings_are_usage_errors(capsys, argv, env, message):
    err = usage_error(capsys, *argv, **env)
    assert message in err


def test_helper_round_trip():
    assert parse_host_port("[::1]:80") == ("::1", 80)
    assert format_host_port("::1", 80) == "[::1]:80"
    assert format_host_port("h", 80) == "h:80"
    with pytest.raises(ConfigError):
        parse_host_port("[::1]80")


def test_help_mentions_env_vars_and_the_fsync_warning(capsys):
    with pytest.raises(SystemExit) as info:
        parse_serve_args(["--help"], {})
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for name in ("NODE_ID", "PEERS", "PEER_IDS", "DATA_DIR", "ELECTION_TIMEOUT_MS",
                 "HEARTBEAT_MS", "CLUSTER_TOKEN", "ADVERTISE_URL"):  # fmt: skip
        assert name in out
    assert "benchmarks only" in out
    assert "UNSAFE" in out


def test_snapshot_bytes_defaults_to_64_mib_and_the_flag_beats_the_env():
    assert parse().snapshot_bytes == 64 * 1024 * 1024
    assert parse(SNAPSHOT_BYTES="4096").snapshot_bytes == 4096
    assert parse("--snapshot-bytes", "1024", SNAPSHOT_BYTES="4096").snapshot_bytes == 1024


@pytest.mark.parametrize("bad", ["0", "-5", "lots"])
def test_snapshot_bytes_must_be_a_positive_integer(capsys, bad):
    assert "--snapshot-bytes" in usage_error(capsys, "--snapshot-bytes", bad)


# ------------------------------------------------- secure by default (issue 10)


@pytest.mark.parametrize("listen", ["0.0.0.0:3000", "10.0.0.5:3000", "[::]:3000", "node1:3000"])
def test_a_non_loopback_listen_address_needs_peer_authentication(capsys, listen):
    err = usage_error(capsys, "--listen", listen)
    assert "without peer authentication" in err
    assert "--cluster-token" in err
    assert "--insecure" in err
    assert usage_error(capsys, HOST=listen.rpartition(":")[0].strip("[]"))


@pytest.mark.parametrize("listen", ["127.0.0.1:3000", "127.9.9.9:1", "[::1]:3000",
                                    "localhost:3000"])
def test_loopback_needs_no_token(listen):
    assert parse("--listen", listen).cluster_token is None


def test_a_token_or_insecure_allows_any_listen_address():
    assert parse("--listen", "0.0.0.0:3000", "--cluster-token", "t0k").cluster_token == "t0k"
    assert parse("--listen", "0.0.0.0:3000", CLUSTER_TOKEN="t0k").cluster_token == "t0k"
    assert parse("--listen", "0.0.0.0:3000", "--insecure").insecure
    assert parse(HOST="0.0.0.0", INSECURE="1").insecure
    assert not parse().insecure


@pytest.mark.parametrize("token", ["caf\u00e9", "\u2603", "has space", "tab\there", "x" * 513,
                                   "line\nbreak"])
def test_a_token_that_cannot_travel_in_a_header_is_refused_at_startup(capsys, token):
    assert "printable ASCII" in usage_error(capsys, "--cluster-token", token)
    assert "printable ASCII" in usage_error(capsys, CLUSTER_TOKEN=token)
    assert "printable ASCII" in usage_error(capsys, "--client-token", f"read:{token}")


# ------------------------------------------------------------ client tokens


def test_client_tokens_from_flags_env_and_file(tmp_path):
    assert parse("--client-token", "read:r1", "--client-token", "write:w1").client_tokens == (
        ("read", "r1"), ("write", "w1"))
    assert parse(CLIENT_TOKENS="read:r1, write:w1").client_tokens == (
        ("read", "r1"), ("write", "w1"))
    path = tmp_path / "tokens"
    path.write_text("# ops team\nwrite:w2\n\nread:r2\n", encoding="ascii")
    assert parse("--client-tokens-file", str(path)).client_tokens == (
        ("write", "w2"), ("read", "r2"))
    assert parse("--client-token", "read:r1", CLIENT_TOKENS_FILE=str(path)).client_tokens == (
        ("read", "r1"), ("write", "w2"), ("read", "r2"))
    assert parse().client_tokens == ()


@pytest.mark.parametrize("item", ["r1", "admin:x", "read:", ":x"])
def test_a_malformed_client_token_is_a_usage_error(capsys, item):
    assert "--client-token" in usage_error(capsys, "--client-token", item)


def test_an_unreadable_tokens_file_is_a_usage_error(capsys, tmp_path):
    assert "cannot read" in usage_error(capsys, "--client-tokens-file", str(tmp_path / "none"))
