"""Finding the leader (or the followers) among the endpoints before a run.

trioraft answers ``GET /status`` with ``id`` and ``leader``; etcd's JSON gateway
answers ``POST /v3/maintenance/status`` with ``header.member_id`` and ``leader``
(member ids as decimal strings). Both are reduced to ``{"id", "leader"}``.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx
import trio

from ._workload import Protocol

__all__ = ["Target", "find_targets", "node_status"]

Target = Literal["all", "leader", "followers"]


async def node_status(
    client: httpx.AsyncClient, url: str, protocol: Protocol = "trioraft"
) -> dict[str, Any] | None:
    """The node's status (trioraft's whole ``/status``; for etcd ``id`` and ``leader``),
    or None when it does not answer well."""
    try:
        if protocol == "etcd":
            resp = await client.post(url.rstrip("/") + "/v3/maintenance/status", json={})
        else:
            resp = await client.get(url.rstrip("/") + "/status")
        data = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if protocol == "etcd":
        header = data.get("header")
        member = header.get("member_id") if isinstance(header, dict) else None
        leader = data.get("leader")
        if member is None:
            return None
        return {"id": str(member), "leader": str(leader) if leader not in (None, "0") else None}
    return data


async def find_targets(
    endpoints: tuple[str, ...],
    target: Target,
    *,
    wait: float = 5.0,
    protocol: Protocol = "trioraft",
) -> tuple[tuple[str, ...], str | None]:
    """Resolve ``target`` to URLs via the nodes' status; returns (urls, leader id).

    ``all`` needs no lookup (the leader is reported when one answers). ``leader``
    and ``followers`` wait up to ``wait`` seconds for a node to name a leader.
    """
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        deadline = trio.current_time() + wait
        while True:
            statuses: dict[str, dict[str, Any]] = {}
            for url in endpoints:
                st = await node_status(client, url, protocol)
                if st is not None:
                    statuses[url] = st
            leader = next(
                (s["leader"] for s in statuses.values() if isinstance(s.get("leader"), str)), None
            )
            if target == "all":
                return endpoints, leader
            if leader is not None:
                break
            if trio.current_time() >= deadline:
                raise RuntimeError(f"no leader reported by {', '.join(endpoints)} within {wait}s")
            await trio.sleep(0.2)
    ids = {url: s.get("id") for url, s in statuses.items()}
    if target == "followers":
        followers = tuple(u for u in endpoints if u in ids and ids[u] != leader)
        if not followers:
            raise RuntimeError("no follower among the endpoints answered /status")
        return followers, leader
    for url in endpoints:
        if ids.get(url) == leader:
            return (url,), leader
    for st in statuses.values():
        members = st.get("members")
        member = members.get(leader) if isinstance(members, dict) else None
        if isinstance(member, dict) and isinstance(member.get("url"), str):
            return (member["url"],), leader
    raise RuntimeError(f"leader {leader!r} has no known URL")
