"""Errors the core raises to its caller. The HTTP layer maps them in one place."""

from __future__ import annotations

__all__ = ["NotLeader", "ProposalDropped", "RaftError"]


class RaftError(Exception):
    """Base class of the core's errors."""


class NotLeader(RaftError):
    """This node cannot take the request; `leader_hint` is who might (or None)."""

    def __init__(self, leader_hint: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader_hint or 'unknown'})")
        self.leader_hint = leader_hint


class ProposalDropped(RaftError):
    """The leader refused the proposal (for example during a leadership transfer).

    It was never appended, so it will never apply: retrying is safe.
    """
