"""The deterministic simulation: Raft's safety properties hold under faults, and
the simulation has teeth -- it catches each deliberately broken variant."""

from __future__ import annotations

import pytest

from trioraft.testing.sim import SimConfig, run_seed

CHUNKS = 10
SEEDS_PER_CHUNK = 30  # 300 seeds in the default suite, nodes rotating 3/5/7


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_no_safety_or_liveness_violation_under_faults(chunk: int) -> None:
    failures = []
    for seed in range(chunk * SEEDS_PER_CHUNK, (chunk + 1) * SEEDS_PER_CHUNK):
        cfg = SimConfig(nodes=(3, 5, 7)[seed % 3])
        res = run_seed(seed, cfg)
        if res.violation:
            failures.append(f"seed {seed}: {res.violation}\n  replay: {res.replay_command()}")
    assert not failures, "\n".join(failures)


def test_a_fault_free_run_commits_what_clients_propose() -> None:
    calm = SimConfig(nodes=3, fault_time=2.0, fault_interval=1e9, drop=0.0, churn=0.0,
                     crash_points=0.0)
    res = run_seed(1, calm)
    assert res.violation is None
    assert res.faults == 0
    assert res.committed > 200
    assert res.reads > 50


def _first_violation(unsafe: str, seeds: int, **cfg: object) -> str | None:
    for seed in range(seeds):
        cfg.setdefault("nodes", (3, 5)[seed % 2])
        res = run_seed(seed, SimConfig(unsafe=frozenset({unsafe}), **cfg))  # type: ignore[arg-type]
        if res.violation and not res.violation.startswith("liveness"):
            return res.violation
    return None


def test_teeth_committing_earlier_term_entries_by_counting_replicas_is_caught() -> None:
    # Figure 8 needs a leader that dies before its first batch leaves (churn)
    # and entries sent one per message, so that a new leader counts old-term
    # entries on a majority before its own; the commit-safety check flags the
    # premature commit as soon as it happens.
    v = _first_violation(
        "commit_old_terms", 60, nodes=3, max_entries_per_msg=1, churn=0.6
    )
    assert v is not None
    assert "premature commit" in v


def test_teeth_granting_votes_without_the_log_check_is_caught() -> None:
    v = _first_violation("vote_without_log_check", 60)
    assert v is not None
    assert ("completeness" in v or "safety" in v or "committed" in v)


def test_teeth_not_truncating_conflicting_entries_is_caught() -> None:
    v = _first_violation("no_truncate", 60)
    assert v is not None


def test_teeth_acknowledging_before_persisting_is_caught() -> None:
    v = _first_violation("ack_before_persist", 60)
    assert v is not None


def test_every_seed_replays_identically() -> None:
    a = run_seed(7, SimConfig(nodes=5))
    b = run_seed(7, SimConfig(nodes=5))
    assert (a.steps, a.committed, a.faults, a.violation) == (
        b.steps, b.committed, b.faults, b.violation
    )
