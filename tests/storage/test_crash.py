"""SIGKILL in the middle of writing loses nothing that save() had returned for."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from trioraft.core import HardState
from trioraft.storage import open_storage

# The child appends one entry per save() (with a hard state), snapshots every
# 40 entries keeping a catch-up tail of 20, and prints each index only after
# save() returned: a printed index is an acknowledged one.
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from trioraft.core import Entry, HardState, SnapshotMeta
    from trioraft.storage import open_storage

    s = open_storage(Path(sys.argv[1]), fsync=True)
    state = s.load()
    i = state.entries[-1].index if state.entries else state.compacted.index
    while True:
        i += 1
        s.save(HardState(term=i, vote="n1", commit=i - 1), [Entry(i, 1, data=b"x" * 100)])
        print(i, flush=True)
        if i % 40 == 0:
            s.save_snapshot(
                SnapshotMeta(index=i - 5, term=1),
                bytes(i % 256 for _ in range(65536)),
                compact_to=max(0, i - 25),
            )
    """
)


def run_and_kill(data_dir: Path, after_lines: int) -> list[int]:
    acked: list[int] = []
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as child:
        assert child.stdout is not None
        try:
            for line in child.stdout:
                acked.append(int(line))
                if len(acked) >= after_lines:
                    break
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        # Anything printed before the kill was acknowledged too.
        acked.extend(int(line) for line in child.stdout.read().split())
    return acked


def test_sigkill_loses_no_acknowledged_write(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    print(f"seed={seed}")
    rng = random.Random(seed)
    data_dir = tmp_path / "node"
    for _ in range(3):
        acked = run_and_kill(data_dir, after_lines=rng.randrange(30, 120))
        assert acked, "the child never acknowledged a write"
        with open_storage(data_dir) as s:
            state = s.load()
            last = state.entries[-1].index if state.entries else state.compacted.index
            assert last >= acked[-1]
            assert [e.index for e in state.entries] == list(
                range(state.compacted.index + 1, last + 1)
            )
            if state.snapshot.index:  # the catch-up tail: 20 entries up to the snapshot
                assert state.compacted.index == state.snapshot.index - 20
            assert state.hard_state.term >= acked[-1]
            assert state.hard_state == HardState(term=last, vote="n1", commit=last - 1)
            if state.snapshot.index:
                snap = s.load_snapshot()
                assert snap is not None
                assert snap[1] == bytes((state.snapshot.index + 5) % 256 for _ in range(65536))
