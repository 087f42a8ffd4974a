"""Developer and CI sessions. `nox -s tests` is what CI runs (see .ci/run)."""

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PY = "3.11"


@nox.session(python=PY)
def tests(session: nox.Session) -> None:
    """The default suite: unit, simulation (300+ seeds), node and process tests."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "not slow", *session.posargs)


@nox.session(python=PY)
def lint(session: nox.Session) -> None:
    """ruff, mypy --strict and the import-linter layering contracts."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", "trioraft", "tests", "noxfile.py")
    session.run("mypy", "--strict", "trioraft")
    session.run("lint-imports")


@nox.session(python=PY)
def sim(session: nox.Session) -> None:
    """Long deterministic simulation runs: nox -s sim -- --seeds 2000.

    Then the hypothesis fuzzing of hostile peer messages (core alone and in
    the simulation) with many more examples than the default suite.
    """
    session.install("-e", ".[test]")
    session.run("python", "-m", "trioraft.testing.sim", *session.posargs)
    session.run("pytest", "-q", "tests/core/test_fuzz.py", "tests/sim/test_fuzz_sim.py",
                env={"TRIORAFT_FUZZ": "long"})


@nox.session(python=PY)
def chaos(session: nox.Session) -> None:
    """Fault injection against real processes: nox -s chaos -- --duration 60 --nodes 5."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "trioraft.testing.chaos", *session.posargs)


@nox.session(python=PY)
def bench(session: nox.Session) -> None:
    """The standard benchmark matrix against a local fsync'd cluster."""
    session.install("-e", ".[test,plot]")
    session.run("python", "-m", "trioraft.bench.matrix", *session.posargs)
