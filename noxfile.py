"""Developer and CI sessions. `nox -s tests` is what CI runs (see .ci/run)."""

import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
# A session whose interpreter is missing fails; it never passes by being skipped.
nox.options.error_on_missing_interpreters = True

PY = "3.11"
MIN_PYTHON = (3, 11)


def _check_python(session: nox.Session) -> None:
    """Fail loudly unless the session's interpreter is 3.11 or newer."""
    version = session.run(
        "python", "-c", "import sys; print('%d.%d' % sys.version_info[:2])", silent=True
    )
    found = tuple(int(part) for part in str(version).strip().split("."))
    if found < MIN_PYTHON:
        session.error(f"trioraft needs Python {'.'.join(map(str, MIN_PYTHON))}+; "
                      f"this session runs {'.'.join(map(str, found))}")


# Debian packages the default suite drives: the /ui browser test (chromium), the
# side-by-side benchmark's smoke test (a 3-member etcd) and the TLS certificate
# recipe (openssl, compose/make-certs.sh).
_DEBIAN_PACKAGES = {"chromium": "chromium", "etcd": "etcd-server", "etcdctl": "etcd-client",
                    "openssl": "openssl"}


def _ensure_debian_packages(session: nox.Session) -> None:
    """Install the Debian packages the suite's tests drive when missing (as root)."""
    missing = sorted({pkg for cmd, pkg in _DEBIAN_PACKAGES.items() if not shutil.which(cmd)})
    if not missing:
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-q", external=True, env=env)
        session.run("apt-get", "install", "-y", "-q", "--no-install-recommends", *missing,
                    external=True, env=env)
    else:
        session.warn(f"missing {', '.join(missing)} and no way to install them (needs root "
                     "and apt-get): the tests that drive them will be skipped, saying so")


# python=None: the interpreter nox itself runs on (CI's, whatever its minor
# version), checked to be 3.11+ rather than skipped when "3.11" is not installed.
@nox.session(python=None)
def tests(session: nox.Session) -> None:
    """The default suite: unit, simulation (300+ seeds), node, process and browser tests."""
    _check_python(session)
    _ensure_debian_packages(session)
    session.install("-e", ".[test,plot]")  # plot: the bench plots are tested too
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


@nox.session(name="fuzz-api", python=PY)
def fuzz_api(session: nox.Session) -> None:
    """Schemathesis against /openapi.json of a live 3-node cluster, then a convergence check.

    The default suite runs the same test briefly; this runs 500 examples per
    operation and generation mode (override: FUZZ_API_EXAMPLES, FUZZ_API_BUDGET_S).
    """
    session.install("-e", ".[test]")
    session.env.setdefault("FUZZ_API_EXAMPLES", "500")
    session.env.setdefault("FUZZ_API_BUDGET_S", "900")
    session.run("pytest", "tests/api/test_schemathesis.py", "-p", "no:cacheprovider",
                *session.posargs)
