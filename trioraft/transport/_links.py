"""Peer links: how one node's replication task reaches another node.

`PeerLink` is the whole contract. `HttpPeerLink` speaks to a peer's
`/raft/messages` and `/raft/snapshot` routes over a keep-alive connection;
`MemoryNetwork` links nodes in one process (tests, simulations) with fault
knobs: partitions, loss and delay.
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
import trio

from trioraft.core import InstallSnapshot, Message
from trioraft.errors import NoLeader, NoQuorum, ProposalDropped, UnknownOutcome
from trioraft.transport._codec import encode_messages, meta_to_wire
from trioraft.transport._http_client import ConnectError, HttpPool, RequestError

__all__ = [
    "SNAPSHOT_HEADER",
    "TOKEN_HEADER",
    "HttpPeerLink",
    "LinkError",
    "MemoryNetwork",
    "PeerLink",
]

TOKEN_HEADER = "X-Cluster-Token"
SNAPSHOT_HEADER = "X-Raft-Snapshot"


class LinkError(Exception):
    """A message batch or chunk could not be delivered (Raft will resend)."""


class PeerLink(Protocol):
    async def send_messages(self, msgs: list[Message]) -> None: ...

    async def propose(self, datas: list[bytes], timeout: float) -> bytes:
        """Have this peer (the leader) replicate `datas`; its encoded results.

        Raises NotLeader/NoLeader (nothing was appended: safe to retry),
        ProposalDropped, NoQuorum, or UnknownOutcome (it may or may not apply).
        """
        ...

    async def send_snapshot_chunk(
        self, msg: InstallSnapshot, offset: int, data: bytes, done: bool
    ) -> None: ...

    async def aclose(self) -> None: ...


class HttpPeerLink:
    def __init__(self, url: str, token: str | None, timeout: float = 2.0) -> None:
        self._pool = HttpPool(url, max_idle=4)
        self._headers: list[tuple[str, str]] = [("Content-Type", "application/x-msgpack")]
        if token:
            self._headers.append((TOKEN_HEADER, token))
        self._timeout = timeout

    async def _post(self, target: str, body: bytes, extra: list[tuple[str, str]]) -> None:
        with trio.move_on_after(self._timeout) as scope:
            try:
                resp = await self._pool.request("POST", target, body, self._headers + extra)
            except RequestError as exc:
                raise LinkError(str(exc)) from None
        if scope.cancelled_caught:
            raise LinkError(f"{target}: timed out")
        if resp.status >= 300:
            raise LinkError(f"{target}: HTTP {resp.status} {resp.body[:200]!r}")

    async def send_messages(self, msgs: list[Message]) -> None:
        await self._post("/raft/messages", encode_messages(msgs), [])

    async def send_snapshot_chunk(
        self, msg: InstallSnapshot, offset: int, data: bytes, done: bool
    ) -> None:
        head = json.dumps(
            {"src": msg.src, "dst": msg.dst, "term": msg.term, "meta": meta_to_wire(msg.meta),
             "leader_commit": msg.leader_commit, "offset": offset, "done": done},
            separators=(",", ":"),
        )
        await self._post("/raft/snapshot", data, [(SNAPSHOT_HEADER, head)])

    async def propose(self, datas: list[bytes], timeout: float) -> bytes:
        body = msgspec.msgpack.encode(datas)
        try:
            with trio.fail_after(timeout):
                resp = await self._pool.request("POST", "/raft/propose", body, self._headers)
        except ConnectError:
            raise NoLeader("the leader cannot be reached") from None
        except (RequestError, trio.TooSlowError):
            raise UnknownOutcome("the leader did not answer in time") from None
        if resp.status == 200:
            return resp.body
        try:
            code = json.loads(resp.body).get("code", "")
        except ValueError:
            code = ""
        raise _PROPOSE_ERRORS.get(code, UnknownOutcome)(
            f"forwarded write refused by the leader: HTTP {resp.status} {code}"
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


# The leader's answer to a forwarded batch -> the error it stands for.
_PROPOSE_ERRORS: dict[str, type[Exception]] = {
    "not_leader": NoLeader,
    "no_leader": NoLeader,
    "dropped": ProposalDropped,
    "no_quorum": NoQuorum,
    "unknown_outcome": UnknownOutcome,
}


class MemoryReceiver(Protocol):
    def receive_messages(self, msgs: list[Message]) -> None: ...

    async def propose_encoded(self, datas: list[bytes], timeout: float | None = None) -> bytes: ...

    async def receive_snapshot_chunk(
        self, msg: InstallSnapshot, offset: int, data: bytes, done: bool
    ) -> None: ...


class MemoryNetwork:
    """An in-process network between nodes, with fault knobs for tests."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.nodes: dict[str, MemoryReceiver] = {}
        self.blocked: set[tuple[str, str]] = set()
        self.drop_rate = 0.0
        self.delay = 0.0  # seconds added to each delivery
        self.rng = rng or random.Random(0)

    def register(self, node_id: str, node: MemoryReceiver) -> None:
        self.nodes[node_id] = node

    def unregister(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)

    def partition(self, *groups: set[str]) -> None:
        """Cut every link between different groups."""
        self.blocked = {
            (a, b) for g in groups for h in groups if g is not h for a in g for b in h
        }

    def isolate(self, node_id: str) -> None:
        others = set(self.nodes) - {node_id}
        self.partition({node_id}, others)

    def heal(self) -> None:
        self.blocked = set()

    def link(self, src: str, dst: str) -> MemoryLink:
        return MemoryLink(self, src, dst)

    async def _deliver(
        self, src: str, dst: str, fn: Callable[[MemoryReceiver], Awaitable[None]]
    ) -> None:
        if (src, dst) in self.blocked or self.rng.random() < self.drop_rate:
            raise LinkError(f"{src} -> {dst}: unreachable")
        if self.delay:
            await trio.sleep(self.delay)
        node = self.nodes.get(dst)
        if node is None or (src, dst) in self.blocked:
            raise LinkError(f"{src} -> {dst}: unreachable")
        try:
            await fn(node)
        except ValueError as exc:  # what the HTTP route answers with a 4xx
            raise LinkError(f"{src} -> {dst}: refused: {exc}") from None


class MemoryLink:
    def __init__(self, net: MemoryNetwork, src: str, dst: str) -> None:
        self._net, self._src, self._dst = net, src, dst

    async def send_messages(self, msgs: list[Message]) -> None:
        async def go(node: MemoryReceiver) -> None:
            node.receive_messages(msgs)

        await self._net._deliver(self._src, self._dst, go)

    async def send_snapshot_chunk(
        self, msg: InstallSnapshot, offset: int, data: bytes, done: bool
    ) -> None:
        async def go(node: MemoryReceiver) -> None:
            await node.receive_snapshot_chunk(msg, offset, data, done)

        await self._net._deliver(self._src, self._dst, go)

    async def propose(self, datas: list[bytes], timeout: float) -> bytes:
        out: list[bytes] = []

        async def go(node: MemoryReceiver) -> None:
            out.append(await node.propose_encoded(datas, timeout))

        try:
            await self._net._deliver(self._src, self._dst, go)
        except LinkError:
            raise NoLeader(f"{self._dst} cannot be reached") from None
        return out[0]

    async def aclose(self) -> None:
        pass
