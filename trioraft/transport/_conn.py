"""One open peer stream: a writer that coalesces, a reader that checks, requests that end.

A connection runs four tasks in its own nursery, and everything it holds
dies with it:

- the **writer** drains two bounded queues -- Raft messages and control
  frames (relayed writes and their answers, snapshot chunks and acks,
  pings) -- into one `send_all` per turn. Whatever queued while the previous
  write was in progress goes out together: Raft messages coalesce into as few
  RAFT frames as their size allows. A full queue refuses (Raft resends; a
  relayed write is `NoLeader`, never sent). A write that does not finish in
  `write_timeout` kills the stream.
- the **reader** takes one frame at a time (sizes bounded before buffering),
  checks it and hands it on: Raft messages to `Inbound.deliver` (each
  message's `src` must be the authenticated peer and its `dst` us), relayed
  writes to a task each (bounded in number), snapshot chunks to the chunk
  task (bounded by the sender's window, which the receiver enforces).
  Anything malformed closes *this stream only*. No byte for `dead_after`
  seconds closes it too (the peer pings when idle).
- the **pinger** sends a PING after `ping_interval` of silence, so an idle
  stream stays known-alive and no middlebox or peer closes it unnoticed.
- the **chunk task** stages snapshot chunks through `Inbound.snapshot_chunk`
  and acknowledges each one: that acknowledgement is the sender's credit
  (at most `snapshot_window` chunks unacknowledged), so a large transfer
  never floods the stream, and Raft frames keep flowing between chunks.

When the stream ends, for whatever reason, every request waiting on it ends
too: a relayed write still queued is `NoLeader` (it never left), one already
written is `UnknownOutcome` (unless its answer came); a snapshot upload gets
`LinkError`. Nothing waits forever on a dead stream.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

from trioraft.core import AppendEntries, Message
from trioraft.errors import NoLeader, UnknownOutcome
from trioraft.transport._codec import (
    CodecError,
    decode_messages,
    encode_messages,
    install_snapshot_from_wire,
    install_snapshot_to_wire,
)
from trioraft.transport._frames import (
    Error,
    FrameError,
    FrameType,
    Relay,
    RelayAnswer,
    SnapAck,
    SnapChunk,
    decode,
    encode,
    frame,
)
from trioraft.transport._handshake import PeerIdentity
from trioraft.transport._protocol import (
    ChunkReader,
    Inbound,
    LinkError,
    RelayCode,
    SnapshotOffer,
)
from trioraft.transport._protocol import RelayAnswer as Answer
from trioraft.transport._reader import FrameReader

__all__ = ["Connection", "StreamConfig"]

log = logging.getLogger("trioraft.transport")


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Limits and timings of peer streams (defaults suit a LAN; tests shorten them)."""

    max_frame: int = 16 << 20  # bytes of one frame's payload, both ways
    frame_target: int = 1 << 20  # Raft messages per frame: cut at about this many bytes
    ping_interval: float = 1.0  # send a PING after this much silence
    dead_after: float = 5.0  # no byte received for this long: the stream is dead
    write_timeout: float = 5.0  # one send_all may take this long
    handshake_timeout: float = 5.0
    max_handshakes: int = 64  # accepted connections in their handshake at once
    connect_timeout: float = 2.0
    # Reconnect backoff, doubling up to backoff_max (with jitter). Kept short,
    # as etcd's 100 ms retry: only the smaller id dials, so a peer that comes
    # back waits for this to hear from the leader (a refused dial is cheap).
    backoff_min: float = 0.05
    backoff_max: float = 0.25
    # Raft messages for a peer with no open stream are kept this long (at most
    # park_messages of them) and sent when the next stream opens.
    park_timeout: float = 2.0
    park_messages: int = 1024
    raft_queue_messages: int = 10_000  # queued Raft messages per stream
    queue_bytes: int = 64 << 20  # queued bytes per stream (Raft + control)
    max_inbound_relays: int = 64  # relayed-write batches served at once per stream
    max_relay_timeout: float = 60.0  # a relayed batch waits at most this long
    snapshot_chunk: int = 256 << 10
    snapshot_window: int = 4  # chunks in flight, unacknowledged


def _approx_size(m: Message) -> int:
    if isinstance(m, AppendEntries):
        return 64 + sum(24 + len(e.data) for e in m.entries)
    return 64


class _Request:
    """A relayed-write batch waiting for the peer's answer."""

    __slots__ = ("answer", "cancelled", "done", "error", "id", "sent")

    def __init__(self, rid: int) -> None:
        self.id = rid
        self.done = trio.Event()
        self.answer: Answer | None = None
        self.error: Exception | None = None
        self.sent = False  # the writer took it: from then on, the outcome may be unknown
        self.cancelled = False  # the requester gave up before it was sent: never send it


class _Out:
    __slots__ = ("data", "request")

    def __init__(self, data: bytes, request: _Request | None) -> None:
        self.data = data
        self.request = request


class _Upload:
    """A snapshot transfer this side is sending."""

    __slots__ = ("acked", "changed", "error", "inflight")

    def __init__(self) -> None:
        self.inflight = 0  # chunks sent and not yet acknowledged
        self.acked = 0  # bytes the receiver has staged
        self.error: str | None = None
        self.changed = trio.Event()

    def poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class Connection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        reader: FrameReader,
        identity: PeerIdentity,
        local_id: str,
        inbound: Inbound,
        config: StreamConfig,
        *,
        dialed: bool,
    ) -> None:
        self._stream = stream
        self._reader = reader
        reader.receive_timeout = config.dead_after
        reader.max_frame = config.max_frame
        self.identity = identity
        self.peer = identity.member_id
        self.local = local_id
        self._inbound = inbound
        self._cfg = config
        self.dialed = dialed
        self.opened_at = trio.current_time()
        self.closed = trio.Event()
        self.close_reason: str | None = None
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        # Outgoing queues, drained by the writer.
        self._raft: list[Message] = []
        self._raft_bytes = 0
        self._ctrl: deque[_Out] = deque()
        self._ctrl_bytes = 0
        self._wake = trio.Event()
        self._writing = False  # the writer task is inside send_all
        self._writer_done = False  # after a protocol error: the writer sends nothing more
        self.last_sent = self.last_received = self.opened_at
        # Requests and uploads of this side; relay batches served for the peer.
        self._ids = itertools.count(1)
        self._requests: dict[int, _Request] = {}
        self._uploads: dict[int, _Upload] = {}
        self._serving = 0
        chunks = trio.open_memory_channel[SnapChunk](config.snapshot_window + 1)
        self._chunks_send, self._chunks_recv = chunks
        self._refused: deque[int] = deque(maxlen=16)  # transfers we refused: drop their chunks
        self.stats = {"frames_sent": 0, "frames_received": 0, "bytes_sent": 0,
                      "messages_dropped": 0}  # fmt: skip

    # ================================================================ lifecycle
    @property
    def is_open(self) -> bool:
        return not self.closed.is_set() and self.close_reason is None

    def close(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        self._scope.cancel()

    async def run(self) -> None:
        """Serve the stream until it ends; then fail whatever still waits on it."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._pinger)
                    nursery.start_soon(self._chunk_task)
                    await self._read_loop()
                    nursery.cancel_scope.cancel()
        finally:
            if self.close_reason is None:
                self.close_reason = "stopped"
            self._fail_waiters()
            self.closed.set()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._stream)

    def _fail_waiters(self) -> None:
        why = f"the stream to {self.peer} closed ({self.close_reason})"
        for req in self._requests.values():
            if req.answer is None:
                req.error = UnknownOutcome(why) if req.sent else NoLeader(why)
                req.cancelled = True
                req.done.set()
        for up in self._uploads.values():
            up.error = up.error or why
            up.poke()

    # ================================================================ sending
    @property
    def queued_bytes(self) -> int:
        return self._raft_bytes + self._ctrl_bytes

    def _wakeup(self) -> None:
        self._wake.set()

    def send_raft(self, msg: Message) -> bool:
        """Queue a Raft message; False (dropped) if the stream is closed or full."""
        size = _approx_size(msg)
        if (
            not self.is_open
            or len(self._raft) >= self._cfg.raft_queue_messages
            or self.queued_bytes + size > self._cfg.queue_bytes
        ):
            self.stats["messages_dropped"] += 1
            return False
        self._raft.append(msg)
        self._raft_bytes += size
        self._wakeup()
        return True

    def _push(self, data: bytes, request: _Request | None = None) -> bool:
        if not self.is_open or self.queued_bytes + len(data) > self._cfg.queue_bytes:
            return False
        self._ctrl.append(_Out(data, request))
        self._ctrl_bytes += len(data)
        self._wakeup()
        return True

    def _take_batch(self) -> list[bytes]:
        """Everything queued, as frames: Raft first (coalesced), then control frames."""
        parts: list[bytes] = []
        if self._raft:
            msgs, self._raft, self._raft_bytes = self._raft, [], 0
            group: list[Message] = []
            size = 0
            for m in msgs:
                s = _approx_size(m)
                if group and size + s > self._cfg.frame_target:
                    parts.append(frame(FrameType.RAFT, encode_messages(group)))
                    group, size = [], 0
                group.append(m)
                size += s
            parts.append(frame(FrameType.RAFT, encode_messages(group)))
        budget = max(self._cfg.frame_target, 1)
        taken = 0
        while self._ctrl and taken < budget:
            out = self._ctrl.popleft()
            self._ctrl_bytes -= len(out.data)
            if out.request is not None:
                if out.request.cancelled:
                    continue
                out.request.sent = True
            parts.append(out.data)
            taken += len(out.data)
        return parts

    async def _writer(self) -> None:
        while True:
            if not self._raft and not self._ctrl:
                self._wake = trio.Event()
                await self._wake.wait()
            if self._writer_done:
                return  # a protocol error: its ERROR frame is the last thing sent
            parts = self._take_batch()
            if not parts:
                continue
            data = b"".join(parts)
            self._writing = True
            try:
                with trio.fail_after(self._cfg.write_timeout):
                    await self._stream.send_all(data)
            except trio.TooSlowError:
                self.close(f"a write took over {self._cfg.write_timeout:g}s")
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.close(f"write failed: {exc!r}")
                return
            finally:
                self._writing = False
            self.last_sent = trio.current_time()
            self.stats["frames_sent"] += len(parts)
            self.stats["bytes_sent"] += len(data)

    async def _pinger(self) -> None:
        interval = self._cfg.ping_interval
        while True:
            await trio.sleep(interval)
            if trio.current_time() - self.last_sent >= interval and not self._ctrl:
                self._push(frame(FrameType.PING))

    # ================================================================ receiving
    async def _read_loop(self) -> None:
        while True:
            try:
                got = await self._reader.next()
            except trio.TooSlowError:
                self.close(f"nothing received for {self._cfg.dead_after:g}s")
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.close(f"read failed: {exc!r}")
                return
            except FrameError as exc:
                await self._protocol_error(str(exc))
                return
            if got is None:
                self.close("closed by the peer")
                return
            self.last_received = trio.current_time()
            self.stats["frames_received"] += 1
            try:
                self._dispatch(*got)
            except (FrameError, CodecError) as exc:
                await self._protocol_error(str(exc))
                return

    async def _protocol_error(self, why: str) -> None:
        log.warning("peer stream %s <- %s: protocol error, closing it: %s",
                    self.local, self.peer, why)
        # One writer per stream: a second send_all while the writer task sends raises
        # BusyResourceError in one of them (in the writer it crashed the node). So
        # the writer stops here, and the ERROR frame goes out only if it is idle:
        # best effort, the stream closes either way. (No checkpoint between the
        # writer's check of `_writer_done` and its send: the two cannot interleave.)
        self._writer_done = True
        if not self._writing:
            with trio.move_on_after(1), contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, OSError
            ):
                await self._stream.send_all(encode(FrameType.ERROR, Error("protocol", why[:1024])))
        self.close(f"protocol error: {why}")

    def _dispatch(self, ftype: FrameType, payload: bytes) -> None:
        match ftype:
            case FrameType.PING:
                pass
            case FrameType.RAFT:
                msgs = decode_messages(payload)
                for m in msgs:
                    # The stream is bound to the authenticated peer: a message
                    # claiming another sender (or for another node) is forged.
                    if m.src != self.peer or m.dst != self.local:
                        raise FrameError(
                            f"a message from {m.src!r} to {m.dst!r} on the stream of "
                            f"{self.peer!r} to {self.local!r}"
                        )
                self._inbound.deliver(self.peer, msgs)
            case FrameType.RELAY:
                self._serve_relay(decode(ftype, payload, Relay))
            case FrameType.RELAY_ANSWER:
                a = decode(ftype, payload, RelayAnswer)
                req = self._requests.get(a.id)
                if req is not None and req.answer is None:
                    req.answer = Answer(tuple(a.codes), a.results)
                    req.done.set()
            case FrameType.SNAP_CHUNK:
                chunk = decode(ftype, payload, SnapChunk)
                try:
                    self._chunks_send.send_nowait(chunk)
                except trio.WouldBlock:
                    raise FrameError("snapshot chunks beyond the flow-control window") from None
            case FrameType.SNAP_ACK:
                ack = decode(ftype, payload, SnapAck)
                up = self._uploads.get(ack.transfer)
                if up is not None:
                    up.inflight = max(0, up.inflight - 1)
                    up.acked = max(up.acked, ack.offset)
                    if ack.error is not None:
                        up.error = f"{self.peer} refused the snapshot: {ack.error}"
                    up.poke()
            case FrameType.ERROR:
                err = decode(ftype, payload, Error)
                log.warning("peer %s closed its stream to %s: %s: %s", self.peer, self.local,
                            err.code, err.message)
                self.close(f"the peer reported {err.code}: {err.message}")
            case _:
                raise FrameError(f"unexpected {ftype.name} frame after the handshake")

    # ================================================================ relayed writes
    async def relay(self, datas: list[bytes], timeout: float) -> Answer:
        """Ask the peer to propose `datas`; see the module docstring for the outcomes."""
        req = _Request(next(self._ids))
        data = encode(FrameType.RELAY, Relay(req.id, max(1, round(timeout * 1000)), datas))
        if len(data) > self._cfg.max_frame:
            raise ValueError(f"a relayed batch of {len(data)} bytes exceeds the frame limit")
        if not self._push(data, req):
            raise NoLeader(f"the stream to {self.peer} is closed or full")
        self._requests[req.id] = req
        try:
            with trio.move_on_after(timeout):
                await req.done.wait()
        finally:
            self._requests.pop(req.id, None)
        if req.answer is not None:
            if len(req.answer.codes) != len(datas):
                raise UnknownOutcome(f"{self.peer} answered {len(req.answer.codes)} outcomes "
                                     f"for {len(datas)} relayed writes")
            return req.answer
        if req.error is not None:
            raise req.error
        if not req.sent:
            req.cancelled = True  # never to be sent now
            raise NoLeader(f"the stream to {self.peer} did not send the writes in time")
        raise UnknownOutcome(f"{self.peer} did not answer the relayed writes in time")

    def _serve_relay(self, r: Relay) -> None:
        assert self._nursery is not None
        if self._serving >= self._cfg.max_inbound_relays:
            codes = [int(RelayCode.OVERLOADED)] * len(r.datas)
            self._push(encode(FrameType.RELAY_ANSWER, RelayAnswer(r.id, codes, b"")))
            return
        self._serving += 1
        self._nursery.start_soon(self._answer_relay, r)

    async def _answer_relay(self, r: Relay) -> None:
        try:
            timeout = min(r.timeout_ms / 1000, self._cfg.max_relay_timeout)
            answer = await self._inbound.relayed_writes(self.peer, r.datas, timeout)
            assert len(answer.codes) == len(r.datas), "one outcome per relayed write"
            reply = RelayAnswer(r.id, list(answer.codes), answer.results)
        except Exception:  # a bug in the node must not take the stream (or the node) down
            log.exception("node=%s relayed writes from %s failed", self.local, self.peer)
            reply = RelayAnswer(r.id, [RelayCode.UNKNOWN] * len(r.datas), b"")
        finally:
            self._serving -= 1
        # If the stream is full or gone, the requester answers UnknownOutcome.
        self._push(encode(FrameType.RELAY_ANSWER, reply))

    # ================================================================ snapshots
    async def send_snapshot(self, offer: SnapshotOffer, read_chunk: ChunkReader) -> None:
        """Send a snapshot in chunks, at most `snapshot_window` unacknowledged."""
        tid = next(self._ids)
        up = _Upload()
        self._uploads[tid] = up
        wire = install_snapshot_to_wire(offer.msg)
        try:
            offset = 0
            while True:
                while up.inflight >= self._cfg.snapshot_window and up.error is None:
                    await up.changed.wait()
                if up.error is not None:
                    raise LinkError(up.error)
                n = min(self._cfg.snapshot_chunk, offer.size - offset)
                data = await read_chunk(offset, n) if n else b""
                if len(data) != n:
                    raise LinkError(f"snapshot data ended at {offset + len(data)} of {offer.size}")
                last = offset + n >= offer.size
                chunk = SnapChunk(tid, wire, offer.size, offset, data, last, offer.checksum)
                if not self._push(encode(FrameType.SNAP_CHUNK, chunk)):
                    raise LinkError(f"the stream to {self.peer} is closed or full")
                up.inflight += 1
                offset += n
                if last:
                    break
            while (up.inflight or up.acked < offer.size) and up.error is None:
                await up.changed.wait()
            if up.error is not None:
                raise LinkError(up.error)
        finally:
            del self._uploads[tid]

    async def _chunk_task(self) -> None:
        async for c in self._chunks_recv:
            if c.transfer in self._refused:
                continue
            error: str | None = None
            try:
                msg = install_snapshot_from_wire(c.msg)
                if msg.src != self.peer or msg.dst != self.local:
                    raise FrameError(f"a snapshot from {msg.src!r} on {self.peer!r}'s stream")
                await self._inbound.snapshot_chunk(
                    self.peer, SnapshotOffer(msg, c.size, c.crc), c.offset, c.data, c.last
                )
            except FrameError as exc:
                await self._protocol_error(str(exc))
                return
            except ValueError as exc:  # refused by the node (CodecError is one too)
                error = str(exc)[:1024] or type(exc).__name__
                self._refused.append(c.transfer)
            self._push(encode(FrameType.SNAP_ACK, SnapAck(c.transfer, c.offset + len(c.data),
                                                          error)))

    # ================================================================ status
    def status(self) -> dict[str, Any]:
        now = trio.current_time()
        return {
            "connected": self.is_open,
            "dialed": self.dialed,
            "connected_for_s": round(now - self.opened_at, 3),
            "last_received_ms_ago": round((now - self.last_received) * 1000),
            "queued_messages": len(self._raft),
            "queued_bytes": self.queued_bytes,
            "pending_relays": len(self._requests),
            **self.stats,
        }
