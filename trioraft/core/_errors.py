"""Errors the core raises to its caller. The HTTP layer maps them in one place.

Every error here is *definite*: the request it answers changed nothing.
"""

from __future__ import annotations

__all__ = [
    "ChangeInProgress",
    "InvalidChange",
    "LastVoter",
    "MemberExists",
    "MembershipError",
    "NotCaughtUp",
    "NotLeader",
    "ProposalDropped",
    "RaftError",
    "TransferRefused",
    "UnknownMember",
]


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


class TransferRefused(RaftError):
    """A leadership transfer was refused: the target is not another voter, is
    not caught up, or another transfer is under way. Nothing changed."""


class MembershipError(RaftError):
    """A membership change was refused; the configuration is unchanged."""


class ChangeInProgress(MembershipError):
    """Another change is not committed yet, or the leader has not yet committed
    an entry of its own term (Raft thesis §4.1's fix): retry shortly."""


class UnknownMember(MembershipError):
    """No member has that id (or, for a promotion, no learner does)."""


class MemberExists(MembershipError):
    """A member with that id already exists (ids name one incarnation: a
    re-admitted node needs a fresh one)."""


class NotCaughtUp(MembershipError):
    """The learner to promote does not hold every committed entry yet (or is
    not receiving entries normally): promoting it now could leave the new
    configuration without a quorum that can make progress (thesis §4.2.1)."""


class LastVoter(MembershipError):
    """The change would leave the configuration without a voter."""


class InvalidChange(MembershipError):
    """The change is malformed (bad id, too many members, a leader transfer
    in progress, ...)."""
