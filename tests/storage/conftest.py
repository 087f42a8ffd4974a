"""Fixtures for the storage tests: every implementation, fresh per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from trioraft.storage import MemoryStorage, SqliteStorage, Storage


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    """A fresh, empty storage of each kind (sqlite without fsync: same logic, faster)."""
    s: Storage = (
        MemoryStorage()
        if request.param == "memory"
        else SqliteStorage(tmp_path / "data", fsync=False)
    )
    yield s
    s.close()
