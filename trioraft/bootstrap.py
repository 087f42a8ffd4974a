"""Who a node is at start-up: bootstrap a new cluster, finish one, join one, or resume.

PLAN.md "Member ids and identity" and PLAN-B-membership.md; the safety
argument, in short (docs/guarantees.md has it in full):

* A node whose data dir has a member identity resumes from what it
  persisted; its stored configuration (log and snapshot) says who the
  members are. `--peer` flags are dialing hints only.
* An **empty** node writes a fresh random `bootstrap_nonce` durably before
  anything else, then asks every initial peer (`GET /raft/identity`,
  cluster-token authenticated) who it is. It **bootstraps** a new cluster
  only when every initial member answers, each is empty, and all expect
  the same set of names (Consul's bootstrap_expect = N): the configuration
  lists every name as a voter (member id = name, URL = its advertised one),
  the cluster id is a hash of that configuration and of all the nonces, and
  every member durably writes the same CONFIG entry at index 1, term 1
  (`BootstrapRecord` first, then the identity, then the entry).
* A peer that has bootstrapped answers with its record. If our nonce is in
  it we were part of that bootstrap and finish it the same way (same
  record, same entry). Otherwise we are a **joiner**: a fresh random member
  id, no vote and no count anywhere until a committed membership change
  admits us (as a learner, then a voter once caught up).
* Why an amnesiac can never bootstrap, vote or count: a node that lost its
  disk lost its nonce with it. Its new nonce is in no record, and it can
  never see all initial members empty while one of them still holds the
  cluster's data. So it can only join, under a member id no configuration
  has ever held: every vote it casts and every entry it acknowledges is its
  own, made after it was admitted. (If every member of the cluster lost its
  disk there is nothing left to protect; the operator restores a backup.)

The record lives in `<data-dir>/BOOTSTRAP` (canonical JSON with a CRC32,
written atomically like the identity). Everything a peer sends here is
outside input: answers are parsed strictly and bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import ssl
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from trioraft.core import Configuration, Member
from trioraft.tls import PEER_SNI, peer_client_context
from trioraft.transport import TOKEN_HEADER

__all__ = [
    "CHECK_PATH",
    "IDENTITY_PATH",
    "READMIT_PATH",
    "RECORD_FILE",
    "Bootstrap",
    "BootstrapRecord",
    "Decision",
    "Join",
    "PeerAnswer",
    "PeerCredentials",
    "Wait",
    "cluster_id_of",
    "decide",
    "fresh_member_id",
    "peer_headers",
    "peer_http_client",
    "read_record",
    "write_record",
]

IDENTITY_PATH = "/raft/identity"
READMIT_PATH = "/raft/readmit"
CHECK_PATH = "/raft/check-membership"
RECORD_FILE = "BOOTSTRAP"
_FORMAT = 1
_MAX_ANSWER = 256 * 1024  # an identity answer: 64 members at most, small strings
MAX_MEMBER_ID_LEN = 128  # = the core's limit on member ids (and names, nonces)


# --------------------------------------------------------------------- the record


def cluster_id_of(config: Configuration, nonces: Iterable[str]) -> str:
    """The id of the cluster bootstrapped with `config` by the nodes with `nonces`.

    Any difference (a name, a URL, a nonce) gives another id, and streams
    between different cluster ids are refused: nodes that disagreed at
    bootstrap can never exchange a Raft message.
    """
    h = hashlib.sha256(b"trioraft-bootstrap\0" + config.encode())
    for n in sorted(nonces):
        h.update(b"\0" + n.encode())
    return "c-" + h.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class BootstrapRecord:
    """How a cluster was bootstrapped: its id, the initial members' nonces, the
    configuration of entry 1."""

    cluster_id: str
    nonces: tuple[str, ...]
    config: Configuration

    @classmethod
    def new(cls, config: Configuration, nonces: Iterable[str]) -> BootstrapRecord:
        ns = tuple(sorted(nonces))
        return cls(cluster_id_of(config, ns), ns, config)

    def consistent(self) -> bool:
        """The id is the hash of the rest (a peer cannot make us finish a bootstrap
        under an id that does not describe it)."""
        return self.cluster_id == cluster_id_of(self.config, self.nonces)

    def to_json(self) -> dict[str, Any]:
        return {"cluster_id": self.cluster_id, "nonces": list(self.nonces),
                "config": self.config.to_json()}  # fmt: skip

    @classmethod
    def from_json(cls, obj: object) -> BootstrapRecord:
        if not isinstance(obj, dict):
            raise ValueError("a bootstrap record is an object")
        cid, nonces = obj.get("cluster_id"), obj.get("nonces")
        if not _short_str(cid) or not isinstance(nonces, list) or len(nonces) > 64:
            raise ValueError("malformed bootstrap record")
        if not all(_short_str(n) for n in nonces):
            raise ValueError("malformed bootstrap nonce")
        return cls(str(cid), tuple(sorted(nonces)), Configuration.from_json(obj.get("config")))


def _short_str(v: object) -> bool:
    return isinstance(v, str) and 0 < len(v) <= MAX_MEMBER_ID_LEN and v.isprintable()


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def write_record(data_dir: Path, record: BootstrapRecord, fsync: bool = True) -> None:
    """Atomically write `<data_dir>/BOOTSTRAP` (temp file, fsync, rename, dir fsync)."""
    body: dict[str, Any] = {**record.to_json(), "format": _FORMAT}
    body["crc32"] = zlib.crc32(_canonical(body))
    final = Path(data_dir) / RECORD_FILE
    tmp = final.with_name(RECORD_FILE + ".tmp")
    with tmp.open("wb") as f:
        f.write(_canonical(body) + b"\n")
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, final)
    if fsync:
        fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_record(data_dir: Path) -> BootstrapRecord | None:
    """The record in `data_dir`, None if there is none; ValueError if it is damaged."""
    path = Path(data_dir) / RECORD_FILE
    try:
        raw = path.read_bytes()[: 1 << 20]
    except FileNotFoundError:
        return None
    try:
        obj = json.loads(raw)
        crc = obj.pop("crc32")
        if obj.get("format") != _FORMAT or zlib.crc32(_canonical(obj)) != crc:
            raise ValueError("bad checksum or format")
        del obj["format"]
        record = BootstrapRecord.from_json(obj)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"{path}: the bootstrap record is damaged ({exc})") from None
    if not record.consistent():
        raise ValueError(f"{path}: the bootstrap record does not match its cluster id")
    return record


REMOVED_FILE = "REMOVED"


def write_removed(data_dir: Path, message: str, fsync: bool = True) -> None:
    """Remember, durably, that this data dir's member was removed (the node found
    out at run time, from a committed configuration without it): it never starts
    on this data dir again, and says why."""
    path = Path(data_dir) / REMOVED_FILE
    tmp = path.with_name(REMOVED_FILE + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(message + "\n")
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)


def read_removed(data_dir: Path) -> str | None:
    try:
        return (Path(data_dir) / REMOVED_FILE).read_text(encoding="utf-8", errors="replace")[
            :4096
        ].strip()
    except FileNotFoundError:
        return None


def fresh_member_id(name: str) -> str:
    """A member id for a new incarnation of `name`: never one used before."""
    return f"{name}-{secrets.token_hex(6)}"


# ------------------------------------------------------------------ peer answers


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    """A peer's `GET /raft/identity` answer (see `trioraft.cluster_api`)."""

    name: str
    state: str  # "empty" (deciding), "joining" (waiting to be admitted), "member"
    nonce: str = ""
    advertise: str = ""
    expected: frozenset[str] = frozenset()  # names it expects at bootstrap
    cluster_id: str = ""
    member_id: str = ""
    record: BootstrapRecord | None = None
    configuration: Configuration = field(default_factory=Configuration)
    committed: Configuration = field(default_factory=Configuration)
    committed_index: int = 0
    leader_id: str | None = None
    leader_url: str | None = None

    @classmethod
    def from_json(cls, obj: object) -> PeerAnswer:
        """Parse strictly; ValueError on anything malformed (a peer is outside input)."""
        if not isinstance(obj, dict):
            raise ValueError("an identity answer is an object")

        def s(key: str, empty_ok: bool = True) -> str:
            v = obj.get(key, "")
            if v is None:
                v = ""
            if not isinstance(v, str) or len(v) > 2048 or (not v and not empty_ok):
                raise ValueError(f"bad field {key!r}")
            return v

        state = s("state")
        if state not in ("empty", "joining", "member"):
            raise ValueError(f"unknown state {state!r}")
        expected = obj.get("expected", [])
        if not isinstance(expected, list) or len(expected) > 64 or not all(
            isinstance(e, str) and 0 < len(e) <= MAX_MEMBER_ID_LEN for e in expected
        ):
            raise ValueError("bad field 'expected'")
        record = obj.get("bootstrap")
        index = obj.get("committed_index", 0)
        if type(index) is not int or not 0 <= index < 2**62:
            raise ValueError("bad field 'committed_index'")
        leader = obj.get("leader") or {}
        if not isinstance(leader, dict):
            raise ValueError("bad field 'leader'")
        lid, lurl = leader.get("member_id"), leader.get("url")
        if lid is not None and not _short_str(lid):
            raise ValueError("bad leader id")
        if lurl is not None and (not isinstance(lurl, str) or len(lurl) > 2048):
            raise ValueError("bad leader url")
        return cls(
            name=s("name", empty_ok=False), state=state, nonce=s("nonce"),
            advertise=s("advertise"), expected=frozenset(expected),
            cluster_id=s("cluster_id"), member_id=s("member_id"),
            record=BootstrapRecord.from_json(record) if record is not None else None,
            configuration=Configuration.from_json(obj.get("configuration", [])),
            committed=Configuration.from_json(obj.get("committed", [])),
            committed_index=index, leader_id=lid, leader_url=lurl,
        )  # fmt: skip


# -------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """Write `record` (ours or a peer's that holds our nonce) and its entry 1."""

    record: BootstrapRecord
    finishing: bool  # a peer bootstrapped already with our nonce in its record


@dataclass(frozen=True, slots=True)
class Join:
    """An existing cluster: join it under a fresh member id."""

    cluster_id: str
    seed: Configuration  # its latest configuration, as a member reported it
    via: str  # the name of the member that answered


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing can be decided yet; `reason` says why (logged, and in /status)."""

    reason: str


Decision = Bootstrap | Join | Wait


def decide(
    name: str,
    nonce: str,
    advertise: str,
    expected: frozenset[str],
    answers: Mapping[str, PeerAnswer | str],
    *,
    join: bool,
) -> Decision:
    """What an empty node does, given its peers' answers (or why each did not answer).

    `expected` is every initial member's name, ours included; `answers` is
    keyed by the name we asked (the --peer or --join name) and holds an
    error sentence for a peer that did not answer. With `join` (--join) the
    node never bootstraps.
    """
    got = {k: a for k, a in answers.items() if isinstance(a, PeerAnswer)}
    for asked, a in got.items():
        if not join and a.name != asked:
            return Wait(f"the node at --peer {asked} says its name is {a.name!r}: fix the "
                        "--peer flags (or that node's --id)")  # fmt: skip
    members = [a for a in got.values() if a.state == "member" and a.cluster_id]
    if members:
        clusters = sorted({a.cluster_id for a in members})
        if len(clusters) > 1:
            return Wait("the reachable members belong to different clusters "
                        f"({', '.join(clusters)}): check the --peer / --join URLs")
        if not join:
            for a in members:
                r = a.record
                if r is not None and r.cluster_id == a.cluster_id and nonce in r.nonces and (
                    r.consistent() and name in {m.display_name for m in r.config.members}
                ):
                    return Bootstrap(r, finishing=True)
        best = max(members, key=lambda a: (a.leader_id == a.member_id, a.committed_index))
        return Join(best.cluster_id, best.configuration, best.name)
    if join:
        missing = ", ".join(f"{k} ({a})" for k, a in answers.items() if isinstance(a, str))
        return Wait("no member of the cluster to join answered yet"
                    + (f": {missing}" if missing else ""))  # fmt: skip
    down = {k: a for k, a in answers.items() if isinstance(a, str)}
    if down:
        return Wait("waiting for every initial member to be reachable before bootstrapping "
                    "a new cluster: " + "; ".join(f"{k}: {v}" for k, v in sorted(down.items())))
    joining = sorted(k for k, a in got.items() if a.state == "joining")
    if joining:
        return Wait(f"{', '.join(joining)} {'is' if len(joining) == 1 else 'are'} waiting to "
                    "join an existing cluster, but no member of it answers yet")  # fmt: skip
    for asked, a in sorted(got.items()):
        if a.expected != expected:
            return Wait(
                f"{asked} expects the initial members {sorted(a.expected)}, this node "
                f"{sorted(expected)}: every node must list the same members"
            )
        if not a.nonce:
            return Wait(f"{asked} has no bootstrap nonce yet")
    config = Configuration.of(
        [Member(name, True, name, advertise)]
        + [Member(a.name, True, a.name, a.advertise) for a in got.values()]
    )
    return Bootstrap(BootstrapRecord.new(config, [nonce, *(a.nonce for a in got.values())]),
                     finishing=False)  # fmt: skip


# ------------------------------------------------------------------ peer requests


def peer_headers(token: str | None) -> dict[str, str]:
    """The headers that authenticate a peer request (the cluster token)."""
    return {TOKEN_HEADER: token} if token else {}


class PeerCredentials(Protocol):
    """What a node authenticates its peer HTTP requests with (a NodeConfig)."""

    @property
    def cluster_token(self) -> str | None: ...

    @property
    def peer_tls_files(self) -> tuple[Path, Path, Path] | None: ...

    @property
    def tls_ca(self) -> Path | None: ...


class _PeerTlsTransport(httpx.AsyncBaseTransport):
    """Peer HTTP over mutual TLS: every request goes over TLS with this node's peer
    certificate (whatever the URL's scheme: the scheme tells *clients* how to
    reach a member; peers use TLS exactly when peer TLS is configured, as the
    peer streams do), asking for the acceptor's peer certificate (`PEER_SNI`)."""

    def __init__(self, inner: httpx.AsyncHTTPTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "http":
            request.url = request.url.copy_with(scheme="https")
        request.extensions["sni_hostname"] = PEER_SNI
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def peer_http_client(creds: PeerCredentials, timeout: float = 2.0) -> httpx.AsyncClient:
    """The HTTP client for node-to-node requests (identity, re-admission, relays).

    The one place peer HTTP is configured: the cluster token, and with peer
    TLS the node's peer certificate, trusting only the cluster CA (the
    acceptor's routes check the certificate, `cluster_api._peer_authorized`).
    """
    headers = peer_headers(creds.cluster_token)
    files = creds.peer_tls_files
    if files is None:
        # No peer TLS: an https:// member URL is its client-facing certificate,
        # verified against --tls-ca if given, else the system's trust store.
        verify: ssl.SSLContext | bool = True
        if creds.tls_ca is not None:
            verify = ssl.create_default_context(cafile=str(creds.tls_ca))
        return httpx.AsyncClient(trust_env=False, timeout=timeout, headers=headers,
                                 verify=verify)  # fmt: skip
    inner = httpx.AsyncHTTPTransport(verify=peer_client_context(*files))
    return httpx.AsyncClient(trust_env=False, timeout=timeout, headers=headers,
                             transport=_PeerTlsTransport(inner))  # fmt: skip


async def ask_identity(http: httpx.AsyncClient, url: str) -> PeerAnswer | str:
    """A peer's identity answer, or a short sentence saying why there is none."""
    try:
        r = await http.get(url.rstrip("/") + IDENTITY_PATH)
    except httpx.HTTPError as exc:
        return f"is unreachable ({type(exc).__name__})"
    if r.status_code == 401:
        return "refused our cluster token (401): every node needs the same --cluster-token"
    if r.status_code != 200:
        return f"answered {r.status_code} on {IDENTITY_PATH} (an older trioraft?)"
    if len(r.content) > _MAX_ANSWER:
        return "sent an oversized identity answer"
    try:
        return PeerAnswer.from_json(r.json())
    except (ValueError, RecursionError) as exc:
        return f"sent a malformed identity answer ({exc})"
