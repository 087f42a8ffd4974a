"""The exactly-once table: which request ids were applied, and a record of each.

Rules (API.md "Exactly once"; limits and memory bound in `_limits`):

* A request id is ``"client:seq"``. For each client the table keeps the
  records of the `window` highest sequence numbers applied; adding one more
  evicts the lowest, and raises the client's `floor` to it.
* A record is opaque bytes to this table (`_machine` writes a fingerprint of
  the command and a compact summary of its effect, never a value).
* A seq with a record is a retry: the record is returned and the command is
  not applied again.
* A seq at or below `floor` that has no record may have been applied and
  forgotten: it is expired and not applied. (For clients that number requests
  in order this is exactly "lower than the lowest retained seq". A seq above
  the floor without a record was never applied, even if it is below the
  lowest retained one, so it is applied: requests that a client sent
  concurrently may commit out of order.)
* At most `max_clients` clients and `max_bytes` accounted bytes are kept.
  Every command carrying a client's id, retries included, refreshes that
  client's `last_index` (its log index); when a bound is exceeded the client
  with the lowest `last_index` is forgotten. The order is the apply order, so
  every replica evicts alike.
* Snapshots: `capture()` is O(clients) and returns per-client result dicts
  that are never mutated afterwards (a client's dict is copied before its
  first change after a capture), so they can be encoded in another thread.
"""

from __future__ import annotations

import heapq
from typing import Final

import msgspec

from ._commands import parse_request_id
from ._errors import InvalidCommand
from ._limits import (
    DEDUP_CLIENT_OVERHEAD,
    DEDUP_MAX_BYTES,
    DEDUP_RECORD_OVERHEAD,
    MAX_INDEX,
    MAX_SEQ,
)

__all__ = ["EXPIRED", "ClientState", "DedupTable", "Expired"]


class ClientState(msgspec.Struct, frozen=True, array_like=True):
    """One client's entry in a snapshot."""

    client: str
    last_index: int  # log index of the client's latest command
    floor: int  # highest evicted seq, -1 if none: seqs <= floor are expired
    results: list[tuple[int, bytes]]  # (seq, record), ascending seq


class Expired:
    """The answer of `DedupTable.check` for a seq that may have been forgotten."""

    __slots__ = ()


EXPIRED: Final = Expired()


class _Client:
    __slots__ = ("cost", "floor", "gen", "last_index", "results", "seqs")

    def __init__(self, last_index: int, floor: int, gen: int) -> None:
        self.last_index = last_index
        self.floor = floor  # every evicted seq is <= floor
        self.results: dict[int, bytes] = {}
        self.seqs: list[int] = []  # min-heap of the keys of `results`
        self.cost = 0  # accounted bytes of the records
        self.gen = gen  # results/seqs may be shared with a capture when gen is old


def _record_cost(record: bytes) -> int:
    return len(record) + DEDUP_RECORD_OVERHEAD


def _client_cost(client: str) -> int:
    return len(client) + DEDUP_CLIENT_OVERHEAD


class DedupTable:
    """Per-client windows of records, with deterministic LRU eviction."""

    def __init__(self, window: int, max_clients: int, max_bytes: int = DEDUP_MAX_BYTES) -> None:
        assert window >= 1, window
        assert max_clients >= 1, max_clients
        self.window = window
        self.max_clients = max_clients
        self.max_bytes = max_bytes
        # Insertion order is activity order: a touched client is moved to the
        # end, so the first key always has the lowest last_index.
        self._clients: dict[str, _Client] = {}
        self._bytes = 0  # accounted bytes: clients and records
        self._gen = 0

    def __len__(self) -> int:
        """Number of clients remembered."""
        return len(self._clients)

    @property
    def accounted_bytes(self) -> int:
        """The table's size as `_limits` accounts it (never above max_bytes)."""
        return self._bytes

    def result_count(self) -> int:
        """Number of records remembered over all clients."""
        return sum(len(c.results) for c in self._clients.values())

    def __contains__(self, client: object) -> bool:
        return client in self._clients

    def check(self, client: str, seq: int, index: int) -> bytes | Expired | None:
        """The record of an already-seen request, EXPIRED, or None if it is new.

        Refreshes the client's activity to `index` when it is known.
        """
        record = self._touch(client, index)
        if record is None:
            return None
        recorded = record.results.get(seq)
        if recorded is not None:
            return recorded
        if seq <= record.floor:
            return EXPIRED
        return None

    def record(self, client: str, seq: int, index: int, data: bytes) -> None:
        """Remember that (client, seq) was applied at `index`, with its record."""
        state = self._touch(client, index)
        if state is None:
            state = self._clients[client] = _Client(index, -1, self._gen)
            self._bytes += _client_cost(client)
        # `check` ran first: a recorded or expired seq never gets here.
        assert seq not in state.results
        assert seq > state.floor
        self._own(state)
        state.results[seq] = data
        heapq.heappush(state.seqs, seq)
        cost = _record_cost(data)
        state.cost += cost
        self._bytes += cost
        if len(state.seqs) > self.window:
            evicted = heapq.heappop(state.seqs)
            cost = _record_cost(state.results.pop(evicted))
            state.cost -= cost
            self._bytes -= cost
            state.floor = max(state.floor, evicted)
        # Forget the least recently active clients (never the one just recorded).
        while len(self._clients) > 1 and (
            len(self._clients) > self.max_clients or self._bytes > self.max_bytes
        ):
            name = next(iter(self._clients))
            gone = self._clients.pop(name)
            self._bytes -= _client_cost(name) + gone.cost

    def _own(self, state: _Client) -> None:
        if state.gen != self._gen:  # maybe shared with a capture: copy before changing
            state.results = dict(state.results)
            state.seqs = list(state.seqs)
            state.gen = self._gen

    def _touch(self, client: str, index: int) -> _Client | None:
        state = self._clients.pop(client, None)
        if state is not None:
            assert index >= state.last_index
            state.last_index = index
            self._clients[client] = state
        return state

    # ------------------------------------------------------------ snapshots

    def capture(self) -> list[tuple[str, int, int, dict[int, bytes]]]:
        """(client, last_index, floor, records) in ascending last_index; see module doc."""
        self._gen += 1
        return [(name, c.last_index, c.floor, c.results) for name, c in self._clients.items()]

    def to_state(self) -> list[ClientState]:
        """Clients in ascending `last_index` order, records in ascending seq."""
        return [
            ClientState(name, last, floor, sorted(results.items()))
            for name, last, floor, results in self.capture()
        ]

    @classmethod
    def from_state(
        cls,
        clients: list[ClientState],
        window: int,
        max_clients: int,
        max_bytes: int = DEDUP_MAX_BYTES,
        *,
        applied_index: int = MAX_INDEX,
    ) -> DedupTable:
        """Rebuild a table from `to_state()` output; raises ValueError if inconsistent.

        Checks every bound the table keeps while applying, so a restored table
        behaves exactly like the one that was snapshotted.
        """
        if len(clients) > max_clients:
            raise ValueError(f"{len(clients)} clients, above the limit of {max_clients}")
        table = cls(window, max_clients, max_bytes)
        previous = -1
        for state in clients:
            try:
                parse_request_id(f"{state.client}:0")
            except InvalidCommand:
                raise ValueError(f"client id {state.client!r} is not valid") from None
            if not previous < state.last_index <= applied_index:
                raise ValueError(f"client {state.client!r}: last index out of order or range")
            previous = state.last_index
            if not -1 <= state.floor <= MAX_SEQ:
                raise ValueError(f"client {state.client!r}: floor out of range")
            if len(state.results) > window:
                raise ValueError(f"client {state.client!r}: more records than the window")
            if state.client in table._clients:
                raise ValueError(f"client {state.client!r} appears twice")
            record = _Client(state.last_index, state.floor, 0)
            last_seq = state.floor
            for seq, data in state.results:
                if not last_seq < seq <= MAX_SEQ:
                    raise ValueError(f"client {state.client!r} has an inconsistent seq {seq}")
                last_seq = seq
                record.results[seq] = data
                record.cost += _record_cost(data)
            record.seqs = list(record.results)  # ascending: a sorted list is a valid heap
            table._clients[state.client] = record
            table._bytes += _client_cost(state.client) + record.cost
        if table._bytes > max_bytes:
            raise ValueError(f"the table holds {table._bytes} bytes, above {max_bytes}")
        return table
