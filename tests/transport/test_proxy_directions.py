"""The fault proxy acts on the bytes from one node to another, whoever dialed:
peer streams carry both directions on the connection the smaller id opened."""

from __future__ import annotations

import time

import trio

from trioraft.testing.proxy import ProxyMesh


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(1024):
            await stream.send_all(data)


async def test_a_delay_from_b_to_a_slows_the_replies_on_the_stream_a_opened() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, _echo, 0)
        port = listeners[0].socket.getsockname()[1]
        mesh = await ProxyMesh.open(nursery, ["a", "b"])
        mesh.set_targets({"a": port, "b": port})
        stream = await trio.open_tcp_stream("127.0.0.1", mesh.port("a", "b"))  # a dials b
        async with stream:

            async def round_trip() -> float:
                start = time.monotonic()
                await stream.send_all(b"x")
                await stream.receive_some(10)
                return time.monotonic() - start

            assert await round_trip() < 0.1
            mesh.set_delay("b", "a", 0.2)  # only b -> a: the echo's way back
            assert 0.2 <= await round_trip() < 0.4
            mesh.heal()
            mesh.set_delay("a", "b", 0.2)
            assert 0.2 <= await round_trip() < 0.4
            mesh.heal()
            mesh.block("b", "a")  # nothing from b to a: the stream a opened breaks
            await stream.send_all(b"x")
            with trio.fail_after(2):
                try:
                    got = await stream.receive_some(10)
                except trio.BrokenResourceError:  # reset rather than closed: as good
                    got = b""
            assert got == b""
        nursery.cancel_scope.cancel()
