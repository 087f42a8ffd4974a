"""Errors the node runtime and the client-auth check raise (mapped to statuses in api.py)."""

from __future__ import annotations

from typing import Any

from trioraft.core import NotLeader, ProposalDropped, RaftError

__all__ = [
    "ApiError",
    "Forbidden",
    "NoLeader",
    "NoQuorum",
    "NotLeader",
    "Overloaded",
    "ProposalDropped",
    "RaftError",
    "ShuttingDown",
    "Unauthorized",
    "UnknownOutcome",
]


class NoLeader(RaftError):
    """No leader is known (an election is under way or a quorum is unreachable)."""


class NoQuorum(RaftError):
    """The leader could not confirm its leadership with a majority in time."""


class UnknownOutcome(RaftError):
    """The write was proposed but is not known to be committed: it may or may not apply."""


class Overloaded(RaftError):
    """The node's request queue is full; nothing was done."""


class ShuttingDown(RaftError):
    """The node is stopping; nothing was done."""


class Unauthorized(Exception):
    """A client route needs a bearer token and none (or an unknown one) was given (401)."""


class Forbidden(Exception):
    """The client's token is valid but its role does not allow this request (403)."""


class ApiError(Exception):
    """An HTTP answer decided at the API boundary: status, machine code, human sentence."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra
