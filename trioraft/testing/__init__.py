"""Public test helpers for trioraft and for users' own tests (like trio.testing).

- `trioraft.testing.sim`: the deterministic simulation of the sans-IO core
  (``python -m trioraft.testing.sim --seeds N``).
- `trioraft.testing.cluster`: `open_cluster()`, real RaftNodes in one process
  over an in-memory network with fault knobs (use with trio's MockClock).
- `trioraft.testing.procs`: `ProcCluster`, real ``trioraft serve`` processes.
- `trioraft.testing.linearizability`: `check()`, a linearizability checker for
  key-value histories (``python -m trioraft.testing.linearizability FILE``).
- `trioraft.testing.proxy` and `trioraft.testing.chaos`: the fault-injecting
  TCP proxy and the Jepsen-style chaos run (``python -m trioraft.testing.chaos``);
  its nemesis (`trioraft.testing.nemesis`, a registry of fault kinds) and its
  checks (`trioraft.testing.chaos_checks`). docs/verification.md has the map.

The submodules are imported on demand: the simulation needs no I/O library.
"""
