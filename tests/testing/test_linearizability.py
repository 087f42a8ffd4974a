"""Tests for the key-value linearizability checker."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from trioraft.testing.linearizability import (
    Operation,
    check,
    format_history,
    format_operation,
    load_history,
    main,
    make_history,
    save_history,
)

put, get, delete, cas = Operation.put, Operation.get, Operation.delete, Operation.cas


# -- basic verdicts ------------------------------------------------------------


def test_sequential_history_is_linearizable():
    history = [
        put(1, "k", "a", 0.0, 1.0),
        get(2, "k", "a", 2.0, 3.0),
        put(1, "k", "b", 4.0, 5.0),
        get(2, "k", "b", 6.0, 7.0),
    ]
    result = check(history)
    assert result.ok is True
    assert result.per_key == {"k": True}
    assert result.explanation == ""


@pytest.mark.parametrize("seen", ["a", "b"])
def test_overlapping_put_and_get_may_go_either_way(seen):
    history = [
        put(1, "k", "a", 0.0, 1.0),
        put(1, "k", "b", 2.0, 5.0),
        get(2, "k", seen, 3.0, 4.0),  # inside the put of "b": old or new both fine
    ]
    assert check(history).ok is True


def test_get_of_a_key_never_written_reads_absent():
    assert check([get(1, "k", None, 0.0, 1.0)]).ok is True


def test_stale_read_is_a_violation_naming_the_key():
    history = [
        put(1, "k", "a", 0.0, 1.0),
        put(1, "k", "b", 2.0, 3.0),
        get(2, "k", "a", 4.0, 5.0),
    ]
    result = check(history)
    assert result.ok is False
    assert result.per_key == {"k": False}
    assert "key 'k': not linearizable" in result.explanation
    assert "client 2: get k -> 'a'  [t=4.000..5.000]" in result.explanation
    verdict = result.details["k"]
    assert (verdict.linearized, verdict.value) == (2, "b")
    assert verdict.pending == (history[2],)


def test_lost_write_is_a_violation():
    history = [
        put(1, "k", "a", 0.0, 1.0),
        put(2, "k", "b", 2.0, 3.0),  # acknowledged...
        get(3, "k", "a", 4.0, 5.0),  # ...but never seen
        get(3, "k", "a", 6.0, 7.0),
    ]
    assert check(history).ok is False


def test_read_of_a_value_never_written_is_a_violation():
    history = [put(1, "k", "a", 0.0, 1.0), get(2, "k", "zzz", 0.5, 2.0)]
    result = check(history)
    assert result.ok is False
    assert "get k -> 'zzz'" in result.explanation


def test_two_cas_from_the_same_value_cannot_both_succeed():
    history = [
        put(1, "k", "a", 0.0, 1.0),
        cas(2, "k", "a", "b", True, 2.0, 4.0),
        cas(3, "k", "a", "c", True, 2.5, 3.5),
    ]
    assert check(history).ok is False


def test_cas_refused_must_have_seen_a_different_value():
    refused_wrongly = [put(1, "k", "a", 0.0, 1.0), cas(2, "k", "a", "b", False, 2.0, 3.0)]
    refused_rightly = [put(1, "k", "x", 0.0, 1.0), cas(2, "k", "a", "b", False, 2.0, 3.0)]
    assert check(refused_wrongly).ok is False
    assert check(refused_rightly).ok is True


def test_cas_expected_none_means_absent_and_value_none_deletes():
    history = [
        cas(1, "k", None, "a", True, 0.0, 1.0),
        cas(1, "k", "a", None, True, 2.0, 3.0),
        get(2, "k", None, 4.0, 5.0),
    ]
    assert check(history).ok is True


# -- delete --------------------------------------------------------------------


def test_delete_answers_must_match_presence():
    present = [put(1, "k", "a", 0.0, 1.0), delete(2, "k", True, 2.0, 3.0)]
    assert check(present).ok is True
    assert check([put(1, "k", "a", 0.0, 1.0), delete(2, "k", False, 2.0, 3.0)]).ok is False
    assert check([delete(2, "k", True, 0.0, 1.0)]).ok is False
    assert check([delete(2, "k", False, 0.0, 1.0)]).ok is True


def test_delete_makes_the_key_absent():
    history = [
        put(1, "k", "a", 0.0, 1.0),
        delete(1, "k", True, 2.0, 3.0),
        get(2, "k", None, 4.0, 5.0),
        delete(2, "k", False, 6.0, 7.0),
    ]
    assert check(history).ok is True
    assert check([*history[:2], get(2, "k", "a", 4.0, 5.0)]).ok is False


# -- unknown and failed outcomes -----------------------------------------------


def test_unknown_put_that_is_observed_later_is_fine():
    history = [
        put(1, "k", "a", 0.0, 1.0),
        put(2, "k", "b", 2.0, None, outcome="unknown"),  # timed out
        get(3, "k", "a", 10.0, 11.0),
        get(3, "k", "b", 50.0, 51.0),  # it applied long after the client gave up
    ]
    assert check(history).ok is True


def test_unknown_put_never_observed_is_fine():
    history = [
        put(1, "k", "a", 0.0, 1.0),
        put(2, "k", "b", 2.0, 3.0, outcome="unknown"),  # a 504
        get(3, "k", "a", 10.0, 11.0),
    ]
    assert check(history).ok is True


def test_unknown_put_cannot_take_effect_before_it_was_sent():
    history = [
        put(1, "k", "a", 0.0, 1.0),
        get(3, "k", "b", 2.0, 3.0),
        put(2, "k", "b", 4.0, None, outcome="unknown"),
    ]
    assert check(history).ok is False


def test_unknown_cas_may_or_may_not_have_applied():
    applied = [
        put(1, "k", "a", 0.0, 1.0),
        cas(2, "k", "a", "b", None, 2.0, None, outcome="unknown"),
        get(3, "k", "b", 4.0, 5.0),
    ]
    not_applied = [*applied[:2], get(3, "k", "a", 4.0, 5.0)]
    assert check(applied).ok is True
    assert check(not_applied).ok is True


def test_unknown_cas_only_applies_when_its_precondition_holds():
    history = [
        put(1, "k", "a", 0.0, 1.0),
        cas(2, "k", "x", "b", None, 2.0, None, outcome="unknown"),
        get(3, "k", "b", 4.0, 5.0),
    ]
    assert check(history).ok is False


def test_unknown_get_is_ignored():
    history = [put(1, "k", "a", 0.0, 1.0), get(2, "k", "garbage", 2.0, None, outcome="unknown")]
    assert check(history).ok is True


def test_failed_put_is_dropped_so_reading_its_value_is_a_violation():
    history = [
        put(1, "k", "a", 0.0, 1.0),
        put(2, "k", "b", 2.0, 3.0, outcome="fail"),  # a 503: never applies
        get(3, "k", "b", 4.0, 5.0),
    ]
    result = check(history)
    assert result.ok is False
    assert "get k -> 'b'" in result.explanation


# -- keys ----------------------------------------------------------------------


def test_keys_are_checked_independently():
    history = [
        put(1, "x", "a", 0.0, 1.0),
        put(2, "y", "b", 0.0, 1.0),
        get(3, "x", "a", 2.0, 3.0),
        get(3, "y", "stale", 2.0, 3.0),
        get(3, "z", None, 2.0, 3.0),
    ]
    result = check(history)
    assert result.ok is False
    assert result.per_key == {"x": True, "y": False, "z": True}
    assert "key 'y'" in result.explanation
    assert "key 'x'" not in result.explanation


def test_timeout_leaves_the_key_undecided():
    # Many concurrent unknown puts and a contradiction at the end: exponential.
    history = [put(c, "k", f"v{c}", 0.0, None, outcome="unknown") for c in range(40)]
    history.append(get(99, "k", "never", 1.0, 2.0))
    result = check(history, timeout=0.05)
    assert result.ok is None
    assert result.per_key == {"k": None}
    assert "undecided" in result.explanation


# -- helpers -------------------------------------------------------------------


def test_make_history_builds_operations_from_rows():
    history = make_history(
        [
            (1, "put", "k", "a", 0.0, 1.0, None),
            (2, "cas", "k", ("a", "b"), 0.5, None, None),
            (3, "get", "k", None, 2.0, 3.0, "b"),
            (3, "delete", "k", None, 4.0, 5.0, True),
            (4, "put", "k", "z", 6.0, 7.0, None, "fail"),
        ]
    )
    assert history[0] == put(1, "k", "a", 0.0, 1.0)
    assert history[1] == cas(2, "k", "a", "b", None, 0.5, None, outcome="unknown")
    assert history[2] == get(3, "k", "b", 2.0, 3.0)
    assert history[3] == delete(3, "k", True, 4.0, 5.0)
    assert history[4].outcome == "fail"
    assert check(history).ok is True


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"kind": "scan"}, ValueError),
        ({"outcome": "maybe"}, ValueError),
        ({"ret": None}, ValueError),  # "ok" needs a return time
        ({"call": 2.0, "ret": 1.0}, ValueError),
        ({"value": None}, ValueError),  # a put needs a value
        ({"value": 3}, TypeError),
    ],
)
def test_operation_rejects_nonsense(kwargs, error):
    fields = {"client": 1, "kind": "put", "key": "k", "value": "v", "call": 0.0, "ret": 1.0}
    with pytest.raises(error):
        Operation(**(fields | kwargs))


def test_format_operation_and_history():
    assert format_operation(get(3, "k", "v1", 1.2, 1.35)) == (
        "client 3: get k -> 'v1'  [t=1.200..1.350]"
    )
    assert format_operation(put(1, "k", "a", 0.0, None, outcome="unknown")) == (
        "client 1: put k 'a'  [t=0.000..?]  (unknown)"
    )
    text = format_history([get(2, "k", None, 5.0, 6.0), cas(1, "k", None, "a", False, 0.0, 1.0)])
    assert text.splitlines() == [
        "client 1: cas k absent => 'a' -> failed  [t=0.000..1.000]",
        "client 2: get k -> absent  [t=5.000..6.000]",
    ]


def test_history_round_trips_through_json_lines(tmp_path: Path):
    history = [
        put("c1", "k", "a", 0.0, 1.0),
        get(2, "k", None, 1.5, 2.5),
        cas(3, "k", None, "é", False, 2.0, 3.0),
        delete(4, "k", None, 3.0, None, outcome="unknown"),
        put(5, "k", "b", 4.0, 4.5, outcome="fail"),
    ]
    path = tmp_path / "h.jsonl"
    save_history(path, history[:2])
    save_history(path, history[2:], append=True)
    assert load_history(path) == history


def test_load_history_names_the_bad_line(tmp_path: Path):
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(put(1, "k", "a", 0.0, 1.0).to_dict()) + '\n\n{"kind": 1}\n')
    with pytest.raises(ValueError, match=r"h\.jsonl:3:"):
        load_history(path)


def test_command_line_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    save_history(good, [put(1, "k", "a", 0.0, 1.0), get(2, "k", "a", 2.0, 3.0)])
    save_history(bad, [put(1, "k", "a", 0.0, 1.0), get(2, "k", "b", 2.0, 3.0)])
    assert main([str(good)]) == 0
    assert main([str(bad)]) == 1
    assert "key 'k': not linearizable" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.jsonl")]) == 2


# -- agreement with brute force on small histories ----------------------------


def brute_force_ok(history: list[Operation]) -> bool:
    """Try every order of the operations that matter: the definition itself."""
    ops = [op for op in history if op.outcome != "fail"]
    ops = [op for op in ops if not (op.kind == "get" and op.outcome == "unknown")]

    def ret(op: Operation) -> float:
        return op.ret if op.outcome == "ok" and op.ret is not None else math.inf

    def run(order: tuple[Operation, ...]) -> bool:
        value: str | None = None
        for op in order:
            answered = op.outcome == "ok"
            if op.kind == "put":
                value = op.value
            elif op.kind == "get" and value != op.result:
                return False
            elif op.kind == "delete":
                if answered and op.deleted is not None and op.deleted != (value is not None):
                    return False
                value = None
            elif op.kind == "cas":
                if answered and op.ok is not None and op.ok != (value == op.expected):
                    return False
                if value == op.expected:
                    value = op.value
        return True

    return any(
        all(ret(later) >= earlier.call for a, earlier in enumerate(order) for later in order[a:])
        and run(order)
        for order in itertools.permutations(ops)
    )


def random_small_history(rng: random.Random) -> list[Operation]:
    values = ["a", "b", None]
    ops = []
    for client in range(rng.randrange(1, 7)):
        call = float(rng.randrange(10))
        ret = call + rng.randrange(5)
        outcome = rng.choices(["ok", "unknown", "fail"], [6, 3, 1])[0]
        r = None if outcome == "unknown" and rng.random() < 0.5 else ret
        kind = rng.choice(["put", "get", "delete", "cas"])
        if kind == "put":
            ops.append(put(client, "k", rng.choice(["a", "b", "c"]), call, r, outcome))
        elif kind == "get":
            ops.append(get(client, "k", rng.choice(values), call, r, outcome))
        elif kind == "delete":
            ops.append(delete(client, "k", rng.choice([True, False, None]), call, r, outcome))
        else:
            answer = rng.choice([True, False, None])
            ops.append(
                cas(client, "k", rng.choice(values), rng.choice(values), answer, call, r, outcome)
            )
    return ops


def test_agrees_with_brute_force_on_random_small_histories():
    rng = random.Random(1234)
    verdicts = set()
    for _ in range(1500):
        history = random_small_history(rng)
        expected = brute_force_ok(history)
        assert check(history).ok is expected, format_history(history)
        verdicts.add(expected)
    assert verdicts == {True, False}


# -- generated histories -------------------------------------------------------


def simulate(
    rng: random.Random,
    clients: int,
    ops_per_client: int,
    keys: int,
    unknown: float = 0.02,
    fail: float = 0.02,
) -> list[Operation]:
    """A history of a truly linearizable store.

    Each client issues operations one after another with random delays; each
    operation applies atomically at a random instant inside [call, ret]. A few
    time out (outcome unknown: applied later, or never) or fail (never applied).
    Every written value is unique.
    """
    planned = []  # (apply_at or None, call, ret, client, kind, key, outcome)
    for client in range(clients):
        t = rng.uniform(0.0, 0.01)
        for _ in range(ops_per_client):
            call = t + rng.uniform(0.0, 0.005)
            ret = call + rng.uniform(0.0005, 0.02)
            kind = rng.choices(["put", "get", "delete", "cas"], [35, 40, 10, 15])[0]
            key = f"key{rng.randrange(keys)}"
            outcome = rng.choices(["ok", "unknown", "fail"], [1 - unknown - fail, unknown, fail])[0]
            if outcome == "ok":
                apply_at = rng.uniform(call, ret)
            elif outcome == "unknown" and rng.random() < 0.5:
                apply_at = call + rng.uniform(0.0, 3 * (ret - call))  # maybe after ret
            else:
                apply_at = None
            planned.append((apply_at, call, ret, client, kind, key, outcome))
            t = ret
    store: dict[str, str] = {}
    ops = []
    applied = sorted((p for p in planned if p[0] is not None), key=lambda p: p[0])
    unapplied = [p for p in planned if p[0] is None]
    for n, (_, call, ret, client, kind, key, outcome) in enumerate(applied + unapplied):
        current = store.get(key)
        real = outcome != "fail" and n < len(applied)
        r = ret if outcome != "unknown" else None
        if kind == "put":
            value = f"v{client}.{n}"
            if real:
                store[key] = value
            ops.append(put(client, key, value, call, r, outcome))
        elif kind == "get":
            result = current if real else "junk"
            ops.append(get(client, key, result, call, r, outcome))
        elif kind == "delete":
            if real:
                store.pop(key, None)
            ops.append(delete(client, key, current is not None, call, r, outcome))
        else:
            expected = current if rng.random() < 0.6 else rng.choice([None, "nope"])
            value = None if rng.random() < 0.1 else f"v{client}.{n}"
            succeeded = current == expected
            if real and succeeded:
                if value is None:
                    store.pop(key, None)
                else:
                    store[key] = value
            ops.append(cas(client, key, expected, value, succeeded, call, r, outcome))
    rng.shuffle(ops)
    return ops


def stale_reads(history: list[Operation]) -> Iterator[tuple[int, str]]:
    """(index of an ok get, a value it cannot read): one overwritten before it began."""
    by_key: dict[str, list[Operation]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)

    def overwrites(op: Operation) -> bool:
        return op.outcome == "ok" and (
            op.kind in ("put", "delete") or (op.kind == "cas" and op.ok is True)
        )

    for i, read in enumerate(history):
        if read.kind != "get" or read.outcome != "ok":
            continue
        ops = by_key[read.key]
        for writer in ops:
            if writer.kind != "put" or writer.outcome != "ok" or writer.value == read.result:
                continue
            assert writer.ret is not None
            assert writer.value is not None
            if any(
                overwrites(w) and w.call > writer.ret and w.ret is not None and w.ret < read.call
                for w in ops
            ):
                yield i, writer.value


@pytest.fixture(scope="module")
def big_history() -> list[Operation]:
    return simulate(random.Random(20240601), clients=40, ops_per_client=500, keys=20)


def test_generated_linearizable_history_passes(big_history):
    assert len(big_history) == 20_000
    result = check(big_history)
    assert result.ok is True, result.explanation
    assert len(result.per_key) == 20


@pytest.mark.parametrize("seed", range(5))
def test_generated_hot_key_history_passes(seed):
    history = simulate(random.Random(seed), clients=12, ops_per_client=150, keys=2)
    assert check(history).ok is True


def test_generated_history_with_one_stale_read_fails(big_history):
    rng = random.Random(7)
    candidates = []
    for candidate in stale_reads(big_history[: len(big_history) // 4]):
        candidates.append(candidate)
        if len(candidates) == 50:
            break
    index, stale = rng.choice(candidates)
    history = list(big_history)
    history[index] = dataclasses.replace(history[index], result=stale)
    result = check(history)
    assert result.ok is False
    bad_key = history[index].key
    assert [k for k, ok in result.per_key.items() if ok is not True] == [bad_key]
    assert format_operation(history[index]) in result.explanation
