"""The chaos run's checks besides linearizability, on recorded (fake) runs: each one
must flag the broken variant it exists for, and pass the healthy run next to it."""

from __future__ import annotations

from trioraft.testing.chaos_checks import (
    Sample,
    check_health,
    fault_free_spans,
    loop_lag,
    refused_writes_seen,
)
from trioraft.testing.chaos_clients import Values
from trioraft.testing.linearizability import Operation
from trioraft.testing.nemesis import FaultEvent

NODES = ["n1", "n2", "n3"]


def _run(
    seconds: float, *, term_at: dict[float, int] | None = None,
    lag_of: dict[str, int] | None = None, silent: tuple[str, float, float] | None = None,
    loop_ms: dict[tuple[str, float], float] | None = None,
) -> list[Sample]:  # fmt: skip
    """Polling rounds every 0.25 s: n1 leads; the term rises at the times in `term_at`;
    followers trail by `lag_of` entries; `silent` = (node, from, to) does not answer."""
    samples = []
    term, commit = 1, 10_000
    for k in range(int(seconds / 0.25)):
        t = k * 0.25
        for at, new in (term_at or {}).items():
            if t >= at:
                term = max(term, new)
        commit += 10
        for node in NODES:
            if silent and node == silent[0] and silent[1] <= t < silent[2]:
                samples.append(Sample(t, k, node, False))
                continue
            applied = commit - (lag_of or {}).get(node, 0)
            ms = (loop_ms or {}).get((node, t), 3.0)
            samples.append(Sample(t, k, node, True, term, "leader" if node == "n1" else
                                  "follower", "n1", commit, max(0, applied), ms))  # fmt: skip
    return samples


def _ev(t: float, action: str, kind: str, *nodes: str) -> FaultEvent:
    return FaultEvent(t, action, kind, f"{kind} {nodes}", tuple(nodes))


FAULTS = [_ev(2.0, "start", "partition"), _ev(5.0, "stop", "partition"),
          _ev(20.0, "start", "kill", "n2"), _ev(22.0, "stop", "kill", "n2")]  # fmt: skip


def test_fault_free_spans_follow_starts_stops_heals_and_crashes() -> None:
    events = [_ev(1, "start", "kill", "n1"), _ev(2, "start", "delay"), _ev(3, "stop", "kill"),
              _ev(4, "stop", "delay"), _ev(6, "crash", "crash", "n2"), _ev(8, "start", "pause"),
              _ev(9, "heal", "heal")]  # fmt: skip
    assert fault_free_spans(events, end=12) == [(0, 1), (4, 6), (6, 8), (9, 12)]
    assert fault_free_spans([], end=5) == [(0, 5)]


def test_a_heal_does_not_end_a_membership_operation_in_progress() -> None:
    # Regression (membership campaign, seed 17): a removal started before the
    # faults stopped ran on past the heal, and the stretch after the heal was
    # checked as healthy while the removed node was still out of the cluster.
    events = [_ev(1, "start", "membership"), _ev(2, "start", "delay"), _ev(5, "heal", "heal"),
              _ev(9, "stop", "membership"), _ev(9.5, "start", "membership"),
              _ev(10, "stop", "membership")]  # fmt: skip
    assert fault_free_spans(events, end=12) == [(0, 1), (9, 9.5), (10, 12)]
    # Each membership stop balances its own start; a heal alone ends the faults.
    events = [_ev(1, "start", "kill", "n1"), _ev(3, "heal", "heal")]
    assert fault_free_spans(events, end=6) == [(0, 1), (3, 6)]


def test_a_quiet_cluster_passes_the_healthy_period_check() -> None:
    report = check_health(_run(30, lag_of={"n2": 50}), FAULTS, NODES, settle=3, end=30,
                          lag_bound=1000)  # fmt: skip
    assert report.violations == []
    # Windows: 5+3 -> 20 and 22+3 -> 30 (the first, 0 -> 2, is shorter than the settle).
    assert [(w.start, w.end) for w in report.windows] == [(8.0, 20.0), (25.0, 30)]
    assert report.elections == 0
    assert report.max_lag == 50


def test_an_election_in_a_healthy_period_is_a_violation() -> None:
    report = check_health(_run(30, term_at={12.0: 2}), FAULTS, NODES, settle=3, end=30,
                          lag_bound=1000)  # fmt: skip
    assert report.elections == 1
    assert any("1 election(s), term 1 -> 2 with no fault active" in v
               for v in report.violations), report.violations  # fmt: skip


def test_elections_while_a_fault_is_active_or_settling_are_not() -> None:
    # Term changes during the partition (2-5) and in the settle time after it (5-8).
    report = check_health(_run(30, term_at={3.0: 2, 6.5: 3}), FAULTS, NODES, settle=3, end=30,
                          lag_bound=1000)  # fmt: skip
    assert report.violations == []


def test_settle_time_counts_from_when_every_node_answers_again() -> None:
    # n2 was killed (20-22) and takes until 24 s to answer: its first term change is
    # part of its recovery, not of a healthy period.
    samples = _run(34, term_at={26.0: 2}, silent=("n2", 20.0, 24.0))
    report = check_health(samples, FAULTS, NODES, settle=3, end=34, lag_bound=1000)
    assert report.windows[-1].start == 27.0
    assert report.violations == []
    # The same change later in the window is an election.
    samples = _run(34, term_at={28.0: 2}, silent=("n2", 20.0, 24.0))
    assert check_health(samples, FAULTS, NODES, settle=3, end=34, lag_bound=1000).elections == 1


def test_a_follower_beyond_the_lag_bound_is_a_violation() -> None:
    report = check_health(_run(30, lag_of={"n3": 5000}), FAULTS, NODES, settle=3, end=30,
                          lag_bound=2000)  # fmt: skip
    assert report.max_lag == 5000
    assert any("follower n3 was 5000 entries behind" in v for v in report.violations)


def test_a_silent_node_in_a_healthy_period_is_a_violation() -> None:
    samples = _run(30, silent=("n3", 10.0, 15.0))
    report = check_health(samples, FAULTS, NODES, settle=3, end=30, lag_bound=1000)
    assert any("n3 did not answer /status for" in v for v in report.violations)


def test_loop_lag_leaves_out_what_a_pause_caused() -> None:
    events = [_ev(10.0, "start", "pause", "n2"), _ev(12.0, "stop", "pause", "n2")]
    samples = _run(40, loop_ms={("n2", 13.0): 2000.0, ("n3", 30.0): 180.0,
                                ("n2", 35.0): 120.0})  # fmt: skip
    # A paused node does not answer; its first answer after the pause shows the pause.
    samples = [s for s in samples if not (s.node == "n2" and 10.0 <= s.t < 13.0)]
    report = check_health(samples, events, NODES, settle=3, end=40, lag_bound=1000)
    lag = loop_lag(samples, events, report.windows)
    assert (lag.worst_ms, lag.node, lag.t) == (180.0, "n3", 30.0)  # n2's pause is not counted
    assert lag.healthy_worst_ms == 180.0
    # The same stall without a recorded pause (a real stall) is the worst.
    lag = loop_lag(samples, [], report.windows)
    assert (lag.worst_ms, lag.node) == (2000.0, "n2")


# -- answers never contradict outcomes --------------------------------------------


def test_a_refused_write_seen_by_a_read_is_caught() -> None:
    history = [
        Operation.put(1, "k", "a", call=0.0, ret=1.0),
        Operation.put(2, "k", "b", call=2.0, ret=3.0, outcome="fail"),  # answered 503 ...
        Operation.get(3, "k", "b", call=4.0, ret=5.0),  # ... and yet it applied
    ]
    found = refused_writes_seen(history)
    assert len(found) == 1
    assert "put k='b' by client 2" in found[0]
    assert "read by client 3" in found[0]


def test_a_refused_cas_seen_in_the_final_state_is_caught() -> None:
    history = [
        Operation.put(1, "k", "a", call=0.0, ret=1.0),
        Operation.cas(2, "k", "x", "c", False, call=2.0, ret=3.0),  # 409: not applied
    ]
    assert refused_writes_seen(history, final_state={"k": "a"}) == []
    found = refused_writes_seen(history, final_state={"k": "c"})
    assert len(found) == 1
    assert "answered 409" in found[0]
    assert "converged state" in found[0]


def test_unknown_and_acknowledged_writes_may_be_read() -> None:
    history = [
        Operation.put(1, "k", "a", call=0.0, ret=1.0),
        Operation.put(2, "k", "b", call=2.0, ret=None, outcome="unknown"),
        Operation.get(3, "k", "b", call=4.0, ret=5.0),
        Operation.get(3, "k", "a", call=0.5, ret=1.5),
    ]
    assert refused_writes_seen(history, final_state={"k": "b"}) == []


# -- values --------------------------------------------------------------------------


def test_padded_values_read_back_as_their_names_and_damage_shows() -> None:
    values = Values((100, 400))
    raw = values.make("c3-17")
    assert 100 <= len(raw) <= 400
    assert raw.startswith("c3-17~")
    assert values.make("c3-17") == raw  # deterministic
    assert values.read(raw) == "c3-17"
    assert values.read(raw[:-1]).startswith("corrupt:")  # truncated: not what was written
    assert values.read(raw[:-1] + "!").startswith("corrupt:")
    assert values.read(None) is None
    assert Values().make("c1-1") == "c1-1"
    assert Values().read("c1-1") == "c1-1"


def test_a_stall_is_dated_when_it_first_shows_not_while_it_stays_in_the_window() -> None:
    # n3 stalled 300 ms at t=7, during the settle time after the partition (2-5):
    # its sliding maximum shows 300 for the next 10 s, into the healthy period (8-20),
    # but the stall belongs to t=7.
    spike = {("n3", k * 0.25): 300.0 for k in range(28, 68)}
    samples = _run(30, loop_ms=spike)
    report = check_health(samples, FAULTS, NODES, settle=3, end=30, lag_bound=1000)
    lag = loop_lag(samples, FAULTS, report.windows)
    assert (lag.worst_ms, lag.node, lag.t) == (300.0, "n3", 7.0)
    assert lag.healthy_worst_ms == 0.0  # nothing new showed in the healthy period


def test_a_pause_is_left_out_however_late_the_node_answers_after_it() -> None:
    # Resumed at 12 s, n2 works through its backlog and answers /status only at 16 s.
    events = [_ev(10.0, "start", "pause", "n2"), _ev(12.0, "stop", "pause", "n2")]
    samples = [s for s in _run(30, loop_ms={("n2", 16.0): 2000.0})
               if not (s.node == "n2" and 10.0 <= s.t < 16.0)]  # fmt: skip
    report = check_health(samples, events, NODES, settle=3, end=30, lag_bound=1000)
    assert loop_lag(samples, events, report.windows).worst_ms == 3.0


def test_elections_count_every_term_even_one_no_poll_saw() -> None:
    report = check_health(_run(30, term_at={12.0: 3}), FAULTS, NODES, settle=3, end=30,
                          lag_bound=1000)  # fmt: skip
    assert report.elections == 2
