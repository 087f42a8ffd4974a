"""The simulation's workload and faults: clients (direct and relayed through
followers), network and crash faults, and an operator's membership changes."""

from __future__ import annotations

from trioraft.core import (
    ConfChange,
    Configuration,
    Member,
    NotLeader,
    ProposalDropped,
    RaftError,
    Role,
)
from trioraft.testing._sim_model import SimState, _Node

__all__ = ["Operations"]


class Operations(SimState):
    def _client(self) -> None:
        """A client proposes at a random node (followers refuse) or asks for a read."""
        leaders = [n for n in self.nodes.values() if n.up and n.core.role is Role.LEADER]
        if leaders and self.rng.random() < 0.7:
            n = self.rng.choice(leaders)  # a client that found the leader
        else:
            n = self.nodes[self.rng.choice(self.ids)]
        if not n.up:
            return
        if self.rng.random() < 0.25:
            self._ctx += 1
            try:
                n.core.read_index(self._ctx)
            except NotLeader:
                return
            self.pending_reads[self._ctx] = self.max_commit
        else:
            self._proposal += 1
            data = f"{self.seed}:{self._proposal}".encode()
            if n.core.role is Role.LEADER:
                self._propose_batch(n, [data])
            elif self.relay and n.core.leader_id is not None:
                # The follower's runtime relays it to the leader, batched with
                # other clients' writes (a burst of them: many clients).
                if not self.relay_buf[n.id]:
                    self._push(self.now + self.rng.uniform(0.005, 0.05), "relay", n.id)
                self.relay_buf[n.id].append(data)
                for _ in range(self.rng.randint(0, 7)):
                    self._proposal += 1
                    self.relay_buf[n.id].append(f"{self.seed}:{self._proposal}".encode())
            return
        self.after_input(n)

    def _relay(self, nid: str) -> None:
        """A follower sends its buffered writes to the leader it knows, as one batch."""
        n = self.nodes.get(nid, self._nobody)
        batch, self.relay_buf[nid] = self.relay_buf.get(nid, []), []
        leader = n.core.leader_id if n.up else None
        if not batch or leader is None or leader == nid or (nid, leader) in self.blocked:
            return  # not sent: the clients are told "no leader" (never applied)
        if self.faulty and self.rng.random() < self.drop:
            return  # lost: never proposed
        lo, hi = self.delay
        self._push(self.now + lo + self.rng.random() * (hi - lo), "relayed", (leader, batch))

    def _propose_batch(self, n: _Node, datas: list[bytes]) -> None:
        try:
            first, term = n.core.propose(datas)
        except (NotLeader, ProposalDropped):
            return  # refused before anything was appended: a definite "not applied"
        for i, d in enumerate(datas):
            self.pending[(n.id, first + i)] = (term, d, datas)
        self.after_input(n)

    def _fault(self) -> None:
        r = self.rng
        self.result.faults += 1
        kind = r.choice(
            ["partition", "isolate_leader", "links", "ring", "crash", "crash_leader", "heal",
             "restart"]
        )
        if kind == "partition":
            ids = self.ids[:]
            r.shuffle(ids)
            cut = r.randint(1, len(ids) - 1)
            a, b = set(ids[:cut]), set(ids[cut:])
            self.blocked = {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
        elif kind == "links":
            # Random one-way link failures (asymmetric partitions).
            p = r.uniform(0.1, 0.5)
            self.blocked = {(a, b) for a in self.ids for b in self.ids if a != b and r.random() < p}
        elif kind == "ring":
            # Jepsen's "majorities ring": every node sees a majority (itself and
            # its nearest neighbours on a shuffled ring), but no two see the same.
            ids = self.ids[:]
            r.shuffle(ids)
            size = len(ids)
            d = 1 if size <= 5 else 2  # 5 nodes see 3, 7 see 5: a majority each
            pos = {x: i for i, x in enumerate(ids)}
            self.blocked = {
                (a, b) for a in ids for b in ids
                if min((pos[a] - pos[b]) % size, (pos[b] - pos[a]) % size) > d
            }
        elif kind == "isolate_leader":
            leaders = [n.id for n in self.nodes.values() if n.up and n.core.role is Role.LEADER]
            if leaders:
                lid = leaders[0]
                self.blocked = {(lid, x) for x in self.ids} | {(x, lid) for x in self.ids}
        elif kind in ("crash", "crash_leader"):
            up = [n for n in self.nodes.values() if n.up]
            if kind == "crash_leader":
                up = [n for n in up if n.core.role is Role.LEADER] or up
            if up:
                n = r.choice(up)
                n.crash()
                delay = r.uniform(0.25, 3.0) * self.config.fault_interval
                self._push(self.now + delay, "restart", n.id)
        elif kind == "heal":
            self.blocked = set()
        else:
            for n in self.nodes.values():
                if not n.up:
                    n.restart()

    def _leader(self) -> _Node | None:
        leaders = [n for n in self.nodes.values() if n.up and n.core.role is Role.LEADER]
        return max(leaders, key=lambda n: n.core.term) if leaders else None

    def _new_process(self, joiner: bool, node_id: str | None = None) -> _Node:
        if node_id is None:
            self._fresh += 1
            node_id = f"j{self._fresh}"
        n = _Node(self, node_id, joiner=joiner)
        self.nodes[node_id] = n
        self.ids = list(self.nodes)
        self.relay_buf[node_id] = []
        self.commit_seen[node_id] = n.core.commit_index
        self.checked.pop(node_id, None)
        self._arm(n)
        return n

    def _operator(self) -> None:
        """An operator's membership action, at whoever leads now."""
        ld = self._leader()
        if ld is None:
            return
        core, r = ld.core, self.rng
        cfg = core.configuration
        voters = [v for v in sorted(cfg.voters) if v not in self.gone]
        ops: list[tuple[str, str]] = []
        ops += [("remove", m) for m in sorted(cfg.ids) if m in self.gone]  # a lost disk
        ops += [("add", j) for j in self.joiners]
        # An operator promotes caught-up learners (the core refuses others).
        ops += [("promote", m) for m in sorted(cfg.learners)
                if m not in self.gone and (core.caught_up(m) or r.random() < 0.2)]
        if len(cfg.voters) > 3:
            ops.append(("remove", r.choice(sorted(cfg.voters))))  # the leader, sometimes
        ops += [("remove", m) for m in sorted(cfg.learners)]
        if len(cfg.ids) < len(self.initial_ids) + 2:
            ops.append(("grow", ""))
        ops += [("transfer", v) for v in voters if v != ld.id]
        ops.append(("wipe", r.choice(sorted(cfg.ids))))
        op, target = r.choice(ops)
        # Operators' scripts run changes back to back (add then promote, or
        # two removals): the core must refuse the second while the first is
        # in flight. Sometimes a second change of the same kind follows.
        todo = [(op, target)]
        if op in ("remove", "promote") and r.random() < 0.5:
            todo += [o for o in ops if o[0] == op and o[1] != target][:1]
        for op, target in todo:
            self._change(ld, op, target)
        self.after_input(ld)

    def _change(self, ld: _Node, op: str, target: str) -> None:
        core = ld.core
        cfg = core.configuration
        if op in ("remove", "promote") and not self._keeps_live_quorum(cfg, op, target):
            return  # as etcd's strict reconfig check: never strand the cluster
        try:
            if op == "remove":
                core.propose_change(ConfChange.remove(target))
            elif op == "add":
                core.propose_change(ConfChange.add_learner(Member(target)))
                self.joiners.remove(target)
            elif op == "grow":
                self._fresh += 1
                core.propose_change(ConfChange.add_learner(Member(f"j{self._fresh}")))
                self._new_process(joiner=True, node_id=f"j{self._fresh}")
            elif op == "promote":
                core.propose_change(ConfChange.promote(target))
                if self.rng.random() < 0.3:
                    # The leader dies just after proposing: the change may
                    # reach a minority only (the setup of Ongaro's scenario).
                    self._push(self.now + self.rng.uniform(0.0, 0.01), "crash", ld.id)
            elif op == "transfer":
                core.transfer_leadership(target)
            else:
                self._wipe(target, cfg)
        except RaftError:
            pass  # refused: nothing changed (one change at a time, not caught up, ...)

    def _keeps_live_quorum(self, cfg: Configuration, op: str, target: str) -> bool:
        """Would the voters whose disks survive still be a quorum after the change?"""
        voters = set(cfg.voters)
        if op == "remove":
            voters.discard(target)
        else:
            voters.add(target)
        return len(voters - self.gone) >= len(voters) // 2 + 1

    def _wipe(self, target: str, cfg: Configuration) -> None:
        """A node loses its disk. It returns empty under a fresh member id and
        waits to be re-admitted -- or, broken ("wipe_keeps_id"), under its old
        id, as a voter that forgot its votes and acknowledged entries.

        Only while a quorum of the current configuration's voters keeps its
        disk (issue 12: nothing committed may be lost while fewer than a
        quorum lost their disks).
        """
        n = self.nodes.get(target)
        ld = self._leader()
        if n is None or n.core.role is Role.LEADER or ld is None or not ld.core.change_committed():
            # Not while a change is in flight: nodes may still use the previous
            # configuration, and a disk that is a quorum member there can be
            # what an election needs (found by the simulation, seed 1660 of
            # 2000: a removed leader stepped down before its removal committed).
            return
        lost = sum(1 for v in cfg.voters if v in self.gone) + (target in cfg.voters)
        if len(cfg.voters) - lost < len(cfg.voters) // 2 + 1:
            return
        n.crash()
        del self.nodes[target]
        self.ids = list(self.nodes)
        if "wipe_keeps_id" in self.config.unsafe and target in self.initial_ids:
            self._new_process(joiner=False, node_id=target)  # amnesia under its old id
            return
        self.gone.add(target)
        self.joiners.append(self._new_process(joiner=True).id)
