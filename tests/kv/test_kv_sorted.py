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
from trioraft.kv._sorted import SortedItems


def run(machine, command):
    return machine.apply(machine.applied_index + 1, encode_command(command))


keys = st.text(alphabet="abc/", min_size=1, max_size=4)
actions = st.lists(
    st.tuples(st.sampled_from(["set", "del", "prefix", "capture"]), keys), max_size=300
)


@settings(max_examples=80, deadline=None)
@given(actions)
def test_sorted_items_agrees_with_a_dict_and_captures_never_change(steps):
    import trioraft.kv._sorted as mod

    items, model, captures = SortedItems(), {}, []
    old_load = mod.LOAD
    mod.LOAD = 4  # tiny blocks: splits and merges on every few steps
    try:
        for n, (action, key) in enumerate(steps):
            if action == "set":
                if key in model:
                    items.replace(key, str(n))
                else:
                    items.insert(key, str(n))
                model[key] = str(n)
            elif action == "del" and key in model:
                items.remove(key)
                del model[key]
            elif action == "prefix":
                removed = items.pop_prefix(key)
                expected = sorted((k, v) for k, v in model.items() if k.startswith(key))
                assert removed == expected
                for k, _ in removed:
                    del model[k]
            elif action == "capture":
                captured = items.capture()
                captures.append((captured, [(list(k), list(v)) for k, v in captured]))
            items.check_invariants()
            assert list(items.iter_from("")) == sorted(model.items())
    finally:
        mod.LOAD = old_load
    for captured, copy in captures:
        assert [(list(k), list(v)) for k, v in captured] == copy


def test_iter_from_is_inclusive_or_not():
    items = SortedItems()
    for k in "bdf":
        items.insert(k, k.upper())
    assert [k for k, _ in items.iter_from("d")] == ["d", "f"]
    assert [k for k, _ in items.iter_from("d", inclusive=False)] == ["f"]
    assert list(items.iter_from("g")) == []


def test_a_million_keys_stay_in_blocks():
    items = SortedItems()
    keys = [f"k{i:07d}" for i in range(200_000)]
    items.extend_sorted(keys, keys)
    rng = random.Random(1)
    for n in rng.sample(range(200_000), 2000):
        k = f"k{n:07d}x"
        items.insert(k, k)
    items.check_invariants()
    assert len(items) == 202_000


# ------------------------------------------------------------ delete_prefix


def test_delete_prefix_removes_exactly_the_keys_with_the_prefix():
    m = KVStateMachine()
    for k in ["a", "ab", "ab/1", "ab/2", "ac", "b"]:
        run(m, Put(k, "v"))
    assert run(m, DeletePrefix("ab")) == DeletePrefixResult("ab", 3)
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
