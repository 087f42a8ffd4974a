"""Hypothesis strategies for hostile peer messages, and the core's local invariants.

Scale: TRIORAFT_FUZZ=long (set by `nox -s sim`) runs many more examples than
the default suite, which keeps the fuzzing to a few seconds.
"""

from __future__ import annotations

import dataclasses
import itertools
import os

from hypothesis import strategies as st

from trioraft.core import (
    MAX_TERM_OR_INDEX,
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    Entry,
    EntryKind,
    InstallSnapshot,
    InstallSnapshotResponse,
    Member,
    Message,
    RaftCore,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    Role,
    SnapshotMeta,
    TimeoutNow,
)

SCALE = 40 if os.environ.get("TRIORAFT_FUZZ") == "long" else 1

EXTREMES = [MAX_TERM_OR_INDEX - 1, MAX_TERM_OR_INDEX, 2**63 - 1, 2**63, 2**64, -1]


def numbers(hi: int = 40) -> st.SearchStrategy[int]:
    """Mostly plausible terms/indexes, sometimes absurd ones."""
    # A weighted choice (about 1 in 16 absurd): hypothesis favours the
    # boundaries of every strategy, which would otherwise make most numbers
    # absurd and most messages refused before they reach a handler.
    return st.tuples(st.integers(0, 15), st.integers(0, hi), st.sampled_from(EXTREMES)).map(
        lambda t: t[2] if t[0] == 7 else t[1]
    )


def terms() -> st.SearchStrategy[int]:
    """Terms: mostly the small ones a young cluster is at, sometimes anything."""
    return st.tuples(st.integers(0, 7), st.integers(0, 3), numbers(12)).map(
        lambda t: t[2] if t[0] == 5 else t[1]
    )


def _all_configs(ids: list[str]) -> list[Configuration]:
    """Every configuration of `ids` (each a voter, a learner or absent): a
    small pool to draw from keeps each generated message cheap, so the
    sequences hypothesis builds are long."""
    out = []
    for mask in itertools.product((None, True, False), repeat=len(ids)):
        out.append(Configuration.of(Member(i, v) for i, v in zip(ids, mask, strict=True)
                                    if v is not None))
    return out


def configs(ids: list[str]) -> st.SearchStrategy[Configuration]:
    return st.sampled_from(_all_configs(ids))


def config_data(ids: list[str]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        configs(ids).map(lambda c: c.encode()),
        st.sampled_from([b"", b"[]", b"\xff", b"[{}]", b'[{"id":"a","voter":1}]', b"null"]),
    )


def entries(ids: list[str]) -> st.SearchStrategy[tuple[Entry, ...]]:
    """Runs of entries: usually contiguous with growing terms, sometimes not."""

    def build(start: int, terms: list[int], kinds: list[EntryKind], datas: list[bytes],
              contiguous: bool, skew: int) -> tuple[Entry, ...]:
        out = []
        for i, (t, k, d) in enumerate(zip(terms, kinds, datas, strict=False)):
            idx = start + i if contiguous else start + i * skew
            out.append(Entry(idx, t, k, d))
        return tuple(out)

    return st.builds(
        build,
        numbers(),
        st.lists(numbers(12), max_size=6).map(sorted) | st.lists(numbers(12), max_size=6),
        st.lists(st.sampled_from(list(EntryKind)), min_size=6, max_size=6),
        st.lists(st.one_of(st.binary(max_size=8), config_data(ids)), min_size=6, max_size=6),
        st.booleans(),
        st.integers(-2, 3),
    )


@st.composite
def plausible_appends(draw: st.DrawFn, ids: list[str], dsts: list[str]) -> AppendEntries:
    """AppendEntries of the shape a leader sends (so the append path is reached)."""
    term = draw(st.integers(1, 3) | st.integers(1, 12))
    prev = draw(st.integers(0, 30))
    prev_term = 0 if prev == 0 else draw(st.integers(1, term))
    n = draw(st.integers(0, 5))
    terms = sorted(draw(st.lists(st.integers(max(prev_term, 1), term), min_size=n, max_size=n)))
    kinds = draw(st.lists(st.sampled_from([EntryKind.NORMAL, EntryKind.NORMAL, EntryKind.NOOP,
                                           EntryKind.CONFIG]), min_size=n, max_size=n))
    out = []
    for i, (t, k) in enumerate(zip(terms, kinds, strict=True)):
        data = draw(configs(ids).filter(lambda c: bool(c.voters))).encode() if (
            k is EntryKind.CONFIG) else draw(st.binary(max_size=4))
        out.append(Entry(prev + 1 + i, t, k, data))
    return AppendEntries(
        draw(st.sampled_from(ids)), draw(st.sampled_from(dsts)), term, prev, prev_term,
        tuple(out), draw(st.integers(0, 40)), draw(st.integers(0, 5)), draw(st.booleans()),
    )


@st.composite
def plausible_snapshots(draw: st.DrawFn, ids: list[str], dsts: list[str]) -> InstallSnapshot:
    term = draw(st.integers(1, 3) | st.integers(1, 12))
    cfg = draw(configs(ids).filter(lambda c: bool(c.voters)))
    meta = SnapshotMeta(draw(st.integers(1, 40)), draw(st.integers(1, term)), cfg)
    return InstallSnapshot(draw(st.sampled_from(ids)), draw(st.sampled_from(dsts)), term, meta,
                           draw(st.integers(0, 40)))


def messages(ids: list[str], dsts: list[str]) -> st.SearchStrategy[Message]:
    src = st.sampled_from(ids)
    dst = st.sampled_from(dsts)
    ctxs = st.lists(st.integers(-5, 50), max_size=5).map(tuple)
    meta = st.builds(SnapshotMeta, numbers(), numbers(12), configs(ids))
    return st.one_of(
        plausible_appends(ids, dsts),
        plausible_appends(ids, dsts),
        plausible_snapshots(ids, dsts),
        st.builds(RequestVote, src, dst, terms(), numbers(), numbers(12),
                  st.booleans(), st.booleans()),
        st.builds(RequestVoteResponse, src, dst, terms(), st.booleans(), st.booleans()),
        st.builds(AppendEntries, src, dst, terms(), numbers(), numbers(12), entries(ids),
                  numbers(), numbers(5), st.booleans()),
        st.builds(AppendEntriesResponse, src, dst, terms(), st.booleans(), numbers(),
                  numbers(), st.none() | numbers(12), numbers(), numbers(5)),
        st.builds(InstallSnapshot, src, dst, terms(), meta, numbers()),
        st.builds(InstallSnapshotResponse, src, dst, terms(), numbers()),
        st.builds(ReadIndexRequest, src, dst, terms(), ctxs),
        st.builds(ReadIndexResponse, src, dst, terms(), ctxs, st.integers(-3, 60)),
        st.builds(TimeoutNow, src, dst, terms()),
    )


def aimed(ids: list[str], dsts: list[str]) -> st.SearchStrategy[tuple[Message, int | None]]:
    """(message, term shift): a shift d means "at the receiver's current term + d"
    (applied at delivery with `at_term`), so forged messages land in the term
    where they can do harm rather than being refused as stale."""
    return st.tuples(messages(ids, dsts), st.sampled_from([None, 0, 0, 0, 1, -1]))


def at_term(msg: Message, shift: int | None, current: int) -> Message:
    if shift is None:
        return msg
    return dataclasses.replace(msg, term=max(0, current + shift))


class Invariants:
    """What must hold of one core after every input, whatever a peer sent."""

    def __init__(self, core: RaftCore) -> None:
        self.core = core
        self.term = core.term
        self.commit = core.commit_index
        self.matches: dict[str, int] = {}
        self.led = (core.role, core.term)

    def check(self) -> None:
        c = self.core
        log = c.log
        assert c.term >= self.term, "term moved back"
        assert c.term < MAX_TERM_OR_INDEX, "term beyond the bound"
        assert c.commit_index >= self.commit, "commit index moved back"
        assert log.offset <= log.snapshot.index <= log.committed <= log.last_index()
        assert log.applied <= log.committed
        prev = log.offset_term
        for i, e in enumerate(log.entries):
            assert e.index == log.offset + 1 + i, "log not contiguous"
            assert e.term >= prev, "log terms decrease"
            assert e.term <= c.term, "an entry newer than our term"
            prev = e.term
        assert c.configuration.voters, "a configuration without voters"
        if c.role is Role.LEADER:
            if self.led != (Role.LEADER, c.term):
                self.matches = {}
            for p, pr in c.progress.items():
                assert pr.match_index <= log.last_index(), "match beyond the log"
                assert pr.match_index >= self.matches.get(p, 0), "match_index moved back"
                self.matches[p] = pr.match_index
        self.term, self.commit, self.led = c.term, c.commit_index, (c.role, c.term)
