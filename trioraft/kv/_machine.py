"""`KVStateMachine`: the replicated key-value map that committed entries build.

It knows nothing of Raft: the node hands it each committed entry's index and
bytes, in log order, and relays the returned result to whoever proposed it.

Rules
-----
* Deterministic: the same applied entries give the same state on every
  replica: no clocks, no randomness, and nothing that depends on the order of
  a dict other than apply order. `snapshot()` is canonical (equal states give
  equal bytes) and `state_digest()` hashes it.
* `apply` never raises for a bad entry: undecodable or invalid bytes give an
  `InvalidResult` and change nothing but `applied_index`, so a corrupt or
  hostile entry cannot stop a replica. Indexes must strictly increase (an
  assertion: a violation is a bug in the caller).
* Commands with a request id are applied at most once (see `_dedup`).
* A transaction is atomic: it is validated completely before any change, and
  then nothing in it can fail part-way.
* Reads (`get`, `range`, `items`) are local and immediate; linearizability is
  the node's job (ReadIndex), not this class's.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, insort
from collections.abc import Callable, Iterator
from itertools import pairwise

import msgspec

from ._commands import Cas, Command, Compare, Delete, Get, Op, Put, Txn, parse_request_id
from ._commands import decode_for_apply as _decode_for_apply
from ._dedup import ClientState, DedupTable
from ._errors import InvalidCommand, InvalidSnapshot
from ._limits import DEDUP_CLIENTS, DEDUP_WINDOW
from ._results import (
    CasResult,
    DeleteResult,
    GetResult,
    InvalidResult,
    OpResult,
    PutResult,
    Result,
    TxnResult,
)

__all__ = ["KVStateMachine"]

_SNAPSHOT_VERSION = 1


class _Snapshot(msgspec.Struct, frozen=True, array_like=True):
    version: int
    applied_index: int
    data: list[tuple[str, str]]  # ascending key order, keys unique
    clients: list[ClientState]  # ascending last_index order


_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(_Snapshot)


def _fingerprint(value: str) -> str:
    """A short, deterministic stand-in for a value in the exactly-once table."""
    return "#" + hashlib.blake2b(value.encode(), digest_size=12).hexdigest()


def _utf8_len(text: str) -> int:
    # Stored strings were validated as UTF-8 before they were stored.
    return len(text.encode("utf-8"))


class KVStateMachine:
    """A string-to-string map built by applying committed log entries."""

    def __init__(
        self, *, dedup_window: int = DEDUP_WINDOW, dedup_clients: int = DEDUP_CLIENTS
    ) -> None:
        """`dedup_window` / `dedup_clients` exist for tests; every replica must agree."""
        self._dedup_window = dedup_window
        self._dedup_clients = dedup_clients
        self._data: dict[str, str] = {}
        self._keys: list[str] = []  # invariant: self._keys == sorted(self._data)
        self._data_bytes = 0  # invariant: UTF-8 bytes of all keys and values
        self._applied_index = 0  # index of the last entry applied (or restored)
        self._dedup = DedupTable(dedup_window, dedup_clients)

    # --------------------------------------------------------------- queries

    @property
    def applied_index(self) -> int:
        """Index of the last applied entry; 0 before any."""
        return self._applied_index

    @property
    def data_bytes(self) -> int:
        """Total UTF-8 bytes of all keys and values (excluding overhead)."""
        return self._data_bytes

    @property
    def dedup_clients(self) -> int:
        """How many clients the exactly-once table currently remembers."""
        return len(self._dedup)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: str) -> str | None:
        """The value of `key`, or None when absent."""
        return self._data.get(key)

    def range(
        self, prefix: str = "", limit: int = 1000, *, after: str | None = None
    ) -> tuple[list[tuple[str, str]], bool]:
        """Up to `limit` (key, value) pairs whose key starts with `prefix`, by key.

        `more` is True when further keys match beyond the ones returned. With
        `after`, only keys greater than it are considered (to page through a
        large prefix: pass the last key of the previous page). Costs
        O(log n + limit).
        """
        if limit < 0:
            raise ValueError("limit must not be negative")
        start = bisect_left(self._keys, prefix)
        if after is not None and after >= prefix:
            start = max(start, bisect_left(self._keys, after))
            if start < len(self._keys) and self._keys[start] == after:
                start += 1
        items: list[tuple[str, str]] = []
        keys = self._keys
        position = start
        while position < len(keys) and keys[position].startswith(prefix):
            if len(items) == limit:
                return items, True
            key = keys[position]
            items.append((key, self._data[key]))
            position += 1
        return items, False

    def items(self) -> Iterator[tuple[str, str]]:
        """All (key, value) pairs in ascending key order. Do not apply while iterating."""
        for key in self._keys:
            yield key, self._data[key]

    # ----------------------------------------------------------------- apply

    def apply(self, index: int, data: bytes) -> Result:
        """Apply the committed entry at `index` and return its result.

        Never raises for bad `data`: it then returns an `InvalidResult`.
        """
        self._advance(index)
        try:
            command = _decode_for_apply(data)
        except InvalidCommand as exc:
            return InvalidResult(str(exc))

        request = self._request_key(command.request_id)
        if request is not None:
            client, seq = request
            assert command.request_id is not None
            earlier = self._dedup.check(client, seq, command.request_id, index)
            if earlier is not None:
                # A retry (or too old to tell): do not apply again. A Put's
                # result is stored without its value (the retry carries it).
                if isinstance(earlier, PutResult):
                    if (
                        isinstance(command, Put) and command.key == earlier.key
                        and _fingerprint(command.value) == earlier.value
                    ):
                        return PutResult(command.key, command.value, earlier.index)
                    return InvalidResult(
                        f"Idempotency-Key {command.request_id!r} was already used for a "
                        "different request; use a new key for a new write"
                    )
                return earlier
        result = self._execute(index, command)
        if request is not None:
            stored = result
            if isinstance(result, PutResult):
                # Keep the table small: the retry carries the value again, so a
                # fingerprint is enough to recognise it (and to refuse a reused
                # key carrying a different value).
                stored = PutResult(result.key, _fingerprint(result.value), result.index)
            self._dedup.record(request[0], request[1], index, stored)
        return result

    def apply_noop(self, index: int) -> None:
        """Account for an entry without a command (a leader's no-op, a config change)."""
        self._advance(index)

    def _advance(self, index: int) -> None:
        assert index > self._applied_index, (
            f"entries must be applied in increasing index order: "
            f"{index} after {self._applied_index}"
        )
        self._applied_index = index

    @staticmethod
    def _request_key(request_id: str | None) -> tuple[str, int] | None:
        if request_id is None:
            return None
        try:
            return parse_request_id(request_id)
        except InvalidCommand:
            return None  # a malformed id is ignored: applied without dedup

    def _execute(self, index: int, command: Command) -> Result:
        if isinstance(command, Txn):
            return self._txn(index, command)
        return self._op(index, command)

    def _op(self, index: int, op: Op) -> OpResult:
        match op:
            case Put(key=key, value=value):
                self._put(key, value)
                return PutResult(key, value, index)
            case Delete(key=key):
                return DeleteResult(key, self._delete(key))
            case Get(key=key):
                return GetResult(key, self._data.get(key))
            case Cas(key=key, expected=expected, value=value):
                current = self._data.get(key)
                if current != expected:
                    return CasResult(False, current, index)
                if value is None:
                    self._delete(key)
                else:
                    self._put(key, value)
                return CasResult(True, value, index)
        raise AssertionError(f"validated op of unknown type: {op!r}")

    def _txn(self, index: int, txn: Txn) -> TxnResult:
        succeeded = all(self._holds(c) for c in txn.compare)
        branch = txn.success if succeeded else txn.failure
        return TxnResult(succeeded, [self._op(index, op) for op in branch])

    def _holds(self, compare: Compare) -> bool:
        current = self._data.get(compare.key)
        match compare.op:
            case "==":
                return current == compare.value
            case "!=":
                return current != compare.value
            case "exists":
                return current is not None
            case "absent":
                return current is None
        raise AssertionError(f"validated compare with unknown op: {compare.op!r}")

    def _put(self, key: str, value: str) -> None:
        old = self._data.get(key)
        if old is None:
            insort(self._keys, key)
            self._data_bytes += _utf8_len(key)
        else:
            self._data_bytes -= _utf8_len(old)
        self._data[key] = value
        self._data_bytes += _utf8_len(value)

    def _delete(self, key: str) -> bool:
        old = self._data.pop(key, None)
        if old is None:
            return False
        position = bisect_left(self._keys, key)
        assert self._keys[position] == key
        del self._keys[position]
        self._data_bytes -= _utf8_len(key) + _utf8_len(old)
        return True

    # ------------------------------------------------------------- snapshots

    def snapshot(self) -> bytes:
        """Everything (data, exactly-once table, applied_index) as msgpack.

        Canonical: equal states give equal bytes.
        """
        return self.snapshot_later()()

    def snapshot_later(self) -> Callable[[], bytes]:
        """Capture the state now (cheap copies); encode it later, e.g. in a thread.

        Lets the node keep applying entries while a large snapshot is encoded.
        """
        keys = list(self._keys)
        data = dict(self._data)
        clients = self._dedup.to_state()
        applied = self._applied_index

        def encode() -> bytes:
            return _snapshot_encoder.encode(
                _Snapshot(
                    version=_SNAPSHOT_VERSION,
                    applied_index=applied,
                    data=[(k, data[k]) for k in keys],
                    clients=clients,
                )
            )

        return encode

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a `snapshot()`; raises `InvalidSnapshot`.

        On error the current state is left untouched.
        """
        try:
            snap = _snapshot_decoder.decode(data)
        except (msgspec.MsgspecError, ValueError, TypeError) as exc:
            raise InvalidSnapshot(f"The snapshot could not be decoded: {exc}") from None
        if snap.version != _SNAPSHOT_VERSION:
            raise InvalidSnapshot(f"Unsupported snapshot version {snap.version}.")
        if snap.applied_index < 0:
            raise InvalidSnapshot("The snapshot has a negative applied index.")
        keys = [key for key, _ in snap.data]
        if any(not key for key in keys) or any(a >= b for a, b in pairwise(keys)):
            raise InvalidSnapshot("The snapshot's keys are empty, unsorted or repeated.")
        try:
            dedup = DedupTable.from_state(snap.clients, self._dedup_window, self._dedup_clients)
            data_bytes = sum(_utf8_len(k) + _utf8_len(v) for k, v in snap.data)
        except ValueError as exc:  # UnicodeEncodeError included
            raise InvalidSnapshot(f"The snapshot is inconsistent: {exc}") from None
        self._data = dict(snap.data)
        self._keys = keys
        self._data_bytes = data_bytes
        self._applied_index = snap.applied_index
        self._dedup = dedup

    def state_digest(self) -> str:
        """SHA-256 hex digest of the canonical state (for convergence checks)."""
        return hashlib.sha256(self.snapshot()).hexdigest()

    def __repr__(self) -> str:
        return (
            f"<KVStateMachine applied_index={self._applied_index} keys={len(self._data)} "
            f"data_bytes={self._data_bytes} dedup_clients={len(self._dedup)}>"
        )
