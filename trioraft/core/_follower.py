"""The follower side of replication: AppendEntries and InstallSnapshot (Raft §5.3, §7)."""

from __future__ import annotations

from trioraft.core._config import Role
from trioraft.core._state import CoreState
from trioraft.core._types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
)
from trioraft.core._validate import config_of

__all__ = ["FollowerMixin"]


class FollowerMixin(CoreState):
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
