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
``rate_up`` / ``rate_down``  a bandwidth limit in bytes per second for one
              direction (0: none), a token bucket of ``burst`` bytes shared by
              the proxy's connections. Bytes wait in a small buffer (about half
              a second's worth) and the proxy's sockets have small receive
              buffers, so a sender that outruns the link is slowed down by TCP
              flow control, as on a real slow link, instead of filling memory.

:class:`ProxyMesh` holds one proxy per ordered pair of node ids and speaks in
node terms: ``partition([{"n1","n2"}, {"n3","n4","n5"}])``, ``isolate("n1")``,
``bridge(...)``, ``heal()``, ``set_delay(...)``, ``set_loss(...)``,
``set_rate(...)``, ``set_slow(...)`` (latency and bandwidth: a slow link). Its faults
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
_SOCKET_BUFFER = 256 << 10  # SO_RCVBUF of the proxy's sockets: TCP backpressure
_QUEUE_LIMIT = 64 << 20  # bytes held per direction of a connection, no rate limit
_RATE_QUEUE_SECONDS = 0.5  # ... with a rate limit: about this long at the rate
_RATE_QUEUE_MIN = 64 << 10


class _Bucket:
    """A token bucket: `take(n)` waits until n bytes may pass at `rate` bytes/s.

    Tokens accumulate up to `burst`; a take larger than what is there goes into
    debt and sleeps it off, so the long-run rate never exceeds `rate`. The rate is
    read at every take: changing or clearing it takes effect at the next piece.
    """

    __slots__ = ("last", "tokens")

    def __init__(self) -> None:
        self.tokens = 0.0
        self.last = 0.0

    async def take(self, n: int, rate: float, burst: int) -> None:
        now = trio.current_time()
        self.tokens = min(float(burst), self.tokens + (now - self.last) * rate)
        self.last = now
        self.tokens -= n
        if self.tokens < 0:
            await trio.sleep(-self.tokens / rate)


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
        self.rate_up = self.rate_down = 0.0
        """Bandwidth limits (bytes per second) going up / down; 0: no limit."""
        self.burst = 16 << 10
        """Bytes a rate-limited direction may send at once after being idle."""
        self._buckets = {True: _Bucket(), False: _Bucket()}  # up, down
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
        self.rate_up = self.rate_down = 0.0
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
        for listener in listeners:  # accepted sockets inherit it
            listener.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF,
                                       _SOCKET_BUFFER)  # fmt: skip
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
                    conn.upstream = await self._connect()
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

    async def _connect(self) -> trio.SocketStream:
        """A connection to the target, with the proxy's small receive buffer."""
        assert self.target_port is not None
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        try:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, _SOCKET_BUFFER)
            with trio.fail_after(5):
                await sock.connect((self.target_host, self.target_port))
        except (OSError, trio.TooSlowError) as exc:
            sock.close()
            raise OSError(f"cannot reach {self.target_host}:{self.target_port}") from exc
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    def rate(self, up: bool) -> float:
        """The bandwidth limit in force going up (or down), bytes per second; 0: none."""
        return self.rate_up if up else self.rate_down

    async def _pump(
        self, conn: _Conn, src: trio.SocketStream, dst: trio.SocketStream, up: bool
    ) -> None:
        """Copy src -> dst; each chunk waits out the delay in force when it arrived.

        A reader task stamps chunks with their delivery time and a writer task
        sends them in order when due, so delay adds latency without capping
        throughput. With a rate limit the writer sends pieces of at most `burst`
        bytes as the direction's token bucket allows, and the reader stops
        reading while about half a second's worth of bytes waits (TCP then slows
        the sender down). EOF or an error on either side ends the whole connection.
        """
        send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)
        queued = 0
        space = trio.Event()

        def limit() -> float:
            rate = self.rate(up)
            return max(_RATE_QUEUE_MIN, rate * _RATE_QUEUE_SECONDS) if rate else _QUEUE_LIMIT

        async def reader() -> None:
            nonlocal queued, space
            async with send:
                while True:
                    while queued >= limit():
                        space = trio.Event()
                        await space.wait()
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
                    queued += len(data)
                    try:
                        send.send_nowait((trio.current_time() + delay, data))
                    except trio.BrokenResourceError:
                        return  # the writer is gone (the other side broke): so is the connection

        async def writer() -> None:
            nonlocal queued
            bucket = self._buckets[up]
            async with receive:
                async for due, data in receive:
                    if self.blocked or (not up and self.block_down):
                        self._kill(conn)
                        return
                    await trio.sleep_until(due)
                    try:
                        view = memoryview(data)
                        while view:
                            rate = self.rate(up)
                            piece = view[: self.burst] if rate else view
                            if rate:
                                await bucket.take(len(piece), rate, self.burst)
                            await dst.send_all(piece)
                            view = view[len(piece) :]
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break
                    self.bytes_forwarded += len(data)
                    queued -= len(data)
                    space.set()
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

    def set_rate(self, src: str, dst: str, bytes_per_second: float) -> None:
        """Bytes from src to dst pass at most at this rate (0: no limit)."""
        self.links[src, dst].rate_up = bytes_per_second
        self.links[dst, src].rate_down = bytes_per_second

    def set_slow(self, src: str, dst: str, latency: float, bytes_per_second: float) -> None:
        """A slow link from src to dst: added latency and a bandwidth limit."""
        self.set_delay(src, dst, latency)
        self.set_rate(src, dst, bytes_per_second)

    def clear_quality(self) -> None:
        """No delay, loss or rate limit anywhere; partitions stay as they are."""
        for link in self.links.values():
            link.delay = link.delay_up = link.delay_down = 0.0
            link.loss = link.loss_up = link.loss_down = 0.0
            link.rate_up = link.rate_down = 0.0

    def heal(self) -> None:
        """No faults anywhere: every link unblocked, no delay, no loss, no rate limit."""
        for link in self.links.values():
            link.clear()

    def reset_node(self, node: str) -> None:
        """Reset every connection to or from `node` (e.g. after it was killed)."""
        for (a, b), link in self.links.items():
            if node in (a, b):
                link.reset_all()

    def describe(self) -> str:
        """Which directions are faulty, e.g. ``n1->n2 blocked; n3->n1 delay=0.100,rate=65536``
        (``a->b`` is about the bytes from a to b, whichever proxy carries them)."""
        parts = []
        for a, b in self.links:
            there, back = self.links[a, b], self.links[b, a]
            faults = []
            if there.blocked or back.block_down:
                faults.append("blocked")
            # Bytes from a to b go up through proxy a->b or down through b->a.
            if delay := max(there.delay + there.delay_up, back.delay + back.delay_down):
                faults.append(f"delay={delay:.3f}")
            if loss := max(there.loss + there.loss_up, back.loss + back.loss_down):
                faults.append(f"loss={loss:.2f}")
            if rate := max(there.rate_up, back.rate_down):
                faults.append(f"rate={rate:g}")
            if faults:
                parts.append(f"{a}->{b} " + ",".join(faults))
        return "; ".join(parts) or "healthy"
