"""Throughput of SqliteStorage.save(); not part of the test suite.

    python tests/storage/bench_storage.py [--dir DIR] [--runs 5] [--seconds 1.0]

Prints, with fsync on and off, the median over `--runs` runs of:
single-entry save() calls per second (each one a commit, i.e. an fsync when
fsync is on), and entries per second when saving batches of 100 entries of
100 bytes (group commit).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from trioraft.core import Entry, HardState
from trioraft.storage import open_storage

PAYLOAD = b"x" * 100


def saves_per_second(data_dir: Path, fsync: bool, batch: int, seconds: float) -> float:
    """Entries per second, saving `batch` entries (plus a hard state) per save() call."""
    with open_storage(data_dir, fsync=fsync) as s:
        s.load()
        index, done, start = 0, 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            entries = [Entry(index + k + 1, 1, data=PAYLOAD) for k in range(batch)]
            s.save(HardState(term=1, vote="n1", commit=index), entries)
            index += batch
            done += batch
        return done / elapsed


def bench(base: Path, runs: int, seconds: float) -> dict[str, float]:
    results: dict[str, float] = {}
    for fsync in (True, False):
        for batch in (1, 100):
            samples = []
            for run in range(runs):
                d = base / f"fsync{fsync}-batch{batch}-run{run}"
                samples.append(saves_per_second(d, fsync, batch, seconds))
            label = f"fsync={'on' if fsync else 'off'} batch={batch}"
            results[label] = statistics.median(samples)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: /tmp)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="trioraft-bench-") as tmp:
        for label, rate in bench(Path(tmp), args.runs, args.seconds).items():
            unit = "save()/s (= commits/s)" if label.endswith("batch=1") else "entries/s"
            print(f"{label:<22} {rate:>12,.0f} {unit}")


if __name__ == "__main__":
    main()
