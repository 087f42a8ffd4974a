"""Linearizability checker for key-value histories.

Record what your clients did -- every request with the time it was sent, the
time its answer came back and what the answer said -- and ask whether some
single order of the operations explains all the answers while respecting real
time. That is linearizability, the consistency trioraft promises by default::

    from trioraft.testing.linearizability import Operation, check

    history = [
        Operation.put(1, "k", "a", call=0.0, ret=1.0),
        Operation.put(2, "k", "b", call=2.0, ret=3.0),
        Operation.get(3, "k", "a", call=4.0, ret=5.0),  # stale read
    ]
    result = check(history)
    assert result.ok is False
    print(result.explanation)

The model
=========
Each key is an independent register whose value is a string or absent
(``None``); every key starts absent. Operations (:class:`Operation`):

``put``     write ``value``.
``get``     read; ``result`` is the value read, ``None`` for absent (404).
``delete``  make the key absent; ``deleted`` tells whether it was present
            (``None``: not recorded, no constraint).
``cas``     if the value equals ``expected`` (``None``: must be absent), set it
            to ``value`` (``None``: delete). ``ok`` is the answer: ``True``
            applied, ``False`` (409) did not apply because the value differed,
            ``None`` not recorded (no constraint).

Each operation has an ``outcome``:

``"ok"``       the client got an answer: the operation took effect atomically at
               some instant between ``call`` and ``ret`` with the recorded
               result. A cas refused with 409 is ``"ok"`` with ``ok=False``.
``"fail"``     a definite failure (400, 404 on a write, 413, 503): it never took
               effect, and is ignored. (A 404 of a ``get`` is an ``"ok"`` read of
               an absent key, not a failure.)
``"unknown"``  no usable answer (timeout, 504, connection reset): it may take
               effect at any instant after ``call`` -- even long after -- or
               never; its result constrains nothing. An unknown ``get`` has no
               effect and is ignored.

Times are floats on one clock (e.g. ``time.monotonic()`` of the single process
running all clients). Operations with equal times count as concurrent.

The algorithm
=============
Wing & Gong's search with Lowe's memoization, as in Porcupine: the history is
split per key, and for each key a depth-first search linearizes operations one
at a time from a linked list of call/return events, backtracking when a return
is reached, and never revisiting a (set of linearized operations, value) pair
known to fail. On top of that: reads that fit are linearized without
branching, unobservable values and unknown-outcome operations are folded in
the memo, and restarts alternate two search orders (see ``_KeySearch``).
Twenty thousand operations over twenty keys check in well under a second; a
single key with twenty concurrent clients takes seconds per few thousand
operations. The problem is NP-complete, so the search is exponential in the
worst case (many concurrent or unknown operations on one key); give
``timeout`` to bound it, per key.

When a key is not linearizable, the explanation shows the longest linearizable
prefix the search found (its length, the value after it and its last few
operations) and the operations that were pending at that point, none of which
could be linearized next.

Command line::

    python -m trioraft.testing.linearizability HISTORY.jsonl [--timeout S] [-v]

prints the verdict and exits 0 when linearizable, 1 on a violation, 2 when
undecided (a timeout) or on unusable input. Histories are stored as JSON lines,
one operation per line (:func:`save_history`, :func:`load_history`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

__all__ = [
    "CheckResult",
    "Client",
    "KeyVerdict",
    "Kind",
    "Operation",
    "Outcome",
    "check",
    "format_history",
    "format_operation",
    "load_history",
    "main",
    "make_history",
    "save_history",
]

Kind: TypeAlias = Literal["put", "get", "delete", "cas"]
Outcome: TypeAlias = Literal["ok", "fail", "unknown"]
Client: TypeAlias = str | int

_KINDS: Final = ("put", "get", "delete", "cas")
_OUTCOMES: Final = ("ok", "fail", "unknown")
_FIELDS: Final = (
    "client",
    "kind",
    "key",
    "value",
    "expected",
    "call",
    "ret",
    "outcome",
    "result",
    "ok",
    "deleted",
)


@dataclass(frozen=True, slots=True)
class Operation:
    """One client request in a history. See the module docstring for the model.

    The class methods :meth:`put`, :meth:`get`, :meth:`delete` and :meth:`cas`
    build operations with only the fields that kind uses.
    """

    client: Client
    kind: Kind
    key: str
    value: str | None = None
    """put: the value written; cas: the new value (``None``: delete)."""
    expected: str | None = None
    """cas: the value required (``None``: the key must be absent)."""
    call: float = 0.0
    """When the request was sent."""
    ret: float | None = None
    """When the answer came back; ``None`` if it never did."""
    outcome: Outcome = "ok"
    result: str | None = None
    """get: the value read (``None``: absent)."""
    ok: bool | None = None
    """cas: whether it applied (``None``: not recorded)."""
    deleted: bool | None = None
    """delete: whether the key was present (``None``: not recorded)."""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, not {self.kind!r}")
        if self.outcome not in _OUTCOMES:
            raise ValueError(f"outcome must be one of {_OUTCOMES}, not {self.outcome!r}")
        if not isinstance(self.key, str):
            raise TypeError(f"key must be a string, not {self.key!r}")
        if isinstance(self.client, bool) or not isinstance(self.client, (str, int)):
            raise TypeError(f"client must be a string or an int, not {self.client!r}")
        for name in ("value", "expected", "result"):
            if not isinstance(getattr(self, name), (str, type(None))):
                raise TypeError(f"{name} must be a string or None, not {getattr(self, name)!r}")
        for name in ("ok", "deleted"):
            if not isinstance(getattr(self, name), (bool, type(None))):
                raise TypeError(f"{name} must be a bool or None, not {getattr(self, name)!r}")
        if self.kind == "put" and self.value is None:
            raise ValueError("a put needs a string value (a delete removes a key)")
        if not math.isfinite(self.call):
            raise ValueError(f"call must be a finite time, not {self.call!r}")
        if self.ret is None:
            if self.outcome == "ok":
                raise ValueError("an operation with outcome 'ok' needs a return time")
        elif not self.ret >= self.call:
            raise ValueError(f"ret ({self.ret!r}) is before call ({self.call!r})")

    @classmethod
    def put(
        cls,
        client: Client,
        key: str,
        value: str,
        call: float,
        ret: float | None,
        outcome: Outcome = "ok",
    ) -> Operation:
        """A put of ``value``."""
        return cls(client, "put", key, value=value, call=call, ret=ret, outcome=outcome)

    @classmethod
    def get(
        cls,
        client: Client,
        key: str,
        result: str | None,
        call: float,
        ret: float | None,
        outcome: Outcome = "ok",
    ) -> Operation:
        """A get that read ``result`` (``None``: absent)."""
        return cls(client, "get", key, result=result, call=call, ret=ret, outcome=outcome)

    @classmethod
    def delete(
        cls,
        client: Client,
        key: str,
        deleted: bool | None,
        call: float,
        ret: float | None,
        outcome: Outcome = "ok",
    ) -> Operation:
        """A delete that answered ``deleted`` (``None``: not recorded)."""
        return cls(client, "delete", key, deleted=deleted, call=call, ret=ret, outcome=outcome)

    @classmethod
    def cas(
        cls,
        client: Client,
        key: str,
        expected: str | None,
        value: str | None,
        ok: bool | None,
        call: float,
        ret: float | None,
        outcome: Outcome = "ok",
    ) -> Operation:
        """A compare-and-set from ``expected`` to ``value`` that answered ``ok``."""
        return cls(
            client,
            "cas",
            key,
            value=value,
            expected=expected,
            call=call,
            ret=ret,
            outcome=outcome,
            ok=ok,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every field that is not ``None``."""
        out: dict[str, Any] = {}
        for name in _FIELDS:
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Operation:
        """The inverse of :meth:`to_dict`; absent fields are ``None``."""
        unknown = set(data) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        missing = {"client", "kind", "key", "call"} - set(data)
        if missing:
            raise ValueError(f"missing fields {sorted(missing)}")
        call, ret = data["call"], data.get("ret")
        for t in (call, ret):
            if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float))):
                raise TypeError(f"times must be numbers, not {t!r}")
        return cls(
            client=data["client"],
            kind=data["kind"],
            key=data["key"],
            value=data.get("value"),
            expected=data.get("expected"),
            call=float(call),
            ret=None if ret is None else float(ret),
            outcome=data.get("outcome", "ok"),
            result=data.get("result"),
            ok=data.get("ok"),
            deleted=data.get("deleted"),
        )


def make_history(rows: Iterable[Sequence[Any]]) -> list[Operation]:
    """Build a history from ``(client, kind, key, args, call, ret, result[, outcome])`` rows.

    ``args``: put: the value; get and delete: ``None``; cas: ``(expected, value)``.
    ``result``: get: the value read (``None``: absent); delete: ``deleted``;
    cas: ``ok``; put: ignored. ``outcome`` defaults to ``"ok"``, or to
    ``"unknown"`` when ``ret`` is ``None``::

        make_history([
            (1, "put", "k", "a", 0.0, 1.0, None),
            (2, "cas", "k", ("a", "b"), 0.5, None, None),   # timed out
            (3, "get", "k", None, 2.0, 3.0, "b"),
        ])
    """
    ops: list[Operation] = []
    for row in rows:
        if len(row) not in (7, 8):
            raise ValueError(f"expected 7 or 8 fields, got {row!r}")
        client, kind, key, args, call, ret, result = row[:7]
        outcome: Outcome = row[7] if len(row) == 8 else ("unknown" if ret is None else "ok")
        if kind == "put":
            op = Operation.put(client, key, args, call, ret, outcome)
        elif kind == "get":
            op = Operation.get(client, key, result, call, ret, outcome)
        elif kind == "delete":
            op = Operation.delete(client, key, result, call, ret, outcome)
        elif kind == "cas":
            expected, value = args
            op = Operation.cas(client, key, expected, value, result, call, ret, outcome)
        else:
            raise ValueError(f"kind must be one of {_KINDS}, not {kind!r}")
        ops.append(op)
    return ops


# -- formatting --------------------------------------------------------------


def _show(v: str | None) -> str:
    return "absent" if v is None else repr(v)


def _time(t: float | None) -> str:
    return "?" if t is None else f"{t:.3f}"


def format_operation(op: Operation) -> str:
    """One line, e.g. ``client 3: get k -> 'v1'  [t=1.200..1.350]``."""
    known = op.outcome == "ok"
    if op.kind == "put":
        text = f"put {op.key} {op.value!r}"
    elif op.kind == "get":
        text = f"get {op.key} -> {_show(op.result) if known else '?'}"
    elif op.kind == "delete":
        answer = {True: "deleted", False: "was absent", None: "?"}[op.deleted if known else None]
        text = f"delete {op.key} -> {answer}"
    else:
        answer = {True: "ok", False: "failed", None: "?"}[op.ok if known else None]
        text = f"cas {op.key} {_show(op.expected)} => {_show(op.value)} -> {answer}"
    suffix = "" if known else f"  ({op.outcome})"
    return f"client {op.client}: {text}  [t={_time(op.call)}..{_time(op.ret)}]{suffix}"


def format_history(history: Iterable[Operation], key: str | None = None) -> str:
    """The history (or the operations on ``key``) by call time, one per line."""
    ops = [op for op in history if key is None or op.key == key]
    ops.sort(key=lambda op: op.call)
    return "\n".join(format_operation(op) for op in ops)


# -- the check ---------------------------------------------------------------


@dataclass(frozen=True)
class KeyVerdict:
    """The verdict for one key.

    ``ok`` is ``True`` (linearizable), ``False`` (not) or ``None`` (timed
    out). ``linearized``, ``value``, ``recent`` and ``pending`` describe the
    longest linearizable prefix found: how many operations, the value after
    them, their last few, and the operations pending there (when ``ok`` is
    ``False``, none of them could be linearized next).
    """

    key: str
    ok: bool | None
    operations: int
    linearized: int
    value: str | None
    recent: tuple[Operation, ...] = ()
    pending: tuple[Operation, ...] = ()
    elapsed: float = 0.0

    def explain(self, max_lines: int = 20) -> str:
        """A human explanation; empty when ``ok`` is ``True``."""
        if self.ok:
            return ""
        verdict = "not linearizable" if self.ok is False else "undecided (timed out)"
        lines = [
            f"key {self.key!r}: {verdict}",
            f"  longest linearizable prefix: {self.linearized} of {self.operations} "
            f"operations, leaving the value {_show(self.value)}",
        ]
        if self.recent:
            lines.append("  its last operations:")
            lines += [f"    {format_operation(op)}" for op in self.recent]
        if self.ok is False:
            lines.append("  none of these pending operations can be linearized next:")
        else:
            lines.append("  pending operations there:")
        for op in self.pending[:max_lines]:
            note = "" if _step(op, self.value) is not _INVALID else "   <- contradicts the value"
            lines.append(f"    {format_operation(op)}{note}")
        if len(self.pending) > max_lines:
            lines.append(f"    ... and {len(self.pending) - max_lines} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class CheckResult:
    """The verdict for a whole history.

    ``ok`` is ``True`` when every key is linearizable, ``False`` when some key
    is not, and ``None`` otherwise (some key timed out). ``per_key`` maps each
    key to its verdict, ``details`` to its :class:`KeyVerdict`, and
    ``explanation`` explains every key that is not ``True``.
    """

    ok: bool | None
    per_key: dict[str, bool | None]
    details: dict[str, KeyVerdict] = field(repr=False)
    explanation: str
    operations: int
    elapsed: float

    @property
    def violations(self) -> list[KeyVerdict]:
        """The keys that are not linearizable."""
        return [v for v in self.details.values() if v.ok is False]

    def summary(self) -> str:
        """One line: the verdict, the size of the history and the time taken."""
        verdict = {True: "linearizable", False: "NOT linearizable", None: "undecided"}[self.ok]
        bad = [k for k, ok in self.per_key.items() if ok is not True]
        which = f" (keys: {', '.join(map(repr, bad[:10]))}{', ...' if len(bad) > 10 else ''})"
        return (
            f"{verdict}: {self.operations} operations on {len(self.per_key)} keys, "
            f"checked in {self.elapsed:.2f} s{which if bad else ''}"
        )


class _Invalid:
    pass


_INVALID: Final = _Invalid()


class _Dead:
    pass


_DEAD: Final = _Dead()


class _OverBudget:
    pass


_OVER_BUDGET: Final = _OverBudget()


def _step(op: Operation, state: str | None) -> str | _Invalid | None:
    """The value after ``op`` runs on ``state``, or ``_INVALID`` if its answer is impossible."""
    kind = op.kind
    known = op.outcome == "ok"
    if kind == "put":
        return op.value
    if kind == "get":
        return state if state == op.result else _INVALID
    if kind == "delete":
        if known and op.deleted is not None and op.deleted != (state is not None):
            return _INVALID
        return None
    # cas
    if not known or op.ok is None:
        return op.value if state == op.expected else state
    if op.ok:
        return op.value if state == op.expected else _INVALID
    return state if state != op.expected else _INVALID


def _relevant(op: Operation) -> bool:
    return op.outcome != "fail" and not (op.kind == "get" and op.outcome == "unknown")


_Frame: TypeAlias = tuple[list[int], int, str | None, int, int, bool]
_MemoKey: TypeAlias = tuple[int, "str | _Dead | None"]


def _is_observer(op: Operation) -> bool:
    """Whether ``op`` never changes the value when its answer is possible."""
    if op.outcome != "ok":
        return False
    if op.kind == "get":
        return True
    if op.kind == "delete":
        return op.deleted is False
    return op.kind == "cas" and (op.ok is False or (op.ok is True and op.expected == op.value))


def _is_constrained(op: Operation) -> bool:
    """Whether ``op`` changes the value only from some values (a cas or delete that answered)."""
    if op.outcome != "ok":
        return False
    return (op.kind == "cas" and op.ok is not None) or (
        op.kind == "delete" and op.deleted is not None
    )


class _KeySearch:
    """Wing & Gong / Lowe search on the operations of one key, sorted by call time.

    The operations live in a doubly linked list of call and return entries;
    the candidates to linearize next are the calls before the first return.
    Refinements over Porcupine's search, all sound and complete:

    - An observer (get, refused cas, ...) whose answer fits the value now is
      linearized at once, without trying alternatives: in any linearization
      from here it could move to the front.
    - The memo holds configurations (linearized set, value) known to fail. A
      value that no operation left reads or expects is equivalent to any other
      such ("dead"). Operations of unknown outcome (no return, answer free)
      can always go last, so a failed configuration also fails with more of
      them linearized: the memo maps (other operations, value) to their sets.
    - Search order is a heuristic: restarts alternate two orders (constrained
      writes first, then by call or by return time) with growing budgets of
      failures, keeping the memo, which avoids most heavy-tailed runs.
    """

    def __init__(self, ops: list[Operation], deadline: float | None) -> None:
        self.ops = ops
        self.deadline = deadline
        n = self.n = len(ops)
        # Events: (time, 0 = call / 1 = return, op). Calls sort before returns
        # at equal times, so touching operations count as concurrent.
        events = [(op.call, 0, i) for i, op in enumerate(ops)]
        events += [
            (op.ret if op.outcome == "ok" and op.ret is not None else math.inf, 1, i)
            for i, op in enumerate(ops)
        ]
        events.sort()
        # Entries 1..2n, with sentinels head = 0 and tail = 2n + 1.
        self.tail = 2 * n + 1
        self.nxt = [*range(1, 2 * n + 2), -1]
        self.prv = [-1, *range(0, 2 * n + 1)]
        self.entry_op = [-1] * (2 * n + 2)
        self.is_call = [False] * (2 * n + 2)
        self.match = [-1] * (2 * n + 2)  # call entry -> its return entry
        call_entry = [-1] * n
        for e, (_, kind, i) in enumerate(events, start=1):
            self.entry_op[e] = i
            if kind == 0:
                self.is_call[e] = True
                call_entry[i] = e
            else:
                self.match[call_entry[i]] = e
        self.observer = [_is_observer(op) for op in ops]
        # Two candidate orders, as sort keys per call entry.
        big = 4 * n + 4
        self.orders: list[list[int]] = [[0] * (2 * n + 2), [0] * (2 * n + 2)]
        for i, op in enumerate(ops):
            e = call_entry[i]
            late = 0 if _is_constrained(op) else big
            self.orders[0][e] = late + e
            self.orders[1][e] = late + self.match[e]
        self.floating = 0
        self.mentions: dict[str, int] = {}
        for i, op in enumerate(ops):
            if op.outcome != "ok":
                self.floating |= 1 << i
            seen = op.result if op.kind == "get" else op.expected if op.kind == "cas" else None
            if seen is not None:
                self.mentions[seen] = self.mentions.get(seen, 0) | 1 << i
        self.fixed = (1 << n) - 1 & ~self.floating
        self.memo: dict[_MemoKey, list[int]] = {}
        self.best_depth = 0
        self.best_lin = 0
        self.best_state: str | None = None
        self.best_recent: tuple[Operation, ...] = ()

    def _key(self, lin: int, value: str | None) -> _MemoKey:
        if value is not None:
            m = self.mentions.get(value, 0)
            if m & lin == m:
                return lin & self.fixed, _DEAD
        return lin & self.fixed, value

    def _failed(self, lin: int, value: str | None) -> bool:
        subsets = self.memo.get(self._key(lin, value))
        if subsets is None:
            return False
        f = lin & self.floating
        return any(u & f == u for u in subsets)

    def run(self) -> bool | None:
        """True: linearizable; False: not; None: out of time."""
        budget = 1000
        while True:
            for order in self.orders:
                verdict = self._dfs(order, budget)
                if verdict is not _OVER_BUDGET:
                    assert not isinstance(verdict, _OverBudget)
                    return verdict
            budget *= 4

    def _dfs(self, order: list[int], budget: int) -> bool | _OverBudget | None:
        ops, nxt, prv, match = self.ops, self.nxt, self.prv, self.match
        entry_op, is_call, observer = self.entry_op, self.is_call, self.observer
        head, tail, deadline = 0, self.tail, self.deadline
        linearized = 0  # bitset of linearized operations
        state: str | None = None
        # One frame per linearized operation: (the candidates to try there,
        # index of the next, state before, bitset before, call entry, forced).
        frames: list[_Frame] = []
        cands: list[int] = []
        idx = 0
        fresh = True
        countdown = 256
        verdict: bool | _OverBudget | None = True
        while nxt[head] != tail:
            countdown -= 1
            if countdown == 0:
                countdown = 256
                if deadline is not None and time.monotonic() > deadline:
                    verdict = None
                    break
            chosen, new_state, forced = -1, state, False
            if fresh:
                fresh = False
                cands = []
                e = nxt[head]
                while is_call[e]:  # the candidates: calls before the first return
                    i = entry_op[e]
                    if observer[i]:
                        if chosen < 0 and _step(ops[i], state) is not _INVALID:
                            chosen, forced = e, True
                    else:
                        cands.append(e)
                    e = nxt[e]
                cands.sort(key=order.__getitem__)
                idx = 0
                if forced and self._failed(linearized | 1 << entry_op[chosen], state):
                    chosen = -2
            if chosen == -1:
                while idx < len(cands):
                    e = cands[idx]
                    idx += 1
                    i = entry_op[e]
                    after = _step(ops[i], state)
                    if isinstance(after, _Invalid) or self._failed(linearized | 1 << i, after):
                        continue
                    chosen, new_state = e, after
                    break
            if chosen >= 0:
                frames.append((cands, idx, state, linearized, chosen, forced))
                state, linearized = new_state, linearized | 1 << entry_op[chosen]
                r = match[chosen]  # lift the call and its return out of the list
                nxt[prv[chosen]] = nxt[chosen]
                prv[nxt[chosen]] = prv[chosen]
                nxt[prv[r]] = nxt[r]
                prv[nxt[r]] = prv[r]
                fresh = True
                if len(frames) > self.best_depth:
                    self.best_depth, self.best_lin, self.best_state = (
                        len(frames),
                        linearized,
                        state,
                    )
                    self.best_recent = tuple(ops[entry_op[f[4]]] for f in frames[-5:])
                continue
            # Nothing (more) to try here: this configuration fails. Backtrack,
            # past forced choices.
            budget -= 1
            if budget < 0:
                verdict = _OVER_BUDGET
                break
            resumed = False
            while frames:
                self.memo.setdefault(self._key(linearized, state), []).append(
                    linearized & self.floating
                )
                cands, idx, state, linearized, e, forced = frames.pop()
                self._unlift(e)
                if not forced:
                    resumed = True
                    break
            if not resumed:
                verdict = False
                break
        while frames:  # restore the list for another run
            self._unlift(frames.pop()[4])
        return verdict

    def _unlift(self, e: int) -> None:
        nxt, prv, r = self.nxt, self.prv, self.match[e]
        prv[nxt[r]] = r
        nxt[prv[r]] = r
        prv[nxt[e]] = e
        nxt[prv[e]] = e


def _check_key(key: str, ops: list[Operation], timeout: float | None) -> KeyVerdict:
    started = time.monotonic()
    search = _KeySearch(ops, None if timeout is None else started + timeout)
    verdict = search.run()
    elapsed = time.monotonic() - started
    n = len(ops)
    if verdict is True:
        return KeyVerdict(key, True, n, n, None, elapsed=elapsed)
    # The pending operations after the longest prefix: those not linearized
    # that were called before the earliest return among them.
    rest = [op for i, op in enumerate(ops) if not search.best_lin >> i & 1]
    first_ret = min(
        op.ret if op.outcome == "ok" and op.ret is not None else math.inf for op in rest
    )
    pending = tuple(op for op in rest if op.call <= first_ret)
    return KeyVerdict(
        key,
        verdict,
        n,
        search.best_depth,
        search.best_state,
        search.best_recent,
        pending,
        elapsed,
    )


def check(history: Iterable[Operation], timeout: float | None = None) -> CheckResult:
    """Check that ``history`` is linearizable for a key-value store.

    Keys are checked independently; ``timeout`` bounds the search on each key,
    in seconds (a key that exceeds it is undecided). Failed operations and
    unknown gets are ignored. Returns a :class:`CheckResult`; its ``ok`` is
    ``True``, ``False`` (with an ``explanation``) or ``None`` (undecided).
    """
    started = time.monotonic()
    by_key: dict[str, list[Operation]] = {}
    total = 0
    for op in history:
        if not isinstance(op, Operation):
            raise TypeError(f"a history holds Operations, not {op!r}")
        total += 1
        if _relevant(op):
            by_key.setdefault(op.key, []).append(op)
    details: dict[str, KeyVerdict] = {}
    for key in sorted(by_key):
        ops = sorted(by_key[key], key=lambda op: op.call)
        details[key] = _check_key(key, ops, timeout)
    per_key = {k: v.ok for k, v in details.items()}
    verdicts = set(per_key.values())
    ok = False if False in verdicts else None if None in verdicts else True
    explanation = "\n".join(
        v.explain() for v in sorted(details.values(), key=lambda v: v.ok is None) if not v.ok
    )
    return CheckResult(ok, per_key, details, explanation, total, time.monotonic() - started)


# -- storage -----------------------------------------------------------------


def save_history(
    path: str | os.PathLike[str], history: Iterable[Operation], *, append: bool = False
) -> None:
    """Write ``history`` to ``path`` as JSON lines (one :meth:`Operation.to_dict` a line)."""
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for op in history:
            f.write(json.dumps(op.to_dict(), ensure_ascii=False) + "\n")


def load_history(path: str | os.PathLike[str]) -> list[Operation]:
    """Read a history written by :func:`save_history`; blank lines are skipped."""
    ops: list[Operation] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                ops.append(Operation.from_dict(data))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{os.fspath(path)}:{number}: {exc}") from exc
    return ops


# -- command line ------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trioraft.testing.linearizability HISTORY.jsonl``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m trioraft.testing.linearizability",
        description="Check a key-value history (JSON lines) for linearizability. Exit "
        "status: 0 linearizable, 1 violation, 2 undecided or unusable input.",
    )
    parser.add_argument("history", help="a JSON-lines file, one operation per line")
    parser.add_argument("--timeout", type=float, default=None, help="seconds of search per key")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every key's verdict")
    args = parser.parse_args(argv)
    try:
        history = load_history(args.history)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = check(history, timeout=args.timeout)
    if args.verbose:
        for key, verdict in result.details.items():
            print(
                f"{key!r}: {verdict.ok} ({verdict.operations} operations, {verdict.elapsed:.2f} s)"
            )
    if result.explanation:
        print(result.explanation)
    print(result.summary())
    return {True: 0, False: 1, None: 2}[result.ok]


if __name__ == "__main__":
    sys.exit(main())
