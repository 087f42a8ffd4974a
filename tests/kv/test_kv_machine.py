"""KVStateMachine: applying commands, reads, transactions (trioraft.kv._machine)."""

import msgspec
import pytest

from trioraft.kv import (
    Cas,
    CasResult,
    Compare,
    Delete,
    DeleteResult,
    Get,
    GetResult,
    InvalidResult,
    KVStateMachine,
    Put,
    PutResult,
    Txn,
    TxnResult,
    encode_command,
    result_to_json,
)


def run(machine, *commands):
    """Apply `commands` at the next indexes; return the last result."""
    result = None
    for command in commands:
        result = machine.apply(machine.applied_index + 1, encode_command(command))
    return result


@pytest.fixture
def kv():
    return KVStateMachine()


# ------------------------------------------------------------- put/get/delete


def test_a_fresh_machine_is_empty(kv):
    assert len(kv) == 0
    assert kv.applied_index == 0
    assert kv.data_bytes == 0
    assert kv.get("k") is None
    assert list(kv.items()) == []


def test_put_stores_the_value_and_reports_the_entry_index(kv):
    assert kv.apply(1, encode_command(Put("k", "v"))) == PutResult("k", "v", 1)
    assert kv.get("k") == "v"
    assert kv.applied_index == 1
    assert len(kv) == 1


def test_put_overwrites(kv):
    run(kv, Put("k", "v1"), Put("k", "v2"))
    assert kv.get("k") == "v2"
    assert len(kv) == 1


def test_delete_removes_the_key_and_says_it_existed(kv):
    run(kv, Put("k", "v"))
    assert run(kv, Delete("k")) == DeleteResult("k", deleted=True)
    assert kv.get("k") is None
    assert "k" not in kv


def test_delete_of_an_absent_key_says_nothing_was_deleted(kv):
    assert run(kv, Delete("k")) == DeleteResult("k", deleted=False)


def test_an_empty_value_is_a_present_value(kv):
    run(kv, Put("k", ""))
    assert kv.get("k") == ""
    assert "k" in kv


def test_data_bytes_tracks_utf8_sizes_of_keys_and_values(kv):
    run(kv, Put("ab", "é"))  # 2 + 2
    assert kv.data_bytes == 4
    run(kv, Put("ab", "xyz"))  # 2 + 3
    assert kv.data_bytes == 5
    run(kv, Put("c", ""), Delete("ab"))
    assert kv.data_bytes == 1


# ------------------------------------------------------------------------ cas


def test_cas_with_expected_none_creates_an_absent_key(kv):
    assert run(kv, Cas("k", None, "v")) == CasResult(ok=True, current="v", index=1)
    assert kv.get("k") == "v"


def test_cas_with_expected_none_fails_on_a_present_key(kv):
    run(kv, Put("k", "v"))
    assert run(kv, Cas("k", None, "w")) == CasResult(ok=False, current="v", index=2)
    assert kv.get("k") == "v"


def test_cas_with_the_right_expectation_swaps(kv):
    run(kv, Put("k", "old"))
    assert run(kv, Cas("k", "old", "new")).ok
    assert kv.get("k") == "new"


def test_cas_with_a_wrong_expectation_changes_nothing_and_reports_current(kv):
    run(kv, Put("k", "actual"))
    assert run(kv, Cas("k", "guess", "new")) == CasResult(ok=False, current="actual", index=2)
    assert kv.get("k") == "actual"


def test_cas_on_an_absent_key_with_an_expectation_fails_with_current_none(kv):
    assert run(kv, Cas("k", "old", "new")) == CasResult(ok=False, current=None, index=1)
    assert len(kv) == 0


def test_cas_with_value_none_deletes(kv):
    run(kv, Put("k", "v"))
    assert run(kv, Cas("k", "v", None)) == CasResult(ok=True, current=None, index=2)
    assert "k" not in kv


# ------------------------------------------------------------------------ txn


def test_txn_runs_success_ops_when_every_guard_holds(kv):
    run(kv, Put("a", "1"))
    result = run(
        kv,
        Txn(
            compare=[Compare("a", "==", "1"), Compare("b", "absent")],
            success=[Put("b", "2"), Get("a")],
            failure=[Put("failed", "yes")],
        ),
    )
    assert result == TxnResult(True, [PutResult("b", "2", 2), GetResult("a", "1")])
    assert kv.get("b") == "2"
    assert "failed" not in kv


def test_txn_runs_failure_ops_when_any_guard_is_false(kv):
    run(kv, Put("a", "1"))
    result = run(
        kv,
        Txn(
            compare=[Compare("a", "exists"), Compare("a", "!=", "1")],
            success=[Put("b", "2"), Delete("a")],
            failure=[Get("a")],
        ),
    )
    assert result == TxnResult(False, [GetResult("a", "1")])
    assert kv.get("a") == "1"
    assert "b" not in kv


def test_txn_without_guards_always_succeeds(kv):
    assert run(kv, Txn(success=[Put("a", "1")])).succeeded


@pytest.mark.parametrize(
    ("compare", "holds"),
    [
        (Compare("present", "==", "v"), True),
        (Compare("present", "==", "w"), False),
        (Compare("missing", "==", "v"), False),
        (Compare("present", "!=", "w"), True),
        (Compare("present", "!=", "v"), False),
        (Compare("missing", "!=", "v"), True),
        (Compare("present", "exists"), True),
        (Compare("missing", "exists"), False),
        (Compare("present", "absent"), False),
        (Compare("missing", "absent"), True),
    ],
)
def test_txn_compare_semantics(kv, compare, holds):
    run(kv, Put("present", "v"))
    assert run(kv, Txn(compare=[compare])).succeeded is holds


def test_txn_ops_run_in_order_and_see_earlier_ops(kv):
    result = run(kv, Txn(success=[Put("a", "1"), Get("a"), Delete("a"), Get("a")]))
    assert [r for r in result.results if isinstance(r, GetResult)] == [
        GetResult("a", "1"),
        GetResult("a", None),
    ]
    assert "a" not in kv


def test_a_failed_cas_inside_a_txn_aborts_nothing_and_reports_ok_false(kv):
    run(kv, Put("a", "1"))
    result = run(kv, Txn(success=[Cas("a", "wrong", "2"), Put("b", "3")]))
    assert result == TxnResult(True, [CasResult(False, "1", 2), PutResult("b", "3", 2)])
    assert kv.get("a") == "1"
    assert kv.get("b") == "3"


def test_an_invalid_txn_changes_nothing_at_all(kv):
    run(kv, Put("a", "1"))
    before = list(kv.items())
    # Hand-encoded: the second op has an empty key, which encode_command would refuse.
    data = msgspec.msgpack.encode(
        ["txn", [], [["put", "a", "changed", None], ["put", "", "x", None]], [], None]
    )
    assert isinstance(kv.apply(2, data), InvalidResult)
    assert list(kv.items()) == before


# ---------------------------------------------------------------------- range


def test_range_returns_matching_items_sorted_by_key(kv):
    run(kv, Put("b/2", "y"), Put("a", "0"), Put("b/1", "x"), Put("c", "z"), Put("b/3", "w"))
    assert kv.range("b/", 10) == ([("b/1", "x"), ("b/2", "y"), ("b/3", "w")], False)


def test_range_with_limit_says_more_when_items_remain(kv):
    run(kv, Put("p1", "1"), Put("p2", "2"), Put("p3", "3"))
    assert kv.range("p", 2) == ([("p1", "1"), ("p2", "2")], True)


def test_range_with_limit_equal_to_the_matches_says_no_more(kv):
    run(kv, Put("p1", "1"), Put("p2", "2"), Put("q", "3"))
    assert kv.range("p", 2) == ([("p1", "1"), ("p2", "2")], False)


def test_range_with_an_empty_prefix_lists_everything(kv):
    run(kv, Put("b", "2"), Put("a", "1"))
    assert kv.range("", 100) == ([("a", "1"), ("b", "2")], False)


def test_range_with_no_match_is_empty(kv):
    run(kv, Put("a", "1"))
    assert kv.range("zz", 10) == ([], False)


def test_range_with_limit_zero_only_says_whether_anything_matches(kv):
    run(kv, Put("a", "1"))
    assert kv.range("a", 0) == ([], True)
    assert kv.range("b", 0) == ([], False)


def test_range_after_pages_through_a_prefix(kv):
    run(kv, *(Put(f"p{i}", str(i)) for i in range(5)))
    page1, more = kv.range("p", 2)
    page2, _ = kv.range("p", 2, after=page1[-1][0])
    assert [k for k, _ in page1 + page2] == ["p0", "p1", "p2", "p3"]
    assert more


def test_range_does_not_see_deleted_keys(kv):
    run(kv, Put("a1", "1"), Put("a2", "2"), Delete("a1"))
    assert kv.range("a", 10) == ([("a2", "2")], False)


def test_range_rejects_a_negative_limit(kv):
    with pytest.raises(ValueError, match="negative"):
        kv.range("", -1)


def test_items_are_in_key_order(kv):
    run(kv, Put("c", "3"), Put("a", "1"), Put("b", "2"))
    assert list(kv.items()) == [("a", "1"), ("b", "2"), ("c", "3")]


# ----------------------------------------------------- bad entries and indexes


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xc1", b"garbage bytes \xff", b"\x93\xa3put"])
def test_garbage_gives_an_invalid_result_and_changes_no_data(kv, data):
    run(kv, Put("k", "v"))
    result = kv.apply(2, data)
    assert isinstance(result, InvalidResult)
    assert result.reason
    assert list(kv.items()) == [("k", "v")]
    assert kv.applied_index == 2  # the entry is consumed all the same


def test_an_oversized_value_in_the_log_is_an_invalid_result(kv):
    data = msgspec.msgpack.encode(["put", "k", "v" * (1024 * 1024 + 1), None])
    assert "limit" in kv.apply(1, data).reason
    assert "k" not in kv


def test_indexes_must_increase(kv):
    run(kv, Put("k", "v"))
    with pytest.raises(AssertionError, match="increasing index"):
        kv.apply(1, encode_command(Put("k", "w")))


def test_indexes_may_skip_entries_that_are_not_commands(kv):
    kv.apply_noop(1)
    kv.apply(3, encode_command(Put("k", "v")))
    assert kv.applied_index == 3


def test_apply_noop_only_advances_the_applied_index(kv):
    digest_data = list(kv.items())
    kv.apply_noop(5)
    assert kv.applied_index == 5
    assert list(kv.items()) == digest_data
    with pytest.raises(AssertionError):
        kv.apply_noop(5)


# ---------------------------------------------------------------------- JSON


def test_result_to_json_gives_the_api_bodies():
    assert result_to_json(PutResult("k", "v", 3)) == {"key": "k", "value": "v", "index": 3}
    assert result_to_json(DeleteResult("k", True)) == {"key": "k", "deleted": True}
    assert result_to_json(CasResult(True, "v", 4)) == {"ok": True, "index": 4}
    assert result_to_json(CasResult(False, "x", 4)) == {"ok": False, "current": "x"}
    assert result_to_json(CasResult(False, None, 4)) == {"ok": False, "current": None}
    assert result_to_json(TxnResult(False, [GetResult("k", None)])) == {
        "succeeded": False,
        "results": [{"key": "k", "value": None}],
    }
    assert result_to_json(InvalidResult("bad")) == {"error": "bad", "code": "bad_request"}
