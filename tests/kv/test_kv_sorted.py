"""SortedItems: ordered pairs in copy-on-write blocks; and delete_prefix on the machine."""

import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trioraft.kv import (
    Delete,
    DeletePrefix,
    DeletePrefixResult,
    Get,
    InvalidCommand,
    KVStateMachine,
    Put,
    Txn,
    TxnResult,
    encode_command,
)
from trioraft.kv._sorted import SortedKeys


def run(machine, command):
    return machine.apply(machine.applied_index + 1, encode_command(command))


keys = st.text(alphabet="abc/", min_size=1, max_size=4)
actions = st.lists(
    st.tuples(st.sampled_from(["add", "del", "prefix", "capture"]), keys), max_size=300
)


@settings(max_examples=80, deadline=None)
@given(actions)
def test_sorted_keys_agree_with_a_set_and_captures_never_change(steps):
    import trioraft.kv._sorted as mod

    items, model, captures = SortedKeys(), set(), []
    old_load = mod.LOAD
    mod.LOAD = 4  # tiny blocks: splits and merges every few steps
    try:
        for action, key in steps:
            if action == "add" and key not in model:
                items.insert(key)
                model.add(key)
            elif action == "del" and key in model:
                items.remove(key)
                model.discard(key)
            elif action == "prefix":
                removed = items.pop_prefix(key)
                assert removed == sorted(k for k in model if k.startswith(key))
                model -= set(removed)
            elif action == "capture":
                captured = items.capture()
                captures.append((captured, [list(block) for block in captured]))
            items.check_invariants()
            assert list(items.iter_from("")) == sorted(model)
    finally:
        mod.LOAD = old_load
    for captured, copy in captures:
        assert [list(block) for block in captured] == copy


def test_iter_from_is_inclusive_or_not():
    items = SortedKeys()
    for k in "bdf":
        items.insert(k)
    assert list(items.iter_from("d")) == ["d", "f"]
    assert list(items.iter_from("d", inclusive=False)) == ["f"]
    assert list(items.iter_from("g")) == []
    with pytest.raises(KeyError):
        items.remove("c")


def test_many_keys_stay_in_blocks():
    items = SortedKeys()
    items.extend_sorted([f"k{i:07d}" for i in range(200_000)])
    rng = random.Random(1)
    for n in rng.sample(range(200_000), 2000):
        items.insert(f"k{n:07d}x")
    items.check_invariants()
    assert len(items) == 202_000


def test_the_store_is_invisible_to_the_garbage_collector():
    # A full collection must not walk every key (it holds the GIL meanwhile).
    import gc

    m = KVStateMachine()
    for i in range(5000):
        run(m, Put(f"k{i:05d}", "v"))
    gc.collect()
    assert not gc.is_tracked(m._data)
    assert not any(gc.is_tracked(block) for block in m._keys._blocks)


# ------------------------------------------------------------ delete_prefix


def test_delete_prefix_removes_exactly_the_keys_with_the_prefix():
    m = KVStateMachine()
    for k in ["a", "ab", "ab/1", "ab/2", "ac", "b"]:
        run(m, Put(k, "v"))
    assert run(m, DeletePrefix("ab")) == DeletePrefixResult("ab", 3)
    m._keys.check_invariants()
    assert [k for k, _ in m.items()] == ["a", "ac", "b"]
    assert m.data_bytes == sum(len(k) + 1 for k in ["a", "ac", "b"])
    assert run(m, DeletePrefix("zz")) == DeletePrefixResult("zz", 0)


def test_delete_prefix_in_a_txn_is_atomic_with_the_other_ops():
    m = KVStateMachine()
    for i in range(5):
        run(m, Put(f"p/{i}", "v"))
    result = run(m, Txn(success=[Get("p/1"), DeletePrefix("p/"), Get("p/1"), Put("p/9", "n")]))
    assert isinstance(result, TxnResult)
    assert [r.value for r in (result.results[0], result.results[2])] == ["v", None]
    assert result.results[1] == DeletePrefixResult("p/", 5)
    assert dict(m.items()) == {"p/9": "n"}


@pytest.mark.parametrize("prefix", ["", "k" * 1025])
def test_delete_prefix_needs_a_non_empty_prefix_within_the_key_limit(prefix):
    with pytest.raises(InvalidCommand):
        encode_command(DeletePrefix(prefix))
    with pytest.raises(InvalidCommand):
        encode_command(Txn(success=[DeletePrefix(prefix)]))


def test_delete_prefix_on_a_large_store_keeps_the_order_and_the_counts():
    m = KVStateMachine()
    for i in range(5000):
        run(m, Put(f"{i % 7}/{i:05d}", "v"))
    assert run(m, DeletePrefix("3/")).deleted == len([i for i in range(5000) if i % 7 == 3])
    assert all(not k.startswith("3/") for k, _ in m.items())
    copy = KVStateMachine()
    copy.restore(m.snapshot())
    assert copy.state_digest() == m.state_digest()
    run(m, Delete("1/00001"))
    assert m.get("1/00001") is None


# ------------------------------------------------------- old snapshot format


def test_a_snapshot_of_the_previous_format_restores_and_expires_its_old_ids():
    old = msgspec.msgpack.encode([
        1, 7, [["a", "1"], ["b", "2"]],
        [["c", 5, -1, [[3, ["put", "a", "#x", 5]], [4, ["delete", "b", True]]]],
         ["bad client", 6, -1, []]],
    ])
    m = KVStateMachine()
    m.restore(old)
    assert dict(m.items()) == {"a": "1", "b": "2"}
    assert m.applied_index == 7
    assert m.dedup_clients == 1  # the client id today's rules refuse is dropped
    retry = run(m, Put("a", "1", request_id="c:4"))
    assert type(retry).__name__ == "ExpiredRequest"  # outcome unknown, not applied twice
    assert m.get("a") == "1"
    assert run(m, Put("n", "1", request_id="c:5")).index == 9
