"""`SortedItems`: the store's (key, value) pairs in key order, in copy-on-write blocks.

Why not a plain sorted list, nor `sortedcontainers`: inserting into a sorted
list of a million keys moves megabytes per put (``insort`` is O(n)), and a
snapshot needs a consistent view of every pair while the loop keeps applying
entries. Blocks (like `sortedcontainers.SortedList`, whose layout this
borrows) make an update O(log n + LOAD); what this class adds is the
snapshot:

* `capture()` bumps the *generation* and returns the list of the blocks' key
  and value lists as they are now: O(number of blocks), a few thousand
  references for a million keys.
* A block whose generation is older than the current one may be shared with
  a capture, so every mutation first replaces it with a copy
  (`_writable`). A captured list is therefore never mutated again: an encoder
  may read it from another thread, for as long as it likes, with no lock.
* `extend_sorted()` appends pairs known to be greater than every key, in
  bounded steps: `restore` builds a million-key map chunk by chunk without
  one long call (msgspec and list operations hold the GIL).

Invariants (checked by tests/kv/test_kv_sorted.py):
  - every block is non-empty; `_maxes[i] == _blocks[i].keys[-1]`;
  - keys are strictly increasing within and across blocks;
  - `len(keys) == len(values)` in every block; `_len` is the total.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator

__all__ = ["LOAD", "Captured", "SortedItems"]

LOAD = 1000  # a block splits above 2 * LOAD pairs; small blocks merge below LOAD // 4

Captured = list[tuple[list[str], list[str]]]


class _Block:
    __slots__ = ("gen", "keys", "values")

    def __init__(self, keys: list[str], values: list[str], gen: int) -> None:
        self.keys = keys
        self.values = values
        self.gen = gen


class SortedItems:
    """Ordered (key, value) pairs; see the module docstring."""

    def __init__(self) -> None:
        self._blocks: list[_Block] = []
        self._maxes: list[str] = []
        self._gen = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    # ------------------------------------------------------------ snapshots

    def capture(self) -> Captured:
        """The blocks as they are now; never mutated afterwards (see module docstring)."""
        self._gen += 1
        return [(b.keys, b.values) for b in self._blocks]

    def extend_sorted(self, keys: list[str], values: list[str]) -> None:
        """Append pairs whose keys are increasing and above every key held.

        The caller checks the order (restore validates it); appending costs
        O(len(keys)) in short steps.
        """
        for start in range(0, len(keys), LOAD):
            chunk_k, chunk_v = keys[start:start + LOAD], values[start:start + LOAD]
            last = self._blocks[-1] if self._blocks else None
            if last is not None and len(last.keys) < LOAD:
                room = LOAD - len(last.keys)
                last = self._writable(len(self._blocks) - 1)
                last.keys.extend(chunk_k[:room])
                last.values.extend(chunk_v[:room])
                self._maxes[-1] = last.keys[-1]
                chunk_k, chunk_v = chunk_k[room:], chunk_v[room:]
            if chunk_k:
                self._blocks.append(_Block(chunk_k, chunk_v, self._gen))
                self._maxes.append(chunk_k[-1])
        self._len += len(keys)

    # ------------------------------------------------------------- updates

    def _writable(self, i: int) -> _Block:
        block = self._blocks[i]
        if block.gen != self._gen:  # maybe shared with a capture: copy first
            block = self._blocks[i] = _Block(list(block.keys), list(block.values), self._gen)
        return block

    def insert(self, key: str, value: str) -> None:
        """Add a key that is not present."""
        if not self._blocks:
            self._blocks.append(_Block([key], [value], self._gen))
            self._maxes.append(key)
            self._len = 1
            return
        i = bisect_left(self._maxes, key)
        if i == len(self._blocks):
            i -= 1
        block = self._writable(i)
        j = bisect_left(block.keys, key)
        block.keys.insert(j, key)
        block.values.insert(j, value)
        self._maxes[i] = block.keys[-1]
        self._len += 1
        if len(block.keys) > 2 * LOAD:
            half = len(block.keys) // 2
            right = _Block(block.keys[half:], block.values[half:], self._gen)
            del block.keys[half:], block.values[half:]
            self._blocks.insert(i + 1, right)
            self._maxes[i] = block.keys[-1]
            self._maxes.insert(i + 1, right.keys[-1])

    def _find(self, key: str) -> tuple[int, int]:
        i = bisect_left(self._maxes, key)
        if i < len(self._blocks):
            keys = self._blocks[i].keys
            j = bisect_left(keys, key)
            if j < len(keys) and keys[j] == key:
                return i, j
        raise KeyError(key)

    def replace(self, key: str, value: str) -> None:
        """Change the value of a key that is present."""
        i, j = self._find(key)
        self._writable(i).values[j] = value

    def remove(self, key: str) -> None:
        """Remove a key that is present."""
        i, j = self._find(key)
        block = self._writable(i)
        del block.keys[j], block.values[j]
        self._len -= 1
        self._settle(i)

    def _settle(self, i: int) -> None:
        """Restore the invariants of block i after removals from it."""
        block = self._blocks[i]
        if not block.keys:
            del self._blocks[i], self._maxes[i]
            return
        self._maxes[i] = block.keys[-1]
        if len(block.keys) < LOAD // 4 and len(self._blocks) > 1:
            # Merge with a neighbour so many deletions do not leave many tiny blocks.
            left = i - 1 if i > 0 else i
            first = self._writable(left)
            second = self._blocks[left + 1]
            first.keys.extend(second.keys)
            first.values.extend(second.values)
            del self._blocks[left + 1], self._maxes[left + 1]
            self._maxes[left] = first.keys[-1]
            if len(first.keys) > 2 * LOAD:  # split back into two halves
                half = len(first.keys) // 2
                right = _Block(first.keys[half:], first.values[half:], self._gen)
                del first.keys[half:], first.values[half:]
                self._blocks.insert(left + 1, right)
                self._maxes[left] = first.keys[-1]
                self._maxes.insert(left + 1, right.keys[-1])

    def pop_prefix(self, prefix: str) -> list[tuple[str, str]]:
        """Remove every key starting with `prefix`; return the removed pairs in order.

        Keys with a prefix are contiguous; each turn removes them from one
        block, then looks again (a merge may have moved blocks).
        """
        removed: list[tuple[str, str]] = []
        while True:
            i = bisect_left(self._maxes, prefix)
            if i == len(self._blocks):
                return removed
            keys = self._blocks[i].keys
            start = bisect_left(keys, prefix)
            end = start
            while end < len(keys) and keys[end].startswith(prefix):
                end += 1
            if end == start:
                return removed
            more = end == len(keys)  # the prefix may go on in the next block
            block = self._writable(i)
            removed.extend(zip(block.keys[start:end], block.values[start:end], strict=True))
            del block.keys[start:end], block.values[start:end]
            self._len -= end - start
            self._settle(i)
            if not more:
                return removed

    # --------------------------------------------------------------- reads

    def iter_from(self, key: str, *, inclusive: bool = True) -> Iterator[tuple[str, str]]:
        """Pairs with keys >= `key` (> when not inclusive), in order.

        Do not mutate while iterating.
        """
        bisect = bisect_left if inclusive else bisect_right
        i = bisect(self._maxes, key)
        if i == len(self._blocks):
            return
        block = self._blocks[i]
        j = bisect(block.keys, key)
        while True:
            yield from zip(block.keys[j:], block.values[j:], strict=True)
            i += 1
            if i == len(self._blocks):
                return
            block, j = self._blocks[i], 0

    def check_invariants(self) -> None:
        """Assert the invariants in the module docstring (tests)."""
        total = 0
        previous: str | None = None
        assert len(self._blocks) == len(self._maxes)
        for block, top in zip(self._blocks, self._maxes, strict=True):
            assert block.keys, "empty block"
            assert len(block.keys) == len(block.values)
            assert top == block.keys[-1]
            for key in block.keys:
                assert previous is None or previous < key, (previous, key)
                previous = key
            total += len(block.keys)
        assert total == self._len
