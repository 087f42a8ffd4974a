"""Argument checks shared by every storage implementation.

A batch that would leave a hole in the log, or overwrite what a snapshot
already covers, is a bug in the caller; both implementations refuse it the
same way so the simulation (memory) catches what production (sqlite) would.
"""

from __future__ import annotations

from collections.abc import Sequence

from trioraft.core import Entry

__all__ = ["check_batch"]


def check_batch(entries: Sequence[Entry], snapshot_index: int, last_index: int) -> None:
    """Raise ValueError unless `entries` can be appended after truncation.

    The batch must be contiguous, start after the snapshot and no later than
    last_index + 1 (it may start earlier: that is conflict truncation).
    """
    first = entries[0].index
    if first <= snapshot_index:
        raise ValueError(
            f"batch starts at index {first}, inside the snapshot (index {snapshot_index})"
        )
    if first > last_index + 1:
        raise ValueError(f"batch starts at index {first} but the log ends at {last_index}")
    for expected, entry in enumerate(entries, start=first):
        if entry.index != expected:
            raise ValueError(
                f"batch is not contiguous: index {entry.index} where {expected} was expected"
            )
