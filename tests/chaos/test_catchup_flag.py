"""`serve --snapshot-catchup-entries`: the chaos runs shorten the catch-up tail so that
lagging followers get InstallSnapshot under faults."""

from __future__ import annotations

import pytest

from trioraft.config import parse_serve_args


def test_the_catch_up_tail_is_a_flag_and_an_environment_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse_serve_args([], {}).snapshot_catchup_entries == 5000
    assert parse_serve_args(["--snapshot-catchup-entries", "0"], {}).snapshot_catchup_entries == 0
    env = {"SNAPSHOT_CATCHUP_ENTRIES": "7"}
    assert parse_serve_args([], env).snapshot_catchup_entries == 7
    assert parse_serve_args(["--snapshot-catchup-entries=9"], env).snapshot_catchup_entries == 9
    with pytest.raises(SystemExit):  # a usage error, as for every flag
        parse_serve_args(["--snapshot-catchup-entries", "-1"], {})
    assert "--snapshot-catchup-entries: must be at least 0" in capsys.readouterr().err
