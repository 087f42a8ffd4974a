"""Membership in the runtime: who is who, where they are, and changing it safely.

The core knows only **member ids** (one id per *incarnation* of a node, see
PLAN.md "Member ids and identity"); operators, API.md's `/status` keys,
`X-Raft-Leader` and the course routes use **names** (`node1`). This module
is the one place that maps between them, always through a configuration
(the log's, never a flag): `name_of(member_id)`, `id_of(name)`,
`url_of(member_id)`, and `may_speak_as(name, member_id)` (what a peer
certificate naming node N may claim to be).

(The mapping itself is `_roster.Roster`.) This module makes the runtime
follow the configuration:

- the transport's peers are the members of the latest configuration in the
  log (it takes effect when appended, thesis §4.1) and of every
  configuration since the committed one (an uncommitted change can be
  overwritten by a leader it removed: we must still hear that leader), plus,
  for a node being admitted, the members of the cluster configuration that
  names it (`seed`); `sync()` runs after every Ready;
- a configuration that *commits* without this node's member id, after one
  that had it, means the node was removed: `removed` is set, with a log line
  that says what to do, and the server stops the node (a removed leader has
  stepped down already: the core does that when its removal commits);
- changes are proposed one at a time through the driver and answered
  definitely (`RaftNode.propose_change`): refused (a `MembershipError`,
  `NotLeader`: nothing changed), committed (the entry applied with our
  term), dropped (another leader's entry took its index: it never applies),
  or unknown (504) when it did not commit in time.

**Re-admission** (a node whose disk was wiped comes back empty under its old
name and a fresh member id; `readmit`) is three single-server changes, each
committed by the quorum of the configuration it changes: remove the old
member id, add the new one as a learner, promote it once it is caught up.
The wiped node never votes or counts before its promotion commits, under a
member id no earlier promise was made with, so the cluster never depends on
an incarnation that forgot what it promised; it is promoted once it keeps up
(`RaftCore.promotable`: every committed entry, or at most one message behind
while it acknowledges), which is availability, not safety.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from trioraft.core import (
    ConfChange,
    Configuration,
    EntryKind,
    InvalidChange,
    Member,
    MemberExists,
    NotLeader,
    RaftCore,
    Role,
    TransferRefused,
    UnknownMember,
)
from trioraft.node._roster import NodeIdentity, Roster
from trioraft.transport import Transport

__all__ = ["MembershipOps", "NameTaken", "NodeIdentity", "Removed", "Roster"]

log = logging.getLogger("trioraft.membership")


@dataclass(frozen=True, slots=True)
class Removed:
    """This node's member id left the committed configuration."""

    member_id: str
    name: str
    cluster_id: str
    index: int  # of the committed configuration without us

    def message(self) -> str:
        return (
            f"member {self.member_id} ({self.name}) was removed from cluster "
            f"{self.cluster_id} (the configuration committed at index {self.index} no "
            "longer has it); this node stops. Its data dir can no longer be used: to bring "
            f"{self.name} back, empty its data dir and start it again (it is re-admitted "
            f"automatically while the name {self.name} is a member, otherwise add it with "
            f"`trioraft member add {self.name} URL`)"
        )


class NameTaken(MemberExists):
    """Another member already has that name (names are unique in a configuration)."""


class _Ops(Protocol):
    """What MembershipOps needs of the node (RaftNode provides it)."""

    @property
    def core(self) -> RaftCore | None: ...

    @property
    def is_leader(self) -> bool: ...

    async def propose_change(self, change: ConfChange, timeout: float) -> int: ...

    async def transfer_to(self, member_id: str | None, timeout: float) -> str | None: ...


class MembershipOps:
    """The node's membership: the roster, the transport's peers, removal, and changes."""

    def __init__(
        self,
        identity: NodeIdentity,
        flag_urls: dict[str, str],
        transport: Transport,
        ops: _Ops,
        *,
        election_max: float,
    ) -> None:
        self.roster = Roster(identity, flag_urls)
        self._transport = transport
        self._ops = ops
        self._election_max = election_max
        self._peers: dict[str, str] = {}
        self.removed: Removed | None = None
        self.removed_event = trio.Event()
        self._readmitting: str | None = None  # name being re-admitted by this leader
        self.readmissions = 0
        self.last_change: dict[str, Any] | None = None  # for /status
        # Called (member id, url) when this leader's removal of a member
        # committed: the server tells that node to check its membership now.
        self.on_removed: Callable[[str, str], None] = lambda member_id, url: None
        # Set when a peer hints that our membership may have changed: the
        # server's watcher checks it at once (the hint itself proves nothing).
        self.check_now = trio.Event()
        self._dirty = True  # re-sync the transport's peers on the next Ready

    @property
    def identity(self) -> NodeIdentity:
        return self.roster.identity

    def set_identity(self, identity: NodeIdentity) -> None:
        self.roster.identity = identity
        self.roster.seed = identity.seed

    def peer_name(self, member_id: str) -> str | None:
        """The name a peer's TLS certificate must hold to speak as `member_id`
        (trioraft.tls.identity_error): the name a configuration we know gives
        it; an id no configuration names yet is only its own name (initial and
        legacy members, whose ids are their names) -- `Roster.may_speak_as`."""
        return self.roster.name_of(member_id)

    # ================================================ following the configuration
    def sync(self, core: RaftCore) -> None:
        """After each Ready (driver task): the transport's peers follow the latest
        configuration in the log. Cheap when nothing changed (an identity check)."""
        cfg = core.configuration
        r = self.roster
        if cfg is r.latest and not self._dirty:
            return
        self._dirty = False
        r.latest = cfg
        if r.member_id in cfg.ids and r.seed.members:
            r.seed = Configuration()  # our own log names us now
        want = r.peers([r.committed, *self._configs_after(core, r.committed_index)])
        for pid in sorted(set(self._peers) - set(want)):
            self._transport.remove_peer(pid)
            log.info("node=%s no longer a peer: %s", r.member_id, pid)
        for pid, url in sorted(want.items()):
            if self._peers.get(pid) != url:
                self._transport.add_peer(pid, url)
                log.info("node=%s peer %s (%s) at %s", r.member_id, pid, r.name_of(pid), url)
        self._peers = want

    @staticmethod
    def _configs_after(core: RaftCore, index: int) -> list[Configuration]:
        """The configurations of the CONFIG entries after `index` in the log (at
        most one change is uncommitted at a time, so these are few)."""
        out = []
        lo = max(index, core.log.snapshot.index) + 1
        for e in core.log.slice(lo, core.log.last_index() + 1):
            if e.kind is EntryKind.CONFIG:
                try:
                    out.append(Configuration.decode(e.data))
                except ValueError:
                    continue
        return out

    def learn_seed(self, seed: Configuration) -> None:
        """A node being admitted: a member reported a configuration naming us."""
        r = self.roster
        if r.member_id in seed.ids and r.member_id not in r.latest.ids and seed != r.seed:
            r.seed = seed
            self._dirty = True

    def applied(self, index: int, cfg: Configuration) -> None:
        """A configuration committed (its entry applied, or a snapshot installed)."""
        r = self.roster
        if index < r.committed_index:
            return
        if cfg != r.committed:
            self._dirty = True  # peers() covers the committed configuration too
        r.committed, r.committed_index = cfg, index
        me = r.member_id
        if me in cfg.ids:
            r.was_member = True
        elif r.was_member and self.removed is None:
            self.mark_removed(index)

    def peer_committed(self, index: int, cfg: Configuration) -> None:
        """A member of our cluster reported its committed configuration (the
        server's watcher asks when we have no leader, or a leader hints). Newer
        than ours and without our member id, after one that had it: we were
        removed (a committed configuration is final), though the leader no
        longer replicates to us to tell us so."""
        r = self.roster
        if r.was_member and index > r.committed_index and cfg.members and (
            r.member_id not in cfg.ids
        ):
            self.mark_removed(index)

    def mark_removed(self, index: int) -> None:
        if self.removed is not None:
            return
        ident = self.identity
        self.removed = Removed(ident.member_id, ident.name, ident.cluster_id, index)
        log.warning("node=%s %s", ident.member_id, self.removed.message())
        self.removed_event.set()

    # ======================================================== operator changes
    def _leader_core(self) -> RaftCore:
        core = self._ops.core
        if core is None or core.role is not Role.LEADER:
            raise NotLeader(core.leader_id if core is not None else None)
        return core

    async def add_learner(self, name: str, member_id: str, url: str, timeout: float) -> int:
        """Propose a new learner (leader only). Names are unique: a name in use is refused."""
        core = self._leader_core()
        cfg = core.configuration
        if not member_id or not name:
            raise InvalidChange("a member needs a name and a member id")
        existing = self.roster.id_of(name)
        if existing is not None and existing != member_id and existing in cfg.ids:
            raise NameTaken(
                f"{name!r} is already a member (member id {existing}); remove it first, or "
                "start the node with an empty data dir to have it re-admitted"
            )
        member = Member(member_id, False, name, url)
        index = await self._ops.propose_change(ConfChange.add_learner(member), timeout)
        self._note("add_learner", name, member_id, index)
        return index

    async def promote(self, name: str, timeout: float) -> int:
        member_id = self._id_or_raise(name)
        index = await self._ops.propose_change(ConfChange.promote(member_id), timeout)
        self._note("promote", name, member_id, index)
        return index

    async def remove(self, name: str, timeout: float) -> int:
        """Remove a member. Removing ourselves while we lead hands leadership to a
        caught-up voter first and raises NotLeader(new leader): the caller relays
        the removal to it, so the cluster never waits out an election timeout."""
        member_id = self._id_or_raise(name)
        core = self._leader_core()
        if member_id == core.id and len(core.voters - {core.id}) > 0:
            try:
                new = await self._ops.transfer_to(None, timeout)
            except TransferRefused:
                new = None  # nobody caught up right now: the core's own way, below
            if new is not None and new != core.id:
                raise NotLeader(new)
        # (If we still lead: the core commits our removal without counting us,
        # then steps down, thesis §4.2.2.)
        return await self.remove_by_id(name, member_id, timeout)

    def _id_or_raise(self, name: str) -> str:
        member_id = self.roster.id_of(name)
        if member_id is None or member_id not in self.roster.latest.ids:
            raise UnknownMember(f"no member is named {name!r}")
        return member_id

    def _note(self, kind: str, name: str, member_id: str, index: int) -> None:
        self.last_change = {"kind": kind, "name": name, "member_id": member_id, "index": index}
        log.info("node=%s membership change committed: %s %s (member id %s) at index %d",
                 self.roster.member_id, kind, name, member_id, index)  # fmt: skip

    async def wait_caught_up(self, member_id: str, timeout: float) -> bool:
        """Leader only: wait until learner `member_id` may be promoted (`RaftCore.promotable`:
        it holds the committed entries, or trails them by one message while acking)."""
        with trio.move_on_after(timeout):
            while True:
                core = self._leader_core()
                if core.promotable(member_id):
                    return True
                await trio.sleep(min(0.05, self._election_max / 4))
        return False

    # ============================================================ re-admission
    async def readmit(
        self, name: str, member_id: str, url: str, timeout: float, spawn: Callable[..., None],
        replaces: str | None = None,
    ) -> str:
        """A node that lost its disk asks to come back under `member_id` (leader only).

        Returns what happens now: "started" (the steps run in the background),
        "in_progress", "learner" (added, waiting to be caught up), or "voter"
        (done). Refuses (MembershipError, nothing changed) when `name` is no
        member's name (a new name needs the operator) or when the member under
        that name is alive (two processes claim one name: a misconfiguration,
        never a wiped disk) or is this leader.
        """
        core = self._leader_core()
        cfg = core.configuration
        current = cfg.get(member_id)
        if current is not None and current.voter:
            return "voter"
        old = self.roster.id_of(name)
        if current is None and old is None and replaces is not None and replaces not in cfg.ids:
            # A re-admission interrupted after its first step: the old member id
            # (`replaces`, which the node saw when it first asked) is removed
            # already, the new one not yet added. Carry on with the other two
            # steps (seed 7 of the membership chaos campaign: a partition
            # stopped the steps after the removal, which then committed).
            # Safe as any addition: the new member id is fresh, it counts only
            # once its promotion commits.
            pass
        elif current is None:
            if old is None or old not in cfg.ids:
                raise UnknownMember(
                    f"{name!r} is not a member: a new node is added by the operator "
                    f"(`trioraft member add {name} URL`)"
                )
            if old == core.id:
                raise InvalidChange(f"{name!r} is this leader: it cannot have lost its disk")
            pr = core.progress.get(old)
            if pr is not None and pr.recent_active:
                raise InvalidChange(
                    f"the member {old} named {name!r} is alive (it answered within the last "
                    "election timeout): two nodes claim that name; refusing to replace it"
                )
        if self._readmitting is not None:
            return "in_progress"
        self._readmitting = name
        spawn(self._readmit_steps, name, member_id, url, old, timeout)
        return "started" if current is None else "learner"

    async def _readmit_steps(
        self, name: str, member_id: str, url: str, old: str | None, timeout: float
    ) -> None:
        """remove old -> add learner -> promote once caught up; each step committed.

        Stops (leaving the configuration as the last committed step made it)
        if we lose leadership or a step is refused; the node asks again, and
        the next leader carries on from where the configuration stands.
        """
        try:
            core = self._leader_core()
            if old is not None and old in core.configuration.ids and old != member_id:
                log.info("node=%s re-admitting %s: removing its old member id %s",
                         core.id, name, old)  # fmt: skip
                await self._with_retry(lambda: self.remove_by_id(name, old, timeout))
            core = self._leader_core()
            if core.configuration.get(member_id) is None:
                log.info("node=%s re-admitting %s: adding member id %s as a learner",
                         core.id, name, member_id)  # fmt: skip
                await self._with_retry(lambda: self.add_learner(name, member_id, url, timeout))
            log.info("node=%s re-admitting %s: waiting until %s is caught up", core.id, name,
                     member_id)  # fmt: skip
            deadline = trio.current_time() + max(timeout, 600.0)
            while not await self.wait_caught_up(member_id, 1.0):
                if trio.current_time() > deadline:
                    log.warning("node=%s re-admitting %s: %s did not catch up; it will ask "
                                "again", core.id, name, member_id)  # fmt: skip
                    return
            m = self._leader_core().configuration.get(member_id)
            if m is not None and not m.voter:
                await self._with_retry(lambda: self.promote(name, timeout))
            self.readmissions += 1
            log.info("node=%s re-admitted %s as member id %s (voter)", core.id, name, member_id)
        except (NotLeader, Exception) as exc:  # a refused or interrupted step: it asks again
            log.info("node=%s re-admission of %s stopped: %s", self.roster.member_id, name, exc)
        finally:
            self._readmitting = None

    async def remove_by_id(self, name: str, member_id: str, timeout: float) -> int:
        url = self.roster.url_of(member_id)
        index = await self._ops.propose_change(ConfChange.remove(member_id), timeout)
        self._note("remove", name, member_id, index)
        if url is not None and member_id != self.roster.member_id:
            self.on_removed(member_id, url)
        return index

    async def _with_retry(self, step: Callable[[], Any]) -> None:
        """Run a change; a ChangeInProgress (the previous change or our no-op is
        not committed yet) is retried shortly, anything else propagates."""
        from trioraft.core import ChangeInProgress

        for _ in range(200):
            try:
                await step()
                return
            except ChangeInProgress:
                await trio.sleep(0.05)
        raise TimeoutError("a membership change stayed in progress for too long")

    # ================================================================ status
    def members_json(self, core: RaftCore | None) -> dict[str, dict[str, Any]]:
        """/status "members": keyed by name, API.md's url and voter, plus member_id."""
        out: dict[str, dict[str, Any]] = {}
        cfg = core.configuration if core is not None else self.roster.latest
        for m in cfg.members:
            out[m.display_name] = {"url": self.roster.url_of(m.id) or m.url, "voter": m.voter,
                                   "member_id": m.id}  # fmt: skip
        return dict(sorted(out.items()))
