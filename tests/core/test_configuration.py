"""The membership value type: voters and learners, and its canonical encoding."""

import pytest

from trioraft.core import Configuration, Member, SnapshotMeta


def test_voters_and_learners_are_told_apart():
    c = Configuration.of([Member("b", voter=False), Member("a"), Member("c")])
    assert [m.id for m in c.members] == ["a", "b", "c"]
    assert c.voters == {"a", "c"}
    assert c.learners == {"b"}
    assert c.get("b") == Member("b", voter=False)
    assert c.get("zz") is None


def test_encoding_round_trips_and_is_canonical():
    c = Configuration.of([Member("m2", True, "node2", "http://h:2"), Member("m1", False, "node1")])
    again = Configuration.of(reversed(c.members))
    assert c.encode() == again.encode()
    assert Configuration.decode(c.encode()) == c


def test_duplicate_member_ids_are_refused():
    with pytest.raises(ValueError, match="twice"):
        Configuration.of([Member("a"), Member("a", voter=False)])


@pytest.mark.parametrize(
    "raw",
    [b"", b"{}", b"[1]", b'[{"id": ""}]', b'[{"id": 5}]', b'[{"id": "a", "voter": "yes"}]',
     b'[{"id": "a"}, {"id": "a"}]', b"[" * 100_000, b"\xff"],
)
def test_malformed_encodings_are_value_errors(raw):
    with pytest.raises(ValueError, match=r"configuration|member|twice"):
        Configuration.decode(raw)


def test_snapshot_meta_exposes_the_voters_of_its_configuration():
    meta = SnapshotMeta(5, 2, Configuration.of_voters(["x", "y"]))
    assert meta.voters == {"x", "y"}
