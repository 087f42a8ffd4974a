"""ReadIndex (thesis §6.4): leader read rounds and reads forwarded by followers.

Both are bounded (max_pending_reads) and time out (read_timeout).
"""

from __future__ import annotations

from dataclasses import dataclass

from trioraft.core._config import Role
from trioraft.core._errors import NotLeader
from trioraft.core._state import CoreState
from trioraft.core._types import (
    ReadIndexRequest,
    ReadIndexResponse,
)
from trioraft.core._validate import MAX_READ_CTXS

__all__ = ["ReadsMixin"]


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


class ReadsMixin(CoreState):
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

    def _handle_read_response(self, msg: ReadIndexResponse) -> None:
        # Only the leader we asked, in the term we asked it, may answer: any
        # other member could name a stale index and make us serve a stale read.
        for c in msg.ctxs:
            f = self._forwarded.get(c)
            if f is not None and f.leader == msg.src and f.term == msg.term:
                del self._forwarded[c]
                self._read_states.append((c, msg.index))

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

    def _flush_forwarded(self) -> None:
        """Follower: send the reads forwarded since the last Ready, in one request."""
        if not self._forwarded_new:
            return
        new, self._forwarded_new = self._forwarded_new, []
        if self.leader_id is not None and self.role is not Role.LEADER:
            for i in range(0, len(new), MAX_READ_CTXS):
                chunk = tuple(new[i : i + MAX_READ_CTXS])
                self._send(ReadIndexRequest(self.id, self.leader_id, self.term, chunk))

    def _start_read_round(self) -> None:
        """Leader: one heartbeat round confirms leadership for every new read."""
        if not self._reads_new:
            return
        self._read_seq += 1
        rnd = _ReadRound(
            self._read_seq, self.log.committed, min(d for _, _, d in self._reads_new), [], {}
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

    def _reads_after_commit(self) -> None:
        """Leader: reads waiting for our term's first commit may now start a round."""
        if self._reads_waiting_commit and self._committed_in_term():
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            self._reads_new.extend(waiting)
