"""An in-process cluster of real `RaftNode`s for tests, like etcd's rafttest.

    async with open_cluster(3, seed=1) as cluster:
        leader = await cluster.wait_for_leader()
        await leader.propose([encode_command(Put("k", "v"))])
        cluster.network.isolate(leader.id)      # partitions, loss, delay
        await cluster.crash("n2")               # cancel its tasks, keep its storage
        await cluster.restart("n2")             # a fresh RaftNode on the same storage
        await cluster.wait_converged()          # every running node, same state

Nodes are named n1..nN and wired through a `MemoryNetwork` (the same
`Transport` contract as the production stream transport). Each runs its
`RaftNode.run` in the cluster's nursery under its own cancel scope. A crash
cancels that scope, which takes the node off the network: everything in
memory (the core, the state machine, pending requests) is gone, and only what
the node handed to its storage (`save`, `save_snapshot`, an installed
snapshot) survives into the next incarnation. `restart(id, wipe=True)` starts
it on fresh, empty storage instead (a replaced disk).

Meant for trio's `MockClock(autojump_threshold=0)` (pytest-trio's
`autojump_clock` fixture): elections take virtual time only. By default nodes
call their storage inline on the event loop (`RaftNode(run_disk_inline=True)`),
because waiting on a worker thread lets the mock clock jump mid-write; pass
`run_disk_inline=False` to exercise the threaded path (e.g. with SQLite).

With `membership=True` the cluster starts as production does (issue 12):
each node's storage holds an identity and the bootstrap CONFIG entry (member
id = name, one cluster id), the nodes run with no static voters, and their
transports' peers follow the configuration. `add(name)` starts a joiner
under a fresh member id and admits it (learner, then voter once caught up);
`remove(name)`; `start(name, wipe=True)` brings a node back on an empty disk
under a fresh member id, and `readmit(name)` runs the leader's automatic
re-admission. `cluster.nodes` is keyed by name; `node.id` is the member id.

Randomness is seeded: each incarnation of each node gets
`random.Random(f"{seed}:{id}:{incarnation}")` and the network gets
`random.Random(seed)`. (Trio's scheduler itself is not seeded, so runs are
deterministic only "ish".)
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from trioraft.bootstrap import BootstrapRecord, fresh_member_id
from trioraft.config import NodeConfig
from trioraft.core import ChangeInProgress, Configuration, InvalidChange, Member, NotLeader
from trioraft.errors import NoLeader, RaftError
from trioraft.node import NodeIdentity, RaftNode
from trioraft.storage import Identity, MemoryStorage, Storage
from trioraft.testing.streamnet import StreamNetwork
from trioraft.transport import MemoryNetwork, StreamConfig, Transport

__all__ = ["Cluster", "open_cluster"]

StorageFactory = Callable[[str], Storage]


def _memory_storage(node_id: str) -> Storage:
    return MemoryStorage()


def node_ids(n: int) -> list[str]:
    return [f"n{i}" for i in range(1, n + 1)]


def make_config(node_id: str, ids: Iterable[str], **overrides: Any) -> NodeConfig:
    """A NodeConfig with dummy listen/advertise values (nothing binds a socket)."""
    fields: dict[str, Any] = {
        "id": node_id,
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "advertise_url": f"http://{node_id}.invalid",
        "peers": {p: f"http://{p}.invalid" for p in ids if p != node_id},
        "data_dir": Path("data") / node_id,  # unused: storage comes from the factory
        "election_timeout_ms": (150, 300),
        "heartbeat_ms": 50,
        "cluster_token": None,
    }
    fields.update(overrides)
    return NodeConfig(**fields)


class Cluster:
    """N nodes on one MemoryNetwork. Build it with :func:`open_cluster`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        n: int,
        *,
        seed: int,
        storage_factory: StorageFactory,
        run_disk_inline: bool,
        config_overrides: dict[str, Any],
        transport: str = "memory",
        core_options: dict[str, Any] | None = None,
        membership: bool = False,
    ) -> None:
        self.core_options = core_options
        self.ids = node_ids(n)
        self.membership = membership
        self.seed = seed
        self.network: Any  # MemoryNetwork or StreamNetwork: partition/isolate/heal either way
        if transport == "memory":
            self.network = MemoryNetwork(random.Random(seed))
        elif transport == "stream":
            self.network = StreamNetwork(StreamConfig())
        else:
            raise ValueError(f"transport must be 'memory' or 'stream', not {transport!r}")
        self.storage_factory = storage_factory
        self.storages: dict[str, Storage] = {i: storage_factory(i) for i in self.ids}
        self._overrides = config_overrides
        self.configs = {i: self._make_config(i) for i in self.ids}
        self.identities: dict[str, NodeIdentity] = {}
        self.cluster_id = "legacy"
        if membership:
            config = Configuration.of(Member(i, True, i, self.url(i)) for i in self.ids)
            record = BootstrapRecord.new(config, [f"nonce-{seed}-{i}" for i in self.ids])
            self.cluster_id = record.cluster_id
            for i in self.ids:
                st = self.storages[i]
                st.save_identity(Identity(record.cluster_id, i, i, f"nonce-{seed}-{i}"))
                st.bootstrap(config)
                self.identities[i] = NodeIdentity(i, i, record.cluster_id)
        # The current (or last, if crashed) incarnation of each node.
        self.nodes: dict[str, RaftNode] = {}
        self.incarnation = dict.fromkeys(self.ids, 0)
        self._nursery = nursery
        self._run_disk_inline = run_disk_inline
        self._scopes: dict[str, trio.CancelScope] = {}
        self._stopped: dict[str, trio.Event] = {}
        # Set (and replaced) whenever a node starts or stops; see wait_until.
        self._changed = trio.Event()

    # ---------------------------------------------------------------- queries
    @property
    def up(self) -> list[str]:
        """Ids of the running nodes."""
        return [i for i in self.ids if i in self._scopes]

    def is_up(self, node_id: str) -> bool:
        return node_id in self._scopes

    def running(self) -> list[RaftNode]:
        return [self.nodes[i] for i in self.up]

    def leaders(self) -> list[RaftNode]:
        """Every running node that believes it leads (a deposed one may still)."""
        return [n for n in self.running() if n.is_leader]

    def leader(self) -> RaftNode | None:
        """The running leader of the highest term, or None."""
        leaders = self.leaders()
        if not leaders:
            return None
        return max(leaders, key=lambda n: n._c.term)

    def followers(self) -> list[RaftNode]:
        return [n for n in self.running() if not n.is_leader]

    def digests(self) -> dict[str, str]:
        return {n.id: n.kv.state_digest() for n in self.running()}

    # ------------------------------------------------------------- lifecycle
    def _transport(self, node_id: str, member_id: str) -> Transport:
        if self.membership:
            # Its peers follow the configuration (the node adds them).
            t: Transport = self.network.transport(member_id, [])
        else:
            t = self.network.transport(node_id, [p for p in self.ids if p != node_id])
        return t

    def _changed_now(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def start(self, node_id: str, *, wipe: bool = False) -> RaftNode:
        """Start a fresh incarnation of `node_id` on its storage (new storage if wipe)."""
        if self.is_up(node_id):
            raise RuntimeError(f"{node_id} is already running")
        if wipe:
            self.storages[node_id] = self.storage_factory(node_id)
            if self.membership:
                # A lost disk: the node comes back as a new incarnation.
                self._new_incarnation(node_id)
        self.incarnation[node_id] += 1
        rng = random.Random(f"{self.seed}:{node_id}:{self.incarnation[node_id]}")
        ident = self.identities.get(node_id)
        node = RaftNode(
            self.configs[node_id],
            self.storages[node_id],
            self._transport(node_id, ident.member_id if ident else node_id),
            rng,
            run_disk_inline=self._run_disk_inline,
            core_options=self.core_options,
            identity=ident,
        )
        self.nodes[node_id] = node
        scope = trio.CancelScope()
        stopped = trio.Event()
        self._scopes[node_id] = scope
        self._stopped[node_id] = stopped

        async def run(task_status: trio.TaskStatus[None]) -> None:
            try:
                with scope:
                    await node.run(task_status=task_status)
            finally:
                self._scopes.pop(node_id, None)
                stopped.set()

        # The node's transport joins the network once the node has recovered
        # (a snapshot chunk delivered before that would find no core), and
        # leaves it when the node's tasks end.
        await self._nursery.start(run)
        self._changed_now()
        if self.membership:
            self._nursery.start_soon(self._seed, node_id, node)
        return node

    restart = start

    # ------------------------------------------------------ membership (issue 12)
    def _make_config(self, name: str) -> NodeConfig:
        if not self.membership:
            return make_config(name, self.ids, **self._overrides)
        # No --peer flags: every URL comes from the configuration, as for a
        # joiner; a member's URL names its member id (what StreamNetwork dials).
        return make_config(name, [name], **{"advertise_url": self.url(name), **self._overrides})

    @staticmethod
    def url(member_id: str) -> str:
        return f"http://{member_id}.invalid:1"

    def _new_incarnation(self, name: str) -> str:
        member_id = fresh_member_id(name)
        self.storages[name].save_identity(Identity(self.cluster_id, member_id, name, ""))
        self.identities[name] = NodeIdentity(member_id, name, self.cluster_id)
        return member_id

    async def _seed(self, name: str, node: RaftNode) -> None:
        """What the server's watcher does for a node being admitted: learn the
        leader's configuration once it names us (then our transport accepts
        the leader's streams, and the leader's ours)."""
        while self.nodes.get(name) is node and self.is_up(name):
            core = node.core
            if core is not None and node.id not in core.voters:
                leader = self.leader()
                if leader is not None and leader.core is not None:
                    cfg = leader.core.configuration
                    if node.id in cfg.ids and node.id not in core.configuration.ids:
                        node.learn_seed(cfg)
            await trio.sleep(0.05)

    def member_id(self, name: str) -> str:
        return self.identities[name].member_id if name in self.identities else name

    async def on_leader(self, op: Callable[[RaftNode], Any], timeout_s: float = 30.0) -> Any:
        """Run `await op(leader)`, retrying (on the new leader) while it is refused
        with NotLeader / NoLeader / ChangeInProgress (all definite: nothing changed)."""
        with trio.fail_after(timeout_s):
            while True:
                leader = await self.wait_for_leader(timeout_s=math.inf)
                try:
                    return await op(leader)
                except (NotLeader, NoLeader, ChangeInProgress):
                    await trio.sleep(0.05)

    async def add(self, name: str, *, promote: bool = True, timeout_s: float = 60.0) -> RaftNode:
        """Start a new node `name` on empty storage and add it (then promote it)."""
        if name not in self.ids:
            self.ids.append(name)
            self.incarnation[name] = 0
            self.configs[name] = self._make_config(name)
        self.storages[name] = self.storage_factory(name)
        member_id = self._new_incarnation(name)
        node = await self.start(name)
        url = self.url(member_id)
        await self.on_leader(
            lambda leader: leader.membership.add_learner(name, member_id, url, 10.0), timeout_s
        )
        if promote:
            await self.promote(name, timeout_s=timeout_s)
        return node

    async def promote(self, name: str, timeout_s: float = 60.0) -> None:
        member_id = self.member_id(name)

        async def op(leader: RaftNode) -> None:
            await leader.membership.wait_caught_up(member_id, timeout_s)
            await leader.membership.promote(name, 10.0)

        await self.on_leader(op, timeout_s)

    async def remove(self, name: str, timeout_s: float = 60.0) -> None:
        """Remove `name`; if it runs, it learns it as the server's watcher would
        tell it (from the leader's committed configuration) and sets `removed`."""
        await self.on_leader(lambda leader: leader.membership.remove(name, 10.0), timeout_s)
        gone = self.nodes.get(name)
        if gone is not None and self.is_up(name):
            await self.wait_until(lambda: self._tell_removed(gone), timeout_s)

    def _tell_removed(self, gone: RaftNode) -> bool:
        leader = self.leader()
        if leader is not None and leader is not gone:
            roster = leader.membership.roster
            gone.membership.peer_committed(roster.committed_index, roster.committed)
        return gone.membership.removed is not None

    async def readmit(self, name: str, timeout_s: float = 60.0) -> None:
        """The leader's automatic re-admission of `name` (started with wipe=True):
        remove its old member id, add the new one as a learner, promote it."""
        member_id = self.member_id(name)
        url = self.url(member_id)

        async def op(leader: RaftNode) -> str:
            while True:
                try:
                    return await leader.membership.readmit(name, member_id, url, 10.0,
                                                           leader.spawn)  # fmt: skip
                except InvalidChange as exc:
                    # The old incarnation answered the leader moments ago (it was
                    # just crashed): the leader refuses until it has been silent
                    # for a check-quorum period, as the server's watcher retries.
                    if "is alive" not in str(exc):
                        raise
                    await trio.sleep(0.1)

        await self.on_leader(op, timeout_s)
        await self.wait_until(lambda: self._is_voter(member_id), timeout_s)

    def _is_voter(self, member_id: str) -> bool:
        leader = self.leader()
        return (leader is not None and leader.core is not None
                and member_id in leader.core.voters and leader.core.change_committed())

    async def crash(self, node_id: str) -> None:
        """Stop `node_id` abruptly: its tasks are cancelled, only its storage survives."""
        if not self.is_up(node_id):
            raise RuntimeError(f"{node_id} is not running")
        self._scopes[node_id].cancel()
        await self._stopped[node_id].wait()
        self._changed_now()

    async def crash_all(self) -> None:
        for i in self.up:
            await self.crash(i)

    # ------------------------------------------------------------------ waits
    async def _any_change(self) -> None:
        """Return when any node's leader changes or a node starts or stops."""

        async def wait_timeout(nursery: trio.Nursery) -> None:
            await trio.sleep(self.configs[self.ids[0]].heartbeat_ms / 1000)
            nursery.cancel_scope.cancel()

        events = [self._changed, *(n._leader_changed for n in self.running())]
        async with trio.open_nursery() as nursery:

            async def wait(ev: trio.Event) -> None:
                await ev.wait()
                nursery.cancel_scope.cancel()

            for ev in events:
                nursery.start_soon(wait, ev)
            # Safety net for predicates that change without a leader change
            # (a term, an index): re-check at least every heartbeat interval.
            nursery.start_soon(wait_timeout, nursery)

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Wait until `predicate()` holds; it is re-checked on every leader change.

        Raises TimeoutError after `timeout_s` seconds (virtual, under MockClock).
        """
        with trio.fail_after(timeout_s):
            while not predicate():
                await self._any_change()

    async def wait_for_leader(
        self, timeout_s: float = 10.0, *, among: Iterable[str] | None = None
    ) -> RaftNode:
        """Wait until a running node in `among` (default: any) leads, and return it.

        With `among`, the leader must also be the leader its fellow members of
        `among` follow (a majority side's leader, not a deposed one).
        """
        group = set(self.ids if among is None else among)

        def find() -> RaftNode | None:
            members = [m for m in self.running() if m.id in group]
            for n in members:
                if not n.is_leader:
                    continue
                term = n._c.term
                # Every other member follows n, or is behind (a deposed leader
                # that has not heard of the new term yet).
                if all(m is n or m.leader_id == n.id or m._c.term < term for m in members):
                    return n
            return None

        await self.wait_until(lambda: find() is not None, timeout_s)
        found = find()
        assert found is not None
        return found

    async def wait_applied(self, index: int, timeout_s: float = 10.0) -> None:
        """Wait until every running node has applied `index`."""
        with trio.fail_after(timeout_s):
            for n in self.running():
                await n.wait_applied(index)

    async def wait_converged(self, timeout_s: float = 30.0) -> str:
        """Wait until every running node has applied the same log; return the digest.

        A leader's read barrier fixes an index that covers every write
        acknowledged so far; once every node has applied it and no write is
        in flight, all state machines must be equal.
        """
        with trio.fail_after(timeout_s):
            while True:
                leader = await self.wait_for_leader(timeout_s=math.inf)
                try:
                    index = await leader.read_barrier()
                except RaftError:
                    await trio.sleep(leader.config.heartbeat_ms / 1000)
                    continue
                for n in self.running():
                    await n.wait_applied(index)
                applied = {n.kv.applied_index for n in self.running()}
                digests = set(self.digests().values())
                if len(applied) == 1 and len(digests) == 1:
                    return digests.pop()
                # Something committed after the barrier (a new leader's no-op):
                # barrier again, at a higher index.


@asynccontextmanager
async def open_cluster(
    n: int = 3,
    *,
    seed: int = 0,
    storage_factory: StorageFactory = _memory_storage,
    run_disk_inline: bool = True,
    start: bool = True,
    transport: str = "memory",
    core_options: dict[str, Any] | None = None,
    membership: bool = False,
    **config_overrides: Any,
) -> AsyncIterator[Cluster]:
    """Run an n-node cluster (ids n1..nN) for the duration of the block.

    `transport="memory"` (default) links the nodes by a `MemoryNetwork`
    (message-level faults: partitions, loss, delay); `transport="stream"` by
    production `StreamTransport`s over in-memory pipes (`StreamNetwork`:
    partitions cut the streams). `core_options` are extra CoreConfig fields
    (e.g. `{"max_entries_per_msg": 4}`).

    `config_overrides` are NodeConfig fields (e.g. `snapshot_entries=20`,
    `request_timeout_s=1.0`, `election_timeout_ms=(150, 300)`). With
    `start=False` no node is started (call `cluster.start(id)` yourself).
    On exit every node is cancelled; storage is left open for inspection.
    """
    async with trio.open_nursery() as nursery:
        cluster = Cluster(
            nursery,
            n,
            seed=seed,
            storage_factory=storage_factory,
            run_disk_inline=run_disk_inline,
            config_overrides=config_overrides,
            transport=transport,
            core_options=core_options,
            membership=membership,
        )
        if start:
            for i in cluster.ids:
                await cluster.start(i)
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()
