"""Membership changes: what one change does to a configuration, and when it is refused.

trioraft uses *single-server* changes (Raft thesis §4.1): each change adds or
removes at most one voter, so any majority of the old voters and any majority
of the new ones overlap -- two leaders can never be elected in one term by
disjoint quorums of the two configurations, which is what keeps Election
Safety and Leader Completeness across a change. The three changes:

- ADD_LEARNER: a new member that receives the log and snapshots but neither
  votes nor counts in any quorum (no voter changes at all);
- PROMOTE: a learner becomes a voter (one voter added);
- REMOVE: a voter or learner leaves (at most one voter removed).

The overlap argument only holds between *adjacent* configurations, so the
leader enforces (in `RaftCore.propose_change`):

1. one change at a time: no change is proposed while the previous CONFIG
   entry is uncommitted (otherwise two changes in flight could be two voters
   apart, and their quorums could be disjoint);
2. the leader has committed an entry of its own term first (the fix Ongaro
   posted to raft-dev in 2015 for single-server changes): until then an
   uncommitted CONFIG entry of an earlier leader may still be in some logs,
   and a change built on our (different) latest configuration could again be
   two voters away from it.

A change never leaves a configuration without a voter. Member ids name one
incarnation (PLAN.md): adding an id that is already a member is refused; a
node that lost its disk is re-admitted under a fresh id.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from trioraft.core._errors import InvalidChange, LastVoter, MemberExists, UnknownMember
from trioraft.core._types import MAX_MEMBER_ID_LEN, MAX_MEMBERS, Configuration, Member

__all__ = ["ChangeKind", "ConfChange", "apply_change"]


class ChangeKind(enum.Enum):
    ADD_LEARNER = "add_learner"
    PROMOTE = "promote"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class ConfChange:
    kind: ChangeKind
    member: Member  # ADD_LEARNER: the new member; otherwise only its id is used

    @classmethod
    def add_learner(cls, member: Member) -> ConfChange:
        return cls(ChangeKind.ADD_LEARNER, member)

    @classmethod
    def promote(cls, member_id: str) -> ConfChange:
        return cls(ChangeKind.PROMOTE, Member(member_id))

    @classmethod
    def remove(cls, member_id: str) -> ConfChange:
        return cls(ChangeKind.REMOVE, Member(member_id))


def apply_change(config: Configuration, change: ConfChange) -> Configuration:
    """The configuration after `change`; raises a MembershipError if refused."""
    mid = change.member.id
    if not isinstance(mid, str) or not mid or len(mid) > MAX_MEMBER_ID_LEN:
        raise InvalidChange("a member id is a non-empty string of at most "
                            f"{MAX_MEMBER_ID_LEN} characters")
    current = config.get(mid)
    if change.kind is ChangeKind.ADD_LEARNER:
        if current is not None:
            raise MemberExists(f"{mid!r} is already a member (re-admit under a fresh id)")
        if len(config.members) >= MAX_MEMBERS:
            raise InvalidChange(f"a configuration has at most {MAX_MEMBERS} members")
        m = change.member
        return Configuration.of([*config.members, Member(mid, False, m.name, m.url)])
    if current is None:
        raise UnknownMember(f"{mid!r} is not a member")
    others = [m for m in config.members if m.id != mid]
    if change.kind is ChangeKind.PROMOTE:
        if current.voter:
            raise UnknownMember(f"{mid!r} is not a learner (it already votes)")
        return Configuration.of([*others, Member(mid, True, current.name, current.url)])
    if not any(m.voter for m in others):
        raise LastVoter(f"removing {mid!r} would leave no voter")
    return Configuration.of(others)
