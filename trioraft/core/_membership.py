"""Which configuration is in force, as of which log index.

A configuration takes effect as soon as its CONFIG entry is *appended*,
committed or not (Raft thesis §4.1): a server always uses the latest
configuration in its log. So the history is: a base configuration (the one
in force at the newest snapshot, or the bootstrap one) plus one entry per
CONFIG entry after it. Truncating an uncommitted CONFIG entry rolls the
configuration back to the one before it; a snapshot folds everything it
covers into the base.
"""

from __future__ import annotations

from trioraft.core._types import Configuration

__all__ = ["ConfigHistory"]


class ConfigHistory:
    __slots__ = ("_hist",)

    def __init__(self, base_index: int, base: Configuration) -> None:
        # (index of the entry that set it, configuration); index-sorted. The
        # first element is the base: never truncated, only replaced.
        self._hist: list[tuple[int, Configuration]] = [(base_index, base)]

    @property
    def current(self) -> Configuration:
        return self._hist[-1][1]

    @property
    def current_index(self) -> int:
        """Index of the entry that set the current configuration (base: its index)."""
        return self._hist[-1][0]

    def at(self, index: int) -> Configuration:
        """The configuration in force at `index` (>= the base index)."""
        for i, cfg in reversed(self._hist):
            if i <= index:
                return cfg
        return self._hist[0][1]

    def append(self, index: int, config: Configuration) -> None:
        assert index > self._hist[-1][0]
        self._hist.append((index, config))

    def truncate_from(self, index: int) -> bool:
        """Forget configurations set by entries >= index; True if the current one changed."""
        before = len(self._hist)
        while len(self._hist) > 1 and self._hist[-1][0] >= index:
            self._hist.pop()
        return len(self._hist) != before

    def compact_to(self, index: int) -> None:
        """Entries <= index are now covered by a snapshot: fold them into the base."""
        cfg = self.at(index)
        self._hist = [(index, cfg)] + [(i, c) for i, c in self._hist if i > index]

    def reset(self, index: int, config: Configuration) -> None:
        """A snapshot from the leader replaces the log up to `index`."""
        self._hist = [(index, config)] + [(i, c) for i, c in self._hist if i > index]
