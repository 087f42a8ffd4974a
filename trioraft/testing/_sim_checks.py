"""The simulation's checks: Raft's safety properties, answers against fates,
convergence under load. Each raises SafetyViolation."""

from __future__ import annotations

from trioraft.core import (
    Configuration,
    Entry,
    EntryKind,
    Ready,
    Role,
)
from trioraft.testing._sim_model import SafetyViolation, SimState, _digest, _Node

__all__ = ["Checks"]


class Checks(SimState):
    def _apply(self, n: _Node, e: Entry) -> None:
        d = _digest(e)
        assert e.index == len(n.applied) + 1, "applied out of order"
        # State Machine Safety: every node applies the same entry at an index.
        prev = self.committed.get(e.index)
        if prev is not None and prev != d:
            raise SafetyViolation(
                f"state machine safety: {n.id} applied a different entry at {e.index}"
            )
        self.committed[e.index] = d
        n.applied.append(d)
        if e.kind is EntryKind.NORMAL:
            self.committed_data.add(e.data)
            if self.answers.get(e.data) == "dropped":
                raise SafetyViolation(
                    f"answer contradicts fate: a write was answered 'dropped' but {n.id} "
                    f"applied it at {e.index}"
                )
        self._settle(n, e)

    def _settle(self, n: _Node, e: Entry) -> None:
        """The leader's runtime answers a write when it applies its index.

        The correct rule (issue 11 #1): each write is settled by its *own*
        entry -- applied with the term it was appended in: its result;
        another entry took the index: "dropped", for that write alone.
        """
        p = self.pending.pop((n.id, e.index), None)
        if p is None:
            return
        term, data, batch = p
        if e.term == term:
            self.answers.setdefault(data, "ok")
            return
        self._answer_dropped(data)
        if "settle_batch_by_first" in self.config.unsafe:
            # Broken (the old _settle_proposal): the whole batch is answered
            # 503 at its first replaced entry, although a prefix applied.
            for other in batch:
                if self.answers.get(other) == "ok" or other not in self.answers:
                    self.answers[other] = "dropped"
                    if other in self.committed_data:
                        raise SafetyViolation(
                            "answer contradicts fate: a write was answered 'dropped' but "
                            "was applied"
                        )

    def _answer_dropped(self, data: bytes) -> None:
        if data in self.committed_data:
            raise SafetyViolation(
                "answer contradicts fate: a write was answered 'dropped' but was applied"
            )
        self.answers[data] = "dropped"

    def forget_pending(self, node_id: str) -> None:
        """A crashed leader's runtime loses its reply slots: those answers are unknown."""
        for key in [k for k in self.pending if k[0] == node_id]:
            del self.pending[key]

    def _check_ready(self, n: _Node, rd: Ready) -> None:
        log = n.core.log
        for e in rd.entries:
            prev_term = log.term_at(e.index - 1)
            key = (e.index, e.term)
            val = (_digest(e), prev_term)
            seen = self.entries_seen.get(key)
            if seen is None:
                self.entries_seen[key] = val
            elif seen[0] != val[0] or (
                seen[1] is not None and val[1] is not None and seen[1] != val[1]
            ):
                raise SafetyViolation(
                    f"log matching: {n.id} holds a different entry/history at "
                    f"index {e.index} term {e.term}"
                )

    def _check_node(self, n: _Node) -> None:
        core = n.core
        c = core.commit_index
        if c < self.commit_seen[n.id]:
            raise SafetyViolation(f"{n.id} commit index moved back {self.commit_seen[n.id]}->{c}")
        self.commit_seen[n.id] = c
        if c > self.max_commit:
            self.max_commit = c
            self._check_commit_is_durable(n, c)
        if core.applied_index > c:
            raise SafetyViolation(f"{n.id} applied {core.applied_index} > committed {c}")
        if core.role is Role.LEADER:
            other = self.leaders.setdefault(core.term, n.id)
            if other != n.id:
                raise SafetyViolation(f"election safety: {other} and {n.id} lead term {core.term}")
            if n.led_term != core.term:
                n.led_term = core.term
                self.result.elections += 1
                self._check_completeness(n)
                if self.membership and self.faulty:
                    # An operator retrying a change hits the new leader at once
                    # (before its no-op commits, sometimes).
                    self._push(self.now, "member", None)
            # A leader's match_index for a follower never moves back within its
            # term: the commit rule counts it.
            seen = self.matches.setdefault((n.id, core.term), {})
            for p, pr in core.progress.items():
                if pr.match_index < seen.get(p, 0):
                    raise SafetyViolation(
                        f"{n.id}'s match_index for {p} moved back {seen[p]}->{pr.match_index} "
                        f"in term {core.term}"
                    )
                seen[p] = pr.match_index
        # Committed entries never change, and the local log agrees with them.
        log = core.log
        # Entries newly committed since the last check (each is checked once
        # per incarnation: a committed entry can never change afterwards
        # without this check, or Log Matching's, seeing it).
        lo = max(log.offset + 1, c - 64, self.checked.get(n.id, 0) + 1)
        self.checked[n.id] = c
        for i in range(lo, c + 1):
            d = _digest(log.entry(i))
            prev = self.committed.get(i)
            if prev is None:
                self.committed[i] = d
            elif prev != d:
                raise SafetyViolation(f"{n.id} committed a different entry at index {i}")

    def _log_summary(self, n: _Node) -> tuple[int, int, int, int | None]:
        """(last term, last index, snapshot index, term at the checked index) as a
        node would vote after a crash-free timeout (its in-memory log) or, if
        down, after restarting (its disk)."""
        if n.up:
            log = n.core.log
            return log.last_term(), log.last_index(), log.snapshot.index, None
        d = n.disk
        last = d.entries[-1] if d.entries else None
        lt = last.term if last else d.compacted[1]
        li = last.index if last else d.compacted[0]
        return lt, li, d.snapshot.index, None

    def _holds(self, n: _Node, index: int, term: int) -> bool:
        if n.up:
            log = n.core.log
            return index <= log.snapshot.index or log.term_at(index) == term
        d = n.disk
        if index <= d.snapshot.index:
            return True
        return any(e.index == index and e.term == term for e in d.entries)

    def _config_of(self, n: _Node) -> Configuration:
        """The configuration a node would use now (down: after restarting from disk)."""
        if n.up:
            return n.core.configuration
        d = n.disk
        cfg = d.snapshot.config if d.snapshot.config.members else (
            Configuration() if n.joiner else Configuration.of_voters(self.initial_ids)
        )
        for e in d.entries:
            if e.index > d.snapshot.index and e.kind is EntryKind.CONFIG:
                cfg = Configuration.decode(e.data)
        return cfg

    def _check_commit_is_durable(self, n: _Node, index: int) -> None:
        """Commit safety: no node lacking a committed entry could win an election.

        Raft's Leader Completeness proof implies, for every reachable state,
        that a node missing a committed entry has a log less up to date than
        some member of every quorum. If a node lacking it could gather a
        quorum of votes now, some schedule would elect it and lose the entry:
        the commit was premature (this is what the paper's Figure 8 shows).
        Across membership changes: a candidate asks the voters of *its*
        configuration, a voter grants only to a voter of *its own*, and a
        process whose disk is gone votes for nobody.
        """
        term = n.core.log.term_at(index)
        if term is None:
            return
        summaries = {m.id: self._log_summary(m) for m in self.nodes.values()}
        configs = {m.id: self._config_of(m) for m in self.nodes.values()}
        for x in self.nodes.values():
            xcfg = configs[x.id]
            if x.id not in xcfg.voters or self._holds(x, index, term):
                continue
            xt, xi, _, _ = summaries[x.id]
            voters = sum(
                1 for y in xcfg.voters
                if y in summaries and (y == x.id or x.id in configs[y].voters)
                and (xt, xi) >= summaries[y][:2]
            )
            if voters >= len(xcfg.voters) // 2 + 1:
                raise SafetyViolation(
                    f"premature commit: {n.id} committed index {index} (term {term}) but "
                    f"{x.id}, which lacks it, could win an election with {voters} votes"
                )

    def _check_completeness(self, n: _Node) -> None:
        """Leader Completeness: a new leader's log holds every committed entry."""
        log = n.core.log
        for i, d in self.committed.items():
            if i <= log.snapshot.index:
                continue
            if i > log.last_index() or _digest(log.entry(i)) != d:
                raise SafetyViolation(
                    f"leader completeness: leader {n.id} of term {n.core.term} lacks "
                    f"committed entry {i}"
                )

    def _check_read(self, n: _Node, ctx: int, index: int) -> None:
        floor = self.pending_reads.pop(ctx, None)
        if floor is None or index < 0:
            return
        self.result.reads += 1
        if index < floor:
            raise SafetyViolation(
                f"stale read index: {n.id} got {index} but {floor} was committed when it began"
            )

    def _members(self) -> list[_Node]:
        """Processes that belong to the latest configuration (as the most
        advanced node sees it): they must all keep up. Removed nodes and
        joiners not yet admitted need not."""
        best = max(self.nodes.values(), key=lambda n: (n.core.commit_index, n.core.term))
        ids = best.core.configuration.ids
        return [n for n in self.nodes.values() if n.id in ids]

    def _check_converged(self) -> None:
        """Issue 11 #2: every node applies what was committed shortly after the
        faults stopped within a bound, *while proposals continue* (a follower
        behind a slow link must not need the writes to stop to catch up)."""
        target = self._converge_target
        for n in self._members():
            if n.core.applied_index < target:
                raise SafetyViolation(
                    f"liveness under load: {n.id} applied {n.core.applied_index} < {target} "
                    f"{self.config.converge_bound}s after it was committed, while proposals "
                    f"continued (slow link to {self.slow_node})"
                )

    def _check_fates(self) -> None:
        """No answer contradicts its write's fate, now that everything converged."""
        for data, answer in self.answers.items():
            applied = data in self.committed_data
            if answer == "ok" and not applied:
                raise SafetyViolation("answer contradicts fate: 'ok' for a write never applied")
            if answer == "dropped" and applied:
                raise SafetyViolation("answer contradicts fate: 'dropped' for an applied write")
