"""The in-memory Raft log: a compaction point, the entries after it, the newest snapshot.

Two positions bound the log's past (PLAN.md, "catch-up tail"):

- the *compaction point* `(offset, offset_term)`: the last index dropped from
  the log. Entries offset+1 .. last_index() are held; offset_term is kept so
  an AppendEntries can still name it as prev_log_index.
- the *newest snapshot* `snapshot`: the state machine as of snapshot.index.
  offset <= snapshot.index: a node keeps a tail of entries the snapshot
  already covers, so a follower that is only a little behind is caught up
  with entries instead of a whole snapshot (a new snapshot taken while a
  slow follower catches up no longer sends it back to the start).

Indexes are 1-based as in the paper; index 0 with term 0 is the empty log's
sentinel.

Invariants:
- entries[i].index == offset + 1 + i (contiguous, no gaps);
- terms never decrease along the log;
- offset <= snapshot.index <= committed; committed entries are never
  truncated (State Machine Safety relies on it);
- unstable_from: every entry with index < unstable_from is on stable storage.
"""

from __future__ import annotations

import bisect

from trioraft.core._types import Entry, SnapshotMeta

__all__ = ["RaftLog"]


class RaftLog:
    __slots__ = (
        "applied",
        "committed",
        "entries",
        "offset",
        "offset_term",
        "snapshot",
        "unstable_from",
    )

    def __init__(
        self,
        snapshot: SnapshotMeta,
        entries: list[Entry],
        committed: int,
        compacted: tuple[int, int] | None = None,
    ) -> None:
        """Rebuild the log from stable storage (which is checked, not trusted).

        `compacted` is the compaction point (index, term); None means "the
        snapshot's own point" (and any stored entry it covers is dropped).
        Raises ValueError when the pieces do not fit together.
        """
        if compacted is None:
            entries = [e for e in entries if e.index > snapshot.index]
            compacted = (snapshot.index, snapshot.term)
        off, off_term = compacted
        if not 0 <= off <= snapshot.index:
            raise ValueError(f"compaction point {off} is beyond the snapshot {snapshot.index}")
        if off == snapshot.index and off_term != snapshot.term:
            raise ValueError("compaction point and snapshot disagree on the term")
        prev_term = off_term
        for i, e in enumerate(entries):
            if e.index != off + 1 + i:
                raise ValueError(f"stored log is not contiguous at index {e.index}")
            if e.term < prev_term:
                raise ValueError(f"stored log terms decrease at index {e.index}")
            prev_term = e.term
        if snapshot.index > off + len(entries):
            raise ValueError("stored log ends before the snapshot it should extend")
        if snapshot.index > off and entries[snapshot.index - off - 1].term != snapshot.term:
            raise ValueError("the stored log disagrees with the snapshot's term")
        self.offset, self.offset_term = off, off_term
        self.snapshot = snapshot
        self.entries = list(entries)
        # Everything handed to us at start-up came from stable storage.
        self.unstable_from = self.last_index() + 1
        # A persisted commit hint may exceed what survived a torn tail; clamp it.
        self.committed = max(snapshot.index, min(committed, self.last_index()))
        # The snapshot is the state machine as of snapshot.index.
        self.applied = snapshot.index

    # ---------------------------------------------------------------- queries
    def first_index(self) -> int:
        """The first index held as an entry (sendable in an AppendEntries)."""
        return self.offset + 1

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`, or None if compacted away or absent."""
        if index == self.offset:
            return self.offset_term
        if index < self.offset or index > self.last_index():
            return None
        return self.entries[index - self.offset - 1].term

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.offset - 1]

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries with lo <= index < hi, stopping once max_bytes is passed (at least one)."""
        base = self.offset + 1
        out = self.entries[max(0, lo - base) : max(0, hi - base)]
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
        if term is None:
            return index
        # Terms never decrease along the log: binary search, O(log n).
        lo = bisect.bisect_left(self.entries, term, key=lambda e: e.term)
        return min(index, self.offset + 1 + lo)

    def last_index_of_term(self, term: int, at_most: int) -> int | None:
        """The last index <= at_most whose entry has `term`, or None.

        Binary search (terms never decrease), so a rejection carrying an odd
        conflict term costs O(log n), never a scan of the whole log.
        """
        hi = min(at_most, self.last_index()) - self.offset
        if hi <= 0:
            return None
        pos = bisect.bisect_right(self.entries, term, hi=hi, key=lambda e: e.term)
        if pos == 0 or self.entries[pos - 1].term != term:
            return None
        return self.offset + pos

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
        del self.entries[index - self.offset - 1 :]
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

    def snapshot_taken(self, meta: SnapshotMeta, keep: int) -> tuple[int, int]:
        """A snapshot `meta` is durable: record it, and compact all but `keep`
        entries it covers. Returns the (new) compaction point.

        Only applied (hence committed and persisted) entries are ever dropped.
        """
        if meta.index > self.snapshot.index:
            self.snapshot = meta
        target = min(self.snapshot.index - keep, self.applied, self.unstable_from - 1)
        if target > self.offset:
            term = self.term_at(target)
            assert term is not None
            del self.entries[: target - self.offset]
            self.offset, self.offset_term = target, term
        return self.offset, self.offset_term

    def restore(self, meta: SnapshotMeta, keep_suffix: bool) -> None:
        """Install a snapshot received from the leader: it is also the compaction point."""
        if keep_suffix:
            del self.entries[: meta.index - self.offset]
        else:
            self.entries = []
            self.unstable_from = meta.index + 1
        self.offset, self.offset_term = meta.index, meta.term
        self.snapshot = meta
        self.committed = max(self.committed, meta.index)
        self.applied = max(self.applied, meta.index)
        self.unstable_from = max(self.unstable_from, meta.index + 1)
