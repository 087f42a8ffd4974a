"""A real node behind production peer streams, fed garbage by an authenticated
member and by strangers: it must keep running, and the cluster keep working.

(Semantically forged but well-formed Raft messages are the core's to survive:
tests/core, tests/sim. This is the transport's share: what never reaches it.)
"""

from __future__ import annotations

import random

import msgspec
import trio
import trio.testing

from tests.node.helpers import put
from tests.transport.helpers import raw_connect, raw_dial, read_until_closed
from trioraft.testing.cluster import open_cluster
from trioraft.transport import StreamTransport
from trioraft.transport._frames import HEADER, PREAMBLE, frame


def _garbage(rng: random.Random) -> bytes:
    kind = rng.choice([1, 2, 3, 4, 8, 16, 16, 16, 32, 33, 48, 49, 99])
    shape = rng.random()
    if shape < 0.3:
        body = rng.randbytes(rng.randrange(0, 300))
    elif shape < 0.6:  # msgpack of the wrong shape, out-of-range numbers included
        body = msgspec.msgpack.encode([rng.choice([-1, 0, 2**62, 2**63 - 1, "x" * 200, b"\0",
                                                   None, [], {"a": 1}])
                                       for _ in range(rng.randrange(0, 12))])  # fmt: skip
    elif shape < 0.8:  # a Raft batch with a bad message inside
        body = msgspec.msgpack.encode([[rng.randrange(0, 12), "n3", "n2",
                                        rng.choice([1, -5, 2**62])]])  # fmt: skip
    else:  # a header announcing more than it sends
        return HEADER.pack(rng.randrange(2, 1 << 30), kind) + rng.randbytes(10)
    return frame(kind, body)


async def test_garbage_from_a_member_and_from_strangers_never_stops_a_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(41)
    async with open_cluster(3, seed=41, transport="stream") as cluster:
        leader = await cluster.wait_for_leader()
        await put(leader, "before", "1")
        victim = next(n for n in cluster.running() if n.id == "n2")
        transport = victim.transport
        assert isinstance(transport, StreamTransport)
        for i in range(40):
            if i % 4 == 0:  # a stranger: no handshake, or a broken one
                stream = await raw_connect(transport, PREAMBLE + rng.randbytes(rng.randrange(50)))
            else:  # an authenticated member gone bad
                stream, _ = await raw_dial(transport, local="n3")
                for _ in range(rng.randrange(1, 4)):
                    await stream.send_all(_garbage(rng))
            with trio.move_on_after(8):
                await read_until_closed(stream)
            await trio.aclose_forcefully(stream)
        # The victim is alive, following, and the cluster still commits through it.
        assert cluster.is_up(victim.id)
        await put(leader, "after", "2")
        await cluster.wait_converged()
        assert victim.kv.get("after") == "2"
        with trio.fail_after(10):  # its stream to n3 (which our impostor displaced) is back
            while not victim.status()["peers"]["n3"]["connected"]:  # noqa: ASYNC110
                await trio.sleep(0.1)
