"""The `trioraft` command line (docs/api.md, docs/configuration.md, docs/quickstart.md).

Exit status: 0 success; 1 clean failure (absent key, CAS precondition false, request
rejected by the server); 2 usage error; 3 the cluster cannot be reached or could not
confirm the operation in time; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__, kv
from .client import (
    DEFAULT_ENDPOINTS,
    MAX_PAGE,
    Client,
    EndpointStatus,
    TrioraftError,
    Unavailable,
    UnknownOutcome,
    normalize_endpoints,
)
from .config import ConfigError, NodeConfig, add_serve_arguments, config_from_args

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "build_parser",
    "main",
    "run",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130

ENDPOINTS_ENV = "TRIORAFT_ENDPOINTS"
# Client credentials (the TLS/token block): option name -> environment variable. The
# parsed values live under "credential_<name>" (`put KEY` has a positional "key").
CREDENTIAL_ENVS = {
    "cacert": "TRIORAFT_CACERT",
    "cert": "TRIORAFT_CERT",
    "key": "TRIORAFT_KEY",
    "token": "TRIORAFT_TOKEN",
}
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_UNREACHABLE_S = 1.0

_CLIENT_EPILOG = (
    "Exit status: 0 success, 1 clean failure (absent key, CAS failed), 2 usage error, "
    "3 cluster unreachable (or a write's outcome unknown)."
)


# ---------------------------------------------------------------- parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS defaults: the options work both before and after the subcommand
    # (`trioraft --endpoints X get k` and `trioraft get k --endpoints X`).
    parser.add_argument(
        "--endpoints",
        metavar="URL,URL",
        default=argparse.SUPPRESS,
        help=f"cluster nodes to talk to; the leader is found automatically [env "
        f"{ENDPOINTS_ENV}; default {','.join(DEFAULT_ENDPOINTS)}]",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=argparse.SUPPRESS,
        help=f"give up after this long, retries included [default {DEFAULT_TIMEOUT_S:g}]",
    )
    parser.add_argument(
        "--unreachable-timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=argparse.SUPPRESS,
        help="give up sooner, after this long, when every endpoint refuses connections (the "
        f"cluster is down or the endpoints are wrong) [default {DEFAULT_UNREACHABLE_S:g}]",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the result as JSON",
    )
    _add_credential_options(parser)


def _add_credential_options(parser: argparse.ArgumentParser) -> None:
    """The TLS/token block: how the client proves itself and whom it trusts."""
    parser.add_argument(
        "--cacert", dest="credential_cacert", metavar="FILE", default=argparse.SUPPRESS,
        help="trust the nodes' certificates signed by this CA (PEM bundle) instead of the "
        "system's CAs; endpoints given as HOST:PORT then mean https:// "
        f"[env {CREDENTIAL_ENVS['cacert']}]",
    )  # fmt: skip
    parser.add_argument(
        "--cert", dest="credential_cert", metavar="FILE", default=argparse.SUPPRESS,
        help="present this client certificate (PEM), for nodes that require one "
        f"(--tls-client-ca) [env {CREDENTIAL_ENVS['cert']}]",
    )  # fmt: skip
    parser.add_argument(
        "--key", dest="credential_key", metavar="FILE", default=argparse.SUPPRESS,
        help=f"the private key of --cert (PEM) [env {CREDENTIAL_ENVS['key']}]",
    )  # fmt: skip
    parser.add_argument(
        "--token", dest="credential_token", metavar="TOKEN", default=argparse.SUPPRESS,
        help="a client token, sent as 'Authorization: Bearer TOKEN' (nodes with "
        f"--client-token) [env {CREDENTIAL_ENVS['token']}]",
    )  # fmt: skip


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nodes", type=_positive_int, default=3, help="number of nodes (default 3; 5 is common)"
    )
    parser.add_argument(
        "--base-port",
        type=_positive_int,
        default=3001,
        help="node K listens on base-port+K-1 (default 3001: 3001, 3002, 3003)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address the nodes bind (default 127.0.0.1)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="node K keeps its state in DIR/nodeK and its output in DIR/nodeK.log; restarting "
        "with the same directory resumes the cluster (default ./data)",
    )
    parser.add_argument(
        "--grace",
        type=_positive_float,
        default=5.0,
        help="on Ctrl-C, seconds to wait for the nodes before killing them (default 5)",
    )
    parser.add_argument(
        "--tls-dir", type=Path, default=None, metavar="DIR",
        help="run the cluster on TLS with the certificates in DIR, as compose/make-certs.sh "
        "writes them: ca.pem, nodeK.pem, nodeK-key.pem (HTTPS and peer mutual TLS; "
        "clients need --cacert DIR/ca.pem) (default: no TLS)",
    )  # fmt: skip
    group = parser.add_argument_group("passed to every node (see `trioraft serve --help`)")
    group.add_argument("--election-timeout-ms", metavar="MIN-MAX")
    group.add_argument("--heartbeat-ms", metavar="N")
    group.add_argument("--cluster-token", metavar="TOKEN")
    group.add_argument("--snapshot-entries", metavar="N")
    group.add_argument("--snapshot-bytes", metavar="N")
    group.add_argument("--log-level", metavar="LEVEL")
    group.add_argument("--log-format", metavar="FORMAT")
    group.add_argument("--access-log", action="store_true", default=None,
                       help="log every HTTP request of every node")
    group.add_argument("--request-timeout-ms", metavar="N")
    group.add_argument(
        "--no-fsync",
        action="store_true",
        help="do not fsync: for benchmarks only, UNSAFE (acknowledged writes can be lost)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trioraft",
        description="A replicated key-value store on Raft.",
        epilog=_CLIENT_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"trioraft {__version__}")
    _add_client_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def client_command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=_CLIENT_EPILOG)
        _add_client_options(p)
        return p

    serve = sub.add_parser(
        "serve",
        help="run one node",
        description="Run one trioraft node until SIGTERM or SIGINT. Flags override "
        "environment variables, which override the defaults.",
    )
    add_serve_arguments(serve)
    serve.set_defaults(handler=_cmd_serve, parser=serve)

    cluster = sub.add_parser(
        "cluster",
        help="run a local cluster of N nodes (separate processes) until Ctrl-C",
        description="Start node1..nodeN on HOST, ports base-port.., print their URLs and "
        "the leader once elected (and whenever it changes), and stop them all on Ctrl-C "
        "or SIGTERM. `trioraft cluster grow` (another terminal, same --base-port and "
        "--data-dir) adds the next node (nodeN+1) to the running cluster and runs it "
        "until Ctrl-C; `trioraft member remove nodeK` takes a node out for good.",
    )
    cluster.add_argument(
        "action", nargs="?", choices=("run", "grow"), default="run",
        help="run (default): start the cluster; grow: add one node to the running one",
    )
    _add_cluster_arguments(cluster)
    cluster.set_defaults(handler=_cmd_cluster, parser=cluster)

    p = client_command(
        "put", "set KEY to VALUE (VALUE '-': read it from standard input; or --file PATH)"
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument(
        "value", metavar="VALUE", nargs="?",
        help="the value; '-' reads it from standard input, byte for byte (UTF-8)",
    )
    p.add_argument(
        "--file", metavar="PATH", type=Path,
        help="read the value from this file, byte for byte (UTF-8)",
    )
    p.set_defaults(handler=_cmd_put, parser=p)

    p = client_command("get", "print the value of KEY (exit 1 if absent)")
    p.add_argument("key", metavar="KEY")
    p.add_argument(
        "--consistency",
        choices=("linearizable", "stale"),
        default="linearizable",
        help="linearizable (default) or stale: read one node's local copy without any check",
    )
    p.set_defaults(handler=_cmd_get, parser=p)

    p = client_command(
        "del", "delete KEY (exit 1 if it was absent); with --prefix every key starting with KEY"
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument(
        "--prefix", action="store_true",
        help="delete every key starting with KEY, atomically; prints how many",
    )
    p.set_defaults(handler=_cmd_del, parser=p)

    p = client_command(
        "cas",
        "compare-and-set: change KEY only if it holds the expected value (exit 1 if not)",
    )
    p.add_argument("key", metavar="KEY")
    expected = p.add_mutually_exclusive_group(required=True)
    expected.add_argument("--expected", metavar="OLD", help="the value KEY must hold now")
    expected.add_argument(
        "--expected-absent", action="store_true", help="KEY must not exist now (create only)"
    )
    new = p.add_mutually_exclusive_group(required=True)
    new.add_argument("--value", metavar="NEW", help="the value to set")
    new.add_argument("--delete", action="store_true", help="delete KEY instead of setting it")
    p.set_defaults(handler=_cmd_cas, parser=p)

    p = client_command(
        "range",
        "list every key starting with PREFIX, in order, as KEY<tab>VALUE (fetched "
        f"{MAX_PAGE:,} at a time)",
    )
    p.add_argument("prefix", metavar="PREFIX", nargs="?", default="")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="at most this many keys (default: all)")
    p.add_argument("--after", metavar="KEY", default=None,
                   help="only keys after KEY (a cursor: the last key of a previous listing)")
    p.add_argument("--consistency", choices=("linearizable", "stale"), default="linearizable")
    p.set_defaults(handler=_cmd_range, parser=p)

    p = client_command(
        "status",
        "show every node: role, term, leader, log indexes, replication lag behind the "
        "leader and event-loop lag",
    )
    p.set_defaults(handler=_cmd_status, parser=p)

    # Membership, leadership, backup and restore (issue 12): trioraft/cli_membership.py.
    from . import cli_membership

    cli_membership.add_commands(sub, client_command)

    _add_bench(sub)
    return parser


def _add_bench(sub: Any) -> None:
    """Register `bench` if trioraft.bench is installed; a broken one reports itself."""
    try:
        from . import bench  # type: ignore[attr-defined,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name == f"{__package__}.bench":
            return
        reason = f"{exc}"
    except ImportError as exc:
        reason = f"{exc}"
    else:
        p = sub.add_parser("bench", help="load-test a running cluster")
        bench.add_arguments(p)
        p.set_defaults(handler=lambda args, env: int(bench.main(args)), parser=p)
        return

    p = sub.add_parser("bench", help="(unavailable)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def unavailable(args: argparse.Namespace, env: Mapping[str, str]) -> int:
        print(f"trioraft bench is unavailable: {reason}", file=sys.stderr)
        return EXIT_FAILURE

    p.set_defaults(handler=unavailable, parser=p)


def _usage(args: argparse.Namespace, message: str) -> NoReturn:
    """A usage error of the chosen subcommand: message on stderr, exit status 2."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


# ---------------------------------------------------------------- serve / cluster


def configure_logging(config: NodeConfig) -> None:
    """One line per event on stderr, text or JSON (trioraft.logs), tagged with the node."""
    from . import logs

    logs.configure(config.id, config.log_level, config.log_format,
                   access_log=config.access_log)


def _cmd_serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        config = config_from_args(args, env)
    except ConfigError as exc:
        _usage(args, str(exc))
    configure_logging(config)
    if not config.fsync:
        logging.getLogger("trioraft").warning(
            "fsync is off: acknowledged writes can be lost on power failure (benchmarks only)"
        )
    import trio

    # Lazily: the client commands do not need the server stack.
    from . import server

    tune_interpreter()
    trio.run(server.serve, config)
    return EXIT_OK


SWITCH_INTERVAL_S = 0.001


def tune_interpreter() -> None:
    """Process-wide settings for a node process (issue 11 #4, measured).

    * Switch interval 1 ms (CPython's default is 5 ms): the storage thread
      gives up the GIL for each SQLite statement and its fsync, and must win
      it back from the busy event loop after each, waiting up to the switch
      interval every time. A 16-entry log write under a busy loop took 11 ms
      at the median (5 ms) against 2.8 ms (1 ms); the fsync alone, 0.13 ms.
      A leader whose log write is slow sends no heartbeats meanwhile.
    * The objects that exist once the server stack is imported (modules,
      functions, classes: ~70,000) are frozen out of the cyclic garbage
      collector: every full collection walked them all again, 25-40 ms with
      the GIL held, every second or so under load (`gc_pause` events).
    """
    import gc

    sys.setswitchinterval(SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()


def _cmd_cluster(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from . import cluster

    serve_args: list[str] = []
    for flag in (
        "election_timeout_ms",
        "heartbeat_ms",
        "cluster_token",
        "snapshot_entries",
        "snapshot_bytes",
        "log_level",
        "log_format",
        "request_timeout_ms",
    ):
        value = getattr(args, flag)
        if value is not None:
            serve_args.append(f"--{flag.replace('_', '-')}={value}")
    if args.no_fsync:
        serve_args.append("--no-fsync")
    if args.access_log:
        serve_args.append("--access-log")
    opts = cluster.ClusterOptions(
        nodes=args.nodes,
        base_port=args.base_port,
        host=args.host,
        data_dir=args.data_dir,
        serve_args=tuple(serve_args),
        tls_dir=args.tls_dir,
    )
    try:
        if args.action == "grow":
            return cluster.grow(opts, grace=args.grace, token=env.get("TRIORAFT_TOKEN"))
        return cluster.main(opts, grace=args.grace)
    except ConfigError as exc:
        _usage(args, str(exc))


# ---------------------------------------------------------------- client commands


def _credentials(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str | None]:
    """--cacert/--cert/--key/--token, each from its flag, else its environment variable."""
    return {name: getattr(args, f"credential_{name}", None) or env.get(var) or None
            for name, var in CREDENTIAL_ENVS.items()}  # fmt: skip


def _client(args: argparse.Namespace, env: Mapping[str, str]) -> Client:
    raw = getattr(args, "endpoints", None) or env.get(ENDPOINTS_ENV) or ",".join(DEFAULT_ENDPOINTS)
    creds = _credentials(args, env)
    tls = creds["cacert"] is not None or creds["cert"] is not None
    try:
        endpoints = normalize_endpoints(raw, "https" if tls else "http")
    except ValueError as exc:
        _usage(args, f"--endpoints: {exc}")
    try:
        return Client(
            endpoints,
            timeout=getattr(args, "timeout", DEFAULT_TIMEOUT_S),
            unreachable_timeout=getattr(args, "unreachable_timeout", DEFAULT_UNREACHABLE_S),
            cacert=creds["cacert"], cert=creds["cert"], key=creds["key"], token=creds["token"],
        )
    except ValueError as exc:  # a credential file that cannot be used, a bad token
        _usage(args, str(exc))


def _check_key(args: argparse.Namespace) -> None:
    if not args.key:
        _usage(args, "KEY must not be empty")


def _emit(args: argparse.Namespace, obj: Any, text: str | None) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, ensure_ascii=False))
    elif text is not None:
        print(text)


def _read_value(args: argparse.Namespace) -> str:
    """VALUE, or the bytes of stdin ('-') or --file, decoded as UTF-8."""
    if (args.value is None) == (args.file is None):
        _usage(args, "give VALUE ('-' for standard input) or --file PATH, not both")
    if args.value is not None and args.value != "-":
        return str(args.value)
    limit = kv.MAX_VALUE_BYTES
    try:
        if args.file is not None:
            with open(args.file, "rb") as f:
                raw = f.read(limit + 1)
        else:
            raw = sys.stdin.buffer.read(limit + 1)
    except OSError as exc:
        _usage(args, f"cannot read the value: {exc.strerror or exc}: {exc.filename or 'stdin'}")
    if len(raw) > limit:
        print(f"trioraft: the value is over the limit of {limit} bytes (too_large)",
              file=sys.stderr)
        raise SystemExit(EXIT_FAILURE)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        _usage(args, f"the value is not UTF-8 text ({exc.reason} at byte {exc.start})")


def _cmd_put(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    _check_key(args)
    value = _read_value(args)
    with _client(args, env) as client:
        index = client.put(args.key, value)
    _emit(args, {"key": args.key, "value": value, "index": index}, "OK")
    return EXIT_OK


def _cmd_get(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    _check_key(args)
    with _client(args, env) as client:
        value = client.get(args.key, consistency=args.consistency)
    if value is None:
        _emit(args, {"key": args.key, "value": None}, None)
        print(f"trioraft: key not found: {args.key}", file=sys.stderr)
        return EXIT_FAILURE
    _emit(args, {"key": args.key, "value": value}, value)
    return EXIT_OK


def _cmd_del(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    _check_key(args)
    if args.prefix:
        with _client(args, env) as client:
            count = client.delete_prefix(args.key)
        _emit(args, {"prefix": args.key, "deleted": count}, str(count))
        return EXIT_OK
    with _client(args, env) as client:
        deleted = client.delete(args.key)
    _emit(args, {"key": args.key, "deleted": deleted}, "OK" if deleted else None)
    if not deleted:
        print(f"trioraft: key not found: {args.key}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_cas(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    _check_key(args)
    expected = None if args.expected_absent else args.expected
    value = None if args.delete else args.value
    with _client(args, env) as client:
        ok = client.cas(args.key, expected, value)
    _emit(args, {"key": args.key, "ok": ok}, "OK" if ok else None)
    if not ok:
        want = "absent" if expected is None else repr(expected)
        print(
            f"trioraft: CAS failed: {args.key} does not hold the expected value ({want})",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_range(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    as_json = getattr(args, "json", False)
    items: list[dict[str, str]] = []
    more = False
    last: str | None = None
    with _client(args, env) as client:
        scan = client.scan(args.prefix, consistency=args.consistency, after=args.after,
                           page_size=min(MAX_PAGE, args.limit or MAX_PAGE))
        for n, (key, value) in enumerate(scan):
            if args.limit is not None and n == args.limit:
                more = True  # one more key exists than asked for
                break
            last = key
            if as_json:
                items.append({"key": key, "value": value})
            else:
                print(f"{key}\t{value}")
    if as_json:
        _emit(args, {"items": items, "more": more}, None)
    elif more:
        print(f"(more keys: continue with --after {last!r}, or raise --limit)",
              file=sys.stderr)
    return EXIT_OK


def _cell(status: Mapping[str, Any], name: str) -> str:
    value = status.get(name)
    return "-" if value is None else str(value)


def _leader_status(results: Sequence[EndpointStatus]) -> Mapping[str, Any] | None:
    """The /status of the leader in the highest term among the answers, if any."""
    leaders = [r.status for r in results if r.status and r.status.get("role") == "leader"]
    return max(leaders, key=lambda s: s.get("term") or 0, default=None)


def replication_lag(status: Mapping[str, Any], leader: Mapping[str, Any] | None) -> str:
    """How far `status`'s node is behind, from the leader's progress for it.

    Entries the leader has that this node is not known to have (the leader's
    last log index minus its match index), with the leader's replication state
    when it is not streaming (probe: finding where the logs agree; snapshot:
    being sent one).
    """
    if leader is None:
        return "?"
    if status.get("id") == leader.get("id"):
        return "-"
    progress = leader.get("progress")
    peer = progress.get(status.get("id")) if isinstance(progress, Mapping) else None
    if not isinstance(peer, Mapping) or not isinstance(peer.get("match_index"), int):
        return "?"
    lag = max(0, int(leader.get("last_log_index") or 0) - peer["match_index"])
    state = peer.get("state")
    return f"{lag}" if state in (None, "replicate") else f"{lag} ({state})"


def loop_lag(status: Mapping[str, Any]) -> str:
    value = status.get("loop_lag_ms")
    return f"{value:.0f} ms" if isinstance(value, int | float) else "-"


def _status_table(results: Sequence[EndpointStatus]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="trioraft cluster")
    right = {"term", "commit", "applied", "last log", "snapshot", "lag", "loop lag"}
    for name in ("id", "url", "role", "term", "leader", "commit", "applied", "last log",
                 "snapshot", "lag", "loop lag"):  # fmt: skip
        table.add_column(name, justify="right" if name in right else "left")
    styles = {"leader": "bold green", "candidate": "yellow", "precandidate": "yellow"}
    leader = _leader_status(results)
    for result in results:
        s = result.status
        if s is None:
            error = result.error or "unreachable"
            table.add_row("?", result.url, f"[red]{error}[/red]", *["-"] * 8)
            continue
        role = _cell(s, "role")
        style = styles.get(role)
        table.add_row(
            _cell(s, "id"),
            result.url,
            f"[{style}]{role}[/{style}]" if style else role,
            _cell(s, "term"),
            _cell(s, "leader"),
            _cell(s, "commit_index"),
            _cell(s, "applied_index"),
            _cell(s, "last_log_index"),
            _cell(s, "snapshot_index"),
            replication_lag(s, leader),
            loop_lag(s),
        )
    console = Console() if sys.stdout.isatty() else Console(width=200, no_color=True)
    console.print(table)
    if leader is None and any(r.reachable for r in results):
        print("no leader among the nodes that answered", file=sys.stderr)


def _cmd_status(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    with _client(args, env) as client:
        results = client.status()
    if getattr(args, "json", False):
        rows = [{"url": r.url, "status": r.status, "error": r.error} for r in results]
        _emit(args, rows, None)
    else:
        _status_table(results)
    if not any(r.reachable for r in results):
        print("trioraft: no node could be reached", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


# ---------------------------------------------------------------- entry points


def run(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the command line; returns the exit status (usage errors raise SystemExit(2))."""
    env = os.environ if env is None else env
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace, Mapping[str, str]], int] = args.handler
    try:
        return handler(args, env)
    except (Unavailable, UnknownOutcome) as exc:
        print(f"trioraft: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except TrioraftError as exc:
        print(f"trioraft: {exc} ({exc.code})", file=sys.stderr)
        return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: exits with the command's status."""
    try:
        code = run(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `trioraft range | head`
        sys.stderr.close()
        code = EXIT_FAILURE
    if code:
        raise SystemExit(code)
