"""The fault proxy in a process of its own, driven from the chaos run.

Why: the proxy carries every byte between the nodes. In the harness's own
process it shares one event loop with hundreds of clients, and a loop busy
with clients is a network that stalls: the nodes lose heartbeats and elect
new leaders with no fault injected (seen: 0.5 s stalls and elections in
healthy periods under the write-heavy load). In its own process the network
is only as slow as the operating system's scheduler makes it, and it measures
its own loop lag so a report can say whether the network itself was healthy.

:class:`RemoteMesh` is a :class:`~trioraft.testing.proxy.ProxyMesh` whose
fault methods (``partition``, ``set_slow``, ``heal``...) apply to a local mirror
(so ``url``, ``describe`` and ``can_reach`` answer at once) and are sent, in
order, to the child, which applies them to the real proxies. They return at
once; ``await mesh.sync()`` waits until the child has applied everything sent.
The child (``python -m trioraft.testing.proxy_remote IDS SEED``) prints its
ports as one JSON line, then applies one JSON command a line from stdin and
answers each; it exits when stdin closes, which is also what happens when its
parent dies. (No PR_SET_PDEATHSIG: Trio spawns processes from a worker thread,
and the signal would fire when that thread ends, not the parent.)
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import trio

from trioraft.testing.proxy import ProxyMesh

__all__ = ["RemoteMesh"]

_COMMANDS = frozenset({
    "set_targets", "block", "unblock", "cut", "partition", "isolate", "bridge",
    "heal_partitions", "set_delay", "set_loss", "set_rate", "set_slow", "clear_quality",
    "heal", "reset_node",
})  # fmt: skip


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _mirrored(name: str) -> Any:
    """A fault method that applies to the local mirror, then is sent to the child.
    (Methods that other mesh methods call, like block inside partition, are sent
    once, by the outer call.)"""
    base = getattr(ProxyMesh, name)

    def method(self: RemoteMesh, *args: Any) -> None:
        self._depth += 1
        try:
            base(self, *args)
        finally:
            self._depth -= 1
        if self._depth == 0:
            self._command(name, *args)

    method.__name__ = name
    method.__doc__ = base.__doc__
    return method


class RemoteMesh(ProxyMesh):
    def __init__(self, ids: Sequence[str], proc: trio.Process) -> None:
        super().__init__(ids)
        self._proc = proc
        self._send, self._recv = trio.open_memory_channel[bytes](math.inf)
        self._sent = 0
        self._acked = 0
        self._acks = trio.Event()
        self.errors: list[str] = []
        self.lag: dict[str, Any] = {}
        self._buffer = b""
        self._depth = 0

    @classmethod
    async def start(
        cls, nursery: trio.Nursery, ids: Sequence[str], seed: int, log: Path
    ) -> RemoteMesh:
        """Start the child and the tasks that talk to it in `nursery`; cancel the
        nursery (or call :meth:`aclose`) to stop it."""
        err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "trioraft.testing.proxy_remote", ",".join(ids), str(seed)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            )  # fmt: skip
        finally:
            os.close(err)
        mesh = cls(ids, proc)
        try:
            with trio.fail_after(30):
                ports = json.loads(await mesh._line())
        except BaseException:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
            raise
        for name, port in ports.items():
            a, _, b = name.partition("->")
            mesh.links[a, b].port = int(port)
        nursery.start_soon(mesh._writer)
        nursery.start_soon(mesh._reader)
        return mesh

    async def _line(self) -> bytes:
        assert self._proc.stdout is not None
        while b"\n" not in self._buffer:
            data = await self._proc.stdout.receive_some(65536)
            if not data:
                raise EOFError("the proxy process exited")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    async def _writer(self) -> None:
        assert self._proc.stdin is not None
        async for line in self._recv:
            await self._proc.stdin.send_all(line)

    async def _reader(self) -> None:
        while True:
            try:
                answer = json.loads(await self._line())
            except EOFError:
                self.errors.append("the proxy process exited")
                self._acks.set()
                return
            if "error" in answer:
                self.errors.append(answer["error"])
            if "lag" in answer:
                self.lag = answer["lag"]
            self._acked += 1
            self._acks.set()
            self._acks = trio.Event()

    def _command(self, op: str, *args: Any) -> None:
        self._sent += 1
        self._send.send_nowait(json.dumps({"op": op, "args": _jsonable(args)}).encode() + b"\n")

    async def sync(self, timeout: float = 10.0) -> None:
        """Wait until the child has applied every command sent so far."""
        target = self._sent
        with trio.fail_after(timeout):
            while self._acked < target and self._proc.returncode is None:
                await self._acks.wait()

    def reset_clock(self) -> None:
        """Time the child's stalls from now (the chaos run's t=0)."""
        self._command("reset_clock")

    async def fetch_lag(self) -> dict[str, Any]:
        """The child's loop lag: worst and the stalls above 50 ms (seconds since its start)."""
        self._command("lag")
        await self.sync()
        return self.lag

    async def aclose(self) -> None:
        """Close the child's stdin (it exits), then make sure it is gone."""
        with trio.CancelScope(shield=True):
            if self._proc.stdin is not None:
                with trio.move_on_after(1):
                    await self._proc.stdin.aclose()
            with trio.move_on_after(5):
                await self._proc.wait()
            if self._proc.returncode is None:
                self._proc.kill()
                await self._proc.wait()

    set_targets = _mirrored("set_targets")
    block = _mirrored("block")
    unblock = _mirrored("unblock")
    cut = _mirrored("cut")
    partition = _mirrored("partition")
    isolate = _mirrored("isolate")
    bridge = _mirrored("bridge")
    heal_partitions = _mirrored("heal_partitions")
    set_delay = _mirrored("set_delay")
    set_loss = _mirrored("set_loss")
    set_rate = _mirrored("set_rate")
    set_slow = _mirrored("set_slow")
    clear_quality = _mirrored("clear_quality")
    heal = _mirrored("heal")
    reset_node = _mirrored("reset_node")


# ------------------------------------------------------------------- the child


class _Lag:
    def __init__(self) -> None:
        self.worst = 0.0
        self.stalls: list[tuple[float, float]] = []
        self.t0 = trio.current_time()

    async def run(self) -> None:
        while True:
            t0 = trio.current_time()
            await trio.sleep(0.01)
            lag = trio.current_time() - t0 - 0.01
            self.worst = max(self.worst, lag)
            if lag >= 0.05 and len(self.stalls) < 10_000:
                self.stalls.append((round(t0 - self.t0, 3), round(lag * 1000, 1)))


async def _child(ids: list[str], seed: int) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    lag = _Lag()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        mesh = await ProxyMesh.open(nursery, ids, random.Random(seed))
        ports = {f"{a}->{b}": link.port for (a, b), link in mesh.links.items()}
        print(json.dumps(ports), flush=True)
        buffer = b""
        while True:
            data = await stdin.receive_some(65536)
            if not data:
                break  # the parent closed stdin or died
            buffer += data
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                answer: dict[str, Any] = {"ok": True}
                try:
                    cmd = json.loads(line)
                    op, args = cmd["op"], cmd["args"]
                    if op == "lag":
                        answer["lag"] = {"worst_ms": round(lag.worst * 1000, 1),
                                         "stalls": lag.stalls}  # fmt: skip
                    elif op == "reset_clock":  # the parent's t=0: stalls are timed from here
                        lag.t0, lag.worst, lag.stalls = trio.current_time(), 0.0, []
                    elif op in _COMMANDS:
                        _apply(mesh, op, args)
                    else:
                        raise ValueError(f"unknown command {op!r}")
                except Exception as exc:  # reported to the parent, never fatal here
                    answer = {"error": f"{line[:200]!r}: {exc!r}"}
                print(json.dumps(answer), flush=True)
        nursery.cancel_scope.cancel()


def _apply(mesh: ProxyMesh, op: str, args: list[Any]) -> None:
    if op == "partition":
        groups: Iterable[Collection[str]] = [set(g) for g in args[0]]
        mesh.partition(groups)
    elif op == "bridge":
        mesh.bridge(set(args[0]), args[1], set(args[2]))
    else:
        getattr(mesh, op)(*args)


if __name__ == "__main__":
    trio.run(_child, sys.argv[1].split(","), int(sys.argv[2]))
