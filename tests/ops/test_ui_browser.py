"""The live view in a real headless browser: Debian's chromium driven by Playwright
(the system binary; nothing is downloaded). Three `trioraft serve` processes; the page
shows three members and one leader, then follows a leader change when the leader's
process is killed. Screenshots go to the artifact directory (git-ignored)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from trioraft.testing.procs import ProcCluster

pytestmark = pytest.mark.processes

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def chromium() -> str:
    path = os.environ.get("TRIORAFT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        pytest.skip(
            "no chromium: the browser test needs Debian's chromium package "
            "(`apt-get install chromium`; the nox tests session installs it as root)"
        )
    return path


def artifact_dir() -> Path:
    """Outside version control: $TRIORAFT_ARTIFACTS, else .artifacts/ (git-ignored)."""
    path = Path(os.environ.get("TRIORAFT_ARTIFACTS", REPO / ".artifacts")) / "ui"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[ProcCluster]:
    c = ProcCluster(3, tmp_path / "cluster", fsync=False, election_timeout_ms="300-600",
                    heartbeat_ms=50)  # fmt: skip
    try:
        await c.boot()
        yield c
    finally:
        c.close(grace=1.0)
        await c.aclose()


ONE_LEADER_OF_THREE = """() => {
  const m = [...document.querySelectorAll('[data-testid=member]')];
  const leaders = m.filter(e => e.dataset.role === 'leader');
  return m.length === 3 && leaders.length === 1
      && document.getElementById('leader').textContent === leaders[0].dataset.id
      ? leaders[0].dataset.id : null;
}"""

NEW_LEADER = """(old) => {
  const m = [...document.querySelectorAll('[data-testid=member]')];
  const gone = m.find(e => e.dataset.id === old);
  const leaders = m.filter(e => e.dataset.role === 'leader');
  return gone && gone.dataset.up === 'false' && leaders.length === 1
      && leaders[0].dataset.id !== old
      && document.getElementById('leader').textContent === leaders[0].dataset.id
      ? leaders[0].dataset.id : null;
}"""


def browse(cluster: ProcCluster, leader: str, shots: Path) -> tuple[str, str, str]:
    """The page served by the leader; kill the leader; the page follows. Runs in one
    thread (Playwright's sync objects belong to the thread that made them)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile,  # a fresh --user-data-dir each run
            executable_path=chromium(), args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1200, "height": 820},
        )
        try:
            page = browser.new_page()
            page.goto(cluster.url(leader) + "/ui")
            first = page.wait_for_function(ONE_LEADER_OF_THREE, timeout=30_000).json_value()
            page.wait_for_timeout(1500)  # some timeline to look at
            page.screenshot(path=str(shots / "ui-three-members.png"), full_page=True)
            cluster.kill(first)  # SIGKILL the leader (the page's own origin)
            second = page.wait_for_function(NEW_LEADER, arg=first, timeout=30_000).json_value()
            page.wait_for_function(
                "(id) => document.getElementById('events').textContent"
                ".includes(id + ' became the leader')", arg=second, timeout=10_000,
            )
            page.wait_for_timeout(1500)
            page.screenshot(path=str(shots / "ui-after-failover.png"), full_page=True)
            events = page.inner_text("#events")
        finally:
            browser.close()
    return first, second, events


async def test_the_live_view_follows_a_leader_change(cluster: ProcCluster) -> None:
    chromium()  # skip early, with the reason, where there is no browser
    leader = await cluster.wait_for_leader()
    shots = artifact_dir()
    first, second, events = await trio.to_thread.run_sync(browse, cluster, leader, shots)
    assert first == leader
    assert second != first
    assert f"{first} is unreachable" in events
    assert f"{second} became the leader" in events
    assert (shots / "ui-after-failover.png").stat().st_size > 10_000
