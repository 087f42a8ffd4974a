"""apply, snapshot and restore are total (issue 10 #1): whatever bytes a
committed entry holds, whatever a snapshot holds, nothing raises, and every
replica ends in the same state."""

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trioraft.kv import (
    Cas,
    Compare,
    Delete,
    DeletePrefix,
    Get,
    InvalidSnapshot,
    KVStateMachine,
    Put,
    Txn,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.one_of(
    st.sampled_from(["", "a", "a/b", "é", "k" * 1025, "z:1", "z:0001"]),
    st.text(max_size=12),
)
request_ids = st.one_of(
    st.none(),
    st.sampled_from([
        "c:1", "c:2", "d:1", "evil:99999999999999999999999999", "z:0001", "z:1",
        f"c:{2**63 - 1}", f"c:{2**63}", "é:1", "c:", ":1", "c:-1",
    ]),
    st.builds(lambda c, n: f"{c}:{n}", st.text(max_size=5), st.integers(-5, 2**70)),
)
ops = st.one_of(
    st.builds(Put, texts, texts, request_id=st.none() | request_ids),
    st.builds(Delete, texts, request_id=st.none()),
    st.builds(DeletePrefix, texts, request_id=st.none()),
    st.builds(Get, texts),
    st.builds(Cas, texts, st.none() | texts, st.none() | texts, request_id=st.none()),
)
compares = st.builds(Compare, texts, st.sampled_from(["==", "!=", "exists", "absent", "<"]),
                     st.none() | texts)
commands = st.one_of(
    st.builds(Put, texts, texts, request_id=request_ids),
    st.builds(Delete, texts, request_id=request_ids),
    st.builds(DeletePrefix, texts, request_id=request_ids),
    st.builds(Cas, texts, st.none() | texts, st.none() | texts, request_id=request_ids),
    st.builds(Txn, st.lists(compares, max_size=3), st.lists(ops, max_size=4),
              st.lists(ops, max_size=3), request_id=request_ids),
)
# What a log entry may hold: any command encoded without validation (as a
# buggy or old proposer could), any msgpack value, or any bytes at all.
entries = st.one_of(
    commands.map(msgspec.msgpack.encode),
    commands.map(msgspec.msgpack.encode),
    st.binary(max_size=40),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=10,
    ).map(msgspec.msgpack.encode),
)


def small() -> KVStateMachine:
    return KVStateMachine(dedup_window=3, dedup_clients=3, dedup_max_bytes=4000)


@FUZZ
@given(st.lists(entries, max_size=25), st.integers(0, 25))
def test_any_log_applies_snapshots_and_restores_to_the_same_state(log, cut):
    full = small()
    results = [full.apply(i, data) for i, data in enumerate(log, start=1)]
    # A replica that restored a snapshot midway and applied the rest agrees.
    cut = min(cut, len(log))
    early = small()
    for i, data in enumerate(log[:cut], start=1):
        early.apply(i, data)
    late = small()
    late.restore(early.snapshot())
    for i, data in enumerate(log[cut:], start=cut + 1):
        assert late.apply(i, data) == results[i - 1]
    assert late.state_digest() == full.state_digest()
    assert late.snapshot() == full.snapshot()
    # ...and the snapshot round-trips once more.
    again = small()
    again.restore(full.snapshot())
    assert again.state_digest() == full.state_digest()
    assert list(again.items()) == list(full.items())
    assert again.data_bytes == full.data_bytes


@FUZZ
@given(st.binary(max_size=200))
def test_restore_of_any_bytes_succeeds_or_raises_invalid_snapshot(data):
    m = small()
    m.apply(1, msgspec.msgpack.encode(Put("k", "v", request_id="c:1")))
    before = m.state_digest()
    try:
        m.restore(data)
    except InvalidSnapshot:
        assert m.state_digest() == before
    else:
        m.snapshot()


@FUZZ
@given(st.lists(entries, min_size=1, max_size=15), st.data())
def test_restore_of_a_damaged_snapshot_succeeds_or_raises_invalid_snapshot(log, data):
    m = small()
    for i, entry in enumerate(log, start=1):
        m.apply(i, entry)
    snapshot = bytearray(m.snapshot())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(snapshot) - 1))
        snapshot[position] = data.draw(st.integers(0, 255))
    copy = small()
    try:
        copy.restore(bytes(snapshot))
    except InvalidSnapshot:
        return
    # Whatever it restored is a state apply and snapshot can go on from.
    copy.apply(copy.applied_index + 1, log[0])
    copy.restore(copy.snapshot())
