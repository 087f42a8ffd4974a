"""The client's error types and result values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "BadRequest",
    "EndpointStatus",
    "Forbidden",
    "RangePage",
    "TlsError",
    "TooLarge",
    "TrioraftError",
    "TxnResult",
    "Unauthorized",
    "Unavailable",
    "UnknownOutcome",
]


class TrioraftError(Exception):
    """Base of all client errors. `code` is the server's machine code (docs/api.md, Errors)."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.status = status


class BadRequest(TrioraftError):
    """400: the request was malformed (e.g. an empty key). Nothing was applied."""

    code = "bad_request"


class TooLarge(TrioraftError):
    """413: key, value or body over the server's limit. Nothing was applied."""

    code = "too_large"


class Unauthorized(TrioraftError):
    """401: the node requires a client token and got none (or an unknown one). Nothing
    was applied."""

    code = "unauthorized"


class Forbidden(TrioraftError):
    """403: the token's role does not allow this (a write with a read-only token).
    Nothing was applied."""

    code = "forbidden"


class TlsError(TrioraftError):
    """A TLS handshake with a configured endpoint failed: the node's certificate is not
    trusted (or expired, or for another name), or the node refused this client's
    (missing, unknown CA, expired). Nothing was applied; retrying will not help."""

    code = "tls"


class Unavailable(TrioraftError):
    """No node answered, or none knew a leader with a quorum, before the deadline.

    The operation did not take effect.
    """

    code = "unavailable"


class UnknownOutcome(TrioraftError):
    """A write may or may not have been applied: it reached the cluster but its commit
    was not confirmed before the deadline."""

    code = "unknown_outcome"


@dataclass(frozen=True, slots=True)
class RangePage:
    """One page of `range`: (key, value) pairs in key order; `more` if the limit cut it."""

    items: list[tuple[str, str]]
    more: bool

    @property
    def next_after(self) -> str | None:
        """The cursor for the next page (pass it as `after=`), or None on the last page."""
        return self.items[-1][0] if self.more and self.items else None


@dataclass(frozen=True, slots=True)
class TxnResult:
    """A committed transaction: which branch ran, and one result per operation of it."""

    succeeded: bool
    results: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """`GET /status` of one node: `status` is the JSON body, or None with `error` set."""

    url: str
    status: dict[str, Any] | None
    error: str | None = None

    @property
    def reachable(self) -> bool:
        return self.status is not None
