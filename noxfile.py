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
    """Long deterministic simulation runs: nox -s sim -- --seeds 2000."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "trioraft.testing.sim", *session.posargs)


@nox.session(python=PY)
def chaos(session: nox.Session) -> None:
    """Fault injection against real processes: nox -s chaos -- --duration 60 --nodes 5."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "trioraft.testing.chaos", *session.posargs)


ETCD_HINT = "install etcd first: sudo apt-get install etcd-server etcd-client"


@nox.session(python=PY)
def bench(session: nox.Session) -> None:
    """The benchmark matrix on local fsync'd clusters; `-- --vs-etcd` for the side by
    side with a 3-member etcd (needs etcd and etcdctl installed)."""
    import shutil

    wants_etcd = "--vs-etcd" in session.posargs and "--without-etcd" not in session.posargs
    if wants_etcd and not (shutil.which("etcd") and shutil.which("etcdctl")):
        session.error(f"--vs-etcd needs etcd: {ETCD_HINT} (or add --without-etcd)")
    session.install("-e", ".[test,plot]")
    session.run("python", "-m", "trioraft.bench.matrix", *session.posargs)


@nox.session(python=PY)
def soak(session: nox.Session) -> None:
    """A 10-minute soak of writes via the followers, snapshots every 1,000 entries, a
    ~20 MB state: elections, loop lag, follower lag and RSS over time
    (`-- --duration 60` for a short one; `--help` for the rest)."""
    session.install("-e", ".[test,plot]")
    session.run("python", "-m", "trioraft.bench.soak", *session.posargs)


@nox.session(python=PY)
def stability(session: nox.Session) -> None:
    """Healthy-cluster stability: 2 minutes of writes with frequent snapshots, then a
    1M-key state: elections and worst event-loop lag (`-- --big-keys 0` skips the 1M run)."""
    session.install("-e", ".[test,plot]")
    session.run("python", "-m", "trioraft.bench.stability", *session.posargs)
