"""Node configuration: the `trioraft serve` flags and environment variables (API.md §1).

Rules, in the order they are applied:

* A flag given on the command line always wins over its environment variable; the
  environment wins over the built-in default. An environment variable set to the
  empty string counts as unset (compose files often write ``- PEERS=``).
* Peers come from ``--peer ID=URL`` (repeatable) if any is given; otherwise from
  ``PEERS=id=url,id=url``; otherwise from the course form ``PEER_IDS=host:port,...``
  (the id is the host part, the URL ``http://host:port``). Setting both ``PEERS`` and
  ``PEER_IDS`` is an error: one of them would be silently ignored.
* Every problem is reported as a :class:`ConfigError` (``parse_serve_args`` turns it
  into an argparse usage error: a message on stderr and exit status 2).
* Secure by default (issue 10): a node listens on loopback unless told otherwise, and
  refuses to listen on any other address without peer authentication (a cluster token
  today; TLS will be the other way, see :func:`peer_authentication`) unless
  ``--insecure`` (env ``INSECURE``) says the operator accepts that anyone who reaches
  the port is a full Raft peer. Tokens are printable ASCII (`trioraft.auth.check_secret`).
* Client tokens (``--client-token ROLE:TOKEN``, ``CLIENT_TOKENS``,
  ``--client-tokens-file``) are separate from the cluster token; see `trioraft.auth`.
* TLS (``--tls-*``, ``--peer-tls-*``; see `trioraft.tls` and :func:`_tls_settings`):
  HTTPS for clients, mutual TLS for peers. Peer TLS counts as peer authentication. Every
  file is loaded and the node's own peer certificate checked (signed by the cluster CA,
  valid, naming this node) before the node starts.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from trioraft.auth import ROLES, check_secret
from trioraft.tls import TlsError, check_peer_certificate, server_tls

__all__ = [
    "DEFAULT_ELECTION_TIMEOUT_MS",
    "DEFAULT_HEARTBEAT_MS",
    "DEFAULT_LISTEN",
    "LOG_LEVELS",
    "SERVE_ENV_VARS",
    "ConfigError",
    "NodeConfig",
    "add_serve_arguments",
    "build_serve_parser",
    "config_from_args",
    "format_host_port",
    "parse_host_port",
    "parse_serve_args",
    "peer_authentication",
]

DEFAULT_ID = "node1"
DEFAULT_LISTEN = ("127.0.0.1", 3000)
DEFAULT_ELECTION_TIMEOUT_MS = (150, 300)
DEFAULT_HEARTBEAT_MS = 50
DEFAULT_SNAPSHOT_ENTRIES = 10_000
DEFAULT_SNAPSHOT_BYTES = 64 * 1024 * 1024
DEFAULT_SNAPSHOT_CATCHUP_ENTRIES = 5_000
DEFAULT_REQUEST_TIMEOUT_MS = 5_000
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")

#: Every environment variable `serve` reads. `trioraft cluster` removes them from its
#: children's environment so that each child runs exactly the configuration planned.
SERVE_ENV_VARS = (
    "NODE_ID",
    "HOST",
    "PORT",
    "ADVERTISE_URL",
    "PEERS",
    "PEER_IDS",
    "DATA_DIR",
    "ELECTION_TIMEOUT_MS",
    "HEARTBEAT_MS",
    "CLUSTER_TOKEN",
    "SNAPSHOT_ENTRIES",
    "SNAPSHOT_BYTES",
    "SNAPSHOT_CATCHUP_ENTRIES",
    "FSYNC",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "ACCESS_LOG",
    "REQUEST_TIMEOUT_MS",
    "INSECURE",
    "CLIENT_TOKENS",
    "CLIENT_TOKENS_FILE",
    # TLS (see _tls_settings)
    "TLS_CERT",
    "TLS_KEY",
    "TLS_CLIENT_CA",
    "TLS_CA",
    "PEER_TLS_CERT",
    "PEER_TLS_KEY",
    "PEER_TLS_CA",
    "JOIN",
)

# Node ids appear in URLs, headers, file names and log lines: keep them plain.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """An invalid flag or environment variable; the message names it."""


@dataclass(frozen=True)
class NodeConfig:
    """Everything one node needs to start. Built by :func:`parse_serve_args`."""

    id: str
    listen_host: str
    listen_port: int
    # How peers and clients reach this node; no trailing slash.
    advertise_url: str
    # The other members, id -> base URL (no trailing slash). Never contains `id`.
    peers: dict[str, str] = field(hash=False)
    data_dir: Path
    # (min, max) with 1 <= min <= max; heartbeat_ms < min.
    election_timeout_ms: tuple[int, int]
    heartbeat_ms: int
    # Shared secret required on /raft/*; None means no check.
    cluster_token: str | None
    # Take a snapshot after this many applied entries since the last one (>= 1).
    snapshot_entries: int = DEFAULT_SNAPSHOT_ENTRIES
    # ... or after this many bytes of commands, whichever comes first (>= 1).
    snapshot_bytes: int = DEFAULT_SNAPSHOT_BYTES
    # Entries kept after a snapshot, so a follower a little behind catches up
    # with entries rather than a whole snapshot (the core's catch-up tail).
    snapshot_catchup_entries: int = DEFAULT_SNAPSHOT_CATCHUP_ENTRIES
    # False only for benchmarks: acknowledged writes can be lost on power failure.
    fsync: bool = True
    log_level: str = "warning"
    # "text" or "json" (one object per line); see trioraft.logs.
    log_format: str = "text"
    # One INFO line per HTTP request on the trioraft.access logger.
    access_log: bool = False
    # How long a client write waits for its commit before answering 504.
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_MS / 1000
    # The operator accepted a non-loopback listen address without peer authentication.
    insecure: bool = False
    # (role, token) pairs for the client API; empty: the client API is open.
    client_tokens: tuple[tuple[str, str], ...] = ()
    # ---- TLS (trioraft.tls). Client API over HTTPS with this certificate and key.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Require every client to present a certificate signed by this CA.
    tls_client_ca: Path | None = None
    # The cluster CA: the default of peer_tls_ca.
    tls_ca: Path | None = None
    # Peer mutual TLS, as given (see peer_tls_files for the values in force).
    peer_tls_cert: Path | None = None
    peer_tls_key: Path | None = None
    peer_tls_ca: Path | None = None
    # Membership (issue 12): URLs of members of an existing cluster to join
    # (an empty data dir then never bootstraps a new cluster).
    join: tuple[str, ...] = ()

    @property
    def members(self) -> dict[str, str]:
        """All members including this node, id -> base URL."""
        return {self.id: self.advertise_url, **self.peers}

    @property
    def https(self) -> bool:
        """The client API is served over TLS."""
        return self.tls_cert is not None

    @property
    def peer_tls_files(self) -> tuple[Path, Path, Path] | None:
        """(certificate, key, cluster CA) for peer mutual TLS, or None when peers do not
        use TLS. The certificate and key default to --tls-cert/--tls-key, the CA to
        --tls-ca; peer TLS is on when there is a CA."""
        ca = self.peer_tls_ca or self.tls_ca
        cert = self.peer_tls_cert or self.tls_cert
        key = self.peer_tls_key or self.tls_key
        if ca is None or cert is None or key is None:
            return None
        return cert, key, ca


# ---------------------------------------------------------------- value parsers


def parse_host_port(text: str, what: str = "--listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"{what}: expected [IPV6]:PORT, got {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(f"{what}: expected HOST:PORT, got {text!r}")
        if ":" in host:
            raise ConfigError(f"{what}: write IPv6 addresses in brackets, as [::1]:3000")
    if not host:
        raise ConfigError(f"{what}: missing host in {text!r}")
    return host, _parse_port(port_text, what)


def format_host_port(host: str, port: int) -> str:
    """The inverse of :func:`parse_host_port` (brackets IPv6 hosts)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_port(text: str, what: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"{what}: port must be a number, got {text!r}")
    port = int(text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} is out of range 0-65535")
    return port


def _check_id(node_id: str, what: str) -> str:
    if not _ID_RE.fullmatch(node_id):
        raise ConfigError(
            f"{what}: invalid node id {node_id!r} (use letters, digits, '.', '_', '-'; "
            "at most 64 characters, starting with a letter or digit)"
        )
    return node_id


def _check_url(url: str, what: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what}: expected an http:// or https:// URL, got {url!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{what}: URL must not have a query or fragment: {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{what}: bad port in URL {url!r}") from None
    return url.rstrip("/")


def _parse_peer(item: str, what: str) -> tuple[str, str]:
    node_id, sep, url = item.partition("=")
    if not sep:
        raise ConfigError(f"{what}: expected ID=URL, got {item!r}")
    return _check_id(node_id.strip(), what), _check_url(url, f"{what} {node_id.strip()}")


def _parse_course_peer(item: str, scheme: str = "http") -> tuple[str, str]:
    host, port = parse_host_port(item, "PEER_IDS")
    return _check_id(host, "PEER_IDS"), f"{scheme}://{format_host_port(host, port)}"


def _parse_range(text: str, what: str) -> tuple[int, int]:
    low, sep, high = text.strip().partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ConfigError(f"{what}: expected MIN-MAX in milliseconds, as 150-300, got {text!r}")
    lo, hi = int(low), int(high)
    if lo < 1:
        raise ConfigError(f"{what}: minimum must be at least 1 ms, got {lo}")
    if lo > hi:
        raise ConfigError(f"{what}: minimum {lo} is greater than maximum {hi}")
    return lo, hi


def _parse_int(text: str, what: str, minimum: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{what}: expected an integer, got {text!r}") from None
    if value < minimum:
        raise ConfigError(f"{what}: must be at least {minimum}, got {value}")
    return value


def _parse_bool(text: str, what: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{what}: expected 1/0, true/false, yes/no or on/off, got {text!r}")


def _parse_log_level(text: str, what: str) -> str:
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{what}: expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return level


# ---------------------------------------------------------------- argparse


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `serve` flags to `parser`. Every default is None: "not given"."""
    parser.add_argument(
        "--id",
        metavar="ID",
        help=f"this node's name, unique in the cluster [env NODE_ID; default {DEFAULT_ID}]",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="where the HTTP server binds; [::]:PORT for IPv6 [env HOST and PORT; default "
        f"{format_host_port(*DEFAULT_LISTEN)}]",
    )
    parser.add_argument(
        "--advertise",
        metavar="URL",
        help="how peers and clients reach this node [env ADVERTISE_URL; default "
        "http://<id>:<port>]",
    )
    parser.add_argument(
        "--peer",
        metavar="ID=URL",
        action="append",
        help="another member, as node2=http://node2:3000; repeat for each peer. Any --peer "
        "replaces the environment's list [env PEERS=id=url,id=url or the course form "
        "PEER_IDS=host:port,host:port; default none: a single-node cluster]",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        help="durable state (term, vote, log, snapshots) lives here; restarting with the "
        "same directory resumes [env DATA_DIR; default ./data/<id>]",
    )
    parser.add_argument(
        "--election-timeout-ms",
        metavar="MIN-MAX",
        help="randomized election timeout range in milliseconds [env ELECTION_TIMEOUT_MS; "
        "default {}-{}]".format(*DEFAULT_ELECTION_TIMEOUT_MS),
    )
    parser.add_argument(
        "--heartbeat-ms",
        metavar="N",
        help="leader heartbeat interval in milliseconds, below the minimum election timeout "
        f"[env HEARTBEAT_MS; default {DEFAULT_HEARTBEAT_MS}]",
    )
    parser.add_argument(
        "--cluster-token",
        metavar="TOKEN",
        help="shared secret required on /raft/*; all members must use the same one; printable "
        "ASCII, at most 512 characters; an empty string disables the check. Needed to listen "
        "on a non-loopback address (or --insecure) [env CLUSTER_TOKEN; default none]",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback --listen address without peer authentication: anyone who "
        "reaches the port is then a full Raft peer [env INSECURE=1; default off]",
    )
    parser.add_argument(
        "--client-token",
        metavar="ROLE:TOKEN",
        action="append",
        help="a bearer token for the client API, ROLE read or write; repeat for more. With "
        "any client token set, client routes need 'Authorization: Bearer TOKEN' (/status, "
        "/health, /ready stay open) [env CLIENT_TOKENS=role:token,role:token; default none: "
        "the client API is open]",
    )
    parser.add_argument(
        "--client-tokens-file",
        metavar="PATH",
        type=Path,
        help="a file of client tokens, one ROLE:TOKEN a line ('#' comments), added to "
        "--client-token [env CLIENT_TOKENS_FILE]",
    )
    _add_tls_arguments(parser)
    parser.add_argument(
        "--join",
        metavar="URL[,URL]",
        action="append",
        help="join the existing cluster these members belong to: with an empty data dir the "
        "node never bootstraps a new cluster; it waits to be added (`trioraft member add`), "
        "or is re-admitted automatically if its --id is a member whose node lost its data. "
        "Ignored once the data dir belongs to a cluster [env JOIN=url,url; default none]",
    )
    parser.add_argument(
        "--snapshot-entries",
        metavar="N",
        help="take a snapshot every this many applied entries on average (members "
        "stagger theirs: between N/2 and 3N/2 after the last one) "
        f"[env SNAPSHOT_ENTRIES; default {DEFAULT_SNAPSHOT_ENTRIES}]",
    )
    parser.add_argument(
        "--snapshot-bytes",
        metavar="N",
        help="... or after this many bytes of applied commands, whichever comes first "
        f"[env SNAPSHOT_BYTES; default {DEFAULT_SNAPSHOT_BYTES}]",
    )
    # -- chaos (issue 11): the catch-up tail, so tests can force InstallSnapshot.
    parser.add_argument(
        "--snapshot-catchup-entries",
        metavar="N",
        help="entries kept in the log after a snapshot, so a follower a little behind "
        "catches up from the log instead of a whole snapshot [env "
        f"SNAPSHOT_CATCHUP_ENTRIES; default {DEFAULT_SNAPSHOT_CATCHUP_ENTRIES}]",
    )
    parser.add_argument(
        "--fsync",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fsync the log before acknowledging. --no-fsync is for benchmarks only and "
        "UNSAFE: a power failure or kernel crash can lose acknowledged writes "
        "[env FSYNC=0 disables; default on]",
    )
    parser.add_argument(
        "--log-level",
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} [env LOG_LEVEL; default warning]",
    )
    parser.add_argument(
        "--log-format",
        metavar="FORMAT",
        help="text (one line per event: time level node=ID event k=v ...) or json (one "
        "object per line: time, level, node, event, fields) [env LOG_FORMAT; default text]",
    )
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log every HTTP request (method, encoded path, status, bytes, duration) at "
        "info level on the trioraft.access logger, whatever --log-level is "
        "[env ACCESS_LOG=1; default off]",
    )
    parser.add_argument(
        "--request-timeout-ms",
        metavar="N",
        help="how long a client write waits for its commit before the node answers "
        "504 unknown_outcome [env REQUEST_TIMEOUT_MS; default "
        f"{DEFAULT_REQUEST_TIMEOUT_MS}]",
    )


def peer_authentication(config: NodeConfig) -> str | None:
    """How peers authenticate to this node, or None when they do not.

    The hook for every peer credential: the cluster token, peer mutual TLS, or
    both (defence in depth: then a peer needs both).
    """
    ways = []
    if config.cluster_token is not None:
        ways.append("cluster token")
    if config.peer_tls_files is not None:
        ways.append("peer TLS")
    return " and ".join(ways) or None


# ---------------------------------------------------------------- TLS
# (The TLS block: flags, their environment variables and their checks.)

_TLS_FLAGS = (
    # flag, env, metavar, help
    ("--tls-cert", "TLS_CERT", "FILE", "serve the client API over HTTPS with this PEM "
     "certificate (chain); advertised URLs become https://. Also the default peer "
     "certificate"),
    ("--tls-key", "TLS_KEY", "FILE", "the private key of --tls-cert (PEM)"),
    ("--tls-client-ca", "TLS_CLIENT_CA", "FILE", "require every client to present a "
     "certificate signed by this CA (PEM bundle); needs --tls-cert"),
    ("--tls-ca", "TLS_CA", "FILE", "the cluster CA (PEM bundle): turns on peer mutual TLS "
     "with --tls-cert/--tls-key as the peer certificate (see --peer-tls-ca)"),
    ("--peer-tls-cert", "PEER_TLS_CERT", "FILE", "this node's peer certificate, signed by "
     "the cluster CA and naming this node (--id) as a subjectAltName DNS name or URI (or "
     "CN); default --tls-cert"),
    ("--peer-tls-key", "PEER_TLS_KEY", "FILE", "its private key; default --tls-key"),
    ("--peer-tls-ca", "PEER_TLS_CA", "FILE", "the cluster CA (PEM bundle); with it every "
     "peer stream and /raft/* request must be TLS with a certificate from this CA naming "
     "the member it speaks as; default --tls-ca"),
)


def _add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, env_name, metavar, text in _TLS_FLAGS:
        parser.add_argument(flag, metavar=metavar, type=Path,
                            help=f"{text} [env {env_name}; default none]")  # fmt: skip


def _tls_settings(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Path | None]:
    """The TLS fields of NodeConfig from flags and environment, with their pairings checked."""
    out: dict[str, Path | None] = {}
    for flag, env_name, _, _ in _TLS_FLAGS:
        field_name = flag[2:].replace("-", "_")
        value = getattr(args, field_name, None)
        if value is None and (text := _env(env, env_name)) is not None:
            value = Path(text)
        out[field_name] = value

    def given(name: str) -> bool:
        return out[name] is not None

    for cert, key in (("tls_cert", "tls_key"), ("peer_tls_cert", "peer_tls_key")):
        if given(cert) != given(key):
            have, missing = (cert, key) if given(cert) else (key, cert)
            raise ConfigError(f"--{have.replace('_', '-')} needs --{missing.replace('_', '-')} "
                              "(a certificate and its key go together)")  # fmt: skip
    if given("tls_client_ca") and not given("tls_cert"):
        raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key: client "
                          "certificates are asked for on HTTPS")  # fmt: skip
    has_ca = given("peer_tls_ca") or given("tls_ca")
    if has_ca and not (given("peer_tls_cert") or given("tls_cert")):
        raise ConfigError("peer TLS (--peer-tls-ca or --tls-ca) needs this node's peer "
                          "certificate: --peer-tls-cert/--peer-tls-key or "
                          "--tls-cert/--tls-key")  # fmt: skip
    if given("peer_tls_cert") and not has_ca:
        raise ConfigError("--peer-tls-cert needs the cluster CA that signed the peers' "
                          "certificates: --peer-tls-ca or --tls-ca")  # fmt: skip
    return out


def _check_tls(config: NodeConfig) -> None:
    """Load every TLS file now, and refuse a peer certificate the peers would refuse."""
    peer = config.peer_tls_files
    try:
        server_tls(
            cert=config.tls_cert, key=config.tls_key, client_ca=config.tls_client_ca,
            peer_cert=peer[0] if peer else None, peer_key=peer[1] if peer else None,
            peer_ca=peer[2] if peer else None,
        )
        if peer is not None:
            check_peer_certificate(*peer, name=config.id)
    except TlsError as exc:
        raise ConfigError(str(exc)) from None
    if config.https and urlsplit(config.advertise_url).scheme != "https":
        # Clients follow advertised URLs (/status, Location): a plain http:// one
        # would lead them to a port that answers plaintext with a 400.
        raise ConfigError(f"--advertise {config.advertise_url}: this node serves HTTPS "
                          "(--tls-cert), so its URL is https://")  # fmt: skip


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything


def _parse_client_token(item: str, what: str) -> tuple[str, str]:
    role, sep, token = item.strip().partition(":")
    if not sep or role not in ROLES:
        raise ConfigError(f"{what}: expected ROLE:TOKEN with ROLE one of {', '.join(ROLES)}")
    try:
        return role, check_secret(token, what)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _client_tokens(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    tokens: list[tuple[str, str]] = []
    if args.client_token:
        tokens += [_parse_client_token(item, "--client-token") for item in args.client_token]
    elif (env_tokens := _env(env, "CLIENT_TOKENS")) is not None:
        tokens += [
            _parse_client_token(item, "CLIENT_TOKENS") for item in env_tokens.split(",")
            if item.strip()
        ]
    path = args.client_tokens_file
    what = "--client-tokens-file"
    if path is None and (env_path := _env(env, "CLIENT_TOKENS_FILE")) is not None:
        path, what = Path(env_path), "CLIENT_TOKENS_FILE"
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="ascii").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{what}: cannot read {path}: {exc}") from None
        for number, line in enumerate(lines, start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                tokens.append(_parse_client_token(line, f"{what} {path}:{number}"))
    return tuple(tokens)


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value else None  # empty counts as unset


def _peers(
    flags: Sequence[str] | None, env: Mapping[str, str], scheme: str = "http"
) -> dict[str, str]:
    items: list[tuple[str, str]]
    if flags:
        items = [_parse_peer(item, "--peer") for item in flags]
    else:
        peers_env, course_env = _env(env, "PEERS"), _env(env, "PEER_IDS")
        if peers_env and course_env:
            raise ConfigError("set PEERS or PEER_IDS, not both")
        if peers_env:
            items = [_parse_peer(i.strip(), "PEERS") for i in peers_env.split(",") if i.strip()]
        elif course_env:
            items = [_parse_course_peer(i, scheme) for i in course_env.split(",") if i.strip()]
        else:
            items = []
    peers: dict[str, str] = {}
    for node_id, url in items:
        if node_id in peers:
            raise ConfigError(f"peer {node_id!r} is given twice")
        peers[node_id] = url
    return peers


def config_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> NodeConfig:
    """Combine parsed flags (from :func:`add_serve_arguments`) with `env`."""
    node_id = _check_id(
        args.id if args.id is not None else _env(env, "NODE_ID") or DEFAULT_ID,
        "--id" if args.id is not None else "NODE_ID",
    )

    if args.listen is not None:
        host, port = parse_host_port(args.listen, "--listen")
    else:
        host_env, port_env = _env(env, "HOST"), _env(env, "PORT")
        host = host_env.strip() if host_env else DEFAULT_LISTEN[0]
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        port = _parse_port(port_env.strip(), "PORT") if port_env else DEFAULT_LISTEN[1]

    tls = _tls_settings(args, env)
    scheme = "https" if tls["tls_cert"] is not None else "http"
    if args.advertise is not None:
        advertise = _check_url(args.advertise, "--advertise")
    elif (advertise_env := _env(env, "ADVERTISE_URL")) is not None:
        advertise = _check_url(advertise_env, "ADVERTISE_URL")
    else:
        advertise = f"{scheme}://{format_host_port(node_id, port)}"

    peers = _peers(args.peer, env, scheme)
    if node_id in peers:
        raise ConfigError(f"peer {node_id!r} is this node's own id; list only the other members")
    by_url: dict[str, str] = {advertise: node_id}
    for peer_id, url in peers.items():
        if url in by_url:
            raise ConfigError(f"peers {by_url[url]!r} and {peer_id!r} have the same URL {url}")
        by_url[url] = peer_id

    if args.data_dir is not None:
        data_dir = Path(args.data_dir)
    elif (data_env := _env(env, "DATA_DIR")) is not None:
        data_dir = Path(data_env)
    else:
        data_dir = Path("data") / node_id

    def pick(flag: str | None, flag_name: str, env_name: str) -> tuple[str | None, str]:
        if flag is not None:
            return flag, flag_name
        return _env(env, env_name), env_name

    text, what = pick(args.election_timeout_ms, "--election-timeout-ms", "ELECTION_TIMEOUT_MS")
    election = _parse_range(text, what) if text is not None else DEFAULT_ELECTION_TIMEOUT_MS

    text, what = pick(args.heartbeat_ms, "--heartbeat-ms", "HEARTBEAT_MS")
    heartbeat = _parse_int(text, what, 1) if text is not None else DEFAULT_HEARTBEAT_MS
    if heartbeat >= election[0]:
        raise ConfigError(
            f"heartbeat interval {heartbeat} ms must be below the minimum election timeout "
            f"{election[0]} ms (a few times below is best), or followers will start elections "
            "against a healthy leader"
        )

    if args.cluster_token is not None:
        token: str | None = args.cluster_token or None
        token_what = "--cluster-token"
    else:
        token = _env(env, "CLUSTER_TOKEN")
        token_what = "CLUSTER_TOKEN"
    if token is not None:
        try:
            check_secret(token, token_what)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    if args.insecure:
        insecure = True
    elif (insecure_env := _env(env, "INSECURE")) is not None:
        insecure = _parse_bool(insecure_env, "INSECURE")
    else:
        insecure = False

    text, what = pick(args.snapshot_entries, "--snapshot-entries", "SNAPSHOT_ENTRIES")
    snapshot_entries = _parse_int(text, what, 1) if text is not None else DEFAULT_SNAPSHOT_ENTRIES
    text, what = pick(args.snapshot_bytes, "--snapshot-bytes", "SNAPSHOT_BYTES")
    snapshot_bytes = _parse_int(text, what, 1) if text is not None else DEFAULT_SNAPSHOT_BYTES
    text, what = pick(getattr(args, "snapshot_catchup_entries", None),
                      "--snapshot-catchup-entries", "SNAPSHOT_CATCHUP_ENTRIES")  # fmt: skip
    catchup = _parse_int(text, what, 0) if text is not None else DEFAULT_SNAPSHOT_CATCHUP_ENTRIES

    if args.fsync is not None:
        fsync = bool(args.fsync)
    elif (fsync_env := _env(env, "FSYNC")) is not None:
        fsync = _parse_bool(fsync_env, "FSYNC")
    else:
        fsync = True

    text, what = pick(args.log_level, "--log-level", "LOG_LEVEL")
    log_level = _parse_log_level(text, what) if text is not None else "warning"

    text, what = pick(getattr(args, "log_format", None), "--log-format", "LOG_FORMAT")
    log_format = text.strip().lower() if text is not None else "text"
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"{what}: expected one of {', '.join(LOG_FORMATS)}, got {text!r}")
    if getattr(args, "access_log", None) is not None:
        access_log = bool(args.access_log)
    elif (access_env := _env(env, "ACCESS_LOG")) is not None:
        access_log = _parse_bool(access_env, "ACCESS_LOG")
    else:
        access_log = False

    text, what = pick(args.request_timeout_ms, "--request-timeout-ms", "REQUEST_TIMEOUT_MS")
    timeout_ms = _parse_int(text, what, 1) if text is not None else DEFAULT_REQUEST_TIMEOUT_MS

    join_items = list(getattr(args, "join", None) or [])
    join_what = "--join"
    if not join_items and (join_env := _env(env, "JOIN")) is not None:
        join_items, join_what = [join_env], "JOIN"
    join = tuple(
        _check_url(u, join_what) for item in join_items for u in item.split(",") if u.strip()
    )

    config = NodeConfig(
        id=node_id,
        listen_host=host,
        listen_port=port,
        advertise_url=advertise,
        peers=peers,
        data_dir=data_dir,
        election_timeout_ms=election,
        heartbeat_ms=heartbeat,
        cluster_token=token,
        snapshot_entries=snapshot_entries,
        snapshot_bytes=snapshot_bytes,
        snapshot_catchup_entries=catchup,
        fsync=fsync,
        log_level=log_level,
        log_format=log_format,
        access_log=access_log,
        request_timeout_s=timeout_ms / 1000,
        insecure=insecure,
        client_tokens=_client_tokens(args, env),
        tls_cert=tls["tls_cert"],
        tls_key=tls["tls_key"],
        tls_client_ca=tls["tls_client_ca"],
        tls_ca=tls["tls_ca"],
        peer_tls_cert=tls["peer_tls_cert"],
        peer_tls_key=tls["peer_tls_key"],
        peer_tls_ca=tls["peer_tls_ca"],
        join=join,
    )
    if not _is_loopback(host) and peer_authentication(config) is None and not insecure:
        raise ConfigError(
            f"refusing to listen on {format_host_port(host, port)} without peer "
            "authentication: anyone who reaches that address could act as a Raft peer and "
            "rewrite the cluster's data. Set --cluster-token (env CLUSTER_TOKEN) or peer TLS "
            "(--tls-ca or --peer-tls-ca, with certificates) on every member, listen on "
            "loopback, or pass --insecure (env INSECURE=1) to accept the risk"
        )
    _check_tls(config)
    return config


def build_serve_parser(prog: str = "trioraft serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run one trioraft node until SIGTERM or SIGINT. Flags override "
        "environment variables, which override the defaults.",
    )
    add_serve_arguments(parser)
    return parser


def parse_serve_args(argv: list[str], env: Mapping[str, str]) -> NodeConfig:
    """Parse `serve` flags and environment into a :class:`NodeConfig`.

    Usage errors (unknown flags, invalid values, inconsistent settings) print a message
    to stderr and raise ``SystemExit(2)``, like any argparse error.
    """
    parser = build_serve_parser()
    args = parser.parse_args(argv)
    try:
        return config_from_args(args, env)
    except ConfigError as exc:
        parser.error(str(exc))
