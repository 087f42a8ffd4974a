"""`SortedKeys`: the store's keys in order, in immutable blocks.

Why not a plain sorted list, nor `sortedcontainers`: inserting into a sorted
list of a million keys moves megabytes per put (``insort`` is O(n)), and a
snapshot needs a consistent list of the keys while the loop keeps applying
entries. Blocks (like `sortedcontainers.SortedList`, whose layout this
borrows) make an insert or a delete O(log n + LOAD); what this class adds:

* Blocks are *tuples*, replaced (never changed) by every insert or delete,
  so `capture()` is a copy of the list of block references: O(number of
  blocks), about 2,000 for a million keys. A captured block is never mutated,
  so an encoder may read it from another thread, for as long as it likes,
  with no lock.
* Tuples of strings are invisible to the cyclic garbage collector (CPython
  untracks them at their first collection; `str -> str` dicts are never
  tracked), so a full collection never walks the keys. (A list of a million
  keys costs every full collection ~20 ms with the GIL held; blocks of lists
  of keys and values, ~50 ms.)
* Values are not here: the machine's dict holds them, so overwriting a key
  touches no block at all.
* `extend_sorted()` appends keys known to be greater than every key, in
  bounded steps: `restore` builds a million keys frame by frame.

Invariants (checked by `check_invariants`, used in tests/kv/test_kv_sorted.py):
  - every block is non-empty; `_maxes[i] == _blocks[i][-1]`;
  - keys are strictly increasing within and across blocks; `_len` is the total.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator

__all__ = ["LOAD", "Captured", "SortedKeys"]

LOAD = 512  # a block splits above 2 * LOAD keys; small blocks merge below LOAD // 4

Captured = list[tuple[str, ...]]


class SortedKeys:
    """Keys in order; see the module docstring."""

    def __init__(self) -> None:
        self._blocks: list[tuple[str, ...]] = []
        self._maxes: list[str] = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def capture(self) -> Captured:
        """The blocks as they are now; blocks are immutable (see module docstring)."""
        return list(self._blocks)

    def extend_sorted(self, keys: list[str]) -> None:
        """Append keys that are increasing and above every key held (the caller checks)."""
        start = 0
        if self._blocks and len(self._blocks[-1]) < LOAD:
            start = LOAD - len(self._blocks[-1])
            self._blocks[-1] += tuple(keys[:start])
            self._maxes[-1] = self._blocks[-1][-1]
        for first in range(start, len(keys), LOAD):
            self._blocks.append(tuple(keys[first:first + LOAD]))
            self._maxes.append(self._blocks[-1][-1])
        self._len += len(keys)

    def insert(self, key: str) -> None:
        """Add a key that is not present."""
        if not self._blocks:
            self._blocks.append((key,))
            self._maxes.append(key)
            self._len = 1
            return
        i = bisect_left(self._maxes, key)
        if i == len(self._blocks):
            i -= 1
        block = self._blocks[i]
        j = bisect_left(block, key)
        block = block[:j] + (key,) + block[j:]  # noqa: RUF005 - faster than unpacking
        self._len += 1
        if len(block) > 2 * LOAD:
            half = len(block) // 2
            self._blocks[i:i + 1] = [block[:half], block[half:]]
            self._maxes[i:i + 1] = [block[half - 1], block[-1]]
        else:
            self._blocks[i], self._maxes[i] = block, block[-1]

    def remove(self, key: str) -> None:
        """Remove a key that is present."""
        i = bisect_left(self._maxes, key)
        block = self._blocks[i] if i < len(self._blocks) else ()
        j = bisect_left(block, key)
        if j == len(block) or block[j] != key:
            raise KeyError(key)
        self._cut(i, j, j + 1)

    def _cut(self, i: int, start: int, end: int) -> None:
        """Remove keys [start, end) of block i, then restore the invariants."""
        block = self._blocks[i][:start] + self._blocks[i][end:]
        self._len -= end - start
        if not block:
            del self._blocks[i], self._maxes[i]
            return
        if len(block) < LOAD // 4 and len(self._blocks) > 1:
            # Merge with a neighbour so many deletions do not leave many tiny blocks.
            if i > 0:
                i -= 1
                block = self._blocks[i] + block
            else:
                block = block + self._blocks[1]
            del self._blocks[i + 1], self._maxes[i + 1]
            if len(block) > 2 * LOAD:  # split back into two halves
                half = len(block) // 2
                self._blocks[i:i + 1] = [block[:half], block[half:]]
                self._maxes[i:i + 1] = [block[half - 1], block[-1]]
                return
        self._blocks[i], self._maxes[i] = block, block[-1]

    def pop_prefix(self, prefix: str) -> list[str]:
        """Remove every key starting with `prefix`; return them in order.

        Keys with a prefix are contiguous; each turn removes them from one
        block, then looks again (a merge may have moved blocks).
        """
        removed: list[str] = []
        while True:
            i = bisect_left(self._maxes, prefix)
            if i == len(self._blocks):
                return removed
            block = self._blocks[i]
            start = bisect_left(block, prefix)
            end = start
            while end < len(block) and block[end].startswith(prefix):
                end += 1
            if end == start:
                return removed
            removed.extend(block[start:end])
            self._cut(i, start, end)
            if end < len(block):  # reached a key without the prefix: done
                return removed

    def iter_from(self, key: str, *, inclusive: bool = True) -> Iterator[str]:
        """Keys >= `key` (> when not inclusive), in order. Do not mutate while iterating."""
        bisect = bisect_left if inclusive else bisect_right
        i = bisect(self._maxes, key)
        if i == len(self._blocks):
            return
        j = bisect(self._blocks[i], key)
        while i < len(self._blocks):
            yield from self._blocks[i][j:]
            i, j = i + 1, 0

    def check_invariants(self) -> None:
        """Assert the invariants in the module docstring (tests)."""
        total = 0
        previous: str | None = None
        assert len(self._blocks) == len(self._maxes)
        for block, top in zip(self._blocks, self._maxes, strict=True):
            assert block, "empty block"
            assert top == block[-1]
            for key in block:
                assert previous is None or previous < key, (previous, key)
                previous = key
            total += len(block)
        assert total == self._len
