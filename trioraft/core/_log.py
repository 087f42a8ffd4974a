"""The in-memory Raft log: a compacted prefix (the snapshot) and the entries after it.

The core holds every entry since the last snapshot in memory; the runtime
bounds that by snapshotting at a threshold. Indexes are 1-based as in the
paper; index 0 with term 0 is the empty log's sentinel.

Invariants (asserted where they can break):
- entries[i].index == snapshot.index + 1 + i (contiguous, no gaps);
- terms never decrease along the log;
- committed entries are never truncated (State Machine Safety relies on it);
- unstable_from: every entry with index < unstable_from is on stable storage.
"""

from __future__ import annotations

from trioraft.core._types import Configuration, Entry, SnapshotMeta

__all__ = ["RaftLog"]


class RaftLog:
    __slots__ = ("applied", "committed", "entries", "snapshot", "unstable_from")

    def __init__(self, snapshot: SnapshotMeta, entries: list[Entry], committed: int) -> None:
        self.snapshot = snapshot
        self.entries = list(entries)
        for i, e in enumerate(self.entries):
            assert e.index == snapshot.index + 1 + i, "log entries must be contiguous"
        # Everything handed to us at start-up came from stable storage.
        self.unstable_from = self.last_index() + 1
        # A persisted commit hint may exceed what survived a torn tail; clamp it.
        self.committed = max(snapshot.index, min(committed, self.last_index()))
        # The snapshot is the state machine as of snapshot.index.
        self.applied = snapshot.index

    # ---------------------------------------------------------------- queries
    def first_index(self) -> int:
        return self.snapshot.index + 1

    def last_index(self) -> int:
        return self.snapshot.index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`, or None if compacted away or absent."""
        if index == self.snapshot.index:
            return self.snapshot.term
        if index < self.snapshot.index or index > self.last_index():
            return None
        return self.entries[index - self.snapshot.index - 1].term

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.snapshot.index - 1]

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries with lo <= index < hi, stopping once max_bytes is passed (at least one)."""
        base = self.snapshot.index + 1
        out = self.entries[lo - base : hi - base]
        if max_bytes is None or not out:
            return out
        total = 0
        for n, e in enumerate(out):
            total += len(e.data) + 16
            if total > max_bytes and n > 0:
                return out[:n]
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: the candidate's log is at least as up-to-date as ours."""
        return (last_term, last_index) >= (self.last_term(), self.last_index())

    def first_index_of_term(self, index: int) -> int:
        """The first index holding the same term as `index` (for the conflict hint)."""
        term = self.term_at(index)
        while index - 1 > self.snapshot.index and self.term_at(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int, at_most: int) -> int | None:
        """The last index <= at_most whose entry has `term`, or None."""
        i = min(at_most, self.last_index())
        while i > self.snapshot.index:
            t = self.entry(i).term
            if t == term:
                return i
            if t < term:
                return None
            i -= 1
        return None

    # -------------------------------------------------------------- mutations
    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        assert entries[0].index == self.last_index() + 1
        self.entries.extend(entries)

    def truncate_from(self, index: int) -> None:
        """Drop entries >= index (a conflicting suffix from a deposed leader)."""
        # Truncating a committed entry would break State Machine Safety: a
        # leader's log always contains every committed entry (Leader
        # Completeness), so a conflict can only ever be above our commit index.
        assert index > self.committed, f"truncating committed entry {index} <= {self.committed}"
        del self.entries[index - self.snapshot.index - 1 :]
        self.unstable_from = min(self.unstable_from, index)

    def unstable(self) -> list[Entry]:
        return self.slice(self.unstable_from, self.last_index() + 1)

    def stable_to(self, index: int) -> None:
        self.unstable_from = max(self.unstable_from, index + 1)

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            assert index <= self.last_index(), "cannot commit past the end of the log"
            self.committed = index
            return True
        return False

    def compact(self, index: int, config: Configuration) -> None:
        """Forget entries <= index: a snapshot now covers them."""
        if index <= self.snapshot.index:
            return
        assert index <= self.applied, "only applied entries may be compacted"
        term = self.term_at(index)
        assert term is not None
        del self.entries[: index - self.snapshot.index]
        self.snapshot = SnapshotMeta(index=index, term=term, config=config)

    def restore(self, meta: SnapshotMeta, keep_suffix: bool) -> None:
        """Install a snapshot received from the leader."""
        if keep_suffix:
            del self.entries[: meta.index - self.snapshot.index]
        else:
            self.entries = []
            self.unstable_from = meta.index + 1
        self.snapshot = meta
        self.committed = max(self.committed, meta.index)
        self.applied = max(self.applied, meta.index)
        self.unstable_from = max(self.unstable_from, meta.index + 1)
