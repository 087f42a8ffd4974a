"""A membership nemesis for the chaos tool (`--membership`, issue 12).

Beside the kills, pauses, partitions and link faults of `trioraft.testing.chaos`,
it changes who the members are, one operation at a time (seeded):

``remove-add``    remove a member (sometimes the leader) through the API; the
                  removed node stops by itself; its data dir is emptied and it
                  is started again, empty, and added back as a new incarnation
                  (``POST /cluster/members`` with promote: learner, then voter)
``wipe-readmit``  SIGKILL a member, empty its data dir, start it again with the
                  same command line: it must be re-admitted automatically
                  (old member id removed, new one added and promoted)
``transfer``      hand leadership to another voter

A node it works on is in the chaos nemesis' ``down`` set meanwhile, so the
two together never impair more than a minority, and the chaos tool neither
restarts a node that stopped because it was removed nor counts that as a
crash. Before the final heal every node is made a member again (a removed
node's data dir is emptied so it can join; ``after_heal`` adds it back), so
the run ends converged on the full membership.

Wiring (hooks in chaos.py): ``attach(cfg, cluster, nemesis)`` when
``cfg.membership`` (it registers ``before_heal`` with the nemesis' heal);
``run(faults_off)`` beside the clients, until the faults stop; ``await
after_heal()`` after the load.
"""

from __future__ import annotations

import random
import shutil
from typing import Any

import httpx
import trio

from trioraft.testing.nemesis import Nemesis
from trioraft.testing.procs import ProcCluster

__all__ = ["MembershipNemesis", "attach"]

KINDS = ("remove-add", "wipe-readmit", "transfer")


class MembershipNemesis:
    def __init__(self, cluster: ProcCluster, nemesis: Nemesis, rng: random.Random,
                 interval: tuple[float, float]) -> None:  # fmt: skip
        self.cluster = cluster
        self.nemesis = nemesis  # its `down` set, `log(action, kind, detail)`
        self.rng = rng
        self.interval = interval
        self.busy: set[str] = set()  # nodes we are working on (also in nemesis.down)
        self.to_readd: set[str] = set()  # removed, emptied, to be added back
        # Wiped and restarted, not yet seen re-admitted: node -> its old member id.
        self.readmitting: dict[str, str | None] = {}
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.errors: list[str] = []

    # ------------------------------------------------------------ plumbing
    def _mark(self, node: str) -> None:
        self.busy.add(node)
        self.nemesis.down.add(node)
        self.nemesis.held.add(node)

    def _unmark(self, node: str) -> None:
        self.busy.discard(node)
        self.nemesis.down.discard(node)
        self.nemesis.held.discard(node)

    async def _keep_marks(self, stop: trio.Event) -> None:
        # The chaos nemesis clears `down` when it restarts every node at once:
        # our nodes stay marked (never restarted or counted as crashed by it).
        while not stop.is_set():
            self.nemesis.down |= self.busy
            await trio.sleep(0.05)

    def _answering(self) -> list[str]:
        """Nodes that may answer a request now: running and not paused. Not the
        nemesis' `down` set: a node we work on is in it (so the chaos nemesis
        leaves it alone) while it still runs -- removing the leader, we must
        ask the leader itself (looking for a leader among the others found
        none, and the removal was never asked for: seed 17 of the membership
        campaign, seed 3 of the short run)."""
        return [i for i in self.cluster.ids
                if self.cluster[i].running and not self.cluster[i].paused]  # fmt: skip

    async def _request(self, method: str, path: str, body: object = None,
                       timeout: float = 20.0) -> httpx.Response | None:  # fmt: skip
        """On the leader; retried while refused definitely (503, 409 in progress)."""
        with trio.move_on_after(timeout):
            while True:
                leader = await self.cluster.leader(self._answering())
                if leader is not None:
                    try:
                        r = await self.cluster.request(leader, method, path, json=body,
                                                       timeout=timeout)  # fmt: skip
                    except httpx.HTTPError as exc:
                        self.nemesis.log("note", "membership", f"{method} {path} on {leader}: "
                                         f"{exc!r}")  # fmt: skip
                        r = None
                    # Retried while definitely refused: 503, a change in progress,
                    # or a joiner that has not decided to join yet (it polls its
                    # peers first; seed 17 of the membership campaign gave up on it).
                    if r is not None and not (r.status_code == 503 or (
                            r.status_code == 409 and _code(r) in ("change_in_progress",
                                                                  "not_joining"))):
                        return r
                    if r is not None:
                        self.nemesis.log("note", "membership", f"{method} {path} on {leader}: "
                                         f"{_brief(r)}")  # fmt: skip
                await trio.sleep(0.2)
        return None

    async def _gone(self, node: str, timeout: float) -> bool:
        """Whether the leader's configuration no longer has `node` (within timeout)."""
        with trio.move_on_after(timeout):
            while True:
                try:
                    body = await self.cluster.members(await self.cluster.leader(self._answering()))
                except Exception:
                    body = None
                if body is not None and body.get("from_leader") and not body.get(
                        "change_in_progress"):
                    return node not in {m["name"] for m in body["members"]}
                await trio.sleep(0.3)
        return False

    def _wipe(self, node: str) -> None:
        shutil.rmtree(self.cluster[node].data_dir, ignore_errors=True)

    # ------------------------------------------------------------ the run
    async def run(self, stop: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_marks, stop)
            await _sleep(stop, 1.0)
            while not stop.is_set():
                try:
                    if not await self._step(stop):
                        await _sleep(stop, 0.3)  # too many nodes down right now: soon
                        continue
                except Exception as exc:  # a step that could not be applied is no verdict
                    self.errors.append(repr(exc))
                    self.nemesis.log("error", "membership", repr(exc))
                await _sleep(stop, self.rng.uniform(*self.interval))
            nursery.cancel_scope.cancel()

    async def _step(self, stop: trio.Event) -> bool:
        """One operation; False if none could start now (too many nodes down)."""
        ids = self.cluster.ids
        max_down = (len(ids) - 1) // 2
        if len(self.nemesis.down) >= max_down:
            return False
        # The first two are one of each node-replacing kind, then at random.
        done = sum(self.counts.values())
        kind = ("wipe-readmit", "remove-add")[done] if done < 2 else self.rng.choices(
            KINDS, weights=(0.4, 0.4, 0.2))[0]
        up = [i for i in ids if i not in self.nemesis.down]
        if kind == "transfer":
            r = await self._request("POST", "/cluster/leader/transfer", {"to": None}, 10.0)
            self.nemesis.log("start", "membership", f"transfer: {_brief(r)}")
            self.nemesis.log("stop", "membership", "transfer")
            self.counts[kind] += 1
            return True
        leader = await self.cluster.leader(up)
        if leader is None:
            return False
        node = leader if (kind == "remove-add" and self.rng.random() < 0.3) else self.rng.choice(
            [i for i in up if i != leader])
        self._mark(node)
        try:
            if kind == "remove-add":
                await self._remove_add(node, stop)
            else:
                await self._wipe_readmit(node)
            self.counts[kind] += 1
        finally:
            if node not in self.to_readd:
                self._unmark(node)
        return True

    async def _remove_add(self, node: str, stop: trio.Event) -> None:
        self.nemesis.log("start", "membership", f"remove {node}")
        r = await self._request("DELETE", f"/cluster/members/{node}", None, 20.0)
        # On a 504 (or no answer) the removal may still commit: find out.
        if (r is None or r.status_code != 200) and not await self._gone(node, 15.0):
            self.nemesis.log("stop", "membership", f"remove {node} not done: {_brief(r)}")
            return
        # It stops by itself once it learns of its removal.
        with trio.move_on_after(20):
            while self.cluster[node].running:  # noqa: ASYNC110 - a process, not an event
                await trio.sleep(0.1)
        if self.cluster[node].running:
            self.cluster.kill(node)
        self._wipe(node)
        self.to_readd.add(node)
        if stop.is_set():
            return  # after_heal adds it back
        await self._readd(node)

    async def _readd(self, node: str) -> None:
        if not self.cluster[node].running:
            self.cluster.start(node)
        with trio.move_on_after(30):
            await self.cluster.wait_serving(node)
        body = {"name": node, "url": self.cluster.url(node), "promote": True,
                "timeout_ms": 30_000}  # fmt: skip
        r = await self._request("POST", "/cluster/members", body, 40.0)
        self.nemesis.log("stop", "membership", f"add {node}: {_brief(r)}")
        if r is not None and r.status_code == 200:
            self.to_readd.discard(node)

    async def _wipe_readmit(self, node: str) -> None:
        self.nemesis.log("start", "membership", f"wipe-readmit {node}")
        old = await self._member_id(node)
        self.cluster.kill(node)
        self._wipe(node)
        self.cluster.start(node)
        self.readmitting[node] = old
        await self._await_readmission(node, old, 40.0)

    async def _member_id(self, node: str) -> str | None:
        with trio.move_on_after(5):
            while True:
                try:
                    body = await self.cluster.members(
                        await self.cluster.leader([i for i in self.cluster.ids if i != node])
                    )
                    for m in body["members"]:
                        if m["name"] == node:
                            return str(m["member_id"])
                    return None
                except Exception:
                    await trio.sleep(0.3)
        return None

    async def _await_readmission(self, node: str, old: str | None, timeout: float) -> bool:
        ok = False
        with trio.move_on_after(timeout):
            while not ok:
                await trio.sleep(0.3)
                try:
                    body = await self.cluster.members(
                        await self.cluster.leader([i for i in self.cluster.ids if i != node])
                    )
                except Exception:
                    continue
                m = {x["name"]: x for x in body["members"]}
                ok = (node in m and m[node]["voter"] and m[node]["member_id"] != old
                      and not body["change_in_progress"])  # fmt: skip
        self.nemesis.log("stop", "membership", f"wipe-readmit {node}: "
                         f"{'re-admitted' if ok else f'not re-admitted in {timeout:g} s'}")
        if ok:
            self.readmitting.pop(node, None)
        return ok

    # ------------------------------------------------------------ the end
    def before_heal(self) -> None:
        """Removed nodes get an empty data dir, so heal_all's restart starts them as
        joiners (never on the data dir of a removed member)."""
        for node in sorted(self.to_readd):
            if not self.cluster[node].running:
                self._wipe(node)

    async def after_heal(self) -> None:
        for node, old in sorted(self.readmitting.items()):  # cut short by the load's end
            if not await self._await_readmission(node, old, 60.0):
                self.errors.append(f"{node} could not be added back at the end (re-admission)")
        for node in sorted(self.to_readd):
            await self._readd(node)
            if node in self.to_readd:
                self.errors.append(f"{node} could not be added back at the end")
        for node in list(self.busy):
            self._unmark(node)

    async def run_and_restore(self, faults_off: trio.Event) -> None:
        """Change members until `faults_off`, then make every node a member again
        (a recorded fault until done: the healthy tail begins after it)."""
        await self.run(faults_off)
        if self.busy or self.to_readd or self.readmitting:
            self.nemesis.log("start", "membership", "restore every member")
            await self.after_heal()
            self.nemesis.log("stop", "membership", "restore every member")

    def summary(self) -> str:
        return "membership: " + ", ".join(f"{k}={v}" for k, v in self.counts.items())


def attach(cfg: Any, cluster: ProcCluster, nemesis: Nemesis) -> MembershipNemesis:
    interval = getattr(cfg, "fault_interval", (1.0, 4.0))
    members = MembershipNemesis(cluster, nemesis, random.Random(f"{cfg.seed}-membership"),
                                (interval[0] * 2, interval[1] * 2))  # fmt: skip
    nemesis.before_heal.append(members.before_heal)
    return members


def _code(r: httpx.Response) -> str | None:
    try:
        body = r.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def _brief(r: httpx.Response | None) -> str:
    return "no answer" if r is None else f"{r.status_code} {r.text[:160]}"


async def _sleep(stop: trio.Event, seconds: float) -> None:
    with trio.move_on_after(seconds):
        await stop.wait()
