"""Fixtures for the storage tests: every implementation, fresh per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from trioraft.storage import MemoryStorage, SqliteStorage, Storage

SMALL_MAX = 64  # bytes: the largest incoming snapshot of the `small` fixture


def make(kind: str, path: Path, max_snapshot_bytes: int | None = None) -> Storage:
    """A fresh, empty storage (sqlite without fsync: same logic, faster)."""
    extra = {} if max_snapshot_bytes is None else {"max_snapshot_bytes": max_snapshot_bytes}
    if kind == "memory":
        return MemoryStorage(**extra)
    return SqliteStorage(path / "data", fsync=False, **extra)


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    s = make(request.param, tmp_path)
    yield s
    s.close()


@pytest.fixture(params=["memory", "sqlite"])
def small(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """Like `storage`, with incoming snapshots limited to SMALL_MAX bytes."""
    s = make(request.param, tmp_path, max_snapshot_bytes=SMALL_MAX)
    yield s
    s.close()
