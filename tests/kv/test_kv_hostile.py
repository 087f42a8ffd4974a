"""Issue 10 #1, #3, #4: nothing a client sends can poison the log, and the
exactly-once table stays bounded and never holds values."""

import msgspec
import pytest

from trioraft.kv import (
    DEDUP_MAX_BYTES,
    MAX_SEQ,
    MAX_TXN_RESULT_BYTES,
    MAX_VALUE_BYTES,
    Cas,
    CasResult,
    Delete,
    DeletePrefix,
    DeletePrefixResult,
    Get,
    GetResult,
    InvalidCommand,
    InvalidResult,
    KVStateMachine,
    Put,
    PutResult,
    TooLargeResult,
    Txn,
    TxnResult,
    encode_command,
    parse_request_id,
    result_to_json,
)

MiB = 1024 * 1024


def run(machine, command):
    return machine.apply(machine.applied_index + 1, encode_command(command))


def raw(machine, command):
    """Apply a command as it may sit in an old log: encoded without validation."""
    return machine.apply(machine.applied_index + 1, msgspec.msgpack.encode(command))


# ------------------------------------------------------------ request ids


@pytest.mark.parametrize(
    "rid",
    [
        "evil:99999999999999999999999999",  # the poison pill of issue 10 #1
        f"c:{MAX_SEQ + 1}",
        "z:0001",  # not canonical: would alias z:1
        "z:00",
        "z:+1",
        "z:-1",
        "z: 1",
        "z:1 ",
        "z:\u0661",  # a non-ASCII digit
        "é:1",  # client not printable ASCII
        "a b:1",
        ":1",
        "c:",
        "c",
    ],
)
def test_a_non_canonical_or_out_of_range_request_id_is_refused(rid):
    with pytest.raises(InvalidCommand):
        parse_request_id(rid)
    with pytest.raises(InvalidCommand):
        encode_command(Put("k", "v", request_id=rid))


def test_the_largest_sequence_number_is_accepted_and_snapshots():
    m = KVStateMachine()
    assert parse_request_id(f"c:{MAX_SEQ}") == ("c", MAX_SEQ)
    run(m, Put("k", "v", request_id=f"c:{MAX_SEQ}"))
    copy = KVStateMachine()
    copy.restore(m.snapshot())
    assert copy.state_digest() == m.state_digest()
    assert parse_request_id("a:b:0") == ("a:b", 0)


def test_a_poison_request_id_already_in_a_log_is_applied_without_dedup_and_snapshots():
    # A log written before the API refused it may hold this entry: every
    # replica applies it alike, without deduplication, and snapshots survive.
    m = KVStateMachine()
    poison = Put("k", "v", request_id="evil:99999999999999999999999999")
    assert raw(m, poison) == PutResult("k", "v", 1)
    assert raw(m, poison) == PutResult("k", "v", 2)  # no dedup: applied again
    assert m.dedup_clients == 0
    copy = KVStateMachine()
    copy.restore(m.snapshot())
    assert copy.state_digest() == m.state_digest()


@pytest.mark.parametrize("command", [
    Delete("k", request_id="z:0001"),
    Cas("k", None, "v", request_id=f"c:{2**64}"),
    Txn(success=[Put("k", "v")], request_id="c:-5"),
    DeletePrefix("k", request_id="é:1"),
])
def test_every_command_kind_with_a_bad_id_in_a_log_is_applied_without_dedup(command):
    m = KVStateMachine()
    assert not isinstance(raw(m, command), InvalidResult)
    assert m.dedup_clients == 0
    m.snapshot()


# ------------------------------------------------------- reuse detection


@pytest.mark.parametrize(("first", "second"), [
    (Put("k", "1"), Put("k", "2")),
    (Put("k", "1"), Put("j", "1")),
    (Delete("k"), Delete("j")),
    (Delete("k"), Put("k", "1")),
    (Cas("k", None, "1"), Cas("k", None, "2")),
    (Cas("k", None, "1"), Cas("k", "x", "1")),
    (Txn(success=[Put("k", "1")]), Txn(success=[Put("k", "2")])),
    (Txn(success=[Get("k")]), Txn(failure=[Get("k")])),
    (DeletePrefix("a"), DeletePrefix("b")),
])
def test_reusing_a_request_id_for_a_different_command_is_refused_and_changes_nothing(
    first, second
):
    m = KVStateMachine()
    run(m, Put("k", "0"))
    run(m, first.__class__(**{**msgspec.structs.asdict(first), "request_id": "c:1"}))
    before = dict(m.items())
    reused = run(m, second.__class__(**{**msgspec.structs.asdict(second), "request_id": "c:1"}))
    assert isinstance(reused, InvalidResult)
    assert "already used" in reused.reason
    assert dict(m.items()) == before


def test_a_retry_of_every_kind_gets_its_first_answer_without_values_read():
    m = KVStateMachine()
    run(m, Put("a/1", "x"))
    run(m, Put("a/2", "y"))
    commands = [
        Put("k", "v" * 100, request_id="c:1"),
        Delete("k", request_id="c:2"),
        Delete("k", request_id="c:3"),
        Cas("k", None, "new", request_id="c:4"),
        Cas("k", "wrong", "x", request_id="c:5"),
        DeletePrefix("a/", request_id="c:6"),
        Txn(success=[Put("t", "1"), Delete("t"), Cas("t", None, "2")], request_id="c:7"),
    ]
    firsts = [run(m, c) for c in commands]
    replays = [run(m, c) for c in commands]
    assert replays[:4] == firsts[:4]
    # A failed CAS's `current` is a value read: not kept, so null and flagged.
    assert firsts[4] == CasResult(False, "new", firsts[4].index)
    assert replays[4] == CasResult(False, None, firsts[4].index, replayed=True)
    assert result_to_json(replays[4]) == {"ok": False, "current": None, "replayed": True}
    assert replays[5] == firsts[5] == DeletePrefixResult("a/", 2)
    assert replays[6] == firsts[6]  # writes only: replayed exactly


def test_a_retried_txn_answers_its_reads_as_null_and_says_replayed():
    m = KVStateMachine()
    run(m, Put("k", "secret"))
    txn = Txn(success=[Get("k"), Put("k", "2")], request_id="c:1")
    first = run(m, txn)
    assert first.results[0] == GetResult("k", "secret")
    again = run(m, txn)
    assert again == TxnResult(True, [GetResult("k", None), first.results[1]], replayed=True)
    assert result_to_json(again)["replayed"] is True
    assert m.get("k") == "2"


# ------------------------------------------------------- the table's bound


def test_no_value_reaches_the_dedup_table():
    # Issue 10 #4: 200 txns with 1 MiB values gave a 207 MB snapshot.
    m = KVStateMachine()
    big = "v" * MAX_VALUE_BYTES
    run(m, Put("big", big))
    for seq in range(20):
        run(m, Txn(success=[Put(f"k{seq % 2}", big), Get("big"), Cas("big", "no", "x")],
                   request_id=f"c:{seq}"))
        run(m, Cas("big", "no", "x", request_id=f"d:{seq}"))
    snapshot = m.snapshot()
    assert len(snapshot) < 4 * MiB  # three 1 MiB values, and records of a few bytes
    assert m.dedup_bytes < 2 * 400 + 40 * (200 + 60)  # two clients, 40 small records


def test_the_table_never_exceeds_its_accounted_byte_bound():
    m = KVStateMachine(dedup_max_bytes=20_000, dedup_clients=10_000)
    txn_ops = [DeletePrefix(f"p{i}/") for i in range(200)]  # a large record each
    for client in range(100):
        run(m, Txn(success=txn_ops, request_id=f"client{client}:1"))
        assert m.dedup_bytes <= 20_000
    assert 0 < m.dedup_clients < 100
    copy = KVStateMachine(dedup_max_bytes=20_000, dedup_clients=10_000)
    copy.restore(m.snapshot())
    assert copy.dedup_bytes == m.dedup_bytes


def test_the_default_byte_bound_is_the_documented_one():
    from trioraft.kv import _limits

    assert 48 * MiB == DEDUP_MAX_BYTES
    assert "48 MiB" in (_limits.__doc__ or "")


# ----------------------------------------------- transaction amplification


def test_a_txn_whose_reads_exceed_the_result_bound_fails_whole_and_changes_nothing():
    m = KVStateMachine()
    run(m, Put("big", "v" * MAX_VALUE_BYTES))
    before = m.state_digest()
    reads = [Get("big")] * (MAX_TXN_RESULT_BYTES // MAX_VALUE_BYTES + 1)
    result = run(m, Txn(success=[Put("first", "1"), DeletePrefix("x"), *reads],
                        request_id="c:1"))
    assert isinstance(result, TooLargeResult)
    assert result_to_json(result)["code"] == "too_large"
    # Nothing changed but the applied index; the id is not used up either.
    assert m.get("first") is None
    assert m.get("big") == "v" * MAX_VALUE_BYTES
    assert m.dedup_clients == 0
    other = KVStateMachine()
    run(other, Put("big", "v" * MAX_VALUE_BYTES))
    assert before == other.state_digest()
    other.apply_noop(2)
    assert m.state_digest() == other.state_digest()


def test_reads_up_to_the_result_bound_are_answered():
    m = KVStateMachine()
    run(m, Put("big", "v" * MAX_VALUE_BYTES))
    reads = [Get("big")] * (MAX_TXN_RESULT_BYTES // MAX_VALUE_BYTES)
    result = run(m, Txn(success=reads))
    assert isinstance(result, TxnResult)
    assert len(result.results) == len(reads)


def test_the_accounted_size_is_an_upper_bound_of_the_tables_real_memory():
    import tracemalloc

    from trioraft.kv._dedup import DedupTable

    tracemalloc.start()
    try:
        table = DedupTable(64, 4096, 10**12)
        before = tracemalloc.get_traced_memory()[0]
        index = 0
        for client in range(300):
            for seq in range(70):  # past the window: evictions too
                index += 1
                table.record(f"client-{client}", 2**62 + seq, index, bytes(40))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used <= table.accounted_bytes
