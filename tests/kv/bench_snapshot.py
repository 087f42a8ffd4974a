"""Benchmark: event-loop stalls while a large state machine is snapshotted and restored.

Not a test (no timed assertions): a script that prints figures.

    python tests/kv/bench_snapshot.py [--keys 1000000] [--value-bytes 100]
        [--impl trioraft.kv | --impl oldkv --path DIR]

It fills a `KVStateMachine` with N keys of V-byte values, then, inside a Trio
loop whose ticker task measures the longest time the loop did not run (a
1 ms sleep that overshoots), does what the node runtime does:

* snapshot: capture on the loop (`snapshot_later()`), encode in a worker
  thread, while the loop keeps applying puts (the snapshot view at work); with the
  current implementation also the chunked path (`snapshot_chunks()`, each
  chunk handed to a thread and written to a file, as a streaming writer
  would);
* restore: `restore(data)` of the snapshot on a fresh machine, in a thread.

It also measures apply throughput (puts of new keys into the full store, and
overwrites), the capture time, and the snapshot size. `--impl oldkv --path
DIR` loads another copy of the package (e.g. the previous version, extracted
with `git show`) to compare.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import tempfile
import time
from typing import Any

import msgspec
import trio


class LoopLag:
    """The longest gap, in seconds, between two turns of a 1 ms ticker task."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        period = 0.001
        while True:
            start = time.perf_counter()
            await trio.sleep(period)
            self.worst = max(self.worst, time.perf_counter() - start - period)


def fill(kv_mod: Any, n: int, value_bytes: int) -> Any:
    machine = kv_mod.KVStateMachine()
    value = "v" * value_bytes
    enc = msgspec.msgpack.Encoder()
    # Encoded directly (the entries validate, and this skips a million validations).
    for i in range(n):
        machine.apply(i + 1, enc.encode(kv_mod.Put(f"key/{i:09d}", value)))
    return machine


def throughput(kv_mod: Any, machine: Any, count: int, value_bytes: int) -> tuple[float, float]:
    enc = msgspec.msgpack.Encoder()
    value = "w" * value_bytes
    index = machine.applied_index
    news = [enc.encode(kv_mod.Put(f"key/{i:09d}x", value)) for i in range(0, count * 97, 97)]
    olds = [enc.encode(kv_mod.Put(f"key/{i:09d}", value)) for i in range(0, count * 89, 89)]
    t0 = time.perf_counter()
    for data in news:
        index += 1
        machine.apply(index, data)
    t1 = time.perf_counter()
    for data in olds:
        index += 1
        machine.apply(index, data)
    t2 = time.perf_counter()
    return count / (t1 - t0), count / (t2 - t1)


async def measure(kv_mod: Any, machine: Any, chunked: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    lag = LoopLag()
    enc = msgspec.msgpack.Encoder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        await trio.sleep(1.0)
        out["idle_lag_ms"] = lag.worst * 1000  # the machine's noise floor

        async def keep_applying(stop: trio.Event) -> None:
            i = 0
            while not stop.is_set():
                for _ in range(50):
                    machine.apply(machine.applied_index + 1,
                                  enc.encode(kv_mod.Put(f"key/{i * 7919 % 1000000:09d}", "z")))
                    i += 1
                await trio.sleep(0.001)

        # --- snapshot_later(): capture on the loop, one encode in a thread
        lag.worst = 0.0
        stop = trio.Event()
        nursery.start_soon(keep_applying, stop)
        t0 = time.perf_counter()
        encode = machine.snapshot_later()
        out["capture_ms"] = (time.perf_counter() - t0) * 1000
        data = await trio.to_thread.run_sync(encode)
        out["snapshot_s"] = time.perf_counter() - t0
        if not chunked:  # the previous version: one encode call, all of it holding the GIL
            t1 = time.perf_counter()
            machine.snapshot_later()()
            out["one_encode_call_ms"] = (time.perf_counter() - t1) * 1000
        stop.set()
        await trio.sleep(0.05)
        out["snapshot_lag_ms"] = lag.worst * 1000
        out["snapshot_mb"] = len(data) / 1e6

        if chunked:
            # --- snapshot_chunks(): each chunk encoded and written in a thread
            lag.worst = 0.0
            stop = trio.Event()
            nursery.start_soon(keep_applying, stop)
            t0 = time.perf_counter()
            chunks = machine.snapshot_chunks()
            out["chunk_capture_ms"] = (time.perf_counter() - t0) * 1000
            steps = [0.0]
            # The file is opened, written and closed in worker threads only:
            # closing (freeing its page cache) would otherwise block the loop.
            f = await trio.to_thread.run_sync(tempfile.TemporaryFile)

            def write_batch() -> bool:
                for _ in range(8):
                    s0 = time.perf_counter()
                    chunk = next(chunks, None)
                    steps[0] = max(steps[0], time.perf_counter() - s0)
                    if chunk is None:
                        return False
                    f.write(chunk)
                return True

            while await trio.to_thread.run_sync(write_batch):
                pass
            await trio.to_thread.run_sync(f.close)
            out["chunked_s"] = time.perf_counter() - t0
            out["chunk_step_max_ms"] = steps[0] * 1000
            stop.set()
            await trio.sleep(0.05)
            out["chunked_lag_ms"] = lag.worst * 1000

        # --- restore in a thread, on a fresh machine
        lag.worst = 0.0
        fresh = kv_mod.KVStateMachine()
        t0 = time.perf_counter()
        await trio.to_thread.run_sync(fresh.restore, data)
        out["restore_s"] = time.perf_counter() - t0
        await trio.sleep(0.05)
        out["restore_lag_ms"] = lag.worst * 1000
        nursery.cancel_scope.cancel()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--impl", default="trioraft.kv")
    parser.add_argument("--path", default=None, help="directory to import --impl from")
    parser.add_argument("--switch-interval-ms", type=float, default=None,
                        help="sys.setswitchinterval: how long a thread may hold the GIL "
                        "while another waits for it (CPython's default is 5 ms)")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() after filling: the store is never scanned by the "
                        "cyclic garbage collector (whose full passes over millions of "
                        "objects stall every thread)")
    opts = parser.parse_args()
    if opts.path:
        sys.path.insert(0, os.path.abspath(opts.path))
    kv_mod = importlib.import_module(opts.impl)
    t0 = time.perf_counter()
    machine = fill(kv_mod, opts.keys, opts.value_bytes)
    print(f"{opts.impl}: {opts.keys:,} keys of {opts.value_bytes} B filled in "
          f"{time.perf_counter() - t0:.1f} s")
    if opts.switch_interval_ms is not None:
        sys.setswitchinterval(opts.switch_interval_ms / 1000)
    if opts.gc_freeze:
        gc.collect()
        gc.freeze()
    new_per_s, overwrite_per_s = throughput(kv_mod, machine, 20_000, opts.value_bytes)
    print(f"apply throughput into the full store: {new_per_s:,.0f} new keys/s, "
          f"{overwrite_per_s:,.0f} overwrites/s")
    chunked = hasattr(machine, "snapshot_chunks")
    figures = trio.run(measure, kv_mod, machine, chunked)
    for name, value in figures.items():
        print(f"  {name:>16}: {value:10.1f}")


if __name__ == "__main__":
    main()
