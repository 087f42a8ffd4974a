"""The leader side of replication: flow control, commit, heartbeats, transfer (Raft §5.3-5.4)."""

from __future__ import annotations

from trioraft.core._config import Role
from trioraft.core._errors import NotLeader, TransferRefused
from trioraft.core._progress import Progress, ProgressState
from trioraft.core._state import CoreState
from trioraft.core._types import (
    AppendEntries,
    AppendEntriesResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    TimeoutNow,
)

__all__ = ["LeaderMixin"]


class LeaderMixin(CoreState):
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

    def caught_up(self, member_id: str) -> bool:
        """Leader only: `member_id` receives entries normally and holds every
        committed one -- the runtime's test before promoting a learner or
        transferring leadership to it."""
        pr = self.progress.get(member_id)
        return (
            self.role is Role.LEADER and pr is not None
            and pr.state is ProgressState.REPLICATE and pr.match_index >= self.log.committed
        )

    def promotable(self, member_id: str) -> bool:
        """Leader only: may learner `member_id` be promoted now? `caught_up`, or it
        acknowledged entries since the last quorum check and trails the commit
        index by at most one message of entries. Under a steady write load a
        learner's acknowledgements trail the majority's by a round trip, so
        `match >= commit` may hold at almost no instant the promotion is
        proposed (a promotion starved by load). Availability, not safety: any
        voter may lag; this only keeps a voter that cannot keep up out."""
        if self.caught_up(member_id):
            return True
        pr = self.progress.get(member_id)
        return (
            self.role is Role.LEADER and pr is not None and pr.recent_active
            and pr.state is ProgressState.REPLICATE
            and self.log.committed - pr.match_index <= self.config.max_entries_per_msg
        )

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
        self._reads_after_commit()
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
