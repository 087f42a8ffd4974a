"""Peer streams: who dials, who may talk, what a broken stream does to requests,
flow control, and hostile peers (virtual time, StreamTransports over in-memory pipes)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest
import trio
import trio.testing

from tests.transport.helpers import FakeNode, raw_connect, raw_dial, read_until_closed
from trioraft.core import AppendEntries, Configuration, InstallSnapshot, RequestVote, SnapshotMeta
from trioraft.errors import NoLeader, UnknownOutcome
from trioraft.testing.streamnet import StreamNetwork
from trioraft.transport import (
    HandshakeError,
    LinkError,
    SnapshotOffer,
    StreamConfig,
    StreamTransport,
    encode_messages,
)
from trioraft.transport._frames import HEADER, PREAMBLE, FrameType, Hello, encode, frame

IDS = ["a", "b", "c"]


@asynccontextmanager
async def running(
    net: StreamNetwork, ids: list[str] = IDS, tokens: dict[str, str | None] | None = None
) -> AsyncIterator[tuple[dict[str, StreamTransport], dict[str, FakeNode]]]:
    transports, nodes = {}, {}
    async with trio.open_nursery() as nursery:
        for i in ids:
            kw = {"token": tokens[i]} if tokens and i in tokens else {}
            transports[i] = net.transport(i, [p for p in ids if p != i], **kw)
            nodes[i] = FakeNode(i)
            await nursery.start(transports[i].run, nodes[i])
        yield transports, nodes
        nursery.cancel_scope.cancel()


async def connected(transports: dict[str, StreamTransport], a: str, b: str) -> None:
    with trio.fail_after(10):
        while not (transports[a].connected(b) and transports[b].connected(a)):  # noqa: ASYNC110
            await trio.sleep(0.01)


def vote(src: str, dst: str, term: int = 1) -> RequestVote:
    return RequestVote(src, dst, term, 0, 0)


# ------------------------------------------------------------------ streams


async def test_one_stream_per_pair_dialed_by_the_smaller_id(autojump_clock: object) -> None:
    net = StreamNetwork()
    async with running(net) as (t, nodes):
        for a, b in [("a", "b"), ("a", "c"), ("b", "c")]:
            await connected(t, a, b)
            assert t[a].status()[b]["dialed"] is True
            assert t[b].status()[a]["dialed"] is False
        assert net.dials == 3
        # Both directions share the stream.
        t["c"].send(vote("c", "a"))
        t["a"].send(vote("a", "c"))
        await nodes["a"].wait_for(lambda: nodes["a"].delivered == [("c", vote("c", "a"))])
        await nodes["c"].wait_for(lambda: nodes["c"].delivered == [("a", vote("a", "c"))])


async def test_messages_queued_while_busy_go_out_coalesced(autojump_clock: object) -> None:
    net = StreamNetwork()
    async with running(net, ["a", "b"]) as (t, nodes):
        await connected(t, "a", "b")
        before = t["a"].status()["b"]["frames_sent"]
        for term in range(1, 201):
            t["a"].send(vote("a", "b", term))
        await nodes["b"].wait_for(lambda: len(nodes["b"].delivered) == 200)
        assert [m.term for _, m in nodes["b"].delivered] == list(range(1, 201))  # in order
        assert t["a"].status()["b"]["frames_sent"] - before <= 2


async def test_a_cut_stream_reconnects_and_parked_messages_arrive(autojump_clock: object) -> None:
    net = StreamNetwork()
    async with running(net, ["a", "b"]) as (t, nodes):
        await connected(t, "a", "b")
        net.isolate("a")
        await trio.sleep(0.5)
        assert not t["a"].connected("b")
        t["b"].send(vote("b", "a", 7))  # no stream now: parked, not lost
        net.heal()
        await nodes["a"].wait_for(lambda: ("b", vote("b", "a", 7)) in nodes["a"].delivered)
        assert t["a"].status()["b"]["streams_opened"] == 2


async def test_peers_can_be_added_and_removed_at_run_time(autojump_clock: object) -> None:
    net = StreamNetwork()
    async with running(net, ["a", "b"]) as (t, _nodes):
        await connected(t, "a", "b")
        async with trio.open_nursery() as nursery:
            c = net.transport("c", ["a", "b"])
            node_c = FakeNode("c")
            await nursery.start(c.run, node_c)
            t["a"].add_peer("c", "http://c.invalid:1")
            t["b"].add_peer("c", "http://c.invalid:1")
            await connected({**t, "c": c}, "a", "c")
            await connected({**t, "c": c}, "b", "c")
            t["a"].remove_peer("c")
            with trio.fail_after(5):
                while c.connected("a"):  # noqa: ASYNC110 -- polling a status, no event
                    await trio.sleep(0.01)
            t["a"].send(vote("a", "c"))  # no longer a peer: nothing happens
            await trio.sleep(3)
            assert not c.connected("a")
            assert node_c.delivered == []
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ authentication


@pytest.mark.parametrize(
    ("tokens", "reason"),
    [
        ({"a": "one", "b": "two"}, "wrong"),
        ({"a": None, "b": "two"}, "requires a cluster token"),
        ({"a": "one", "b": None}, "has no cluster token"),
    ],
)
async def test_streams_need_the_same_token_on_both_ends(
    autojump_clock: object, caplog: pytest.LogCaptureFixture,
    tokens: dict[str, str | None], reason: str,
) -> None:
    net = StreamNetwork()
    async with running(net, ["a", "b"], tokens) as (t, nodes):
        await trio.sleep(3)
        assert not t["a"].connected("b")
        assert not t["b"].connected("a")
        assert reason in t["a"].status()["b"]["last_error"]
        t["a"].send(vote("a", "b"))
        await trio.sleep(1)
        assert nodes["b"].delivered == []


async def test_with_the_same_token_streams_open(autojump_clock: object) -> None:
    net = StreamNetwork(token="s3cret")
    async with running(net, ["a", "b"]) as (t, _):
        await connected(t, "a", "b")


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"local": "a", "token": "wrong"}, "unauthorized"),
        ({"local": "a", "token": None}, "unauthorized"),
        ({"local": "stranger", "token": "s3cret"}, "unknown_member"),
        ({"local": "a", "token": "s3cret", "cluster": "other"}, "cluster_mismatch"),
    ],
)
async def test_the_acceptor_refuses_strangers_with_a_reason(
    autojump_clock: object, kwargs: dict[str, str], code: str
) -> None:
    net = StreamNetwork(token="s3cret")
    async with running(net, ["a", "b"]) as (t, _nodes):
        with pytest.raises(HandshakeError) as refused:
            await raw_dial(t["b"], **kwargs)  # type: ignore[arg-type]
        assert refused.value.code == code
        await connected(t, "a", "b")  # the real peer is unaffected


async def test_a_stream_for_another_member_is_refused(autojump_clock: object) -> None:
    net = StreamNetwork()
    async with running(net, ["a", "b"]) as (t, _):
        near, far = trio.testing.memory_stream_pair()
        assert t["b"].accept(far)
        hello = Hello([1], "legacy", "a", "c", b"n" * 16)  # meant for c, reached b
        await near.send_all(PREAMBLE + encode(FrameType.HELLO, hello))
        assert b"wrong_member" in await read_until_closed(near)


# ------------------------------------------------------------------ hostile input


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",  # not the preamble
        PREAMBLE + HEADER.pack(1 << 30, FrameType.HELLO),  # an enormous handshake frame
        PREAMBLE + frame(FrameType.HELLO, b"\xc1garbage"),  # malformed HELLO
        PREAMBLE + frame(FrameType.RAFT, encode_messages([vote("a", "b")])),  # no handshake
        PREAMBLE,  # and then silence
    ],
)
async def test_a_garbage_handshake_is_refused_and_harms_nothing(
    autojump_clock: object, garbage: bytes
) -> None:
    net = StreamNetwork()
    async with running(net, ["a", "b"]) as (t, nodes):
        await connected(t, "a", "b")
        stream = await raw_connect(t["b"], garbage)
        await read_until_closed(stream)  # closed by b within the handshake timeout
        t["a"].send(vote("a", "b", 5))
        await nodes["b"].wait_for(lambda: len(nodes["b"].delivered) == 1)


async def test_a_message_with_a_forged_sender_closes_that_stream_only(
    autojump_clock: object,
) -> None:
    net = StreamNetwork()
    async with running(net) as (t, nodes):
        await connected(t, "b", "c")
        stream, _ = await raw_dial(t["c"], local="a")  # a authenticated (replacing a's stream)
        await stream.send_all(frame(FrameType.RAFT, encode_messages([vote("b", "c", 9)])))
        reply = await read_until_closed(stream)
        assert b"protocol" in reply
        assert nodes["c"].delivered == []  # the forged vote never reached the node
        t["b"].send(vote("b", "c", 3))  # other streams carry on
        await nodes["c"].wait_for(lambda: ("b", vote("b", "c", 3)) in nodes["c"].delivered)
        await connected(t, "a", "c")  # and a's own stream comes back


async def test_random_frames_never_crash_a_transport(autojump_clock: object) -> None:
    rng = random.Random(7)
    net = StreamNetwork()
    async with running(net, ["a", "b"]) as (t, nodes):
        for i in range(60):
            stream, _ = await raw_dial(t["b"], local="a")
            kind = rng.choice([1, 2, 3, 4, 8, 16, 32, 33, 48, 49, 77])
            body = rng.randbytes(rng.randrange(0, 200))
            if rng.random() < 0.3:  # well-formed msgpack of the wrong shape
                body = msgspec.msgpack.encode(
                    [rng.randrange(-5, 2**63) for _ in range(rng.randrange(0, 9))]
                )
            await stream.send_all(frame(kind, body) if i % 5 else body)
            with trio.move_on_after(6):
                await read_until_closed(stream)
            await trio.aclose_forcefully(stream)
        await connected(t, "a", "b")
        t["a"].send(vote("a", "b", 11))
        await nodes["b"].wait_for(lambda: ("a", vote("a", "b", 11)) in nodes["b"].delivered)


# ------------------------------------------------------------------ relayed writes


async def test_relayed_writes_get_their_answer(autojump_clock: object) -> None:
    net = StreamNetwork()
    async with running(net, ["a", "b"]) as (t, nodes):
        await connected(t, "a", "b")
        answer = await t["b"].relay_writes("a", [b"w1", b"w2"], 5.0)
        assert answer.codes == (0, 0)
        assert answer.results == b"R\x02"
        assert nodes["a"].relays == [[b"w1", b"w2"]]


async def test_relayed_writes_without_a_stream_are_not_sent(autojump_clock: object) -> None:
    net = StreamNetwork()
    async with running(net, ["a", "b"]) as (t, nodes):
        await connected(t, "a", "b")
        net.isolate("a")
        while t["b"].connected("a"):  # noqa: ASYNC110 -- noticed at the next read
            await trio.sleep(0.01)
        with pytest.raises(NoLeader):
            await t["b"].relay_writes("a", [b"w"], 5.0)
        net.heal()
        await connected(t, "a", "b")
        assert nodes["a"].relays == []


async def test_relayed_writes_sent_then_cut_off_have_an_unknown_outcome(
    autojump_clock: object,
) -> None:
    net = StreamNetwork()
    async with running(net, ["a", "b"]) as (t, nodes):
        await connected(t, "a", "b")
        nodes["a"].relay_gate = trio.Event()  # a receives them but does not answer yet
        async with trio.open_nursery() as nursery:

            async def cut() -> None:
                while not nodes["a"].relays:  # noqa: ASYNC110
                    await trio.sleep(0.001)
                net.isolate("a")

            nursery.start_soon(cut)
            with pytest.raises(UnknownOutcome):
                await t["b"].relay_writes("a", [b"w"], 30.0)
        assert nodes["a"].relays == [[b"w"]]


async def test_an_unanswered_relay_times_out_as_unknown(autojump_clock: object) -> None:
    net = StreamNetwork()
    async with running(net, ["a", "b"]) as (t, nodes):
        await connected(t, "a", "b")
        nodes["a"].relay_gate = trio.Event()
        start = trio.current_time()
        with pytest.raises(UnknownOutcome):
            await t["b"].relay_writes("a", [b"w"], 2.0)
        assert trio.current_time() - start == pytest.approx(2.0, abs=0.1)


# ------------------------------------------------------------------ snapshots


def _offer(src: str, dst: str, size: int) -> SnapshotOffer:
    meta = SnapshotMeta(10, 2, Configuration.of_voters(["a", "b"]))
    return SnapshotOffer(InstallSnapshot(src, dst, 3, meta, 10), size, 0)


async def test_a_snapshot_flows_in_a_window_and_heartbeats_pass_it(
    autojump_clock: object,
) -> None:
    cfg = StreamConfig(snapshot_chunk=1000, snapshot_window=3)
    net = StreamNetwork(cfg)
    data = bytes(range(256)) * 40  # 10,240 bytes: 11 chunks
    async with running(net, ["a", "b"]) as (t, nodes):
        await connected(t, "a", "b")
        nodes["b"].chunk_gate = gate = trio.Event()  # b stages nothing until released
        reads: list[int] = []

        async def read_chunk(offset: int, size: int) -> bytes:
            reads.append(offset)
            return data[offset : offset + size]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(t["a"].send_snapshot, _offer("a", "b", len(data)), read_chunk)
            await trio.sleep(1)
            assert len(reads) == 3  # the window: no more read, no more sent
            t["a"].send(vote("a", "b", 4))  # Raft traffic is not stuck behind the transfer
            await nodes["b"].wait_for(lambda: len(nodes["b"].delivered) == 1)
            gate.set()
        assert [c[0] for c in nodes["b"].chunks] == list(range(0, len(data), 1000))
        assert nodes["b"].chunks[-1][2] is True


async def test_a_refused_snapshot_fails_the_transfer(autojump_clock: object) -> None:
    net = StreamNetwork(StreamConfig(snapshot_chunk=100))
    async with running(net, ["a", "b"]) as (t, nodes):
        await connected(t, "a", "b")
        nodes["b"].refuse_snapshot = "stale term"

        async def read_chunk(offset: int, size: int) -> bytes:
            return b"x" * size

        with pytest.raises(LinkError, match="stale term"):
            await t["a"].send_snapshot(_offer("a", "b", 1000), read_chunk)


async def test_a_snapshot_cut_off_midway_fails_and_never_hangs(autojump_clock: object) -> None:
    net = StreamNetwork(StreamConfig(snapshot_chunk=100))
    async with running(net, ["a", "b"]) as (t, nodes):
        await connected(t, "a", "b")
        nodes["b"].chunk_gate = trio.Event()

        async def read_chunk(offset: int, size: int) -> bytes:
            if offset >= 200:
                net.isolate("a")
            return b"x" * size

        with pytest.raises(LinkError):
            await t["a"].send_snapshot(_offer("a", "b", 1000), read_chunk)


# ------------------------------------------------------------------ liveness


async def test_an_idle_stream_stays_open_and_a_silent_one_is_dropped(
    autojump_clock: object,
) -> None:
    net = StreamNetwork(StreamConfig(ping_interval=1.0, dead_after=5.0))
    async with running(net, ["a", "b"]) as (t, nodes):
        await connected(t, "a", "b")
        await trio.sleep(60)  # idle far past any keep-alive: pings keep it
        assert t["a"].status()["b"]["streams_opened"] == 1
        t["a"].send(vote("a", "b"))
        await nodes["b"].wait_for(lambda: len(nodes["b"].delivered) == 1)
    # A peer that opens a stream and then says nothing is dropped.
    async with trio.open_nursery() as nursery:
        lonely = net.transport("m", ["z"])  # z: a member that is not running
        await nursery.start(lonely.run, FakeNode("m"))
        stream, _ = await raw_dial(lonely, local="z")
        start = trio.current_time()
        await read_until_closed(stream)
        assert 4.9 <= trio.current_time() - start < 7.0
        nursery.cancel_scope.cancel()


async def test_a_large_append_is_split_into_frames_below_the_limit(
    autojump_clock: object,
) -> None:
    from trioraft.core import Entry

    cfg = StreamConfig(frame_target=10_000)
    net = StreamNetwork(cfg)
    async with running(net, ["a", "b"]) as (t, nodes):
        await connected(t, "a", "b")
        for i in range(20):
            t["a"].send(AppendEntries("a", "b", 1, i, 1 if i else 0,
                                      (Entry(i + 1, 1, data=b"v" * 4000),), 0))
        await nodes["b"].wait_for(lambda: len(nodes["b"].delivered) == 20)


async def test_a_bug_in_one_stream_costs_that_stream_not_the_node(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Defence in depth: an unexpected error while serving a stream (a bug, like
    the second writer chaos found) closes that stream; the transport keeps
    running, the dialer redials, and messages flow again."""
    from trioraft.transport import _conn

    net = StreamNetwork()
    async with running(net, ["a", "b"]) as (t, nodes):
        await connected(t, "a", "b")
        real = _conn.Connection._read_loop
        broken = {"left": 1}

        async def read_loop(self: _conn.Connection) -> None:
            if broken["left"]:
                broken["left"] -= 1
                raise RuntimeError("a bug in stream handling")
            await real(self)

        monkeypatch.setattr(_conn.Connection, "_read_loop", read_loop)
        for conn_t in (t["a"], t["b"]):
            for peer in conn_t._peers.values():
                if peer.conn is not None:
                    peer.conn.close("test: force a new stream")
        await connected(t, "a", "b")  # redialled; the first new stream hit the bug
        assert broken["left"] == 0
        t["a"].send(vote("a", "b", 7))
        await nodes["b"].wait_for(lambda: ("a", vote("a", "b", 7)) in nodes["b"].delivered)
    assert "a bug in stream handling" in caplog.text
