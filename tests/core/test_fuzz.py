"""Issue 10: generated message sequences from a fake peer against live cores.

A 3-node cluster runs (elections, replication, heartbeats) while a fake peer
sends it arbitrary messages -- from strangers and under members' ids, with
absurd terms, indexes, entries and configurations. No core may raise, and
each core's local invariants must hold after every step.
"""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.harness import Cluster
from tests.core.strategies import SCALE, Invariants, aimed, at_term
from trioraft.core import Message, NotLeader

IDS = ["a", "b", "c"]
SENDERS = [*IDS, "x"]  # "x" is in no configuration

# An action: a hostile message, or one of the cluster's own moves.
actions = st.one_of(
    aimed(SENDERS, IDS),
    aimed(SENDERS, ["a"]),  # the first leader: forged answers to it matter most
    st.sampled_from(["deliver", "tick_a", "tick_b", "tick_c", "propose", "read_b", "compact"]),
)


@settings(max_examples=150 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(actions, min_size=10, max_size=60))
def test_no_message_sequence_makes_a_core_raise_or_break_an_invariant(
    acts: list[tuple[Message, int | None] | str],
) -> None:
    c = Cluster(IDS, snapshot_catchup_entries=2)
    c.elect("a")
    c.deliver()
    for i in range(3):
        c.propose("a", f"x{i}".encode())
        c.deliver()
    inv = {n: Invariants(c.core(n)) for n in IDS}
    ctx = 0
    for act in acts:
        if isinstance(act, str):
            if act == "deliver":
                c.deliver(max_steps=200)
            elif act.startswith("tick_"):
                c.tick(act[-1])
            elif act == "propose":
                for n in IDS:
                    if c.core(n).role.value == "leader":
                        c.propose(n, b"p")
            elif act == "read_b":
                ctx += 1
                with contextlib.suppress(NotLeader):  # the one documented refusal
                    c.core("b").read_index(ctx)
                c.process("b")
            elif act == "compact":
                for n in IDS:
                    k = c.core(n)
                    k.snapshot_taken(k.snapshot_meta(k.applied_index))
        else:
            msg, shift = act
            core = c.core(msg.dst)
            core.step(at_term(msg, shift, core.term), c.now)
            c.process(msg.dst)
        for i in inv.values():
            i.check()
