"""Assertions shared by the HTTP contract tests."""

from __future__ import annotations

from typing import Any

import httpx

ERROR_CODES = {
    400: {"bad_request"},
    401: {"unauthorized"},
    403: {"forbidden"},
    404: {"not_found"},
    500: {"internal"},
    405: {"method_not_allowed"},
    409: {"cas_failed"},
    413: {"too_large"},
    503: {"no_leader", "no_quorum"},
    504: {"unknown_outcome", "request_expired"},
}


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An API.md error: the status, a JSON {"error": sentence, "code": code}, no traceback."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict), body
    assert body["code"] == code, body
    assert code in ERROR_CODES[status]
    assert isinstance(body["error"], str)
    assert body["error"], body
    assert_no_traceback(r)
    if status == 503:
        assert "retry-after" in r.headers
    return body


def assert_no_traceback(r: httpx.Response) -> None:
    text = r.text
    assert "Traceback" not in text
    assert 'File "' not in text


def assert_ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body, dict)
    return body
