"""The Raft state machine itself: roles, terms, votes, replication, commit, ReadIndex.

Inputs:
- `step(msg, now)`: a message from a peer. Total: whatever a peer sends, the
  core never raises or asserts (see `_validate` and the rules in `step`);
- `handle_timeout(now)` when `deadline` has passed;
- `propose(datas)`, `read_index(ctx)`, `transfer_leadership(target)`,
  `propose_change(change)` (membership, see `_changes`), `retire()`;
- `report_snapshot(peer, ok)`: the runtime's transfer of a snapshot to `peer`
  failed (ok=False) or sent its last chunk (ok=True);
- `snapshot_meta(index)` / `snapshot_taken(meta)`: log compaction, below.

Outputs: `ready()` returns a `Ready` batch; the caller must, in this order,
0. (optionally at once) send `ready.early_messages`,
1. persist `ready.hard_state`, `ready.snapshot` and `ready.entries` (fsync),
2. send `ready.messages`,
3. apply `ready.committed`, answer `ready.read_states`,
4. call `advance(ready)`.
Nothing in a Ready may be acted on out of that order: the messages include
vote grants and append acknowledgements that promise the data is durable.

Snapshots and compaction (the catch-up tail, PLAN.md):
1. when the runtime decides to snapshot at applied index i, it asks
   `meta = core.snapshot_meta(i)` (index, term and the configuration in
   force at i -- not the latest, possibly uncommitted, one);
2. it encodes and durably writes the snapshot with that meta;
3. it calls `point = core.snapshot_taken(meta)`. The core records `meta` as
   its newest snapshot (the one it sends to followers that need compacted
   entries) and drops entries up to `meta.index -
   CoreConfig.snapshot_catchup_entries`. It returns the compaction point
   (index, term): the runtime then compacts stable storage up to it (any
   time later; a crash in between just keeps more entries).
4. at restart, pass the newest snapshot's meta as `snapshot`, the stored
   entries, and the stored compaction point as `compacted`: the entries
   start right after it. (`compacted=None` means the snapshot's own point.)
`compact(index)` is the older one-call form of 1 + 3.

The rules of Figure 2 of the Raft paper are cited where they are enforced.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from trioraft.core._changes import ChangeKind, ConfChange, apply_change
from trioraft.core._config import CoreConfig, Role
from trioraft.core._election import ElectionMixin
from trioraft.core._errors import (
    ChangeInProgress,
    NotCaughtUp,
    NotLeader,
    ProposalDropped,
)
from trioraft.core._follower import FollowerMixin
from trioraft.core._leader import LeaderMixin
from trioraft.core._log import RaftLog
from trioraft.core._membership import ConfigHistory
from trioraft.core._progress import Progress
from trioraft.core._reads import ReadsMixin, _Forwarded, _ReadRound
from trioraft.core._types import (
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    SnapshotMeta,
    TimeoutNow,
)
from trioraft.core._validate import config_of, message_ok

__all__ = ["CoreConfig", "RaftCore", "Ready", "Role"]


@dataclass(slots=True)
class Ready:
    hard_state: HardState | None = None
    snapshot: SnapshotMeta | None = None  # received from the leader: install it
    snapshot_keep_entries: bool = False
    entries: list[Entry] = field(default_factory=list)  # may overwrite a stored suffix
    # May be sent before (or while) this Ready is persisted: a leader's
    # AppendEntries and InstallSnapshot for a term already on disk.
    early_messages: list[Message] = field(default_factory=list)
    # Must be sent only after this Ready is persisted: they include vote
    # grants and append acknowledgements that promise durability.
    messages: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    read_states: list[tuple[int, int]] = field(default_factory=list)  # (ctx, index or -1)

    def __bool__(self) -> bool:
        return bool(
            self.hard_state is not None
            or self.snapshot is not None
            or self.entries
            or self.early_messages
            or self.messages
            or self.committed
            or self.read_states
        )


class RaftCore(ElectionMixin, FollowerMixin, LeaderMixin, ReadsMixin):
    def __init__(
        self,
        config: CoreConfig,
        rng: random.Random,
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
        now: float = 0.0,
        compacted: tuple[int, int] | None = None,
    ) -> None:
        """Start from stable storage. Raises ValueError if it does not fit together."""
        self.config = config
        self.id = config.id
        self._rng = rng
        hs = hard_state or HardState()
        snap = snapshot or SnapshotMeta()
        self.term = hs.term  # current_term: never decreases
        self.vote = hs.vote  # voted_for in `term`: at most one grant per term
        self.log = RaftLog(snap, list(entries), hs.commit, compacted)
        # A snapshot's membership overrides the bootstrap set in the config;
        # CONFIG entries after the snapshot override both (§4.1: in force
        # once appended).
        base = snap.config if snap.config.members else Configuration.of_voters(config.voters)
        self._configs = ConfigHistory(snap.index, base)
        for e in self.log.entries:
            if e.index > snap.index and e.kind is EntryKind.CONFIG:
                cfg = config_of(e)
                if cfg is None:
                    raise ValueError(f"stored CONFIG entry {e.index} is malformed")
                self._configs.append(e.index, cfg)
        self.voters: frozenset[str] = self.configuration.voters
        self.role = Role.FOLLOWER
        self.leader_id: str | None = None
        self.progress: dict[str, Progress] = {}
        self._now = now
        self._votes: dict[str, bool] = {}
        self._msgs: list[Message] = []
        self._read_states: list[tuple[int, int]] = []
        self._pending_snapshot: tuple[SnapshotMeta, bool] | None = None
        self._persisted_hs = HardState(self.term, self.vote, self.log.committed)
        # Leader-only state.
        self._heartbeat_due = 0.0
        self._check_quorum_due = 0.0
        self._broadcast = False  # new entries or commit to tell followers about
        self._read_seq = 0
        # Reads until our no-op commits: (src or None, ctx, deadline).
        self._reads_waiting_commit: list[tuple[str | None, int, float]] = []
        self._reads_new: list[tuple[str | None, int, float]] = []  # need a heartbeat round
        self._read_rounds: list[_ReadRound] = []
        self._transfer_target: str | None = None
        self._transfer_deadline = 0.0
        # Follower-only: reads forwarded to the leader, failed if the leader
        # or term changes, or when they time out (a lost request or answer).
        self._forwarded: dict[int, _Forwarded] = {}
        self._forwarded_new: list[int] = []  # not yet sent
        self._leader_contact = -1e9  # when we last heard from the current leader
        self._retired = False  # shutting down: never campaign again
        self._election_deadline = 0.0
        self._reset_election_timer()
        if self.id not in self.voters:
            self.role = Role.LEARNER

    # ================================================================ queries
    @property
    def configuration(self) -> Configuration:
        """The latest configuration in the log (in force, committed or not)."""
        return self._configs.current

    @property
    def deadline(self) -> float:
        """When `handle_timeout` must next be called."""
        if self.role is Role.LEADER:
            return min(self._heartbeat_due, self._check_quorum_due)
        d = self._election_deadline
        if self._forwarded:
            d = min(d, next(iter(self._forwarded.values())).deadline)
        return d

    @property
    def commit_index(self) -> int:
        return self.log.committed

    @property
    def applied_index(self) -> int:
        return self.log.applied

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _hard_state_must_sync(self) -> bool:
        """Term and vote must be durable before we answer anyone (Figure 2).

        The commit index is only a recovery hint (a restarted node learns it
        again from the leader), so a change of commit alone never costs an
        fsync: it rides along with the next write of entries, term or vote.
        """
        p = self._persisted_hs
        return self.term != p.term or self.vote != p.vote

    def has_ready(self) -> bool:
        return bool(
            self._msgs
            or self._forwarded_new
            or self._read_states
            or self._pending_snapshot is not None
            or self._hard_state_must_sync()
            or self.log.unstable_from <= self.log.last_index()
            or self.log.committed > self.log.applied
            or (self.role is Role.LEADER and (self._broadcast or self._reads_new))
        )

    # ============================================================ role changes
    def _reset_election_timer(self) -> None:
        lo, hi = self.config.election_timeout
        self._election_deadline = self._now + lo + self._rng.random() * (hi - lo)

    def _become_follower(self, term: int, leader: str | None) -> None:
        changed_term = term > self.term
        if changed_term:
            # Figure 2, all servers: a higher term makes us a follower of that
            # term, and our vote (if any) belonged to the old term.
            self.term = term
            self.vote = None
        was_leader = self.role is Role.LEADER
        self.role = Role.FOLLOWER if self.id in self.voters else Role.LEARNER
        if leader != self.leader_id or was_leader or changed_term:
            self._fail_reads()
        self.leader_id = leader
        self.progress = {}
        self._transfer_target = None
        self._reset_election_timer()

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader_id = self.id
        self._leader_contact = self._now
        last = self.log.last_index()
        # Every member but us, learners included: they receive the log too.
        self.progress = {p: Progress(last + 1) for p in sorted(self.configuration.ids - {self.id})}
        self._heartbeat_due = self._now  # announce ourselves at once
        self._check_quorum_due = self._now + self.config.election_timeout[0]
        self._read_seq = 0
        # §5.4.2 / §8: a leader cannot know which earlier-term entries are
        # committed until it commits one of its own term, so it appends a
        # no-op right away (this also unblocks ReadIndex and, §4.1's fix,
        # membership changes).
        self.log.append([Entry(last + 1, self.term, EntryKind.NOOP)])
        self._broadcast = True
        self._maybe_commit()

    def _config_changed(self) -> None:
        """The latest configuration in the log changed (appended, truncated, installed)."""
        cfg = self.configuration
        self.voters = cfg.voters
        if self.role is Role.LEADER:
            last = self.log.last_index()
            for p in cfg.ids - {self.id}:
                if p not in self.progress:
                    self.progress[p] = Progress(last + 1)
            for p in list(self.progress):
                if p not in cfg.ids:
                    del self.progress[p]
            if self._transfer_target is not None and self._transfer_target not in self.voters:
                self._transfer_target = None
        elif self.id not in self.voters:
            self.role = Role.LEARNER  # a (pre)candidate that lost its vote stops here
        elif self.role is Role.LEARNER:
            self.role = Role.FOLLOWER

    # ================================================================= inputs
    def handle_timeout(self, now: float) -> None:
        self._now = now
        self._expire_reads()
        if self.role is Role.LEADER:
            if now >= self._check_quorum_due:
                self._check_quorum_due = now + self.config.election_timeout[0]
                if not self._check_quorum():
                    return
            if self._transfer_target is not None and now >= self._transfer_deadline:
                self._transfer_target = None
            if now >= self._heartbeat_due:
                self._heartbeat_due = now + self.config.heartbeat_interval
                self._heartbeat()
        elif now >= self._election_deadline:
            if self.role is Role.LEARNER or self._retired:
                self._reset_election_timer()
                return
            self._campaign(pre_vote=self.config.pre_vote)

    def propose(self, datas: Sequence[bytes]) -> tuple[int, int]:
        """Append client commands; returns (first index, term). Leader only."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self._transfer_target is not None:
            raise ProposalDropped("leadership transfer in progress")
        return self._append_own([(EntryKind.NORMAL, d) for d in datas])

    def _append_own(self, items: Sequence[tuple[EntryKind, bytes]]) -> tuple[int, int]:
        first = self.log.last_index() + 1
        self.log.append(
            [Entry(first + i, self.term, kind, d) for i, (kind, d) in enumerate(items)]
        )
        self._broadcast = True
        self._maybe_commit()  # a single voter commits on its own (once persisted)
        return first, self.term

    def propose_change(self, change: ConfChange) -> tuple[int, int]:
        """Append a membership change; returns (index, term). Leader only.

        It takes effect at once (thesis §4.1: a configuration is used as soon
        as it is appended) and is final once committed; if another leader
        overwrites the entry, the configuration rolls back with it. Raises
        NotLeader, ChangeInProgress (a change is uncommitted, the leader has
        not yet committed an entry of its term, or a leadership transfer is
        under way), NotCaughtUp (a promotion of a learner that is not
        `promotable`), or the refusals of `apply_change` (UnknownMember,
        MemberExists, LastVoter, InvalidChange). A refused change changed
        nothing. See `_changes` for the safety argument.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self._transfer_target is not None:
            raise ChangeInProgress("a leadership transfer is in progress")
        if not self._committed_in_term() and "change_before_commit" not in self.config.unsafe:
            # Rule 2 of _changes: wait for our no-op to commit.
            raise ChangeInProgress("the leader has not yet committed an entry of its term")
        if (
            self._configs.current_index > self.log.committed
            and "two_changes" not in self.config.unsafe
        ):
            # Rule 1 of _changes: one change at a time.
            raise ChangeInProgress("the previous membership change is not committed yet")
        new = apply_change(self.configuration, change)
        if change.kind is ChangeKind.PROMOTE and not self.promotable(change.member.id):
            # Availability, not safety: a voter that cannot vote yet (it may
            # not even know the configuration) counts against the quorum.
            raise NotCaughtUp(f"{change.member.id!r} is not caught up yet")
        index, term = self._append_own([(EntryKind.CONFIG, new.encode())])
        self._configs.append(index, new)
        self._config_changed()
        self._maybe_commit()  # e.g. removing a lagging voter may commit at once
        return index, term

    def change_committed(self) -> bool:
        """Whether the latest configuration is committed (no change in flight)."""
        return self._configs.current_index <= self.log.committed

    def retire(self) -> None:
        """Stop campaigning (the node is shutting down); it still follows and votes."""
        self._retired = True

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """The meta of a snapshot of the state machine at applied `index`.

        Its configuration is the one in force at `index` (not a later,
        possibly uncommitted, one). Raises ValueError if `index` is not an
        applied index the log still describes.
        """
        term = self.log.term_at(index)
        if index > self.log.applied or index < self.log.snapshot.index or term is None:
            raise ValueError(f"no snapshot can be taken at {index}")
        return SnapshotMeta(index, term, self._configs.at(index))

    def snapshot_taken(self, meta: SnapshotMeta) -> tuple[int, int]:
        """A snapshot `meta` (from `snapshot_meta`) is durable. Returns the
        compaction point (index, term) stable storage may now compact to.

        A snapshot not newer than the current one (e.g. overtaken by one
        installed from the leader meanwhile) changes nothing.
        """
        log = self.log
        if meta.index > log.snapshot.index:
            if meta.index > log.applied or log.term_at(meta.index) != meta.term:
                raise ValueError(f"snapshot {meta.index}/{meta.term} does not match the log")
            self._configs.compact_to(meta.index)
        return log.snapshot_taken(meta, self.config.snapshot_catchup_entries)

    def compact(self, index: int) -> tuple[int, int]:
        """`snapshot_taken(snapshot_meta(index))` in one call."""
        if index <= self.log.snapshot.index:
            return self.log.offset, self.log.offset_term
        return self.snapshot_taken(self.snapshot_meta(index))

    # ============================================================== messages
    def step(self, msg: Message, now: float) -> None:
        """Take one message from a peer. Never raises, whatever it holds."""
        self._now = now
        if not message_ok(msg) or msg.dst != self.id or msg.src == self.id:
            return
        if not self._sender_allowed(msg):
            return
        if isinstance(msg, TimeoutNow):
            self._handle_timeout_now(msg)
            return
        if msg.term > self.term:
            if isinstance(msg, RequestVote):
                if self._in_lease() and not self._transfer_vote(msg):
                    # CheckQuorum's lease: we heard from a live leader less than
                    # an election timeout ago, so this candidate is disruptive
                    # (e.g. rejoining from a partition); ignore it entirely.
                    self._send(
                        RequestVoteResponse(self.id, msg.src, self.term, False, msg.pre_vote)
                    )
                    return
                if not msg.pre_vote:
                    self._become_follower(msg.term, None)
            elif isinstance(msg, RequestVoteResponse) and msg.pre_vote and msg.granted:
                pass  # a granted pre-vote carries the hypothetical term: no change
            elif isinstance(msg, AppendEntries | InstallSnapshot):
                self._become_follower(msg.term, msg.src)
            else:
                self._become_follower(msg.term, None)
        elif msg.term < self.term:
            self._step_stale(msg)
            return

        match msg:
            case RequestVote():
                self._handle_request_vote(msg)
            case RequestVoteResponse():
                self._handle_vote_response(msg)
            case AppendEntries():
                self._handle_append(msg)
            case AppendEntriesResponse():
                self._handle_append_response(msg)
            case InstallSnapshot():
                self._handle_install_snapshot(msg)
            case InstallSnapshotResponse():
                self._handle_snapshot_response(msg)
            case ReadIndexRequest():
                self._handle_read_request(msg)
            case ReadIndexResponse():
                self._handle_read_response(msg)

    def _sender_allowed(self, msg: Message) -> bool:
        """Who may send what (checked before any term rule runs).

        - Votes (requests and answers) only from voters of our configuration:
          a stray, removed or not-yet-promoted node must not move our term or
          win our vote. A node that lost its disk returns under a fresh id
          (PLAN.md), so it is a learner here and cannot vote or be voted for.
        - AppendEntries and InstallSnapshot from anyone: only a leader elected
          by a quorum of *its* configuration sends them, and that may be a
          configuration we have not received yet (a leader added after our
          log ends). Term rules and Log Matching keep them safe.
        - Everything else from members only.
        """
        if isinstance(msg, RequestVote | RequestVoteResponse):
            return msg.src in self.voters
        if isinstance(msg, AppendEntries | InstallSnapshot):
            return True
        return msg.src in self.configuration.ids

    def _step_stale(self, msg: Message) -> None:
        """A message from an older term: tell the sender our term, change nothing."""
        if isinstance(msg, AppendEntries | InstallSnapshot):
            # Lets a deposed leader (e.g. back from a partition) step down.
            self._send(AppendEntriesResponse(self.id, msg.src, self.term, False))
        elif isinstance(msg, RequestVote):
            self._send(RequestVoteResponse(self.id, msg.src, self.term, False, msg.pre_vote))
        elif isinstance(msg, ReadIndexRequest):
            self._send(ReadIndexResponse(self.id, msg.src, self.term, msg.ctxs, -1))

    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)

    # ================================================================= output
    def ready(self) -> Ready:
        """Collect everything the caller must now persist, send and apply."""
        self._flush_forwarded()
        if self.role is Role.LEADER:
            self._start_read_round()
            if self._broadcast:
                self._broadcast = False
                self._send_appends()
        rd = Ready()
        hs = self.hard_state()
        if self._hard_state_must_sync() or (
            hs != self._persisted_hs and self.log.unstable_from <= self.log.last_index()
        ):
            rd.hard_state = hs
        if self._pending_snapshot is not None:
            rd.snapshot, rd.snapshot_keep_entries = self._pending_snapshot
        rd.entries = self.log.unstable()
        msgs, self._msgs = self._msgs, []
        if self.role is Role.LEADER and self._persisted_hs.term == self.term:
            # Raft thesis §10.2.1: a leader may replicate entries while it is
            # still writing them to its own disk -- it just does not count
            # itself until they are durable (advance). Its term is already on
            # disk, so nothing these messages claim depends on this Ready.
            for m in msgs:
                if isinstance(m, AppendEntries | InstallSnapshot):
                    rd.early_messages.append(m)
                else:
                    rd.messages.append(m)
        else:
            rd.messages = msgs
        rd.read_states, self._read_states = self._read_states, []
        if self.log.committed > self.log.applied:
            rd.committed = self.log.slice(self.log.applied + 1, self.log.committed + 1)
        return rd

    def advance(self, rd: Ready) -> None:
        """The caller has persisted, sent and applied `rd`."""
        if rd.hard_state is not None:
            self._persisted_hs = rd.hard_state
        if rd.snapshot is not None:
            self._pending_snapshot = None
        if rd.entries:
            self.log.stable_to(rd.entries[-1].index)
            if self.role is Role.LEADER:
                self._maybe_commit()
        if rd.committed:
            self.log.applied = max(self.log.applied, rd.committed[-1].index)
