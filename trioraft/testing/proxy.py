"""A fault-injecting TCP proxy, for partitions and slow links between real processes.

Real network partitions need a network layer the test controls. Linux network
namespaces with packet filters do that, but need root and Linux; a user-space
TCP proxy on loopback needs neither and works the same on every machine and in
every CI sandbox. The price: the proxy only sees connections, not packets, so
"loss" is a connection reset (which is what a lost packet becomes to HTTP after
TCP gives up) and "delay" is added per chunk of bytes, not per packet.

One :class:`LinkProxy` sits on the connections node A opens to node B: A's
``--peer B=http://127.0.0.1:<proxy port>`` points at the proxy, which forwards to
B's real port. Between trioraft nodes that is one long-lived peer stream per
pair, opened by the member with the smaller id and carrying both directions
(Raft messages, relayed writes and answers, snapshot chunks), so the proxy
sees bytes going "up" (A to B) and "down" (B to A) on the same connection.
Faults:

``block()``   refuse new connections (accept, then close at once) and reset every
              open one: the partition ``A -/-> B``. ``unblock()`` heals it.
``delay``     seconds added to every chunk, in both directions, keeping order
              (a latency, not a bandwidth limit); ``delay_up`` / ``delay_down``
              add to one direction only.
``loss``      probability, per chunk forwarded, that the whole connection is
              reset; ``loss_up`` / ``loss_down`` for one direction only.
``block_down`` reset a connection as soon as a byte would flow down (B to A).

:class:`ProxyMesh` holds one proxy per ordered pair of node ids and speaks in
node terms: ``partition([{"n1","n2"}, {"n3","n4","n5"}])``, ``isolate("n1")``,
``bridge(...)``, ``heal()``, ``set_delay(...)``, ``set_loss(...)``. Its faults
act on the bytes *from* one node *to* another whichever of the two opened the
connection: ``set_delay("n3", "n1", s)`` delays the ``n3 -> n1`` direction of
the stream n1 opened (through proxy n1->n3, downwards) as well as of any
connection n3 opens (proxy n3->n1, upwards). A stream cannot carry one
direction only, so ``block(a, b)`` breaks the pair's stream either way::

    async with trio.open_nursery() as nursery:
        mesh = await ProxyMesh.open(nursery, ["n1", "n2", "n3"])
        mesh.set_targets({"n1": 4001, "n2": 4002, "n3": 4003})
        url = mesh.url("n1", "n2")    # what n1 uses to reach n2
        mesh.partition([{"n1"}, {"n2", "n3"}])
        mesh.heal()
        nursery.cancel_scope.cancel()

Every listener binds port 0 on 127.0.0.1 (the kernel picks), so proxies exist
before the nodes' ports are chosen and never collide with them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterable, Sequence

import trio

__all__ = ["LinkProxy", "ProxyMesh"]

_CHUNK = 1 << 16


class _Conn:
    """One proxied connection: both streams and the scope that runs its pumps."""

    __slots__ = ("downstream", "scope", "upstream")

    def __init__(self, downstream: trio.SocketStream) -> None:
        self.downstream = downstream
        self.upstream: trio.SocketStream | None = None
        self.scope = trio.CancelScope()


class LinkProxy:
    """Forward TCP connections from ``127.0.0.1:port`` to ``target_host:target_port``.

    Start it with ``await nursery.start(proxy.serve)``; :attr:`port` is then the
    port it listens on. The target may be set (or changed) later, before the first
    connection arrives; until then connections are closed at once.
    """

    def __init__(
        self,
        target_port: int | None = None,
        *,
        target_host: str = "127.0.0.1",
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        name: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = listen_port
        self.name = name
        self.blocked = False
        self.delay = 0.0
        """Seconds added to every chunk forwarded, each way."""
        self.loss = 0.0
        """Probability that forwarding a chunk resets the connection instead."""
        self.delay_up = self.delay_down = 0.0
        """Extra seconds for chunks going up (client to target) or down."""
        self.loss_up = self.loss_down = 0.0
        self.block_down = False
        """Reset a connection when a chunk would flow down (target to client)."""
        self._rng = rng if rng is not None else random.Random()
        self._conns: set[_Conn] = set()
        # Counters, for tests and reports.
        self.accepted = 0
        self.refused = 0
        self.reset = 0
        self.bytes_forwarded = 0

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # -- faults --------------------------------------------------------------

    def block(self) -> None:
        """Partition this direction: refuse new connections, reset the open ones."""
        self.blocked = True
        self.reset_all()

    def unblock(self) -> None:
        self.blocked = False
        self.block_down = False

    def reset_all(self) -> None:
        """Reset every open connection now (both ends see it closed)."""
        for conn in list(self._conns):
            self._kill(conn)

    def clear(self) -> None:
        """No fault: unblocked, no delay, no loss."""
        self.blocked = False
        self.delay = 0.0
        self.loss = 0.0
        self.delay_up = self.delay_down = 0.0
        self.loss_up = self.loss_down = 0.0
        self.block_down = False

    def _kill(self, conn: _Conn) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            self.reset += 1
        conn.scope.cancel()

    # -- serving -------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and forward until cancelled; reports the listening port when started."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.listen_host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        conn = _Conn(downstream)
        try:
            if self.blocked or self.target_port is None:
                self.refused += 1
                return
            self.accepted += 1
            self._conns.add(conn)
            with conn.scope:
                try:
                    conn.upstream = await trio.open_tcp_stream(self.target_host, self.target_port)
                except OSError:
                    return  # the node is down: the client sees its connection closed
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, conn, downstream, conn.upstream, True)
                    nursery.start_soon(self._pump, conn, conn.upstream, downstream, False)
        finally:
            self._conns.discard(conn)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(downstream)
                if conn.upstream is not None:
                    await trio.aclose_forcefully(conn.upstream)

    async def _pump(
        self, conn: _Conn, src: trio.SocketStream, dst: trio.SocketStream, up: bool
    ) -> None:
        """Copy src -> dst; each chunk waits out the delay in force when it arrived.

        A reader task stamps chunks with their delivery time and a writer task
        sends them in order when due, so delay adds latency without capping
        throughput. EOF or an error on either side ends the whole connection.
        """
        send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)

        async def reader() -> None:
            async with send:
                while True:
                    try:
                        data = await src.receive_some(_CHUNK)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    if not data:
                        break
                    loss = self.loss + (self.loss_up if up else self.loss_down)
                    if (loss and self._rng.random() < loss) or (not up and self.block_down):
                        self._kill(conn)
                        return
                    delay = self.delay + (self.delay_up if up else self.delay_down)
                    send.send_nowait((trio.current_time() + delay, data))

        async def writer() -> None:
            async with receive:
                async for due, data in receive:
                    if self.blocked or (not up and self.block_down):
                        self._kill(conn)
                        return
                    await trio.sleep_until(due)
                    try:
                        await dst.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    self.bytes_forwarded += len(data)
            # EOF from src (and everything before it delivered): close the
            # whole connection. HTTP/1.1 peers never half-close, so this loses nothing.
            conn.scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(writer)


class ProxyMesh:
    """One :class:`LinkProxy` per ordered pair of nodes, and faults in node terms."""

    def __init__(self, ids: Sequence[str], rng: random.Random | None = None) -> None:
        self.ids = list(ids)
        rng = rng if rng is not None else random.Random()
        self.links: dict[tuple[str, str], LinkProxy] = {
            (a, b): LinkProxy(name=f"{a}->{b}", rng=random.Random(rng.random()))
            for a in self.ids
            for b in self.ids
            if a != b
        }

    @classmethod
    async def open(
        cls, nursery: trio.Nursery, ids: Sequence[str], rng: random.Random | None = None
    ) -> ProxyMesh:
        """Create the mesh and start every proxy in `nursery` (cancel it to stop them)."""
        mesh = cls(ids, rng)
        for link in mesh.links.values():
            await nursery.start(link.serve)
        return mesh

    def set_targets(self, ports: dict[str, int], host: str = "127.0.0.1") -> None:
        """Where each node really listens: proxies ``* -> B`` forward to ``ports[B]``."""
        for (_a, b), link in self.links.items():
            link.target_host, link.target_port = host, ports[b]

    def port(self, src: str, dst: str) -> int:
        return self.links[src, dst].port

    def url(self, src: str, dst: str) -> str:
        """The URL `src` must use for `dst` (its ``--peer dst=...``)."""
        return f"http://127.0.0.1:{self.links[src, dst].port}"

    # -- partitions ------------------------------------------------------------

    def can_reach(self, src: str, dst: str) -> bool:
        return not self.links[src, dst].blocked

    def block(self, src: str, dst: str) -> None:
        """Nothing gets from src to dst: src's connections to dst are refused, and
        a stream dst opened to src breaks as soon as src sends on it."""
        self.links[src, dst].block()
        back = self.links[dst, src]
        back.block_down = True
        back.reset_all()

    def unblock(self, src: str, dst: str) -> None:
        self.links[src, dst].blocked = False
        self.links[dst, src].block_down = False

    def cut(self, a: str, b: str) -> None:
        """Block both directions between a and b."""
        self.block(a, b)
        self.block(b, a)

    def partition(self, groups: Iterable[Collection[str]]) -> None:
        """Only nodes in the same group talk; nodes in no group are isolated.
        Replaces any previous partition (links inside a group are unblocked)."""
        group_of: dict[str, int] = {}
        for k, group in enumerate(groups):
            for node in group:
                group_of[node] = k
        for k, node in enumerate(self.ids):  # a group of its own: below every real one
            group_of.setdefault(node, -1 - k)
        for a, b in self.links:
            if group_of[a] == group_of[b]:
                self.unblock(a, b)
            else:
                self.block(a, b)

    def isolate(self, node: str) -> None:
        """Cut `node` off from everyone (others still talk to each other)."""
        self.partition([{node}, [i for i in self.ids if i != node]])

    def bridge(self, left: Collection[str], bridge: str, right: Collection[str]) -> None:
        """Two halves that cannot talk to each other, both connected to `bridge`."""
        self.heal_partitions()
        for a in left:
            for b in right:
                self.cut(a, b)

    def heal_partitions(self) -> None:
        for link in self.links.values():
            link.unblock()

    # -- link quality ------------------------------------------------------------

    def set_delay(self, src: str, dst: str, seconds: float) -> None:
        """Bytes from src to dst take `seconds` longer (on either proxy of the pair)."""
        self.links[src, dst].delay_up = seconds
        self.links[dst, src].delay_down = seconds

    def set_loss(self, src: str, dst: str, probability: float) -> None:
        """Each chunk from src to dst resets its connection with `probability`."""
        self.links[src, dst].loss_up = probability
        self.links[dst, src].loss_down = probability

    def heal(self) -> None:
        """No faults anywhere: every link unblocked, no delay, no loss."""
        for link in self.links.values():
            link.clear()

    def reset_node(self, node: str) -> None:
        """Reset every connection to or from `node` (e.g. after it was killed)."""
        for (a, b), link in self.links.items():
            if node in (a, b):
                link.reset_all()

    def describe(self) -> str:
        """Which links are faulty, e.g. ``n1->n2 blocked; n3->n1 delay=0.100``."""
        parts = []
        for (a, b), link in self.links.items():
            faults = []
            if link.blocked:
                faults.append("blocked")
            if link.delay or link.delay_up:
                faults.append(f"delay={link.delay + link.delay_up:.3f}")
            if link.loss or link.loss_up:
                faults.append(f"loss={link.loss + link.loss_up:.2f}")
            if faults:
                parts.append(f"{a}->{b} " + ",".join(faults))
        return "; ".join(parts) or "healthy"
