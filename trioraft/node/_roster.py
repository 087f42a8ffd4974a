"""Who is who: names <-> member ids <-> URLs, through the configurations a node knows.

The core knows only member ids (one per incarnation, PLAN.md "Member ids and
identity"); operators, `/status`, `X-Raft-Leader` and the course routes use
names. This is the one place that maps between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trioraft.core import Configuration, Member
from trioraft.storage import LEGACY_CLUSTER_ID

__all__ = ["NodeIdentity", "Roster"]


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """Who this node is in its cluster (decided at start-up, see trioraft.bootstrap).

    `static_voters` is the configuration used when the stored log holds
    none at all: a legacy data dir (written before identities; its voters
    are the --peer set, member id = name). Empty for everyone else: a
    bootstrapped member's log starts with a CONFIG entry, and a joiner must
    never think itself a voter before a committed change makes it one.
    """

    member_id: str
    name: str
    cluster_id: str = LEGACY_CLUSTER_ID
    static_voters: frozenset[str] = frozenset()
    # A node being admitted: the configuration of the cluster it joins, as
    # a member reported it (whom to accept streams from before our own log
    # names them). Empty for members.
    seed: Configuration = field(default_factory=Configuration)


class Roster:
    """Names <-> member ids <-> URLs, through the configurations this node knows.

    `flag_urls` (name -> URL, from --peer and --advertise) override a
    configuration's URL for *dialing* from this node: an operator may reach
    a member under another address than the one it advertised (a proxy, a
    container network). Authentication never depends on the URL: the
    stream handshake binds (cluster id, member id).
    """

    def __init__(self, identity: NodeIdentity, flag_urls: dict[str, str]) -> None:
        self.identity = identity
        self.flag_urls = dict(flag_urls)
        self.latest = Configuration()  # the latest in our log (in force)
        self.seed = identity.seed
        self.committed = Configuration()  # the latest committed (applied) one
        self.committed_index = 0
        # Some *committed* configuration had our member id (then one without it
        # means we were removed; an appended, uncommitted one proves nothing).
        self.was_member = False

    @property
    def member_id(self) -> str:
        return self.identity.member_id

    def _members(self) -> list[Member]:
        """Latest first, then the seed's and the committed configuration's others."""
        out = list(self.latest.members)
        seen = {m.id for m in out}
        for m in (*self.seed.members, *self.committed.members):
            if m.id not in seen:
                seen.add(m.id)
                out.append(m)
        return out

    def member(self, member_id: str) -> Member | None:
        for m in self._members():
            if m.id == member_id:
                return m
        return None

    def name_of(self, member_id: str | None) -> str | None:
        if member_id is None:
            return None
        m = self.member(member_id)
        return m.display_name if m is not None else member_id

    def id_of(self, name: str) -> str | None:
        """The member id of the member named `name` in the latest configuration."""
        for m in self.latest.members:
            if m.display_name == name:
                return m.id
        for m in self.seed.members:
            if m.display_name == name:
                return m.id
        return None

    def url_of(self, member_id: str | None) -> str | None:
        if member_id is None:
            return None
        m = self.member(member_id)
        name = m.display_name if m is not None else member_id
        if name in self.flag_urls:
            return self.flag_urls[name]
        if m is not None and m.url:
            return m.url
        return None

    def may_speak_as(self, name: str, member_id: str) -> bool:
        """May a peer authenticated as node `name` (a certificate) act as `member_id`?

        Yes if a configuration we know gives `member_id` that name; a member
        id no configuration names yet only under its own name (initial and
        legacy members, whose ids are their names).
        """
        m = self.member(member_id)
        if m is not None:
            return m.display_name == name
        return member_id == name

    def peers(self, pending: list[Configuration] | None = None) -> dict[str, str]:
        """member id -> URL of every member we must talk to (not us).

        The members of the latest configuration, and of every configuration
        between the committed one and it (`pending`): an uncommitted change
        may yet be overwritten by a leader it removed, and we must accept that
        leader's stream to receive the entries that overwrite it. A node being
        admitted also talks to the members of the seed that names it. Never
        our own old incarnation (a member with our name and another id: it is
        the one we replace, and its URL is ours).
        """
        members = list(self.latest.members)
        for cfg in pending or ():
            members += cfg.members
        if self.member_id not in self.latest.ids and self.member_id in self.seed.ids:
            # Being admitted: the seed (a configuration naming us) says who
            # will replicate to us before our own log does.
            members += self.seed.members
        me = self.identity.name
        out: dict[str, str] = {}
        for m in members:
            if m.id == self.member_id or m.id in out or m.display_name == me:
                continue
            url = self.flag_urls.get(m.display_name) or m.url
            if url:
                out[m.id] = url
        return out


