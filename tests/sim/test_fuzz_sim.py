"""Issue 10 inside the simulation: a fake peer sends generated messages to a live
3-node cluster under faults, and the simulation's invariants must still hold.

- From a stranger (an id in no configuration) anything at all: every
  invariant holds, liveness and convergence under load included. (Its leader
  messages at a current term stand for what peer authentication refuses at
  the transport; the simulation drops them -- see Simulation's delivery.)
- Under members' ids, the messages whose forgery Raft's safety does not
  depend on (vote requests, TimeoutNow, read requests): no safety invariant
  breaks, though a forger can of course disturb liveness (force elections).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.strategies import SCALE, aimed, at_term
from trioraft.core import Message, ReadIndexRequest, RequestVote, TimeoutNow
from trioraft.testing.sim import SimConfig, Simulation

IDS = ["n1", "n2", "n3"]
CFG = SimConfig(nodes=3, fault_time=1.0)

timed = st.tuples(st.floats(0.0, 3.0), aimed(["x"], IDS))
forged = st.tuples(
    st.floats(0.0, 3.0),
    aimed(IDS, IDS).filter(lambda a: isinstance(a[0], RequestVote | TimeoutNow | ReadIndexRequest)),
)


def _run(seed: int, msgs: list[tuple[float, tuple[Message, int | None]]]) -> str | None:
    sim = Simulation(seed, CFG)
    for at, (msg, shift) in msgs:
        # Aim at the receiver's term at injection time (nodes start at 0).
        sim.inject(at, at_term(msg, shift, 1 + int(at)))
    return sim.run().violation


@settings(max_examples=12 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.integers(0, 10**6), st.lists(timed, min_size=5, max_size=40))
def test_a_strangers_messages_break_no_invariant(
    seed: int, msgs: list[tuple[float, tuple[Message, int | None]]]
) -> None:
    assert _run(seed, msgs) is None


@settings(max_examples=12 * SCALE, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(st.integers(0, 10**6), st.lists(forged, min_size=5, max_size=40))
def test_forged_requests_under_members_ids_break_no_safety_invariant(
    seed: int, msgs: list[tuple[float, tuple[Message, int | None]]]
) -> None:
    v = _run(seed, msgs)
    assert v is None or v.startswith("liveness"), v
