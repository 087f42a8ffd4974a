"""`trioraft member ...`, `leader transfer`, `snapshot save`, `restore` (issue 12).

    trioraft member list
    trioraft member add NAME URL [--learner] [--timeout S]
    trioraft member promote NAME [--wait S]
    trioraft member remove NAME
    trioraft leader transfer [--to NAME] [--timeout S]
    trioraft snapshot save FILE
    trioraft restore FILE --data-dir DIR --id NAME [--advertise URL]

The membership commands talk to any endpoint (a follower relays to the
leader); a refusal is exit status 1 with the server's sentence (nothing
changed), an unreachable cluster or an unknown outcome exit status 3.
`restore` works offline, on a data dir (docs/operations.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from .client import DEFAULT_ENDPOINTS, normalize_endpoints

__all__ = ["add_commands"]

ENDPOINTS_ENV = "TRIORAFT_ENDPOINTS"
TOKEN_ENV = "TRIORAFT_TOKEN"  # a client bearer token (write role) for these commands
OK, FAILURE, USAGE, UNAVAILABLE = 0, 1, 2, 3

Handler = Callable[[argparse.Namespace, Mapping[str, str]], int]


class _Unavailable(Exception):
    pass


def _endpoints(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[str, ...]:
    raw = getattr(args, "endpoints", None) or env.get(ENDPOINTS_ENV) or ",".join(DEFAULT_ENDPOINTS)
    try:
        return normalize_endpoints(raw)
    except ValueError as exc:
        parser: argparse.ArgumentParser = args.parser
        parser.error(f"--endpoints: {exc}")


def _headers(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str]:
    token = getattr(args, "token", None) or env.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _call(
    args: argparse.Namespace, env: Mapping[str, str], method: str, path: str,
    body: dict[str, Any] | None = None, *, timeout: float | None = None,
) -> httpx.Response:
    """One operation: tried on each endpoint in turn, retried while the answer is a
    definite "not now" (503, 409 change_in_progress) or no node answers, until the
    deadline. Returns the first other answer."""
    endpoints = _endpoints(args, env)
    timeout = timeout or getattr(args, "timeout", None) or 30.0
    deadline = time.monotonic() + timeout
    last = "no endpoint answered"
    sent = False
    with httpx.Client(trust_env=False, headers=_headers(args, env)) as http:
        while time.monotonic() < deadline:
            for url in endpoints:
                remaining = max(0.5, deadline - time.monotonic())
                try:
                    r = http.request(method, url + path, json=body,
                                     timeout=httpx.Timeout(remaining + 5, connect=1.0))
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    last = f"{url}: {exc}"
                    continue
                except httpx.HTTPError as exc:
                    sent = sent or method != "GET"
                    last = f"{url}: {exc!r}"
                    continue
                code = _code(r)
                if r.status_code == 503 or code == "change_in_progress":
                    last = f"{url}: {r.status_code} {_message(r)}"
                    continue
                return r
            time.sleep(0.3)
    if sent:
        raise _Unavailable(f"no answer in time; the change may or may not have happened "
                           f"(last: {last}): check `trioraft member list`")  # fmt: skip
    raise _Unavailable(f"the cluster could not be reached or has no leader (last: {last})")


def _code(r: httpx.Response) -> str | None:
    try:
        body = r.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def _message(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:300]
    if isinstance(body, dict) and "error" in body:
        return f"{body['error']} ({body.get('code')})"
    return r.text[:300]


def _result(args: argparse.Namespace, r: httpx.Response, text: Callable[[Any], str]) -> int:
    if r.status_code == 200:
        body = r.json()
        if getattr(args, "json", False):
            import json

            print(json.dumps(body))
        else:
            print(text(body))
        return OK
    print(f"trioraft: {_message(r)}", file=sys.stderr)
    return UNAVAILABLE if r.status_code == 504 else FAILURE


def _guard(fn: Handler) -> Handler:
    def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
        try:
            return fn(args, env)
        except _Unavailable as exc:
            print(f"trioraft: {exc}", file=sys.stderr)
            return UNAVAILABLE

    return run


# ------------------------------------------------------------------- commands


def _member_list(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    r = _call(args, env, "GET", "/cluster/members")
    if r.status_code != 200 or getattr(args, "json", False):
        return _result(args, r, str)
    body = r.json()
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cluster {body['cluster_id']}"
                  + ("" if body.get("from_leader") else " (no leader: this node's view)"))
    for col in ("name", "member id", "url", "role", "match", "lag", "replication", "reachable"):
        table.add_column(col, justify="right" if col in ("match", "lag") else "left")
    for m in body["members"]:
        role = ("leader" if m.get("leader") else "voter") if m["voter"] else "learner"
        table.add_row(m["name"], m["member_id"], m["url"], role,
                      str(m.get("match_index", "-")), str(m.get("lag", "-")),
                      m.get("replication", "-"),
                      {True: "yes", False: "NO"}.get(m.get("reachable"), "-"))  # fmt: skip
    console = Console() if sys.stdout.isatty() else Console(width=200, no_color=True)
    console.print(table)
    if body.get("change_in_progress"):
        print("a membership change is in progress", file=sys.stderr)
    return OK


def _member_add(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    timeout = getattr(args, "timeout", None) or 120.0
    body = {"name": args.name, "url": args.url.rstrip("/"), "promote": not args.learner,
            "timeout_ms": int(timeout * 1000)}  # fmt: skip
    r = _call(args, env, "POST", "/cluster/members", body, timeout=timeout + 10)

    def text(b: Any) -> str:
        role = "voter" if b["voter"] else "learner"
        out = f"added {b['name']} (member id {b['member_id']}) as a {role}"
        return out + (f"\n{b['note']}" if b.get("note") else "")

    code = _result(args, r, text)
    if code == OK and not args.learner and not r.json().get("voter"):
        return FAILURE  # added, but not promoted in time (the note says so)
    return code


def _member_promote(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    body = {"wait_ms": int(args.wait * 1000)} if args.wait else {}
    r = _call(args, env, "POST", f"/cluster/members/{args.name}/promote", body,
              timeout=(args.wait or 0) + 30)  # fmt: skip
    return _result(args, r, lambda b: f"promoted {b['name']} (member id {b['member_id']})")


def _member_remove(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    r = _call(args, env, "DELETE", f"/cluster/members/{args.name}")
    return _result(args, r, lambda b: f"removed {b['name']} (member id {b['member_id']}); "
                   "the node stops")  # fmt: skip


def _leader_transfer(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    body: dict[str, Any] = {"to": args.to}
    if args.transfer_timeout:
        body["timeout_ms"] = int(args.transfer_timeout * 1000)
    r = _call(args, env, "POST", "/cluster/leader/transfer", body)
    return _result(args, r, lambda b: f"leader: {b['leader']} (was {b['previous']})")


def _snapshot_save(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from .backup import decode_backup

    r = _call(args, env, "GET", "/cluster/snapshot",
              timeout=getattr(args, "timeout", None) or 300.0)  # fmt: skip
    if r.status_code != 200:
        return _result(args, r, str)
    backup = decode_backup(r.content)  # never write a file we could not restore
    path = Path(args.file)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(r.content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    print(f"saved {path}: index {backup.index}, term {backup.term}, {len(backup.data)} bytes "
          f"of state, from {backup.name} of cluster {backup.cluster_id}")  # fmt: skip
    return OK


def _restore(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from .backup import restore

    advertise = args.advertise or f"http://{args.id}:3000"
    try:
        raw = Path(args.file).read_bytes()
        cluster_id, backup = restore(raw, args.data_dir, args.id, advertise)
    except (OSError, ValueError) as exc:
        print(f"trioraft: restore failed, nothing written: {exc}", file=sys.stderr)
        return FAILURE
    print(
        f"restored index {backup.index} of cluster {backup.cluster_id} into {args.data_dir} as "
        f"the only member ({args.id}, {advertise}) of a new cluster {cluster_id}.\nNext: start "
        f"it (trioraft serve --id {args.id} --data-dir {args.data_dir} --advertise {advertise} "
        "...), start every other node with an EMPTY data dir and --join "
        f"{advertise}, and add each: trioraft member add NAME URL"
    )
    return OK


# ------------------------------------------------------------------- parser


def _member(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    need = {"list": 0, "add": 2, "promote": 1, "remove": 1}[args.action]
    given = [a for a in (args.name, args.url) if a is not None]
    if len(given) != need:
        usage = {"list": "member list", "add": "member add NAME URL",
                 "promote": "member promote NAME", "remove": "member remove NAME"}
        args.parser.error(f"usage: trioraft {usage[args.action]}")
    handler = {"list": _member_list, "add": _member_add, "promote": _member_promote,
               "remove": _member_remove}[args.action]  # fmt: skip
    return _guard(handler)(args, env)


def add_commands(
    sub: Any, client_command: Callable[[str, str], argparse.ArgumentParser],
) -> None:
    """Register the commands on `trioraft`'s subparsers (`client_command` makes a
    command with the shared client options --endpoints, --timeout, --json)."""
    p = client_command(
        "member",
        "list, add, promote or remove cluster members: member list | member add NAME URL "
        "[--learner] | member promote NAME [--wait S] | member remove NAME",
    )
    p.add_argument("action", choices=("list", "add", "promote", "remove"), metavar="ACTION",
                   help="list, add, promote or remove")  # fmt: skip
    p.add_argument("name", nargs="?", metavar="NAME", help="the member's name (its --id)")
    p.add_argument("url", nargs="?", metavar="URL",
                   help="add: where the new node (running, empty, --join) listens")  # fmt: skip
    p.add_argument("--learner", action="store_true",
                   help="add: leave it a learner (no promotion)")  # fmt: skip
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="promote: wait up to this long for it to catch up first")  # fmt: skip
    p.set_defaults(handler=_member, parser=p)

    p = client_command("leader", "leader transfer [--to NAME]: hand leadership to a "
                       "caught-up voter (exit 1 if refused, 3 on timeout)")  # fmt: skip
    p.add_argument("action", choices=("transfer",), metavar="ACTION", help="transfer")
    p.add_argument("--to", metavar="NAME", default=None,
                   help="the new leader [the most caught-up voter]")  # fmt: skip
    p.add_argument("--transfer-timeout", type=float, default=None, metavar="SECONDS",
                   help="how long the leader waits for the hand-over [4 election timeouts]")
    p.set_defaults(handler=_guard(_leader_transfer), parser=p)

    p = client_command("snapshot", "snapshot save FILE: a consistent online backup (every "
                       "write acknowledged before the command started is in it)")  # fmt: skip
    p.add_argument("action", choices=("save",), metavar="ACTION", help="save")
    p.add_argument("file", metavar="FILE", type=Path)
    p.set_defaults(handler=_guard(_snapshot_save), parser=p)

    p = sub.add_parser(
        "restore", help="make a new one-member cluster's data dir from a backup",
        description="make DIR (empty) the data dir of the only member NAME of a NEW cluster "
        "holding the backup FILE (a new cluster id); then start it, and join the other "
        "nodes to it with empty data dirs (docs/operations.md)",
    )
    p.add_argument("file", metavar="FILE", type=Path)
    p.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    p.add_argument("--id", required=True, metavar="NAME", help="the node's name (--id)")
    p.add_argument("--advertise", metavar="URL",
                   help="how the other nodes will reach it [http://NAME:3000]")  # fmt: skip
    p.set_defaults(handler=_restore, parser=p)
