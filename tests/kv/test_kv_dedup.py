"""Exactly-once: request ids, the per-client window and client eviction (API.md)."""

import msgspec
import pytest

from trioraft.kv import (
    DEDUP_CLIENTS,
    DEDUP_WINDOW,
    Cas,
    CasResult,
    Delete,
    ExpiredRequest,
    InvalidResult,
    KVStateMachine,
    Put,
    PutResult,
    Txn,
    encode_command,
    result_to_json,
)


def run(machine, command):
    return machine.apply(machine.applied_index + 1, encode_command(command))


def test_the_documented_memory_bound_matches_the_limits():
    from trioraft.kv import _limits

    bound = f"{DEDUP_CLIENTS:,} x {DEDUP_WINDOW} = {DEDUP_CLIENTS * DEDUP_WINDOW:,} records"
    assert bound in (_limits.__doc__ or "")


def test_reusing_a_request_id_for_a_different_put_is_refused_and_changes_nothing():
    m = KVStateMachine()
    run(m, Put("acct", "100", request_id="c:1"))
    reused = run(m, Put("acct", "999", request_id="c:1"))
    assert isinstance(reused, InvalidResult)
    assert "already used" in reused.reason
    assert m.get("acct") == "100"


def test_a_retried_put_answers_with_its_first_index_without_storing_the_value():
    m = KVStateMachine()
    first = run(m, Put("k", "v" * 1000, request_id="c:1"))
    run(m, Put("k", "other"))
    again = run(m, Put("k", "v" * 1000, request_id="c:1"))
    assert again == first
    assert m.get("k") == "other"


def test_a_retry_returns_the_first_result_and_is_not_applied_again():
    kv = KVStateMachine()
    first = run(kv, Put("k", "v1", request_id="c:1"))
    run(kv, Put("k", "v2", request_id="other:1"))
    assert run(kv, Put("k", "v1", request_id="c:1")) == first == PutResult("k", "v1", 1)
    assert kv.get("k") == "v2"


def test_a_retried_cas_is_not_reevaluated():
    kv = KVStateMachine()
    assert run(kv, Cas("k", None, "v", request_id="c:1")).ok
    # Re-evaluating would fail (the key now exists); the retry still reports success.
    assert run(kv, Cas("k", None, "v", request_id="c:1")) == CasResult(True, "v", 1)


def test_a_retried_txn_is_not_applied_again():
    kv = KVStateMachine()
    first = run(kv, Txn(success=[Delete("k"), Put("n", "1")], request_id="c:1"))
    run(kv, Put("k", "back"))
    assert run(kv, Txn(success=[Delete("k"), Put("n", "1")], request_id="c:1")) == first
    assert kv.get("k") == "back"


def test_commands_without_a_request_id_are_always_applied():
    kv = KVStateMachine()
    run(kv, Delete("k"))
    run(kv, Put("k", "v"))
    assert run(kv, Delete("k")).deleted


def test_a_malformed_request_id_in_the_log_is_ignored_and_the_command_applied():
    kv = KVStateMachine()
    bad = msgspec.msgpack.encode(Put("k", "v", request_id="no-seq"))  # skips validation
    assert kv.apply(1, bad) == PutResult("k", "v", 1)
    assert kv.apply(2, bad) == PutResult("k", "v", 2)
    assert kv.dedup_clients == 0


def test_sequence_numbers_are_per_client():
    kv = KVStateMachine()
    run(kv, Put("a", "1", request_id="alice:1"))
    assert run(kv, Put("b", "2", request_id="bob:1")) == PutResult("b", "2", 2)


def test_a_request_older_than_the_window_is_expired_and_not_applied():
    kv = KVStateMachine(dedup_window=3)
    for seq in range(1, 5):  # seq 1 falls out of the window when seq 4 is recorded
        run(kv, Put("k", f"v{seq}", request_id=f"c:{seq}"))
    assert run(kv, Put("k", "v1", request_id="c:1")) == ExpiredRequest("c:1")
    assert kv.get("k") == "v4"


def test_requests_inside_the_window_are_still_answered():
    kv = KVStateMachine(dedup_window=3)
    for seq in range(1, 5):
        run(kv, Put("k", f"v{seq}", request_id=f"c:{seq}"))
    assert run(kv, Put("k", "v2", request_id="c:2")) == PutResult("k", "v2", 2)


def test_the_default_window_keeps_256_results_per_client():
    kv = KVStateMachine()
    for seq in range(DEDUP_WINDOW + 1):
        run(kv, Put("k", str(seq), request_id=f"c:{seq}"))
    assert isinstance(run(kv, Put("k", "0", request_id="c:0")), ExpiredRequest)
    assert run(kv, Put("k", "1", request_id="c:1")) == PutResult("k", "1", 2)


def test_an_unseen_seq_above_the_evicted_ones_is_applied_even_out_of_order():
    # Requests a client sent concurrently may commit out of order: seq 5 was
    # never applied and nothing at or above it was forgotten, so it applies.
    kv = KVStateMachine(dedup_window=2)
    for seq in (1, 6, 7):  # recording 7 evicts seq 1 only
        run(kv, Put("k", str(seq), request_id=f"c:{seq}"))
    assert run(kv, Put("late", "5", request_id="c:5")) == PutResult("late", "5", 4)
    assert kv.get("late") == "5"


def test_expired_json_explains_that_the_outcome_is_unknown():
    body = result_to_json(ExpiredRequest("c:1"))
    assert body["code"] == "request_expired"
    assert "c:1" in body["error"]


def test_the_least_recently_active_client_is_forgotten_first():
    kv = KVStateMachine(dedup_clients=2)
    run(kv, Put("a", "1", request_id="alice:1"))
    run(kv, Put("b", "1", request_id="bob:1"))
    run(kv, Put("c", "1", request_id="carol:1"))  # evicts alice, the least recent
    assert kv.dedup_clients == 2
    # bob is remembered: his retry is not applied again.
    assert run(kv, Put("b", "1", request_id="bob:1")) == PutResult("b", "1", 2)
    # alice was forgotten: her retry is applied again, as documented.
    assert run(kv, Put("a", "1", request_id="alice:1")) == PutResult("a", "1", 5)


def test_a_retry_counts_as_activity_for_eviction():
    kv = KVStateMachine(dedup_clients=2)
    run(kv, Put("a", "1", request_id="alice:1"))
    run(kv, Put("b", "1", request_id="bob:1"))
    run(kv, Put("a", "1", request_id="alice:1"))  # retry: alice is now the most recent
    run(kv, Put("c", "1", request_id="carol:1"))  # so bob is evicted
    assert run(kv, Put("a", "1", request_id="alice:1")) == PutResult("a", "1", 1)
    assert run(kv, Put("b", "1", request_id="bob:1")) == PutResult("b", "1", 6)


def test_client_eviction_is_the_same_on_every_replica_and_after_restore():
    commands = [
        Put(f"k{i % 7}", str(i), request_id=f"client{(i * 5) % 11}:{i}") for i in range(200)
    ]
    a, b = KVStateMachine(dedup_clients=4), KVStateMachine(dedup_clients=4)
    for command in commands[:120]:
        run(a, command)
        run(b, command)
    c = KVStateMachine(dedup_clients=4)
    c.restore(b.snapshot())
    for command in commands[120:]:
        run(a, command)
        run(c, command)
    assert a.state_digest() == c.state_digest()
    assert a.dedup_clients == 4


def test_an_invalid_command_is_not_recorded():
    kv = KVStateMachine()
    bad = msgspec.msgpack.encode(Put("", "v", request_id="c:1"))  # empty key
    assert kv.apply(1, bad).reason
    assert kv.dedup_clients == 0
    assert run(kv, Put("k", "v", request_id="c:1")) == PutResult("k", "v", 2)


@pytest.mark.parametrize("window", [1, 2, 5])
def test_each_client_keeps_at_most_window_results(window):
    kv = KVStateMachine(dedup_window=window)
    for seq in range(20):
        run(kv, Put("k", str(seq), request_id=f"c:{seq}"))
    remembered = [
        seq
        for seq in range(20)
        if not isinstance(run(kv, Put("k", "x", request_id=f"c:{seq}")), ExpiredRequest)
    ]
    assert remembered == list(range(20 - window, 20))
