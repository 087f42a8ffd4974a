"""Relayed writes and proposals: every write's answer follows its own log entry
(issue 11 #1), and one proposal's bookkeeping never touches another's."""

from __future__ import annotations

import trio

from tests.node.helpers import put
from trioraft.core import AppendEntries, Message
from trioraft.errors import NoQuorum, ProposalDropped, UnknownOutcome
from trioraft.kv import Put, encode_command
from trioraft.node._forward import outcomes_from_answer
from trioraft.testing.cluster import open_cluster
from trioraft.testing.linearizability import Operation, check
from trioraft.transport import RelayCode


async def test_a_relayed_batch_split_by_a_leader_change_answers_each_write_by_its_entry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A follower relays 10 writes; the leader appends them in one go, but only
    the first 4 reach a majority before it is cut off, and the next leader
    overwrites the other 6. The 4 applied writes must be answered with their
    results, the 6 overwritten ones 503 (not, as before the fix, all 10 with 503:
    a 503 for a write that applied breaks "503 never took effect")."""
    async with open_cluster(
        3, seed=31, request_timeout_s=60.0, core_options={"max_entries_per_msg": 4}
    ) as cluster:
        leader = await cluster.wait_for_leader()
        await put(leader, "warm", "up")
        await cluster.wait_applied(leader.kv.applied_index)
        relayer, other = cluster.followers()
        first = leader._c.log.last_index() + 1
        passed: list[Message] = []

        def only_the_first_append_to_other(m: Message) -> bool:
            if m.src != leader.id or not isinstance(m, AppendEntries):
                return True
            if not any(e.index >= first for e in m.entries):
                return True  # heartbeats and older entries
            if m.dst == other.id and not passed:
                passed.append(m)
                return True
            return False

        cluster.network.filter = only_the_first_append_to_other
        datas = [encode_command(Put(f"k{i}", f"v{i}")) for i in range(10)]
        answers = []
        call = trio.current_time()
        async with trio.open_nursery() as nursery:

            async def relay() -> None:
                answers.append(await leader.relayed_writes(relayer.id, datas, 60.0))

            nursery.start_soon(relay)
            await cluster.wait_until(lambda: leader._c.commit_index >= first + 3)
            assert leader._c.commit_index == first + 3  # the batch is split: 4 of 10
            cluster.network.isolate(leader.id)
            new = await cluster.wait_for_leader(among={relayer.id, other.id})
            assert new is other  # the only one holding the prefix
            cluster.network.filter = None
            cluster.network.heal()
            for i in range(10):  # the overwritten indexes fill with the new leader's entries
                await put(new, f"after{i}", "x")
        ret = trio.current_time()

        [answer] = answers
        assert [RelayCode(c) for c in answer.codes] == [RelayCode.OK] * 4 + [
            RelayCode.DROPPED
        ] * 6
        outcomes = outcomes_from_answer(answer)
        assert [o.index for o in outcomes[:4]] == [first, first + 1, first + 2, first + 3]
        assert all(isinstance(o, ProposalDropped) for o in outcomes[4:])

        history = [
            Operation.put(i, f"k{i}", f"v{i}", call, ret,
                          "fail" if isinstance(o, BaseException) else "ok")
            for i, o in enumerate(outcomes)
        ]  # fmt: skip
        await cluster.wait_converged()
        t = trio.current_time()
        await new.read_barrier()
        history += [Operation.get(100 + i, f"k{i}", new.kv.get(f"k{i}"), t, trio.current_time())
                    for i in range(10)]  # fmt: skip
        result = check(history)
        assert result.ok, result.summary()


async def test_a_timed_out_proposal_never_removes_another_proposals_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Suspected in issue 11, confirmed: a leader that lost an uncommitted tail
    and leads again proposes at indexes its old, still-waiting proposals were
    registered under. The old proposal's timeout cleanup (keyed by index
    alone) removed the new proposal's reply slot: the new write committed and
    was answered 504. Now each proposal removes only its own writes."""
    async with open_cluster(3, seed=32, request_timeout_s=60.0) as cluster:
        old_leader = await cluster.wait_for_leader()
        await put(old_leader, "warm", "up")
        await cluster.wait_applied(old_leader.kv.applied_index)
        base = old_leader._c.log.last_index()
        # 1. Cut off, the leader appends 5 writes that never commit.
        cluster.network.isolate(old_leader.id)
        old_outcomes: list[object] = []

        async def old_write(i: int) -> None:
            try:
                await old_leader.propose([encode_command(Put(f"old{i}", "x"))], timeout=20.0)
            except Exception as exc:
                old_outcomes.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(old_write, i)
            await cluster.wait_until(lambda: old_leader._c.log.last_index() == base + 5)
            # 2. A new leader commits its no-op at base+1; healed, the old
            # leader takes it (and loses its tail base+2..base+5).
            others = {n.id for n in cluster.followers()} - {old_leader.id}
            interim = await cluster.wait_for_leader(among=others)
            await interim.read_barrier()
            cluster.network.heal()
            await cluster.wait_until(lambda: old_leader._c.log.last_index() == base + 1)
            # 3. It leads again; its no-op goes to base+2, and a new write to
            # base+3, where an old write still waits. That write is held back
            # until the old writes have timed out.
            await interim._driver.call(lambda: interim._driver.transfer_leadership(old_leader.id))
            await cluster.wait_until(lambda: old_leader.is_leader)
            await old_leader.read_barrier()  # its no-op at base+2 committed

            def hold_base_3(m: Message) -> bool:
                return not (isinstance(m, AppendEntries)
                            and any(e.index >= base + 3 for e in m.entries))  # fmt: skip

            cluster.network.filter = hold_base_3
            outcome: list[object] = []

            async def new_write() -> None:
                outcome.append(await put(old_leader, "new", "y"))

            nursery.start_soon(new_write)
            await cluster.wait_until(lambda: len(old_outcomes) == 5, timeout_s=30)
            cluster.network.filter = None  # 4. now it may commit
        assert all(isinstance(o, (ProposalDropped, UnknownOutcome)) for o in old_outcomes)
        [result] = outcome
        assert result.index == base + 3  # type: ignore[attr-defined]
        assert old_leader.kv.get("new") == "y"


async def test_read_ids_never_repeat_across_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Suspected in issue 11, confirmed: ReadIndex request ids restarted at 1
    with each incarnation, so a leader's late answer to the previous
    incarnation's read could answer a new read with an older index (a stale
    read). Ids now start at a random point of a 62-bit space per incarnation."""
    from trioraft.core import ReadIndexRequest, ReadIndexResponse

    async with open_cluster(3, seed=33, request_timeout_s=5.0) as cluster:
        leader = await cluster.wait_for_leader()
        follower = cluster.followers()[0]
        seen: dict[int, list[int]] = {}  # incarnation -> read ids sent

        def record(m: Message) -> bool:
            if isinstance(m, ReadIndexRequest) and m.src == follower.id:
                seen.setdefault(cluster.incarnation[follower.id], []).extend(m.ctxs)
            return True

        cluster.network.filter = record
        await follower.read_barrier()
        await cluster.crash(follower.id)
        again = await cluster.restart(follower.id)
        await put(leader, "k", "after the restart")
        await cluster.wait_until(lambda: again.leader_id == leader.id)

        # The new incarnation's read is held up; a late answer to the old
        # incarnation's read (a stale index) arrives instead.
        def hold_reads(m: Message) -> bool:
            record(m)
            return not isinstance(m, ReadIndexRequest)

        cluster.network.filter = hold_reads
        old_ids = tuple(seen[1])
        got: list[object] = []

        async def read() -> None:
            try:
                got.append(await again.read_barrier(timeout=3.0))
            except NoQuorum as exc:
                got.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await cluster.wait_until(lambda: 2 in seen)
            again.deliver(leader.id, [ReadIndexResponse(leader.id, again.id, leader.term,
                                                        old_ids, 1)])  # fmt: skip
        # Not served at the stale index: refused when its own answer never came.
        [outcome] = got
        assert isinstance(outcome, NoQuorum)
        assert not set(seen[2]) & set(seen[1])


def test_each_relayed_code_maps_to_the_error_its_http_answer_needs() -> None:
    from trioraft.errors import NoLeader, NoQuorum, Overloaded, ShuttingDown
    from trioraft.kv import InvalidCommand, PutResult, encode_results
    from trioraft.transport import RelayAnswer

    codes = (RelayCode.OK, RelayCode.DROPPED, RelayCode.NOT_LEADER, RelayCode.NO_QUORUM,
             RelayCode.UNKNOWN, RelayCode.INVALID, RelayCode.OVERLOADED,
             RelayCode.SHUTTING_DOWN, RelayCode.OK, 200)  # fmt: skip
    answer = RelayAnswer(tuple(int(c) for c in codes),
                         encode_results([PutResult("a", "1", 7), PutResult("b", "2", 8)]))
    out = outcomes_from_answer(answer)
    assert out[0] == PutResult("a", "1", 7)
    assert out[8] == PutResult("b", "2", 8)
    expected = [ProposalDropped, NoLeader, NoQuorum, UnknownOutcome, InvalidCommand,
                Overloaded, ShuttingDown]  # fmt: skip
    assert [type(o) for o in out[1:8]] == expected
    assert isinstance(out[9], UnknownOutcome)  # a code from a newer version: unknown
    # An OK without its result, or results that do not decode: unknown, never a guess.
    assert isinstance(outcomes_from_answer(RelayAnswer((0,), b""))[0], UnknownOutcome)
    assert isinstance(outcomes_from_answer(RelayAnswer((0,), b"\xc1"))[0], UnknownOutcome)
