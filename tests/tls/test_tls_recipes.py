"""The documented ways to run on TLS: certificates from compose/make-certs.sh, used by
`trioraft cluster --tls-dir` (a real 3-node cluster, driven by the CLI with
--cacert), and the compose overlay compose/docker-compose.tls.yml (checked
statically, its healthcheck probe run against that cluster)."""

# The test drives a separate process: Popen and polling are deliberate.
# ruff: noqa: ASYNC110, ASYNC220, ASYNC230

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import yaml

from trioraft.cluster import tls_args
from trioraft.config import ConfigError, build_serve_parser, config_from_args, parse_serve_args
from trioraft.testing.procs import free_port_range

pytestmark = pytest.mark.processes

REPO = Path(__file__).resolve().parents[2]
MAKE_CERTS = REPO / "compose" / "make-certs.sh"
OVERLAY = REPO / "compose" / "docker-compose.tls.yml"
BASE = REPO / "compose" / "docker-compose.yml"
LEADER_LINE = re.compile(r"^leader: (node\d+)$", re.M)
NODE_LINE = re.compile(r"^(node\d+)\s+(https://\S+)\s+pid (\d+)", re.M)


@pytest.fixture(scope="module")
def made_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (nox -s tests installs it)")
    out = tmp_path_factory.mktemp("made") / "certs"
    subprocess.run(["sh", str(MAKE_CERTS), str(out), "3"], check=True, capture_output=True,
                   timeout=60)  # fmt: skip
    return out


def test_make_certs_gives_certificates_trioraft_accepts(made_certs: Path) -> None:
    for k in (1, 2, 3):
        config = parse_serve_args(
            ["--id", f"node{k}", "--tls-cert", str(made_certs / f"node{k}.pem"),
             "--tls-key", str(made_certs / f"node{k}-key.pem"),
             "--tls-ca", str(made_certs / "ca.pem")], {})  # fmt: skip
        assert config.peer_tls_files is not None
    # ... each names its own node only: node1's certificate cannot be node2's.
    args = build_serve_parser().parse_args(["--id", "node2", *tls_args(made_certs, "node1")])
    with pytest.raises(ConfigError, match="not this node"):
        config_from_args(args, {})
    assert (made_certs / "ca-key.pem").stat().st_mode & 0o077 == 0  # the CA key stays private


async def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIORAFT_")}
    with trio.fail_after(30):
        return await trio.run_process(
            [sys.executable, "-m", "trioraft", *args], check=False, capture_stdout=True,
            capture_stderr=True, env=env,
        )  # fmt: skip


async def test_trioraft_cluster_on_tls(made_certs: Path, tmp_path: Path) -> None:
    base = free_port_range(3)
    out_path = tmp_path / "cluster.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trioraft", "cluster", "--nodes", "3", "--base-port",
             str(base), "--data-dir", str(tmp_path / "data"), "--tls-dir", str(made_certs),
             "--election-timeout-ms", "500-1000", "--heartbeat-ms", "100"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with trio.move_on_after(30):
            while not LEADER_LINE.search(out_path.read_text()):
                await trio.sleep(0.05)
        text = out_path.read_text()
        assert LEADER_LINE.search(text), text
        urls = [u for _, u, _ in NODE_LINE.findall(text)]
        assert urls == [f"https://127.0.0.1:{base + k}" for k in range(3)], text
        ep = ["--endpoints", ",".join(urls), "--cacert", str(made_certs / "ca.pem")]
        r = await cli("put", "tls", "yes", *ep)
        assert r.returncode == 0, r.stderr
        r = await cli("get", "tls", *ep)
        assert (r.returncode, r.stdout) == (0, b"yes\n"), r.stderr
        r = await cli("status", *ep)
        assert r.returncode == 0, r.stderr
        assert b"leader" in r.stdout

        # The compose overlay's healthcheck probe, run against node1.
        probe = load(OVERLAY)["x-tls-node"]["healthcheck"]["test"]
        assert probe[:3] == ["CMD", "python", "-c"]
        env = {**os.environ, "PORT": str(base), "TLS_CA": str(made_certs / "ca.pem")}
        done = await trio.run_process([sys.executable, "-c", probe[3]], env=env, check=False,
                                      capture_stderr=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out_path.read_text()


def load(path: Path) -> dict[str, object]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_the_compose_overlay_puts_every_node_of_the_base_file_on_tls() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(OVERLAY)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    base, overlay = load(BASE)["services"], load(OVERLAY)["services"]
    assert isinstance(base, dict)
    assert isinstance(overlay, dict)
    assert set(overlay) == set(base)
    for node, service in overlay.items():
        env = service["environment"]
        assert env["TLS_CERT"] == f"/certs/{node}.pem"
        assert env["TLS_KEY"] == f"/certs/{node}-key.pem"
        assert env["TLS_CA"] == "/certs/ca.pem"
        assert env["ADVERTISE_URL"] == f"https://{node}:3000"
        peers = dict(item.split("=", 1) for item in env["PEERS"].split(","))
        assert peers == {p: f"https://{p}:3000" for p in base if p != node}
        assert "./certs:/certs:ro" in service["volumes"]
    ignored = (REPO / ".dockerignore").read_text() + (REPO / ".gitignore").read_text()
    assert "compose/certs" in ignored  # keys never reach an image or a commit
