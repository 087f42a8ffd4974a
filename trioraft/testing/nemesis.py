"""The chaos run's nemesis: a seeded schedule of faults drawn from a registry of kinds.

Every few seconds (``fault_interval``) the nemesis either undoes its oldest
active fault or starts a new one, at most two at a time. Each fault kind is a
:class:`FaultKind` in :data:`FAULTS`; its ``inject`` coroutine applies the fault
and returns an :class:`Active` (what it did, and how to undo it), or None when
it does not apply right now. The built-in kinds:

=========  ===============================================================
kill       SIGKILL the leader (half the time) or a random node; with no node
           down, 15 % of kills take every node at once. Undo: restart.
pause      SIGSTOP the leader or a random node. Undo: SIGCONT.
partition  a random minority/majority split, the leader isolated, or a bridge.
delay      latency (20-800 ms) and/or loss (5-20 %) on one node's links or on
           half the links.
slow       a slow link: latency plus a bandwidth limit per direction (token
           bucket in the proxy) on one follower's links, or from the leader to
           every follower, so followers lag for real and snapshots crawl.
=========  ===============================================================

Rules: kinds that stop processes (``stops_nodes``) never take down more than a
minority; at most one active fault per ``group`` (two partitions, or a delay and
a slow link on the same links, would undo each other). After undoing its last
active fault the nemesis sometimes rests (``quiet_chance``) for ``settle`` plus
a few seconds: these fault-free stretches are what the healthy-period check
inspects. Every start and stop is a :class:`FaultEvent` with its time and the
nodes whose processes it stopped.

Adding a kind (the membership nemesis, say) takes a module that registers it::

    from trioraft.testing.nemesis import Active, FaultKind, Nemesis, register

    async def inject(nem: Nemesis) -> Active | None:
        node = await nem.target()
        ...                                   # apply the fault
        return Active(f"remove {node}", undo)  # undo: sync or async, no arguments

    register(FaultKind("membership", inject, group="membership", default=False))

and an import of that module in ``trioraft.testing.chaos`` (``NEMESIS_MODULES``).
``--faults`` then accepts the new name; ``default=True`` puts it in the default mix.
"""

from __future__ import annotations

import contextlib
import inspect
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from trioraft.testing.procs import ProcCluster
from trioraft.testing.proxy import ProxyMesh

__all__ = [
    "FAULTS",
    "Active",
    "FaultEvent",
    "FaultKind",
    "Nemesis",
    "NemesisConfig",
    "default_kinds",
    "register",
]

Undo = Callable[[], Awaitable[None] | None]


@dataclass
class FaultEvent:
    t: float
    action: str  # "start" | "stop" | "heal" | "crash" | "quiet" | "error" | "sabotage"
    kind: str
    detail: str
    nodes: tuple[str, ...] = ()
    """For process faults (kill, pause, crash): the nodes whose processes it stopped."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": round(self.t, 4), "action": self.action,
                               "kind": self.kind, "detail": self.detail}  # fmt: skip
        if self.nodes:
            out["nodes"] = list(self.nodes)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaultEvent:
        return cls(float(d["t"]), str(d["action"]), str(d["kind"]), str(d["detail"]),
                   tuple(d.get("nodes", ())))  # fmt: skip


@dataclass
class Active:
    """A fault in force: what it is and how to undo it."""

    detail: str
    undo: Undo
    nodes: tuple[str, ...] = ()
    """Nodes whose processes this fault stopped (counted as down until undone)."""
    kind: str = ""


@dataclass(frozen=True)
class FaultKind:
    name: str
    inject: Callable[[Nemesis], Awaitable[Active | None]]
    group: str | None = None
    """At most one active fault per group."""
    stops_nodes: bool = False
    """Kills or pauses processes: never while a minority is already down."""
    default: bool = True
    """Part of the default mix (``--faults`` not given)."""


FAULTS: dict[str, FaultKind] = {}
"""Every fault kind the nemesis knows, by name (registration order)."""


def register(kind: FaultKind) -> FaultKind:
    FAULTS[kind.name] = kind
    return kind


def default_kinds() -> tuple[str, ...]:
    return tuple(k for k, v in FAULTS.items() if v.default)


@dataclass(frozen=True)
class NemesisConfig:
    seed: int = 0
    faults: frozenset[str] = frozenset()
    fault_interval: tuple[float, float] = (1.0, 4.0)
    settle: float = 5.0
    """Seconds after the last fault ends before the cluster counts as healthy."""
    quiet_chance: float = 0.3
    """After undoing its last fault, the chance that the nemesis rests a while."""
    quiet: tuple[float, float] = (3.0, 8.0)
    """Seconds of rest beyond `settle` (the healthy period to inspect)."""
    sabotage: frozenset[str] = frozenset()
    """Test-only broken variants (see chaos.SABOTAGE): unrecorded faults in healthy
    periods, which the healthy-period check must catch."""


class Nemesis:
    """Random faults, at most a minority of nodes down at once, every one recorded."""

    def __init__(
        self, cfg: NemesisConfig, cluster: ProcCluster, mesh: ProxyMesh,
        clock: Callable[[], float],
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.cluster = cluster
        self.mesh = mesh
        self.clock = clock
        self.rng = random.Random(cfg.seed)
        self.ids = cluster.ids
        self.events: list[FaultEvent] = []
        self.active: list[Active] = []  # oldest first
        self.down: set[str] = set()  # killed or paused
        self.crashes: list[str] = []  # nodes that exited without being killed
        # Called first thing in heal_all (e.g. the membership nemesis empties the
        # data dir of a node it removed, so the heal starts it as a joiner).
        self.before_heal: list[Callable[[], None]] = []
        # Nodes another nemesis works on (the membership nemesis removes and
        # re-adds them): never restarted by the heal, and their exit is no crash.
        self.held: set[str] = set()
        self._seen_exits: set[int] = set()

    def log(self, action: str, kind: str, detail: str, nodes: Sequence[str] = ()) -> None:
        self.events.append(FaultEvent(self.clock(), action, kind, detail, tuple(nodes)))

    # -- helpers for fault kinds -------------------------------------------------

    async def leader(self) -> str | None:
        with trio.move_on_after(1.5):
            return await self.cluster.leader([i for i in self.ids if i not in self.down])
        return None

    async def target(self) -> str:
        """The leader half of the time (if one is known), else a random live node."""
        up = [i for i in self.ids if i not in self.down]
        if self.rng.random() < 0.5:
            leader = await self.leader()
            if leader is not None and leader in up:
                return leader
        return self.rng.choice(up)

    async def follower(self) -> str:
        """A random live node other than the leader (any live node if none is known)."""
        leader = await self.leader()
        up = [i for i in self.ids if i not in self.down]
        return self.rng.choice([i for i in up if i != leader] or up)

    # -- the schedule ----------------------------------------------------------------

    async def run(self, stop: trio.Event, faults_off: trio.Event) -> None:
        """Inject and undo faults until `faults_off` (then heal everything and only
        watch for crashes) or `stop`."""
        kinds = [k for k in FAULTS if k in self.cfg.faults]
        if kinds:
            await self._sleep(stop, faults_off, self.rng.uniform(*self.cfg.fault_interval))
        while kinds and not (stop.is_set() or faults_off.is_set()):
            self.check_crashes(restart=True)
            try:
                if self.active and (len(self.active) >= 2 or self.rng.random() < 0.5):
                    await self._undo(self.active.pop(0))
                    if not self.active and self.rng.random() < self.cfg.quiet_chance:
                        await self._rest(stop, faults_off)
                else:
                    await self._inject(kinds)
            except Exception as exc:  # a fault that could not be applied is not a verdict
                self.log("error", "nemesis", repr(exc))
            await self._sleep(stop, faults_off, self.rng.uniform(*self.cfg.fault_interval))
        if not stop.is_set():
            if kinds:
                await self.heal_all()
            while not stop.is_set():  # the healthy tail: a supervisor, nothing more
                self.check_crashes(restart=True)
                await self._sleep(stop, faults_off, 0.5, wake_on_off=False)

    async def _rest(self, stop: trio.Event, faults_off: trio.Event) -> None:
        seconds = self.cfg.settle + self.rng.uniform(*self.cfg.quiet)
        self.log("quiet", "quiet", f"no faults for {seconds:.1f}s")
        if self.cfg.sabotage:
            # Test-only: break the healthy period on purpose, once it has begun (every
            # node answers, then the settle time, then a second more).
            t0 = trio.current_time()
            with trio.move_on_after(seconds):
                while True:  # polling other processes: no event to wait for
                    if None not in (await self.cluster.statuses()).values():
                        break
                    await trio.sleep(0.1)
            await self._sleep(stop, faults_off, self.cfg.settle + 1.0)
            await self._sabotage(stop, faults_off)
            seconds = max(1.0, seconds - (trio.current_time() - t0))
        await self._sleep(stop, faults_off, seconds)

    async def _sabotage(self, stop: trio.Event, faults_off: trio.Event) -> None:
        """Faults the nemesis does not record as faults, in a healthy period: the
        broken variants the healthy-period check must catch (tests/chaos)."""
        if "stall" in self.cfg.sabotage and (node := await self.leader()) is not None:
            # The leader's loop stops for longer than an election timeout, as a
            # snapshot holding the loop or the GIL would (issue 11 #4).
            self.log("sabotage", "stall", f"SIGSTOP {node} for 2s, not a recorded fault")
            self.cluster.pause(node)
            try:
                await self._sleep(stop, faults_off, 2.0, wake_on_off=False)
            finally:
                self.cluster.resume(node)
        if "lag" in self.cfg.sabotage:
            # A follower cut off from everyone: it falls behind while writes go on.
            node = await self.follower()
            self.log("sabotage", "lag", f"isolate {node} for 3s, not a recorded fault")
            self.mesh.isolate(node)
            try:
                await self._sleep(stop, faults_off, 3.0, wake_on_off=False)
            finally:
                self.mesh.heal_partitions()

    @staticmethod
    async def _sleep(
        stop: trio.Event, faults_off: trio.Event, seconds: float, wake_on_off: bool = True
    ) -> None:
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline and not stop.is_set():
            if wake_on_off and faults_off.is_set():
                return
            with trio.move_on_at(min(deadline, trio.current_time() + 0.1)):
                await stop.wait()

    async def _undo(self, fault: Active) -> None:
        result = fault.undo()
        if inspect.isawaitable(result):
            await result
        self.down.difference_update(fault.nodes)
        self.log("stop", fault.kind, fault.detail, fault.nodes)

    async def _inject(self, kinds: list[str]) -> None:
        max_down = (len(self.ids) - 1) // 2
        groups = {FAULTS[a.kind].group for a in self.active if a.kind in FAULTS}
        choices = [
            k for k in kinds
            if not (FAULTS[k].stops_nodes and len(self.down) >= max_down)
            and (FAULTS[k].group is None or FAULTS[k].group not in groups)
        ]  # fmt: skip
        if not choices:
            return
        kind = self.rng.choice(choices)
        fault = await FAULTS[kind].inject(self)
        if fault is None:
            return
        fault.kind = kind
        self.active.append(fault)
        self.down.update(fault.nodes)
        self.log("start", kind, fault.detail, fault.nodes)

    def check_crashes(self, restart: bool) -> None:
        """Record every node process that exited although the nemesis did not kill it
        (a product failure: API.md says a node only stops when told to), and start
        it again if `restart`, as a supervisor would."""
        for node_id, node in self.cluster.nodes.items():
            if node_id in self.down or node_id in self.held:
                continue
            if node.proc is None or node.proc.poll() is None:
                continue
            pid = node.proc.pid
            if pid in self._seen_exits:
                continue
            self._seen_exits.add(pid)
            what = f"{node_id} (pid {pid}) exited with status {node.proc.returncode}"
            self.crashes.append(what)
            self.log("crash", "crash", what, (node_id,))
            if restart:
                self.cluster.start(node_id)

    async def heal_all(self) -> None:
        """Undo every active fault, then make sure nothing at all is left."""
        for hook in self.before_heal:
            hook()
        self.check_crashes(restart=False)
        while self.active:
            with contextlib.suppress(Exception):
                await self._undo(self.active.pop(0))
        self.mesh.heal()
        for node_id, node in self.cluster.nodes.items():
            if node_id in self.held:
                continue
            if node.paused:
                self.cluster.resume(node_id)
            if not node.running:
                self.cluster.start(node_id)
        self.down = set(self.held)
        self.log("heal", "heal", "all links healed, all nodes running")


# ------------------------------------------------------------- built-in kinds


async def _kill(nem: Nemesis) -> Active:
    if not nem.down and nem.rng.random() < 0.15:
        # Every node at once: only what was fsync'd survives, and everything
        # acknowledged must be among it.
        nem.cluster.kill_all()

        def restart_all() -> None:
            for node in nem.ids:
                if not nem.cluster.nodes[node].running:
                    nem.cluster.start(node)

        return Active("SIGKILL all nodes", restart_all, tuple(nem.ids))
    node = await nem.target()
    nem.cluster.kill(node)

    def restart() -> None:
        if not nem.cluster.nodes[node].running:
            nem.cluster.start(node)

    return Active(f"SIGKILL {node}", restart, (node,))


async def _pause(nem: Nemesis) -> Active:
    node = await nem.target()
    nem.cluster.pause(node)
    return Active(f"SIGSTOP {node}", lambda: nem.cluster.resume(node), (node,))


async def _partition(nem: Nemesis) -> Active:
    ids = list(nem.ids)
    mode = nem.rng.choice(["split", "isolate-leader", "bridge"] if len(ids) >= 3
                          else ["split"])  # fmt: skip
    if mode == "isolate-leader":
        node = await nem.leader() or nem.rng.choice(ids)
        nem.mesh.isolate(node)
        detail = f"isolate {node}"
    else:
        nem.rng.shuffle(ids)
        if mode == "bridge":
            half = (len(ids) - 1) // 2
            left, bridge, right = ids[:half], ids[half], ids[half + 1 :]
            nem.mesh.bridge(left, bridge, right)
            detail = f"bridge {sorted(left)} <-{bridge}-> {sorted(right)}"
        else:
            minority = ids[: nem.rng.randint(1, (len(ids) - 1) // 2 or 1)]
            majority = ids[len(minority) :]
            nem.mesh.partition([minority, majority])
            detail = f"split {sorted(minority)} | {sorted(majority)}"
    return Active(detail, nem.mesh.heal_partitions)


def _links_undo(nem: Nemesis, links: list[tuple[str, str]]) -> Undo:
    """Undo for link-quality faults: exactly the directions that were degraded."""

    def clear() -> None:
        for a, b in links:
            nem.mesh.set_delay(a, b, 0.0)
            nem.mesh.set_loss(a, b, 0.0)
            nem.mesh.set_rate(a, b, 0.0)

    return clear


async def _delay(nem: Nemesis) -> Active:
    """Delay and/or loss on the links into and out of one node, or on random links."""
    if nem.rng.random() < 0.5:
        node = nem.rng.choice(nem.ids)
        links = [(a, b) for a, b in nem.mesh.links if node in (a, b)]
        where = f"links of {node}"
    else:
        links = nem.rng.sample(sorted(nem.mesh.links), k=len(nem.mesh.links) // 2)
        where = f"{len(links)} random links"
    delay = nem.rng.choice([0.0, 0.02, 0.1, 0.3, 0.8])
    loss = nem.rng.choice([0.0, 0.0, 0.05, 0.2]) if delay else nem.rng.choice([0.05, 0.2])
    for a, b in links:
        nem.mesh.set_delay(a, b, delay)
        nem.mesh.set_loss(a, b, loss)
    return Active(f"{where}: delay={delay:g}s loss={loss:g}", _links_undo(nem, links))


SLOW_LATENCIES = (0.005, 0.02, 0.05, 0.1)
"""Seconds added each way by a slow link."""
SLOW_RATES = (64 << 10, 256 << 10, 1 << 20, 4 << 20)
"""Bytes per second a slow link lets through, each direction."""


async def _slow(nem: Nemesis) -> Active:
    """A slow link (latency and bandwidth): around one follower, or out of the leader."""
    latency = nem.rng.choice(SLOW_LATENCIES)
    rate = nem.rng.choice(SLOW_RATES)
    leader = await nem.leader()
    if leader is not None and nem.rng.random() < 0.3:
        links = [(leader, b) for b in nem.ids if b != leader]
        where = f"from leader {leader} to every follower"
    else:
        node = await nem.follower()
        links = [(a, b) for a, b in nem.mesh.links if node in (a, b)]
        where = f"links of {node}"
    for a, b in links:
        nem.mesh.set_slow(a, b, latency, rate)
    return Active(f"slow {where}: latency={latency:g}s rate={rate // 1024}KiB/s",
                  _links_undo(nem, links))  # fmt: skip


register(FaultKind("kill", _kill, stops_nodes=True))
register(FaultKind("pause", _pause, stops_nodes=True))
register(FaultKind("partition", _partition, group="partition"))
register(FaultKind("delay", _delay, group="links"))
register(FaultKind("slow", _slow, group="links"))


def counts(events: Sequence[FaultEvent]) -> dict[str, int]:
    """Faults started, per registered kind (zero for kinds that never ran)."""
    out = dict.fromkeys(FAULTS, 0)
    for e in events:
        if e.action == "start" and e.kind in out:
            out[e.kind] += 1
    return out
