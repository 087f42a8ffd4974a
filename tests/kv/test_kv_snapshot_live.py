"""A snapshot captured now and encoded later, while entries keep being applied,
is exactly the state at the capture (issue 11 #4: snapshots that do not stall)."""

import gc
import threading
import time

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

import trioraft.kv._snapshot as snapshot_format
from trioraft.kv import Cas, Delete, DeletePrefix, Get, KVStateMachine, Put, Txn, encode_command

keys = st.sampled_from(["a", "a/1", "a/2", "b", "c", "c/x", "d"])
commands = st.one_of(
    st.builds(Put, keys, st.sampled_from(["1", "2", "long" * 30]),
              request_id=st.sampled_from([None, "c:1", "c:2", "d:1"])),
    st.builds(Delete, keys, request_id=st.sampled_from([None, "c:3", "e:1"])),
    st.builds(DeletePrefix, st.sampled_from(["a", "c/", "z"])),
    st.builds(Cas, keys, st.sampled_from([None, "1"]), st.sampled_from([None, "3"])),
    st.builds(lambda k, v: Txn(success=[Put(k, v), Get(k), Delete("b")]), keys,
              st.sampled_from(["t", "u"])),
)


def apply_all(machine, batch):
    for command in batch:
        machine.apply(machine.applied_index + 1, msgspec.msgpack.encode(command))


@settings(max_examples=150, deadline=None)
@given(st.lists(commands, max_size=20), st.lists(st.lists(commands, max_size=6), max_size=8),
       st.integers(1, 3))
def test_chunks_encoded_between_applies_are_the_state_at_the_capture(before, batches, pairs):
    old = snapshot_format.FRAME_PAIRS
    snapshot_format.FRAME_PAIRS = pairs  # many frames: applies land between them
    try:
        machine = KVStateMachine()
        apply_all(machine, before)
        expected = machine.snapshot()
        chunks = machine.snapshot_chunks()
        got = []
        for batch in batches:
            apply_all(machine, batch)
            got.append(next(chunks, b""))
        got.extend(chunks)
        assert b"".join(got) == expected
        copy = KVStateMachine()
        copy.restore(b"".join(got))
        assert copy.snapshot() == expected
        # The view ended with its iterator: later changes are not recorded.
        assert machine._views == []
    finally:
        snapshot_format.FRAME_PAIRS = old


def test_a_dropped_iterator_ends_its_view():
    machine = KVStateMachine()
    apply_all(machine, [Put("a", "1")])
    chunks = machine.snapshot_chunks()
    assert len(machine._views) == 1
    del chunks
    gc.collect()
    assert machine._views == []
    apply_all(machine, [Put("a", "2")])  # nothing left to record into


def test_restore_detaches_views_which_keep_the_state_they_captured():
    machine = KVStateMachine()
    apply_all(machine, [Put("a", "1"), Put("b", "2")])
    expected = machine.snapshot()
    chunks = machine.snapshot_chunks()
    other = KVStateMachine()
    apply_all(other, [Put("z", "9")])
    machine.restore(other.snapshot())
    apply_all(machine, [Put("a", "changed")])
    assert b"".join(chunks) == expected


def test_encoding_in_a_thread_while_applying_gives_the_captured_state():
    machine = KVStateMachine()
    apply_all(machine, [Put(f"k{i:05d}", "v" * 50) for i in range(20_000)])
    expected = machine.snapshot()
    chunks = machine.snapshot_chunks()
    result: list[bytes] = []

    def encode() -> None:
        parts = []
        for chunk in chunks:
            parts.append(chunk)
            time.sleep(0.0002)  # let the applying thread in between frames
        result.append(b"".join(parts))

    encoder = threading.Thread(target=encode)
    encoder.start()
    i = 0
    while encoder.is_alive() or i < 5000:
        key = f"k{(i * 7919) % 25_000:05d}"
        command = [Put(key, str(i)), Delete(key), DeletePrefix(key[:4])][i % 3 if i % 50 else 2]
        apply_all(machine, [command])
        i += 1
    encoder.join()
    assert result[0] == expected


def test_restore_in_steps_swaps_the_state_at_the_last_step_only() -> None:
    """`restore_steps` (what a node runs in slices on its loop): one step per frame,
    the old state untouched until the last one, and untouched if stopped early."""
    source = KVStateMachine()
    for i in range(3 * snapshot_format.FRAME_PAIRS + 5):
        source.apply(i + 1, encode_command(Put(f"k{i:06d}", "v" * 10)))
    data = source.snapshot()
    target = KVStateMachine()
    target.apply(1, encode_command(Put("old", "x")))
    steps = target.restore_steps(data)
    for _ in range(3):  # the first frames are decoded ...
        next(steps)
    assert target.get("old") == "x"  # ... and nothing has changed yet
    assert len(target) == 1
    steps.close()  # stopped early: still the old state
    assert target.get("old") == "x"
    rest = list(target.restore_steps(data))
    assert len(rest) >= 4  # a step per data frame (and the clients')
    assert target.state_digest() == source.state_digest()
    assert target.get("old") is None
