"""The transport contract: what a node asks of its transport, and what it provides to it.

Two implementations keep it: `StreamTransport` (framed peer streams over TCP,
the production one) and `MemoryNetwork.transport(id)` (in-process, with fault
knobs, for tests). A node is written against `Transport` and `Inbound` only,
so node tests exercise the same node code as production.

Outcomes are definite wherever they can be:

- `send` never blocks and may drop (Raft resends: heartbeats and probes).
- `relay_writes` raises `NoLeader` when the writes certainly never reached the
  peer (no stream, or still queued when the stream broke: safe to retry), and
  `UnknownOutcome` when they may have (sent, and no answer arrived in time or
  the stream broke): never leaves a request dangling.
- `send_snapshot` returns once the receiver has staged every byte and
  accepted the transfer, or raises `LinkError`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from trioraft.core import InstallSnapshot, Message

__all__ = [
    "TOKEN_HEADER",
    "ChunkReader",
    "Inbound",
    "LinkError",
    "RelayAnswer",
    "RelayCode",
    "SnapshotOffer",
    "Transport",
]


# The HTTP header that carries the cluster token on the course JSON routes.
TOKEN_HEADER = "X-Cluster-Token"


class LinkError(Exception):
    """A message, chunk or transfer could not be delivered (Raft will resend)."""


class RelayCode(enum.IntEnum):
    """The fate of one relayed write, as the leader reports it."""

    OK = 0  # applied: its result is in the answer
    DROPPED = 1  # appended, then another leader's entry took its index: never applies
    NOT_LEADER = 2  # not appended: the receiver does not lead
    NO_QUORUM = 3  # not appended in time: never applies
    UNKNOWN = 4  # appended, fate unknown in time: may or may not apply
    INVALID = 5  # refused as malformed: never applies
    OVERLOADED = 6  # refused, queue full: never applies
    SHUTTING_DOWN = 7  # refused, the leader is stopping: never applies


@dataclass(frozen=True, slots=True)
class RelayAnswer:
    """One code per relayed write, and the results of the OK ones (in order).

    `results` is opaque to the transport: the node's encoding of the results.
    """

    codes: tuple[int, ...]
    results: bytes


@dataclass(frozen=True, slots=True)
class SnapshotOffer:
    """A snapshot transfer: the core's InstallSnapshot, and the size and CRC32 of the
    whole data (the sender's storage reader knows both before the first chunk).

    (msg.meta, size, checksum) names the transfer: it travels with every chunk,
    and the receiver stages each transfer apart and checks the whole staged data
    against size and checksum before anything can install it.
    """

    msg: InstallSnapshot
    size: int
    checksum: int


# read_chunk(offset, size) -> up to `size` bytes of the snapshot from `offset`.
ChunkReader = Callable[[int, int], Awaitable[bytes]]


class Inbound(Protocol):
    """What a node provides to its transport: where arriving traffic goes."""

    def deliver(self, src: str, msgs: list[Message]) -> None:
        """Raft messages from `src` (already checked: every `m.src == src`). Never blocks."""
        ...

    async def relayed_writes(self, src: str, datas: list[bytes], timeout: float) -> RelayAnswer:
        """`src` asks us (as its leader) to propose `datas`; one outcome per write."""
        ...

    async def snapshot_chunk(
        self, src: str, offer: SnapshotOffer, offset: int, data: bytes, last: bool
    ) -> None:
        """Stage a chunk of the transfer `offer` names (in order; offset 0 (re)starts
        it). Raise ValueError to refuse the transfer."""
        ...


class Transport(Protocol):
    """What a node asks of its transport. Peers are named by member id."""

    async def run(
        self, inbound: Inbound, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the transport's tasks (dialing, delivery) until cancelled."""
        ...

    def add_peer(self, member_id: str, url: str) -> None:
        """Start talking to a new member (or change its URL), without a restart."""
        ...

    def remove_peer(self, member_id: str) -> None:
        """Stop talking to a member: its stream closes, pending requests to it fail."""
        ...

    def send(self, msg: Message) -> None:
        """Queue a Raft message for `msg.dst`; never blocks, may drop."""
        ...

    async def relay_writes(self, dst: str, datas: list[bytes], timeout: float) -> RelayAnswer:
        """Ask `dst` (the leader) to propose `datas`. NoLeader / UnknownOutcome, see above."""
        ...

    async def send_snapshot(self, offer: SnapshotOffer, read_chunk: ChunkReader) -> None:
        """Stream a snapshot to `offer.msg.dst` with flow control; LinkError on failure."""
        ...

    def status(self) -> dict[str, Any]:
        """Per-peer link state, for /status."""
        ...

    def peer_name(self, member_id: str) -> str | None:
        """The operator's name of member `member_id` (None: not a member we know): what
        its TLS certificate must name (`trioraft.tls.identity_error`)."""
        ...
