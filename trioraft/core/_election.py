"""Elections: PreVote, votes, the leader lease and transfer votes (Raft §5.2, thesis §9.6)."""

from __future__ import annotations

from trioraft.core._config import Role
from trioraft.core._state import CoreState
from trioraft.core._types import (
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from trioraft.core._validate import MAX_TERM_OR_INDEX

__all__ = ["ElectionMixin"]


class ElectionMixin(CoreState):
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
