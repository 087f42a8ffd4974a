"""The Raft state machine itself: roles, terms, votes, replication, commit, ReadIndex.

Inputs: `step(msg, now)`, `handle_timeout(now)`, `propose(datas)`,
`read_index(ctx)`, `compact(index)`, `report_snapshot(peer, ok)`.
Outputs: `ready()` returns a `Ready` batch; the caller must, in this order,
0. (optionally at once) send `ready.early_messages`,
1. persist `ready.hard_state`, `ready.snapshot` and `ready.entries` (fsync),
2. send `ready.messages`,
3. apply `ready.committed`, answer `ready.read_states`,
4. call `advance(ready)`.
Nothing in a Ready may be acted on out of that order: the messages include
vote grants and append acknowledgements that promise the data is durable.

The rules of Figure 2 of the Raft paper are cited where they are enforced.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from trioraft.core._errors import NotLeader, ProposalDropped
from trioraft.core._log import RaftLog
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

__all__ = ["CoreConfig", "RaftCore", "Ready", "Role"]


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRECANDIDATE = "precandidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"


@dataclass(frozen=True, slots=True)
class CoreConfig:
    id: str
    voters: frozenset[str]  # initial membership (a snapshot's membership overrides it)
    election_timeout: tuple[float, float] = (0.150, 0.300)  # seconds, [min, max)
    heartbeat_interval: float = 0.050
    max_entries_per_msg: int = 512
    max_bytes_per_msg: int = 1 << 20
    max_inflight: int = 8
    pre_vote: bool = True
    check_quorum: bool = True
    # Deliberately broken variants, for the simulation's "teeth" tests only:
    # "commit_old_terms", "vote_without_log_check", "no_truncate".
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
    local: list[int]
    remote: dict[str, list[int]]


class RaftCore:
    def __init__(
        self,
        config: CoreConfig,
        rng: random.Random,
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | None = None,
        entries: Sequence[Entry] = (),
        now: float = 0.0,
    ) -> None:
        self.config = config
        self.id = config.id
        self._rng = rng
        hs = hard_state or HardState()
        snap = snapshot or SnapshotMeta()
        # A snapshot's membership overrides the bootstrap set in the config.
        self.configuration = (
            snap.config if snap.config.members else Configuration.of_voters(config.voters)
        )
        self.voters: frozenset[str] = self.configuration.voters
        self.term = hs.term  # current_term: never decreases
        self.vote = hs.vote  # voted_for in `term`: at most one grant per term
        self.log = RaftLog(snap, list(entries), hs.commit)
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
        self._reads_waiting_commit: list[tuple[str | None, int]] = []  # until our no-op commits
        self._reads_new: list[tuple[str | None, int]] = []  # need a heartbeat round
        self._read_rounds: list[_ReadRound] = []
        self._transfer_target: str | None = None
        self._transfer_deadline = 0.0
        # Follower-only: reads forwarded to the leader, failed if the leader changes.
        self._forwarded_reads: list[int] = []
        self._forwarded_new: list[int] = []  # not yet sent
        self._leader_contact = -1e9  # when we last heard from the current leader
        self._retired = False  # shutting down: never campaign again
        self._election_deadline = 0.0
        self._reset_election_timer()
        if self.id not in self.voters:
            self.role = Role.LEARNER

    # ================================================================ queries
    @property
    def deadline(self) -> float:
        """When `handle_timeout` must next be called."""
        if self.role is Role.LEADER:
            return min(self._heartbeat_due, self._check_quorum_due)
        return self._election_deadline

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
        if term > self.term:
            # Figure 2, all servers: a higher term makes us a follower of that
            # term, and our vote (if any) belonged to the old term.
            self.term = term
            self.vote = None
        was_leader = self.role is Role.LEADER
        self.role = Role.FOLLOWER if self.id in self.voters else Role.LEARNER
        if leader != self.leader_id or was_leader:
            self._fail_reads()
        self.leader_id = leader
        self.progress = {}
        self._transfer_target = None
        self._reset_election_timer()

    def _fail_reads(self) -> None:
        """Refuse every pending read: leadership it relied on is gone."""
        for src, ctx in self._reads_waiting_commit + self._reads_new:
            self._refuse_read(src, [ctx])
        for rnd in self._read_rounds:
            self._refuse_read(None, rnd.local)
            for src, ctxs in rnd.remote.items():
                self._refuse_read(src, ctxs)
        for ctx in self._forwarded_reads:
            self._read_states.append((ctx, -1))
        self._reads_waiting_commit, self._reads_new, self._read_rounds = [], [], []
        self._forwarded_reads, self._forwarded_new = [], []

    def _refuse_read(self, src: str | None, ctxs: list[int]) -> None:
        if not ctxs:
            return
        if src is None:
            self._read_states.extend((c, -1) for c in ctxs)
        else:
            self._send(ReadIndexResponse(self.id, src, self.term, tuple(ctxs), -1))

    def _campaign(self, pre_vote: bool, transfer: bool = False) -> None:
        if self.id not in self.voters:
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
        self.progress = {p: Progress(last + 1) for p in sorted(self.voters) if p != self.id}
        self._heartbeat_due = self._now  # announce ourselves at once
        self._check_quorum_due = self._now + self.config.election_timeout[0]
        self._read_seq = 0
        # §5.4.2 / §8: a leader cannot know which earlier-term entries are
        # committed until it commits one of its own term, so it appends a
        # no-op right away (this also unblocks ReadIndex).
        self.log.append([Entry(last + 1, self.term, EntryKind.NOOP)])
        self._broadcast = True
        self._maybe_commit()

    # ================================================================= inputs
    def handle_timeout(self, now: float) -> None:
        self._now = now
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

    def _check_quorum(self) -> bool:
        """CheckQuorum: step down if a quorum has not been heard from lately.

        Without this a leader cut off in a minority would keep accepting
        (never committing) requests and serving reads it cannot confirm.
        """
        if not self.config.check_quorum:
            return True
        active = 1 + sum(
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
            if (
                pr.state is ProgressState.SNAPSHOT
                and self._now - pr.snapshot_sent_at > 2 * self.config.election_timeout[1]
            ):
                pr.become_probe()  # the transfer seems lost: try again
            self._send_heartbeat(peer, pr, self._read_seq)
        self._broadcast = True

    def propose(self, datas: Sequence[bytes]) -> tuple[int, int]:
        """Append client commands; returns (first index, term). Leader only."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self._transfer_target is not None:
            raise ProposalDropped("leadership transfer in progress")
        first = self.log.last_index() + 1
        self.log.append(
            [Entry(first + i, self.term, EntryKind.NORMAL, d) for i, d in enumerate(datas)]
        )
        self._broadcast = True
        if len(self.voters) == 1:
            self._maybe_commit()
        return first, self.term

    def read_index(self, ctx: int) -> None:
        """Ask for a linearizable read index; answered in `Ready.read_states`.

        ReadIndex (thesis §6.4): the index is the leader's commit index at the
        time of the request, valid once a quorum confirms the leader was still
        leader after the request arrived. A result of -1 means "refused".
        """
        if self.role is Role.LEADER:
            self._leader_read(None, ctx)
        elif self.leader_id is not None:
            # Batched: one ReadIndexRequest per Ready carries every ctx.
            self._forwarded_reads.append(ctx)
            self._forwarded_new.append(ctx)
        else:
            raise NotLeader(None)

    def _leader_read(self, src: str | None, ctx: int) -> None:
        if len(self.voters) == 1 and self._committed_in_term():
            self._answer_read(src, [ctx], self.log.committed)
        elif self._committed_in_term():
            self._reads_new.append((src, ctx))
        else:
            self._reads_waiting_commit.append((src, ctx))

    def _committed_in_term(self) -> bool:
        return self.log.term_at(self.log.committed) == self.term

    def _answer_read(self, src: str | None, ctxs: list[int], index: int) -> None:
        if src is None or src == self.id:
            self._read_states.extend((c, index) for c in ctxs)
        else:
            self._send(ReadIndexResponse(self.id, src, self.term, tuple(ctxs), index))

    def transfer_leadership(self, target: str) -> None:
        """Hand leadership to `target` (e.g. before a graceful shutdown)."""
        if self.role is not Role.LEADER or target not in self.progress:
            raise NotLeader(self.leader_id)
        self._transfer_target = target
        self._transfer_deadline = self._now + self.config.election_timeout[1]
        self._maybe_send_timeout_now()

    def _maybe_send_timeout_now(self) -> None:
        t = self._transfer_target
        if t is not None and self.progress[t].match_index == self.log.last_index():
            self._send(TimeoutNow(self.id, t, self.term))

    def retire(self) -> None:
        """Stop campaigning (the node is shutting down); it still follows and votes."""
        self._retired = True

    def report_snapshot(self, peer: str, ok: bool) -> None:
        """The runtime tells us a snapshot transfer to `peer` failed (or finished)."""
        pr = self.progress.get(peer)
        if pr is not None and pr.state is ProgressState.SNAPSHOT and not ok:
            pr.become_probe()

    def compact(self, index: int) -> None:
        """A snapshot covering entries <= index is durable: forget them."""
        self.log.compact(index, self.configuration)

    # ============================================================== messages
    def step(self, msg: Message, now: float) -> None:
        self._now = now
        if msg.dst != self.id or msg.src not in self.voters or msg.src == self.id:
            # Not for us, or from a node outside the configuration: a stray or
            # hostile sender must not move our term or win our vote.
            return
        if msg.term > self.term:
            if isinstance(msg, RequestVote):
                if self._in_lease() and not msg.transfer:
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
            elif isinstance(msg, AppendEntries | InstallSnapshot | TimeoutNow):
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
            case TimeoutNow():
                if self.role is not Role.LEADER and self.id in self.voters:
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
        elif isinstance(msg, ReadIndexResponse):
            self._read_states.extend((c, -1) for c in msg.ctxs if c in self._forwarded_reads)
            self._forwarded_reads = [c for c in self._forwarded_reads if c not in msg.ctxs]

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
    def _handle_append(self, msg: AppendEntries) -> None:
        # msg.term == self.term: this is the one leader of our term (Election Safety).
        if self.role is not Role.FOLLOWER and self.role is not Role.LEARNER:
            self._become_follower(self.term, msg.src)
        if self.leader_id != msg.src:
            self._fail_reads()
            self.leader_id = msg.src
        self._leader_contact = self._now
        self._reset_election_timer()
        log = self.log
        if msg.prev_log_index < log.committed:
            # Everything up to our commit index matches any current leader's log
            # (Leader Completeness), so the part of the message we have
            # committed is skipped and the rest is checked entry by entry.
            entries = [e for e in msg.entries if e.index > log.committed]
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
                log.append(entries[i:])
                break
            if t != e.term:
                tail = [x for x in log.entries if x.index > entries[-1].index]
                log.truncate_from(e.index)
                log.append(entries[i:])
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

    def _handle_install_snapshot(self, msg: InstallSnapshot) -> None:
        if self.role is not Role.FOLLOWER and self.role is not Role.LEARNER:
            self._become_follower(self.term, msg.src)
        self.leader_id = msg.src
        self._leader_contact = self._now
        self._reset_election_timer()
        meta = msg.meta
        if meta.index <= self.log.committed:
            # We already hold (and agree on) everything the snapshot covers.
            self._send(InstallSnapshotResponse(self.id, msg.src, self.term, self.log.committed))
            return
        keep = self.log.term_at(meta.index) == meta.term
        self.log.restore(meta, keep)
        if meta.config.members:
            self.configuration = meta.config
            self.voters = meta.config.voters
        self._pending_snapshot = (meta, keep)
        self._send(InstallSnapshotResponse(self.id, msg.src, self.term, meta.index))

    def _handle_read_response(self, msg: ReadIndexResponse) -> None:
        mine = [c for c in msg.ctxs if c in self._forwarded_reads]
        self._read_states.extend((c, msg.index) for c in mine)
        self._forwarded_reads = [c for c in self._forwarded_reads if c not in msg.ctxs]

    # -------------------------------------------------------------- leader side
    def _handle_append_response(self, msg: AppendEntriesResponse) -> None:
        if self.role is not Role.LEADER:
            return
        pr = self.progress.get(msg.src)
        if pr is None:
            return
        pr.recent_active = True
        if msg.read_seq > pr.read_ack:
            pr.read_ack = msg.read_seq
            self._release_reads()
        if not msg.success:
            self._handle_reject(pr, msg)
            return
        if pr.maybe_update(msg.match_index):
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            self._maybe_commit()
            if self._transfer_target == msg.src:
                self._maybe_send_timeout_now()
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = False
        if pr.next_index <= self.log.last_index() or (
            min(self.log.committed, pr.match_index) > pr.commit_sent
        ):
            self._broadcast = True

    def _handle_reject(self, pr: Progress, msg: AppendEntriesResponse) -> None:
        if msg.reject_index < pr.match_index:
            return  # stale: we already know it matches further than that
        if msg.reject_index == pr.match_index and pr.match_index > 0:
            # It no longer holds an entry it acknowledged: its disk was wiped
            # or replaced (operator action, outside Raft's fault model). Start
            # over from what it says it has, or it would never catch up. Our
            # commit index never moves back, so nothing committed is at risk.
            pr.match_index = max(0, min(pr.match_index, msg.conflict_index - 1))
        if pr.state is ProgressState.PROBE and msg.reject_index != pr.next_index - 1:
            return  # a reply to an older probe
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
        if pr is None:
            return
        pr.recent_active = True
        pr.maybe_update(msg.match_index)
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
            acks = 1 + sum(
                1 for p, pr in self.progress.items() if pr.read_ack >= rnd.seq and p in self.voters
            )
            if acks < self.quorum():
                return
            self._read_rounds.pop(0)
            self._answer_read(None, rnd.local, rnd.index)
            for src, ctxs in rnd.remote.items():
                self._answer_read(src, ctxs, rnd.index)

    def _maybe_commit(self) -> None:
        matches = sorted(
            [self.progress[p].match_index for p in self.voters if p != self.id]
            + [self._self_match() if self.id in self.voters else 0],
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
            for src, ctx in waiting:
                self._leader_read(src, ctx)

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
            prev = self.log.snapshot.index
            prev_term = self.log.snapshot.term
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
                if pr.next_index < self.log.first_index():
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
        assert prev_term is not None
        entries = self.log.slice(
            pr.next_index,
            min(self.log.last_index() + 1, pr.next_index + self.config.max_entries_per_msg),
            self.config.max_bytes_per_msg,
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
            pr.probe_sent = True

    def _send_snapshot(self, peer: str, pr: Progress) -> None:
        meta = self.log.snapshot
        pr.become_snapshot(meta.index, self._now)
        self._send(InstallSnapshot(self.id, peer, self.term, meta, self.log.committed))

    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)

    # ================================================================= output
    def ready(self) -> Ready:
        """Collect everything the caller must now persist, send and apply."""
        if self._forwarded_new:
            if self.leader_id is not None and self.role is not Role.LEADER:
                self._send(
                    ReadIndexRequest(
                        self.id, self.leader_id, self.term, tuple(self._forwarded_new)
                    )
                )
            self._forwarded_new = []
        if self.role is Role.LEADER:
            if self._reads_new:
                self._read_seq += 1
                rnd = _ReadRound(self._read_seq, self.log.committed, [], {})
                for src, ctx in self._reads_new:
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
