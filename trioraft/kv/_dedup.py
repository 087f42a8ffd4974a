"""The exactly-once table: which request ids were applied, and what they returned.

Rules (API.md "Exactly once"; limits and memory bound in `_limits`):

* A request id is ``"client:seq"``. For each client the table keeps the
  results of the `window` highest sequence numbers applied; adding one more
  evicts the lowest, and raises the client's `floor` to it.
* A seq with a recorded result is a retry: its recorded result is returned and
  the command is not applied again.
* A seq at or below `floor` that is not recorded may have been applied and
  forgotten: it gets `ExpiredRequest` and is not applied. (For clients that
  number requests in order this is exactly "lower than the lowest retained
  seq". A seq above the floor that is not recorded was never applied, even if
  it is below the lowest retained one, so it is applied: requests that a
  client sent concurrently may commit out of order.)
* At most `max_clients` clients are kept. Every command carrying a client's
  id, retries included, refreshes that client's `last_index` (its log index);
  adding a client beyond the limit forgets the one with the lowest
  `last_index`. The order is the apply order, so every replica evicts alike.

The table is replicated state: `KVStateMachine` snapshots it with
`to_state()` and rebuilds it with `from_state()`.
"""

from __future__ import annotations

import heapq

import msgspec

from ._results import ExpiredRequest, Result

__all__ = ["ClientState", "DedupTable"]


class ClientState(msgspec.Struct, frozen=True, array_like=True):
    """One client's entry in a snapshot."""

    client: str
    last_index: int  # log index of the client's latest command
    floor: int  # highest evicted seq, -1 if none: seqs <= floor are expired
    results: list[tuple[int, Result]]  # (seq, result), ascending seq


class _Client:
    __slots__ = ("floor", "last_index", "results", "seqs")

    def __init__(self, last_index: int, floor: int = -1) -> None:
        self.last_index = last_index
        self.floor = floor  # every evicted seq is <= floor
        self.results: dict[int, Result] = {}
        self.seqs: list[int] = []  # min-heap of the keys of `results`


class DedupTable:
    """Per-client windows of recorded results, with deterministic LRU eviction."""

    def __init__(self, window: int, max_clients: int) -> None:
        assert window >= 1, window
        assert max_clients >= 1, max_clients
        self.window = window
        self.max_clients = max_clients
        # Insertion order is activity order: a touched client is moved to the
        # end, so the first key always has the lowest last_index.
        self._clients: dict[str, _Client] = {}

    def __len__(self) -> int:
        """Number of clients remembered."""
        return len(self._clients)

    def result_count(self) -> int:
        """Number of results remembered over all clients."""
        return sum(len(c.results) for c in self._clients.values())

    def __contains__(self, client: object) -> bool:
        return client in self._clients

    def check(self, client: str, seq: int, request_id: str, index: int) -> Result | None:
        """The answer for an already-seen or expired request, or None if it is new.

        Refreshes the client's activity to `index` when it is known.
        """
        record = self._touch(client, index)
        if record is None:
            return None
        recorded = record.results.get(seq)
        if recorded is not None:
            return recorded
        if seq <= record.floor:
            return ExpiredRequest(request_id)
        return None

    def record(self, client: str, seq: int, index: int, result: Result) -> None:
        """Remember that (client, seq) was applied at `index` and returned `result`."""
        record = self._touch(client, index)
        if record is None:
            if len(self._clients) >= self.max_clients:
                # Forget the least recently active client (lowest last_index).
                del self._clients[next(iter(self._clients))]
            record = self._clients[client] = _Client(index)
        # `check` ran first: a recorded or expired seq never gets here.
        assert seq not in record.results
        assert seq > record.floor
        record.results[seq] = result
        heapq.heappush(record.seqs, seq)
        if len(record.seqs) > self.window:
            evicted = heapq.heappop(record.seqs)
            del record.results[evicted]
            record.floor = max(record.floor, evicted)

    def _touch(self, client: str, index: int) -> _Client | None:
        record = self._clients.pop(client, None)
        if record is not None:
            assert index >= record.last_index
            record.last_index = index
            self._clients[client] = record
        return record

    # ------------------------------------------------------------ snapshots

    def to_state(self) -> list[ClientState]:
        """Clients in ascending `last_index` order, results in ascending seq."""
        return [
            ClientState(name, c.last_index, c.floor, sorted(c.results.items()))
            for name, c in self._clients.items()
        ]

    @classmethod
    def from_state(cls, clients: list[ClientState], window: int, max_clients: int) -> DedupTable:
        """Rebuild a table from `to_state()` output; raises ValueError if inconsistent."""
        table = cls(window, max_clients)
        for state in sorted(clients, key=lambda s: s.last_index):
            if state.client in table._clients:
                raise ValueError(f"client {state.client!r} appears twice")
            record = _Client(state.last_index, state.floor)
            for seq, result in state.results:
                if seq < 0 or seq <= state.floor or seq in record.results:
                    raise ValueError(f"client {state.client!r} has an inconsistent seq {seq}")
                record.results[seq] = result
            record.seqs = sorted(record.results)  # a sorted list is a valid heap
            table._clients[state.client] = record
        return table
