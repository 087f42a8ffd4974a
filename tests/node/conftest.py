"""Node tests run on the in-memory network; the ones that take `transport` run on
the production peer streams too (StreamTransport over in-memory pipes)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["memory", "stream"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)
