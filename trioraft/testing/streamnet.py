"""Production peer streams, wired together in memory: `StreamTransport`s without sockets.

    net = StreamNetwork()
    t1 = net.transport("n1", ["n2", "n3"])      # a real StreamTransport
    net.partition({"n1"}, {"n2", "n3"})          # cut streams, refuse new ones
    net.heal()

Each dial becomes a `trio.testing.memory_stream_pair()` whose far end is
handed to the target transport's `accept()`, exactly as the node's listener
hands over a TCP connection that starts with the peer preamble. So the frame
format, the handshake, the coalescing writer, relayed writes, snapshot flow
control and reconnection all run as in production, under trio's MockClock
(virtual time) and without ports. A partition closes every stream crossing
it and refuses new ones (a connection refused), as the fault proxy does
between real processes.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

import trio
import trio.testing

from trioraft.transport import StreamConfig, StreamTransport

__all__ = ["StreamNetwork"]


_Pipe = trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]


def _url(member_id: str) -> str:
    return f"http://{member_id}.invalid:1"


class StreamNetwork:
    def __init__(self, config: StreamConfig | None = None, token: str | None = None) -> None:
        self.config = config or StreamConfig()
        self.token = token
        self.transports: dict[str, StreamTransport] = {}
        self.blocked: set[tuple[str, str]] = set()
        self._pipes: list[tuple[str, str, _Pipe]] = []
        self.dials = 0

    def transport(
        self, member_id: str, peers: Iterable[str], *, token: str | None = None
    ) -> StreamTransport:
        t = StreamTransport(
            member_id,
            {p: _url(p) for p in peers if p != member_id},
            token=token if token is not None else self.token,
            config=self.config,
            open_stream=lambda host, port: self._connect(member_id, host),
        )
        self.transports[member_id] = t
        return t

    async def _connect(self, src: str, host: str) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        dst = host.removesuffix(".invalid")
        target = self.transports.get(dst)
        if target is None or (src, dst) in self.blocked or (dst, src) in self.blocked:
            raise OSError(errno.ECONNREFUSED, f"{src} cannot reach {dst}")
        near, far = trio.testing.memory_stream_pair()
        if not target.accept(far):
            raise OSError(errno.ECONNREFUSED, f"{dst} is not running")
        self.dials += 1
        self._pipes.append((src, dst, near))
        self._pipes.append((dst, src, far))
        return near

    def _cut(self) -> None:
        keep = []
        for a, b, end in self._pipes:
            if (a, b) in self.blocked or (b, a) in self.blocked:
                end.send_stream.close()
                end.receive_stream.close()
            else:
                keep.append((a, b, end))
        self._pipes = keep

    def partition(self, *groups: set[str]) -> None:
        """Cut every stream between different groups; refuse new ones."""
        self.blocked = {
            (a, b) for g in groups for h in groups if g is not h for a in g for b in h
        }
        self._cut()

    def isolate(self, member_id: str) -> None:
        others = set(self.transports) - {member_id}
        self.partition({member_id}, others)

    def heal(self) -> None:
        self.blocked = set()
