"""`KVStateMachine`: the replicated key-value map that committed entries build.

It knows nothing of Raft: the node hands it each committed entry's index and
bytes, in log order, and relays the returned result to whoever proposed it.

Rules
-----
* Deterministic: the same applied entries give the same state on every
  replica: no clocks, no randomness, and nothing that depends on the order of
  a dict other than apply order. Snapshots are canonical (equal states give
  equal bytes) and `state_digest()` hashes them.
* Total: `apply` never raises for any bytes. Undecodable or invalid bytes
  give an `InvalidResult` and change nothing but `applied_index`; a request
  id that is not canonical or out of range (an old log may hold one from
  before the API refused them) is ignored: the command is applied without
  deduplication, alike on every replica. `snapshot` encodes whatever `apply`
  can build, and `restore` of any bytes either succeeds or raises
  `InvalidSnapshot` (tests/kv/test_kv_fuzz.py checks all three with
  hypothesis). Indexes must strictly increase (an assertion: a violation is
  a bug in the caller).
* Commands with a request id are applied at most once (see `_dedup`); the
  table keeps a fingerprint of the whole command and a summary of its effect,
  never a value (`_records`; `_limits` for the bound).
* A transaction is atomic: it is validated completely before any change;
  if its reads would return more than MAX_TXN_RESULT_BYTES, its changes are
  undone and it answers `TooLargeResult`, on every replica alike.
* Reads (`get`, `range`, `items`) are local and immediate; linearizability is
  the node's job (ReadIndex), not this class's.

Snapshots while applying (issue 11 #4)
--------------------------------------
`snapshot_chunks()` captures the state in O(blocks + clients) on the
caller's thread and returns an iterator that encodes it frame by frame,
possibly in another thread, while `apply` goes on:

* keys: the captured list of key blocks (immutable tuples, `_sorted`);
* values: read from the live dict through a *view*, an undo log the machine
  fills with a key's captured value before the first change to that key
  after the capture. The encoder reads a key's live value first and its undo
  entry second; since the machine writes the undo entry before it changes
  the value, whichever it sees, the undo entry (when present) or else the
  live value is the captured value. (Each dict operation is atomic under the
  GIL, and one thread's operations are seen by another in program order.)
* the exactly-once table: per-client copy-on-write (`_dedup`).

A view lives as long as its iterator: exhausting or dropping it stops the
undo log. `restore` detaches every view (they keep reading the replaced,
no longer changing dict).
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Callable, Iterator

from ._commands import (
    Cas,
    Command,
    Compare,
    Delete,
    DeletePrefix,
    Get,
    Op,
    Put,
    Txn,
    parse_request_id,
)
from ._commands import decode_for_apply as _decode_for_apply
from ._dedup import EXPIRED, DedupTable
from ._errors import InvalidCommand
from ._limits import DEDUP_CLIENTS, DEDUP_MAX_BYTES, DEDUP_WINDOW, MAX_TXN_RESULT_BYTES
from ._records import fingerprint as _fingerprint
from ._records import replay as _replay
from ._records import summary as _summary
from ._results import (
    CasResult,
    DeletePrefixResult,
    DeleteResult,
    ExpiredRequest,
    GetResult,
    InvalidResult,
    OpResult,
    PutResult,
    Result,
    TooLargeResult,
    TxnResult,
)
from ._snapshot import decode_steps, encode_frames
from ._sorted import SortedKeys

__all__ = ["KVStateMachine"]


Undo = list[tuple[str, str | None]]  # (key, value before the change), in change order


class _View:
    """The undo log of one snapshot in progress: captured values of changed keys."""

    __slots__ = ("__weakref__", "data", "undo")

    def __init__(self, data: dict[str, str]) -> None:
        self.data = data  # the live dict at the capture
        self.undo: dict[str, str | None] = {}  # key -> value at the capture (None: absent)

    def values_of(self, keys: tuple[str, ...]) -> list[str]:
        """The captured values of captured keys (see the module docstring)."""
        values = list(map(self.data.get, keys))  # live values first ...
        undo = self.undo  # ... undo entries second
        if undo:
            values = [undo.get(k, v) for k, v in zip(keys, values, strict=True)]
        return values  # type: ignore[return-value]  # captured keys all have values


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _read_bytes(result: OpResult) -> int:
    """Bytes of stored values that a result returns (what MAX_TXN_RESULT_BYTES bounds)."""
    if isinstance(result, GetResult) and result.value is not None:
        return _utf8_len(result.value)
    if isinstance(result, CasResult) and not result.ok and result.current is not None:
        return _utf8_len(result.current)
    return 0


class KVStateMachine:
    """A string-to-string map built by applying committed log entries."""

    def __init__(
        self,
        *,
        dedup_window: int = DEDUP_WINDOW,
        dedup_clients: int = DEDUP_CLIENTS,
        dedup_max_bytes: int = DEDUP_MAX_BYTES,
    ) -> None:
        """The dedup bounds exist for tests; every replica must agree on them."""
        self._dedup_window = dedup_window
        self._dedup_clients = dedup_clients
        self._dedup_max_bytes = dedup_max_bytes
        self._data: dict[str, str] = {}
        self._keys = SortedKeys()  # invariant: the keys of self._data, in order
        self._data_bytes = 0  # invariant: UTF-8 bytes of all keys and values
        self._applied_index = 0  # index of the last entry applied (or restored)
        self._dedup = DedupTable(dedup_window, dedup_clients, dedup_max_bytes)
        # Snapshot views in progress (weak: a dropped iterator ends its view).
        # Replaced, never mutated, under the lock (an encoder thread ends views).
        self._views: list[weakref.ref[_View]] = []
        self._views_lock = threading.Lock()

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

    @property
    def dedup_bytes(self) -> int:
        """The exactly-once table's accounted size (see `_limits`)."""
        return self._dedup.accounted_bytes

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
        if after is not None and after >= prefix:
            keys = self._keys.iter_from(after, inclusive=False)
        else:
            keys = self._keys.iter_from(prefix)
        items: list[tuple[str, str]] = []
        for key in keys:
            if not key.startswith(prefix):
                break
            if len(items) == limit:
                return items, True
            items.append((key, self._data[key]))
        return items, False

    def items(self) -> Iterator[tuple[str, str]]:
        """All (key, value) pairs in ascending key order. Do not apply while iterating."""
        data = self._data
        return ((key, data[key]) for key in self._keys.iter_from(""))

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
        if request is None:
            return self._execute(index, command)
        client, seq = request
        fingerprint = _fingerprint(command)
        earlier = self._dedup.check(client, seq, index)
        if earlier is EXPIRED:
            assert command.request_id is not None
            return ExpiredRequest(command.request_id)
        if isinstance(earlier, bytes):
            return _replay(command, fingerprint, earlier)
        result = self._execute(index, command)
        if not isinstance(result, TooLargeResult):  # it changed nothing: nothing to remember
            self._dedup.record(client, seq, index, fingerprint + _summary(command, result, index))
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
            return None  # not canonical or out of range: applied without dedup

    def _execute(self, index: int, command: Command) -> Result:
        if isinstance(command, Txn):
            return self._txn(index, command)
        return self._op(index, command, None)

    def _op(self, index: int, op: Op, undo: Undo | None) -> OpResult:
        match op:
            case Put(key=key, value=value):
                self._put(key, value, undo)
                return PutResult(key, value, index)
            case Delete(key=key):
                return DeleteResult(key, self._delete(key, undo))
            case DeletePrefix(prefix=prefix):
                return DeletePrefixResult(prefix, self._delete_prefix(prefix, undo))
            case Get(key=key):
                return GetResult(key, self._data.get(key))
            case Cas(key=key, expected=expected, value=value):
                current = self._data.get(key)
                if current != expected:
                    return CasResult(False, current, index)
                if value is None:
                    self._delete(key, undo)
                else:
                    self._put(key, value, undo)
                return CasResult(True, value, index)
        raise AssertionError(f"validated op of unknown type: {op!r}")

    def _txn(self, index: int, txn: Txn) -> TxnResult | TooLargeResult:
        succeeded = all(self._holds(c) for c in txn.compare)
        undo: Undo = []
        results: list[OpResult] = []
        read = 0
        for op in txn.success if succeeded else txn.failure:
            result = self._op(index, op, undo)
            results.append(result)
            read += _read_bytes(result)
            if read > MAX_TXN_RESULT_BYTES:
                self._undo(undo)
                return TooLargeResult(
                    f"The transaction's reads would return more than {MAX_TXN_RESULT_BYTES} "
                    "bytes of values; it was not applied. Read fewer or smaller keys."
                )
        return TxnResult(succeeded, results)

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

    def _before_change(self, key: str, old: str | None) -> None:
        # Every snapshot view in progress learns a key's captured value
        # *before* the key changes (the module docstring says why).
        for ref in self._views:
            view = ref()
            if view is not None and key not in view.undo:
                view.undo[key] = old

    def _put(self, key: str, value: str, undo: Undo | None) -> None:
        old = self._data.get(key)
        if undo is not None:
            undo.append((key, old))
        if self._views:
            self._before_change(key, old)
        if old is None:
            self._keys.insert(key)
            self._data_bytes += _utf8_len(key)
        else:
            self._data_bytes -= _utf8_len(old)
        self._data[key] = value
        self._data_bytes += _utf8_len(value)

    def _delete(self, key: str, undo: Undo | None) -> bool:
        old = self._data.get(key)
        if old is None:
            return False
        if undo is not None:
            undo.append((key, old))
        if self._views:
            self._before_change(key, old)
        del self._data[key]
        self._keys.remove(key)
        self._data_bytes -= _utf8_len(key) + _utf8_len(old)
        return True

    def _delete_prefix(self, prefix: str, undo: Undo | None) -> int:
        keys = self._keys.pop_prefix(prefix)
        for key in keys:
            old = self._data[key]
            if undo is not None:
                undo.append((key, old))
            if self._views:
                self._before_change(key, old)
            del self._data[key]
            self._data_bytes -= _utf8_len(key) + _utf8_len(old)
        return len(keys)

    def _undo(self, undo: Undo) -> None:
        for key, old in reversed(undo):
            if old is None:
                self._delete(key, None)
            else:
                self._put(key, old, None)

    # ------------------------------------------------------------- snapshots

    def snapshot(self) -> bytes:
        """Everything (data, exactly-once table, applied_index) as bytes.

        Canonical: equal states give equal bytes.
        """
        return b"".join(self.snapshot_chunks())

    def snapshot_chunks(self) -> Iterator[bytes]:
        """Capture the state now, cheaply; encode it lazily, one frame per `next()`.

        Capturing costs O(blocks + clients) on the caller's thread (see the
        module docstring); the returned iterator reads only captured state,
        so it may be consumed later, in another thread, while entries keep
        being applied (in one other thread: the machine itself is not
        thread-safe). Each step encodes one frame (at most FRAME_PAIRS pairs
        or FRAME_CHARS characters), so no single call holds the GIL for long.
        The chunks concatenated are `snapshot()`.
        """
        view = _View(self._data)
        frames = encode_frames(
            self._applied_index, len(self._keys), self._keys.capture(), view.values_of,
            self._dedup.capture(),
        )
        ref = weakref.ref(view, self._end_view)  # a dropped iterator ends its view
        with self._views_lock:
            self._views = [*self._views, ref]
        return self._frames(frames, ref, view)

    def _frames(self, frames: Iterator[bytes], ref: weakref.ref[_View],
                view: _View) -> Iterator[bytes]:
        # `view` is an argument so that this generator keeps it alive (and so
        # recording) until the frames are done or the generator is dropped.
        try:
            yield from frames
        finally:
            self._end_view(ref)

    def _end_view(self, ref: weakref.ref[_View]) -> None:
        with self._views_lock:
            self._views = [r for r in self._views if r is not ref]

    def snapshot_later(self) -> Callable[[], bytes]:
        """Capture the state now (cheaply); encode it later, e.g. in a thread.

        The returned function joins the chunks of `snapshot_chunks()` into one
        bytes object; joining is one long copy, so a caller that can write
        chunks should prefer `snapshot_chunks()`.
        """
        chunks = self.snapshot_chunks()
        return lambda: b"".join(chunks)

    def restore(self, data: bytes | bytearray | memoryview) -> None:
        """Replace the whole state with a snapshot; raises `InvalidSnapshot` only.

        Accepts this version's format and the previous one. On error the
        current state is left untouched. See `restore_steps` to restore a
        large snapshot without holding an event loop.
        """
        for _ in self.restore_steps(data):
            pass

    def restore_steps(self, data: bytes | bytearray | memoryview) -> Iterator[None]:
        """`restore` in short steps, one snapshot frame per `next()`.

        The state is replaced at the last step, all at once; until then (and
        on InvalidSnapshot, raised from `next()`, or if the caller stops
        early) it is untouched. A caller on an event loop runs a few steps,
        yields to other tasks, and so on (`trioraft.node._offload`), so a
        million-key restore never stalls the loop. Do not apply while a
        restore is in progress.
        """
        restored = yield from decode_steps(data, self._dedup_window, self._dedup_clients,
                                           self._dedup_max_bytes)  # fmt: skip
        with self._views_lock:
            # Views in progress keep reading the replaced dict, which no longer changes.
            self._views = []
        self._data = restored.data
        self._keys = restored.keys
        self._data_bytes = restored.data_bytes
        self._applied_index = restored.applied_index
        self._dedup = restored.dedup

    def state_digest(self) -> str:
        """SHA-256 hex digest of the canonical state (for convergence checks)."""
        digest = hashlib.sha256()
        for chunk in self.snapshot_chunks():
            digest.update(chunk)
        return digest.hexdigest()

    def __repr__(self) -> str:
        return (
            f"<KVStateMachine applied_index={self._applied_index} keys={len(self._data)} "
            f"data_bytes={self._data_bytes} dedup_clients={len(self._dedup)}>"
        )
