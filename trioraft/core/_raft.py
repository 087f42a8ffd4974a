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

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from trioraft.core._changes import ChangeKind, ConfChange, apply_change
from trioraft.core._errors import (
    ChangeInProgress,
    NotCaughtUp,
    NotLeader,
    ProposalDropped,
    TransferRefused,
)
from trioraft.core._log import RaftLog
from trioraft.core._membership import ConfigHistory
from trioraft.core._progress import Progress, ProgressState
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
from trioraft.core._validate import MAX_READ_CTXS, MAX_TERM_OR_INDEX, config_of, message_ok

__all__ = ["CoreConfig", "RaftCore", "Ready", "Role"]


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRECANDIDATE = "precandidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"  # not a voter of its configuration (or not a member at all)


@dataclass(frozen=True, slots=True)
class CoreConfig:
    id: str
    voters: frozenset[str]  # bootstrap membership (a snapshot's configuration overrides it)
    election_timeout: tuple[float, float] = (0.150, 0.300)  # seconds, [min, max)
    heartbeat_interval: float = 0.050
    max_entries_per_msg: int = 512
    max_bytes_per_msg: int = 1 << 20
    max_inflight: int = 8
    # A probe (PROBE state: where does the follower's log match?) is small:
    # it may well be rejected, and the follower may not be answering at all.
    probe_max_entries: int = 4
    probe_max_bytes: int = 64 << 10
    pre_vote: bool = True
    check_quorum: bool = True
    # Entries kept in the log after a snapshot (etcd's SnapshotCatchUpEntries):
    # a follower less than this far behind is caught up with entries.
    snapshot_catchup_entries: int = 5000
    # Give up on a snapshot transfer nobody reported on after this long.
    snapshot_timeout: float = 30.0
    # A read that has not been answered after this long is refused (-1).
    read_timeout: float = 5.0
    max_pending_reads: int = 10_000
    # Deliberately broken variants, for the simulation's "teeth" tests only:
    # "commit_old_terms", "vote_without_log_check", "no_truncate",
    # "match_moves_back", "two_changes", "change_before_commit".
    unsafe: frozenset[str] = frozenset()


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


@dataclass(slots=True)
class _ReadRound:
    seq: int
    index: int
    deadline: float
    local: list[int]
    remote: dict[str, list[int]]


@dataclass(slots=True)
class _Forwarded:
    """A read this follower forwarded to its leader: only that leader, in that
    term, may answer it."""

    leader: str
    term: int
    deadline: float


class RaftCore:
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

    def _fail_reads(self) -> None:
        """Refuse every pending read: leadership it relied on is gone."""
        for src, ctx, _ in self._reads_waiting_commit + self._reads_new:
            self._refuse_read(src, [ctx])
        for rnd in self._read_rounds:
            self._refuse_read(None, rnd.local)
            for src, ctxs in rnd.remote.items():
                self._refuse_read(src, ctxs)
        self._read_states.extend((ctx, -1) for ctx in self._forwarded)
        self._reads_waiting_commit, self._reads_new, self._read_rounds = [], [], []
        self._forwarded, self._forwarded_new = {}, []

    def _refuse_read(self, src: str | None, ctxs: list[int]) -> None:
        self._answer_read(src, ctxs, -1)

    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        if self.id not in self.voters:
            return
        if self.term + 1 >= MAX_TERM_OR_INDEX:
            # Terms are bounded (PLAN.md): never step past the bound. Only a
            # cluster that somehow reached it could get here; it stays put
            # rather than write a term its peers and storage would refuse.
            self._reset_election_timer()
            return
        self._fail_reads()
        self.leader_id = None
        self._votes = {self.id: True}
        if pre_vote:
            # PreVote (thesis §9.6): ask whether we *could* win term+1 without
            # disturbing anyone's term; only a yes from a quorum starts a real
            # election, so a partitioned node cannot inflate terms on return.
            self.role = Role.PRECANDIDATE
            term = self.term + 1
        else:
            self.role = Role.CANDIDATE
            self.term += 1
            self.vote = self.id  # vote for ourselves (persisted before requests leave)
            term = self.term
        self._reset_election_timer()
        if self._tally() >= self.quorum():
            self._won_election(pre_vote)
            return
        for peer in sorted(self.voters - {self.id}):
            self._send(
                RequestVote(
                    self.id, peer, term, self.log.last_index(), self.log.last_term(),
                    pre_vote=pre_vote, transfer=transfer,
                )
            )

    def _tally(self) -> int:
        return sum(1 for v, g in self._votes.items() if g and v in self.voters)

    def _won_election(self, pre_vote: bool) -> None:
        if pre_vote:
            self._campaign(pre_vote=False)
        else:
            self._become_leader()

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

    def _expire_reads(self) -> None:
        """Refuse reads that waited longer than read_timeout.

        A ReadIndexRequest or its answer can be lost while the leader stays
        the same; without this the follower's pending set only grows. A
        refusal (-1) is always safe: the runtime answers "not served".
        """
        now = self._now
        while self._forwarded:
            ctx, f = next(iter(self._forwarded.items()))
            if f.deadline > now:
                break
            del self._forwarded[ctx]
            self._read_states.append((ctx, -1))
        if self.role is not Role.LEADER:
            return
        for lst in (self._reads_waiting_commit, self._reads_new):
            if lst and lst[0][2] <= now:
                keep = [r for r in lst if r[2] > now]
                for src, ctx, _ in (r for r in lst if r[2] <= now):
                    self._refuse_read(src, [ctx])
                lst[:] = keep
        while self._read_rounds and self._read_rounds[0].deadline <= now:
            rnd = self._read_rounds.pop(0)
            self._refuse_read(None, rnd.local)
            for src, ctxs in rnd.remote.items():
                self._refuse_read(src, ctxs)

    def _pending_reads(self) -> int:
        return (
            len(self._reads_waiting_commit) + len(self._reads_new)
            + sum(len(r.local) + sum(map(len, r.remote.values())) for r in self._read_rounds)
        )

    def _check_quorum(self) -> bool:
        """CheckQuorum: step down if a quorum has not been heard from lately.

        Without this a leader cut off in a minority would keep accepting
        (never committing) requests and serving reads it cannot confirm.
        """
        if not self.config.check_quorum:
            return True
        active = (self.id in self.voters) + sum(
            1 for p, pr in self.progress.items() if pr.recent_active and p in self.voters
        )
        for pr in self.progress.values():
            pr.recent_active = False
        if active < self.quorum():
            self._become_follower(self.term, None)
            return False
        return True

    def _heartbeat(self) -> None:
        for peer, pr in self.progress.items():
            pr.on_heartbeat()
            if pr.state is ProgressState.SNAPSHOT and self._now >= pr.snapshot_deadline:
                pr.become_probe()  # the transfer seems lost: try again
            self._send_heartbeat(peer, pr, self._read_seq)
        self._broadcast = True

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
        `caught_up`), or the refusals of `apply_change` (UnknownMember,
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
        if change.kind is ChangeKind.PROMOTE and not self.caught_up(change.member.id):
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

    def caught_up(self, member_id: str) -> bool:
        """Leader only: `member_id` receives entries normally and holds every
        committed one -- the runtime's test before promoting a learner or
        transferring leadership to it."""
        pr = self.progress.get(member_id)
        return (
            self.role is Role.LEADER and pr is not None
            and pr.state is ProgressState.REPLICATE and pr.match_index >= self.log.committed
        )

    def read_index(self, ctx: int) -> None:
        """Ask for a linearizable read index; answered in `Ready.read_states`.

        ReadIndex (thesis §6.4): the index is the leader's commit index at the
        time of the request, valid once a quorum confirms the leader was still
        leader after the request arrived. A result of -1 means "refused"
        (leadership changed, the read timed out, or too many are pending).
        """
        if self.role is Role.LEADER:
            self._leader_read(None, ctx)
        elif self.leader_id is not None:
            if len(self._forwarded) >= self.config.max_pending_reads or ctx in self._forwarded:
                self._read_states.append((ctx, -1))
                return
            # Batched: one ReadIndexRequest per Ready carries every new ctx.
            self._forwarded[ctx] = _Forwarded(
                self.leader_id, self.term, self._now + self.config.read_timeout
            )
            self._forwarded_new.append(ctx)
        else:
            raise NotLeader(None)

    def _leader_read(self, src: str | None, ctx: int) -> None:
        if self._pending_reads() >= self.config.max_pending_reads:
            self._refuse_read(src, [ctx])
            return
        deadline = self._now + self.config.read_timeout
        if self.voters == {self.id} and self._committed_in_term():
            self._answer_read(src, [ctx], self.log.committed)
        elif self._committed_in_term():
            self._reads_new.append((src, ctx, deadline))
        else:
            self._reads_waiting_commit.append((src, ctx, deadline))

    def _committed_in_term(self) -> bool:
        return self.log.term_at(self.log.committed) == self.term

    def _answer_read(self, src: str | None, ctxs: list[int], index: int) -> None:
        if src is None or src == self.id:
            self._read_states.extend((c, index) for c in ctxs)
            return
        for i in range(0, len(ctxs), MAX_READ_CTXS):  # what message_ok admits
            chunk = tuple(ctxs[i : i + MAX_READ_CTXS])
            self._send(ReadIndexResponse(self.id, src, self.term, chunk, index))

    def transfer_leadership(self, target: str) -> None:
        """Hand leadership to `target` (thesis §3.10).

        Raises NotLeader, or TransferRefused if the target is not another
        voter, is not caught up (it is not receiving entries normally, or
        lacks committed entries), or a transfer is already under way. Once
        started, new proposals are refused until the target has taken over
        or the transfer times out (one maximum election timeout).
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if target == self.id or target not in self.voters:
            raise TransferRefused(f"{target!r} is not another voter of the configuration")
        if self._transfer_target is not None:
            raise TransferRefused(f"a transfer to {self._transfer_target!r} is in progress")
        pr = self.progress[target]
        if not self.caught_up(target):
            raise TransferRefused(
                f"{target!r} is not caught up (match {pr.match_index}, commit "
                f"{self.log.committed}, {pr.state.value})"
            )
        self._transfer_target = target
        self._transfer_deadline = self._now + self.config.election_timeout[1]
        self._maybe_send_timeout_now()

    @property
    def transfer_target(self) -> str | None:
        return self._transfer_target

    def _maybe_send_timeout_now(self) -> None:
        t = self._transfer_target
        if t is not None and self.progress[t].match_index == self.log.last_index():
            self._send(TimeoutNow(self.id, t, self.term))

    def retire(self) -> None:
        """Stop campaigning (the node is shutting down); it still follows and votes."""
        self._retired = True

    def report_snapshot(self, peer: str, ok: bool) -> None:
        """The runtime's transfer of a snapshot to `peer` failed (ok=False: send
        another when it is needed) or sent its last chunk (ok=True: the
        follower's answer should follow shortly; if it was lost, retry after
        two election timeouts rather than the full snapshot_timeout)."""
        pr = self.progress.get(peer)
        if pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if ok:
            pr.snapshot_deadline = min(
                pr.snapshot_deadline, self._now + 2 * self.config.election_timeout[1]
            )
        else:
            pr.become_probe()
            self._broadcast = True

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

    def _transfer_vote(self, msg: RequestVote) -> bool:
        """May this RequestVote override the leader lease (leadership transfer)?

        Only a real election (not a pre-vote), for exactly the next term, from
        a candidate whose log is at least as up to date as ours: the one
        candidate a transfer produces (the target campaigns at leader's term
        + 1, with a log the leader found complete). A peer cannot use the flag
        to inflate terms: it gains one term per round, as any election would.
        """
        return (
            msg.transfer and not msg.pre_vote and msg.term == self.term + 1
            and self.log.is_up_to_date(msg.last_log_index, msg.last_log_term)
        )

    def _handle_timeout_now(self, msg: TimeoutNow) -> None:
        """Campaign at once -- if the leader we follow, in our term, asks.

        TimeoutNow on demand from anyone else would let a peer force
        elections; a retiring node must not campaign at all.
        """
        if (
            msg.term == self.term and msg.src == self.leader_id
            and self.role is Role.FOLLOWER and not self._retired
        ):
            self._campaign(pre_vote=False, transfer=True)

    def _in_lease(self) -> bool:
        if not self.config.check_quorum:
            return False
        if self.role is Role.LEADER:
            return True
        return (
            self.leader_id is not None
            and self._now - self._leader_contact < self.config.election_timeout[0]
        )

    def _step_stale(self, msg: Message) -> None:
        """A message from an older term: tell the sender our term, change nothing."""
        if isinstance(msg, AppendEntries | InstallSnapshot):
            # Lets a deposed leader (e.g. back from a partition) step down.
            self._send(AppendEntriesResponse(self.id, msg.src, self.term, False))
        elif isinstance(msg, RequestVote):
            self._send(RequestVoteResponse(self.id, msg.src, self.term, False, msg.pre_vote))
        elif isinstance(msg, ReadIndexRequest):
            self._send(ReadIndexResponse(self.id, msg.src, self.term, msg.ctxs, -1))

    # ----------------------------------------------------------------- votes
    def _handle_request_vote(self, msg: RequestVote) -> None:
        up_to_date = self.log.is_up_to_date(msg.last_log_index, msg.last_log_term)
        if "vote_without_log_check" in self.config.unsafe:
            up_to_date = True
        if msg.pre_vote:
            # Grant if we would vote for it in msg.term; our own state is untouched.
            grant = msg.term > self.term and up_to_date
            term = msg.term if grant else self.term
            self._send(RequestVoteResponse(self.id, msg.src, term, grant, pre_vote=True))
            return
        # §5.2, §5.4.1: one vote per term, only for a log at least as up to date.
        # msg.term == self.term here (a higher term was adopted above).
        can_vote = self.vote in (None, msg.src) and self.role is not Role.LEADER
        grant = can_vote and up_to_date
        if grant:
            self.vote = msg.src  # persisted (Ready.hard_state) before the reply leaves
            self._reset_election_timer()
        self._send(RequestVoteResponse(self.id, msg.src, self.term, grant))

    def _handle_vote_response(self, msg: RequestVoteResponse) -> None:
        wanted = Role.PRECANDIDATE if msg.pre_vote else Role.CANDIDATE
        if self.role is not wanted:
            return
        if msg.pre_vote and msg.term != self.term + 1 and msg.granted:
            return  # an answer to an older pre-vote round
        self._votes[msg.src] = msg.granted
        if self._tally() >= self.quorum():
            self._won_election(msg.pre_vote)
        elif sum(1 for v, g in self._votes.items() if not g and v in self.voters) >= self.quorum():
            self._become_follower(self.term, None)

    # ------------------------------------------------------------ follower side
    def _accept_leader(self, src: str) -> bool:
        """A leader message at our term: is `src` the one leader of the term?

        Election Safety: at most one leader per term. If we lead this term, or
        already follow another leader in it, the sender cannot be a leader of
        this term: the message is forged or misdirected, and ignoring it (as
        if lost) is safe.
        """
        if self.role is Role.LEADER:
            return False
        if self.leader_id is not None and self.leader_id != src:
            return False
        if self.role is Role.PRECANDIDATE or self.role is Role.CANDIDATE:
            self._become_follower(self.term, src)
        if self.leader_id != src:
            self._fail_reads()
            self.leader_id = src
        self._leader_contact = self._now
        self._reset_election_timer()
        return True

    def _handle_append(self, msg: AppendEntries) -> None:
        # msg.term == self.term (a higher term was adopted above).
        if not self._accept_leader(msg.src):
            return
        log = self.log
        if msg.prev_log_index < log.committed:
            # Everything up to our commit index matches any current leader's log
            # (Leader Completeness), so the part of the message we have
            # committed is skipped and the rest is checked entry by entry.
            # The same property unmasks a forged or broken sender: a message
            # whose entry at our commit index differs from ours cannot come
            # from a real leader, and is ignored (as if lost).
            c = log.committed
            if msg.prev_log_index + len(msg.entries) >= c:
                at_c = msg.entries[c - msg.prev_log_index - 1]
                if at_c.term != log.term_at(c):
                    return
            entries = [e for e in msg.entries if e.index > c]
            ok_prev = True
        else:
            entries = list(msg.entries)
            ok_prev = log.term_at(msg.prev_log_index) == msg.prev_log_term
        if not ok_prev:
            # Log Matching: we may only append after an entry we share.
            # Reply with the fast-backtracking hint.
            prev = msg.prev_log_index
            if prev > log.last_index():
                ci, ct = log.last_index() + 1, None
            else:
                ct = log.term_at(prev)
                ci = log.first_index_of_term(prev)
            self._send(
                AppendEntriesResponse(
                    self.id, msg.src, self.term, False,
                    conflict_index=ci, conflict_term=ct,
                    reject_index=prev, read_seq=msg.read_seq,
                )
            )
            return
        # Find the first entry we do not already hold; truncate a conflicting
        # suffix (§5.3: "if an existing entry conflicts with a new one, delete
        # the existing entry and all that follow it").
        for i, e in enumerate(entries):
            t = log.term_at(e.index)
            if t is None:
                self._append_entries(entries[i:])
                break
            if t != e.term:
                tail = [x for x in log.entries if x.index > entries[-1].index]
                log.truncate_from(e.index)
                if self._configs.truncate_from(e.index):
                    self._config_changed()  # an uncommitted CONFIG entry rolled back
                self._append_entries(entries[i:])
                if "no_truncate" in self.config.unsafe:
                    log.append(tail)  # broken variant: keep the stale suffix
                break
        # The message covers the leader's log up to this index, and we now match it.
        last_new = msg.prev_log_index + len(msg.entries)
        # Figure 2: commit_index = min(leader_commit, index of last new entry).
        log.commit_to(min(msg.leader_commit, last_new))
        if msg.commit_only:
            return  # a commit notice: the leader needs no acknowledgement
        self._send(
            AppendEntriesResponse(
                self.id, msg.src, self.term, True, match_index=last_new, read_seq=msg.read_seq
            )
        )

    def _append_entries(self, entries: list[Entry]) -> None:
        """Append (validated) entries; CONFIG ones take effect now (§4.1)."""
        self.log.append(entries)
        changed = False
        for e in entries:
            if e.kind is EntryKind.CONFIG:
                cfg = config_of(e)
                assert cfg is not None  # message_ok checked every CONFIG entry
                self._configs.append(e.index, cfg)
                changed = True
        if changed:
            self._config_changed()

    def _handle_install_snapshot(self, msg: InstallSnapshot) -> None:
        if not self._accept_leader(msg.src):
            return
        meta = msg.meta
        committed_term = self.log.term_at(self.log.committed)
        if meta.index > self.log.committed and (committed_term or 0) > meta.term:
            # A real leader's snapshot beyond our commit index contains our
            # committed entries, and terms never decrease along a log: this
            # one cannot be real (forged or broken sender). Ignore it.
            return
        if meta.index <= self.log.committed:
            # We already hold (and agree on) everything the snapshot covers.
            self._send(InstallSnapshotResponse(self.id, msg.src, self.term, self.log.committed))
            return
        # Above our commit index nothing is settled, so the snapshot (which
        # holds only entries committed by the leader) wins: keep our suffix
        # only if it continues the snapshot's last entry.
        keep = self.log.term_at(meta.index) == meta.term
        self.log.restore(meta, keep)
        self._configs.reset(meta.index, meta.config)
        if not keep:
            self._configs.truncate_from(meta.index + 1)
        self._config_changed()
        self._pending_snapshot = (meta, keep)
        self._send(InstallSnapshotResponse(self.id, msg.src, self.term, meta.index))

    def _handle_read_response(self, msg: ReadIndexResponse) -> None:
        # Only the leader we asked, in the term we asked it, may answer: any
        # other member could name a stale index and make us serve a stale read.
        for c in msg.ctxs:
            f = self._forwarded.get(c)
            if f is not None and f.leader == msg.src and f.term == msg.term:
                del self._forwarded[c]
                self._read_states.append((c, msg.index))

    # -------------------------------------------------------------- leader side
    def _handle_append_response(self, msg: AppendEntriesResponse) -> None:
        if self.role is not Role.LEADER:
            return
        pr = self.progress.get(msg.src)
        if pr is None:
            return
        if msg.match_index > self.log.last_index() or msg.reject_index > self.log.last_index():
            # We never sent anything that could be answered so (our log only
            # grows while we lead): forged. Believing it would let a peer
            # claim entries it lacks, stall its replication, or worse.
            return
        pr.recent_active = True
        if self._read_seq >= msg.read_seq > pr.read_ack:
            # A read round is acknowledged only if we have started it: a
            # forged future read_seq must not pre-acknowledge later reads.
            pr.read_ack = msg.read_seq
            self._release_reads()
        if not msg.success:
            self._handle_reject(pr, msg)
            return
        if pr.maybe_update(msg.match_index):
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state is ProgressState.SNAPSHOT and pr.match_index >= self.log.offset:
                pr.become_probe()  # caught up by entries after all (etcd does the same)
            self._maybe_commit()
            if self._transfer_target == msg.src:
                self._maybe_send_timeout_now()
        else:
            pr.on_answer(
                self._now, msg.match_index == pr.next_index - 1,
                2 * self.config.heartbeat_interval,
            )
        if pr.next_index <= self.log.last_index() or (
            min(self.log.committed, pr.match_index) > pr.commit_sent
        ):
            self._broadcast = True

    def _handle_reject(self, pr: Progress, msg: AppendEntriesResponse) -> None:
        if pr.state is ProgressState.SNAPSHOT:
            # Paused while a snapshot is in flight (PLAN.md): a heartbeat the
            # follower rejects because it lacks the log must not start a
            # second transfer. Only the transfer's own outcome moves it on.
            return
        if msg.reject_index <= pr.match_index:
            # Stale: it rejected an older message (reordered or duplicated).
            # A follower never loses an entry it acknowledged in our term, so
            # match_index stays: it must never move back (it feeds the commit
            # rule). A node that lost its disk comes back under a fresh member
            # id (PLAN.md), so "it lost what it acknowledged" cannot happen.
            if "match_moves_back" in self.config.unsafe and msg.reject_index == pr.match_index:
                pr.match_index = max(0, min(pr.match_index, msg.conflict_index - 1))
            else:
                pr.on_answer(self._now, False, 2 * self.config.heartbeat_interval)
                return
        if pr.state is ProgressState.PROBE and msg.reject_index != pr.next_index - 1:
            # A reply to an older probe or to a heartbeat.
            pr.on_answer(self._now, False, 2 * self.config.heartbeat_interval)
            return
        # Fast backtracking: skip a whole conflicting term per round trip.
        nxt = msg.conflict_index
        if msg.conflict_term is not None:
            last = self.log.last_index_of_term(msg.conflict_term, msg.reject_index)
            if last is not None:
                nxt = last + 1
        pr.become_probe()
        pr.next_index = max(pr.match_index + 1, min(nxt, msg.reject_index))
        self._broadcast = True

    def _handle_snapshot_response(self, msg: InstallSnapshotResponse) -> None:
        if self.role is not Role.LEADER:
            return
        pr = self.progress.get(msg.src)
        if pr is None or msg.match_index > self.log.last_index():
            return
        pr.recent_active = True
        pr.maybe_update(msg.match_index)
        if pr.state is ProgressState.SNAPSHOT:
            pr.become_probe()
        self._maybe_commit()
        self._broadcast = True

    def _handle_read_request(self, msg: ReadIndexRequest) -> None:
        if self.role is not Role.LEADER:
            self._send(ReadIndexResponse(self.id, msg.src, self.term, msg.ctxs, -1))
            return
        for ctx in msg.ctxs:
            self._leader_read(msg.src, ctx)

    def _release_reads(self) -> None:
        while self._read_rounds:
            rnd = self._read_rounds[0]
            acks = (self.id in self.voters) + sum(
                1 for p, pr in self.progress.items() if pr.read_ack >= rnd.seq and p in self.voters
            )
            if acks < self.quorum():
                return
            self._read_rounds.pop(0)
            self._answer_read(None, rnd.local, rnd.index)
            for src, ctxs in rnd.remote.items():
                self._answer_read(src, ctxs, rnd.index)

    def _maybe_commit(self) -> None:
        if self.role is not Role.LEADER:
            return
        matches = sorted(
            [self.progress[p].match_index for p in self.voters if p != self.id]
            + ([self._self_match()] if self.id in self.voters else []),
            reverse=True,
        )
        n = matches[self.quorum() - 1]
        if n <= self.log.committed:
            return
        # §5.4.2 (Figure 8): only an entry of the current term is committed by
        # counting replicas; earlier ones are committed indirectly with it.
        if self.log.term_at(n) != self.term and "commit_old_terms" not in self.config.unsafe:
            return
        self.log.commit_to(n)
        self._broadcast = True
        if self._reads_waiting_commit and self._committed_in_term():
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            self._reads_new.extend(waiting)
        self._after_commit()

    def _after_commit(self) -> None:
        """Membership hook: a leader that removed itself steps down once the
        change is committed (thesis §4.2.2); until then it leads without
        counting itself."""
        if self.id not in self.voters and self.log.committed >= self._configs.current_index:
            self._send_appends()  # tell the others the change committed
            self._become_follower(self.term, None)

    def _self_match(self) -> int:
        # The leader counts only entries it has itself persisted (advance()).
        return self.log.unstable_from - 1

    def _send_heartbeat(
        self, peer: str, pr: Progress, read_seq: int, commit_only: bool = False
    ) -> None:
        # prev = match_index: the follower is known to hold it, so a heartbeat
        # never fails spuriously; the commit sent is capped to what it holds.
        prev = pr.match_index
        prev_term = self.log.term_at(prev)
        if prev_term is None:
            prev, prev_term = self.log.offset, self.log.offset_term
        commit = min(self.log.committed, prev)
        pr.commit_sent = max(pr.commit_sent, commit)
        self._send(
            AppendEntries(
                self.id, peer, self.term, prev, prev_term, (), commit, read_seq=read_seq,
                commit_only=commit_only,
            )
        )

    def _send_appends(self) -> None:
        """Send every follower what it is missing, as far as flow control allows."""
        sent_to: set[str] = set()
        for peer, pr in self.progress.items():
            while not pr.paused(self.config.max_inflight):
                if pr.next_index <= self.log.offset:
                    # It needs entries we compacted: send the newest snapshot
                    # (it covers at least up to the compaction point).
                    self._send_snapshot(peer, pr)
                    sent_to.add(peer)
                    break
                if pr.next_index > self.log.last_index() and pr.state is ProgressState.REPLICATE:
                    break
                self._send_append(peer, pr)
                sent_to.add(peer)
                if pr.state is ProgressState.PROBE:
                    break
            if peer not in sent_to and min(self.log.committed, pr.match_index) > pr.commit_sent:
                # Tell it about the new commit index promptly, so reads served
                # on followers (ReadIndex) need not wait for the next heartbeat.
                # It asks for no reply: at low load these notices would
                # otherwise double the messages of every write.
                self._send_heartbeat(peer, pr, 0, commit_only=True)

    def _send_append(self, peer: str, pr: Progress) -> None:
        prev = pr.next_index - 1
        prev_term = self.log.term_at(prev)
        assert prev_term is not None  # offset <= prev <= last_index
        probe = pr.state is ProgressState.PROBE
        n = min(self.config.max_entries_per_msg,
                self.config.probe_max_entries if probe else self.config.max_entries_per_msg)
        entries = self.log.slice(
            pr.next_index,
            min(self.log.last_index() + 1, pr.next_index + max(1, n)),
            self.config.probe_max_bytes if probe else self.config.max_bytes_per_msg,
        )
        self._send(
            AppendEntries(
                self.id, peer, self.term, prev, prev_term, tuple(entries), self.log.committed,
                read_seq=self._read_seq,
            )
        )
        pr.commit_sent = max(pr.commit_sent, min(self.log.committed, prev + len(entries)))
        if pr.state is ProgressState.REPLICATE:
            if entries:
                pr.next_index = entries[-1].index + 1
                pr.inflight.append(entries[-1].index)
        else:
            pr.sent_probe(self._now)

    def _send_snapshot(self, peer: str, pr: Progress) -> None:
        meta = self.log.snapshot
        pr.become_snapshot(meta.index, self._now + self.config.snapshot_timeout)
        self._send(InstallSnapshot(self.id, peer, self.term, meta, self.log.committed))

    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)

    # ================================================================= output
    def ready(self) -> Ready:
        """Collect everything the caller must now persist, send and apply."""
        if self._forwarded_new:
            new, self._forwarded_new = self._forwarded_new, []
            if self.leader_id is not None and self.role is not Role.LEADER:
                for i in range(0, len(new), MAX_READ_CTXS):
                    chunk = tuple(new[i : i + MAX_READ_CTXS])
                    self._send(ReadIndexRequest(self.id, self.leader_id, self.term, chunk))
        if self.role is Role.LEADER:
            if self._reads_new:
                self._read_seq += 1
                rnd = _ReadRound(
                    self._read_seq, self.log.committed,
                    min(d for _, _, d in self._reads_new), [], {},
                )
                for src, ctx, _ in self._reads_new:
                    if src is None or src == self.id:
                        rnd.local.append(ctx)
                    else:
                        rnd.remote.setdefault(src, []).append(ctx)
                self._reads_new = []
                self._read_rounds.append(rnd)
                for peer, pr in self.progress.items():
                    self._send_heartbeat(peer, pr, self._read_seq)
                self._release_reads()  # a single-voter cluster needs no round
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
