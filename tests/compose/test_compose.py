"""Static checks of the Docker packaging: compose/Dockerfile and the compose files.

No Docker engine runs on CI, so nothing here builds an image or starts a
container. Instead:

* both compose files are validated against the official Compose Specification
  JSON schema (vendored by the `check-jsonschema` package, `vendor.compose-spec`);
* when a Compose CLI is installed (`docker compose` v2, or the standalone
  `docker-compose`), its own loader resolves the files too (`config`), with and
  without CLUSTER_TOKEN set;
* the topology is asserted on: node names, ports, PEERS, volumes, token
  pass-through, healthcheck, restart policy, build context;
* the Dockerfile is parsed and its essentials asserted (base image, non-root
  user, VOLUME, HEALTHCHECK, entrypoint, COPY sources exist and are not
  excluded by .dockerignore); its healthcheck probe is run against a stub
  HTTP server.

The same 3- and 5-node topologies run for real in the process tests through
`trioraft cluster --nodes 3/5`.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "compose"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
README = COMPOSE_DIR / "README.md"

TOPOLOGIES = [
    pytest.param(COMPOSE_DIR / "docker-compose.yml", 3, "trioraft", id="3-node"),
    pytest.param(COMPOSE_DIR / "docker-compose.5.yml", 5, "trioraft5", id="5-node"),
]
COMPOSE_FILES = [COMPOSE_DIR / "docker-compose.yml", COMPOSE_DIR / "docker-compose.5.yml"]

CONTAINER_PORT = 3000
BASE_HOST_PORT = 3001
# Environment variables a node reads (API.md section 1).
NODE_ENV_VARS = {
    "NODE_ID",
    "HOST",
    "PORT",
    "ADVERTISE_URL",
    "PEERS",
    "PEER_IDS",
    "DATA_DIR",
    "CLUSTER_TOKEN",
    "ELECTION_TIMEOUT_MS",
    "HEARTBEAT_MS",
}
# Settings a user may give in compose/.env (or the shell), passed through as is.
PASS_THROUGH = {"ELECTION_TIMEOUT_MS", "HEARTBEAT_MS"}
# Settings compose refuses to start without (${VAR:?message}).
REQUIRED = {"CLUSTER_TOKEN"}


# --------------------------------------------------------------------------
# helpers


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def env_of(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment as a dict; None means 'pass through from the host'."""
    env = service.get("environment", {})
    if isinstance(env, list):
        out: dict[str, str | None] = {}
        for item in env:
            key, sep, value = str(item).partition("=")
            out[key] = value if sep else None
        return out
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def port_mappings(service: dict[str, Any]) -> list[tuple[str | None, int, int]]:
    """(host_ip, published, target) for each ports entry, short or long syntax."""
    out = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            out.append((entry.get("host_ip"), int(entry["published"]), int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            ip, host, target = parts
        elif len(parts) == 2:
            ip, (host, target) = None, parts
        else:
            pytest.fail(f"port {entry!r} publishes no fixed host port")
        out.append((ip, int(host), int(target)))
    return out


def volume_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) for each volumes entry, short or long syntax."""
    out = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            out.append((entry.get("source", ""), entry["target"]))
        else:
            src, _, rest = str(entry).partition(":")
            out.append((src, rest.split(":")[0]))
    return out


def parse_peers(value: str) -> dict[str, str]:
    peers: dict[str, str] = {}
    for item in value.split(","):
        node_id, sep, url = item.strip().partition("=")
        assert sep, f"PEERS item {item!r} is not id=url"
        assert node_id, f"PEERS item {item!r} has no id"
        assert url, f"PEERS item {item!r} has no url"
        assert node_id not in peers, f"PEERS names {node_id} twice"
        peers[node_id] = url
    return peers


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


# --------------------------------------------------------------------------
# schema validation (primary, pip-installable: check-jsonschema)


def check_jsonschema(*files: Path) -> subprocess.CompletedProcess[str]:
    return run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            *map(str, files),
        ]
    )


def test_compose_files_match_the_compose_spec_schema():
    result = check_jsonschema(*COMPOSE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_validator_rejects_a_broken_compose_file(tmp_path):
    # Guards against a validator that accepts anything (wrong schema, no-op).
    bad = load(COMPOSE_DIR / "docker-compose.yml")
    bad["services"]["node1"]["restart_policy"] = "always"  # not a service key
    bad["services"]["node2"]["ports"] = {"3002": 3000}  # must be a list
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    result = check_jsonschema(path)
    assert result.returncode != 0, result.stdout
    assert "restart_policy" in result.stdout + result.stderr


# --------------------------------------------------------------------------
# topology


@pytest.mark.parametrize(("path", "n", "project"), TOPOLOGIES)
def test_topology(path, n, project):
    spec = load(path)
    names = [f"node{k}" for k in range(1, n + 1)]
    assert spec.get("name") == project
    assert sorted(spec["services"]) == names
    assert "version" not in spec, "the 'version' key is obsolete in the Compose Specification"

    for k, name in enumerate(names, start=1):
        svc = spec["services"][name]
        env = env_of(svc)
        assert set(env) <= NODE_ENV_VARS, f"{name}: unknown variables {set(env) - NODE_ENV_VARS}"
        assert env["NODE_ID"] == name
        assert svc.get("hostname") == name
        assert env["PORT"] == str(CONTAINER_PORT)
        assert env["ADVERTISE_URL"] == f"http://{name}:{CONTAINER_PORT}"
        assert env["DATA_DIR"] == "/data"
        others = {o: f"http://{o}:{CONTAINER_PORT}" for o in names if o != name}
        assert parse_peers(env["PEERS"]) == others, f"{name}: PEERS must list exactly the others"

        ports = port_mappings(svc)
        assert [(p, t) for _, p, t in ports] == [(BASE_HOST_PORT + k - 1, CONTAINER_PORT)]
        assert ports[0][0] in (None, "127.0.0.1")

        assert volume_mounts(svc) == [(f"{name}-data", "/data")]
        assert svc.get("networks") == ["raft"]


@pytest.mark.parametrize(("path", "n", "project"), TOPOLOGIES)
def test_volumes_and_network_are_declared_and_distinct(path, n, project):
    spec = load(path)
    sources = [volume_mounts(s)[0][0] for s in spec["services"].values()]
    assert len(set(sources)) == n, "each node needs its own volume"
    assert set(spec.get("volumes", {})) == set(sources), "named volumes, declared at top level"
    assert set(spec.get("networks", {})) == {"raft"}


@pytest.mark.parametrize(("path", "n", "project"), TOPOLOGIES)
def test_pass_through_settings(path, n, project):
    # Bare keys: compose fills them from compose/.env or the shell, and leaves
    # them out of the container when unset there (never an empty token).
    for name, svc in load(path)["services"].items():
        env = env_of(svc)
        for var in PASS_THROUGH:
            assert var in env, f"{name} does not pass {var} through"
            assert env[var] is None, f"{name} must pass {var} through, not set it"


@pytest.mark.parametrize(("path", "n", "project"), TOPOLOGIES)
def test_nodes_listen_on_all_interfaces_with_a_required_token(path, n, project):
    # Issue 10: a non-loopback listen address needs peer authentication, so
    # the token is required (compose stops with the message when it is unset).
    from trioraft.config import parse_serve_args

    for name, svc in load(path)["services"].items():
        env = env_of(svc)
        for var in REQUIRED:
            pattern = r"\$\{" + var + r":\?[^}]*README[^}]*\}"
            assert re.fullmatch(pattern, env[var] or ""), name
        command = svc["command"]
        assert command[:1] == ["serve"], name
        assert "0.0.0.0:3000" in command, name
        plain = {k: v for k, v in env.items() if v is not None and not v.startswith("$")}
        node = parse_serve_args(command[1:], {**plain, "CLUSTER_TOKEN": "t0ken"})
        assert (node.listen_host, node.cluster_token) == ("0.0.0.0", "t0ken")
        with pytest.raises(SystemExit):
            parse_serve_args(command[1:], plain)


@pytest.mark.parametrize(("path", "n", "project"), TOPOLOGIES)
def test_operational_settings(path, n, project):
    spec = load(path)
    for name, svc in spec["services"].items():
        assert svc.get("restart") == "unless-stopped", name
        assert svc.get("stop_signal", "SIGTERM") == "SIGTERM", name
        assert svc.get("stop_grace_period") == "10s", name
        assert svc.get("image") == "trioraft:local", name
        hc = svc.get("healthcheck")
        assert hc, f"{name} has no healthcheck"
        assert not hc.get("disable"), f"{name} disables its healthcheck"
        assert hc["test"][0] == "CMD"
        assert "/health" in " ".join(hc["test"])
        build = svc["build"]
        context = (path.parent / build["context"]).resolve()
        assert context == REPO, "build context must be the repository root"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE


@pytest.mark.parametrize(("path", "n", "project"), TOPOLOGIES)
def test_compose_healthcheck_matches_the_image(path, n, project):
    hc = next(iter(load(path)["services"].values()))["healthcheck"]
    assert hc["test"][1:] == healthcheck_command()


def test_files_share_the_node_template():
    three, five = (load(p) for p in COMPOSE_FILES)
    assert three["x-node"] == five["x-node"]
    assert three["x-node-env"] == five["x-node-env"]
    for k in (1, 2, 3):  # same per-node keys apart from PEERS
        a, b = three["services"][f"node{k}"], five["services"][f"node{k}"]
        assert {x: y for x, y in a.items() if x != "environment"} == {
            x: y for x, y in b.items() if x != "environment"
        }


def test_env_example_documents_exactly_the_pass_through_settings():
    keys = set()
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^#?([A-Z][A-Z0-9_]*)=", line.strip())
        if m:
            keys.add(m.group(1))
    assert keys == PASS_THROUGH | REQUIRED
    assert "\nCLUSTER_TOKEN=\n" in ENV_EXAMPLE.read_text(encoding="utf-8")  # to fill in


# --------------------------------------------------------------------------
# second opinion: the Compose CLI's own loader, where one is installed


def compose_cli() -> tuple[list[str], bool] | None:
    """(command, is_v1) for an installed Compose CLI, or None. `config` needs no engine."""
    if shutil.which("docker") and run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"], False
    if shutil.which("docker-compose"):
        out = run(["docker-compose", "version", "--short"]).stdout.strip()
        return ["docker-compose"], out.startswith("1.")
    return None


def compose_config(
    path: Path, project: str, tmp_path: Path, env: dict[str, str], ok: bool = True
) -> Any:
    found = compose_cli()
    assert found is not None
    cmd, v1 = found
    if v1:
        # Legacy docker-compose 1.x predates the top-level `name`; give it a copy
        # without it (same directory, so relative build paths still resolve).
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        del spec["name"]
        copy = tmp_path / "compose"
        copy.mkdir(exist_ok=True)
        target = copy / path.name
        target.write_text(yaml.safe_dump(spec), encoding="utf-8")
        args = [*cmd, "-f", str(target), "--project-directory", str(COMPOSE_DIR)]
    else:
        args = [*cmd, "-f", str(path)]
    full_env = {k: v for k, v in os.environ.items() if k not in PASS_THROUGH | REQUIRED}
    full_env.pop("COMPOSE_PROJECT_NAME", None)
    full_env.update(env)
    result = run([*args, "-p", project, "config"], env=full_env, cwd=tmp_path)
    if not ok:
        assert result.returncode != 0
        return result.stderr
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.mark.skipif(
    compose_cli() is None,
    reason="no Compose CLI installed (`docker compose` or `docker-compose`); "
    "the schema tests above still validate the files",
)
@pytest.mark.parametrize(("path", "n", "project"), TOPOLOGIES)
def test_compose_cli_resolves_the_files(path, n, project, tmp_path):
    if (COMPOSE_DIR / ".env").exists():
        pytest.skip("a local compose/.env would change the resolved values")
    missing = compose_config(path, project, tmp_path, {}, ok=False)
    assert "CLUSTER_TOKEN" in missing
    plain = compose_config(path, project, tmp_path, {"CLUSTER_TOKEN": "s3cret"})
    assert sorted(plain["services"]) == [f"node{k}" for k in range(1, n + 1)]
    for svc in plain["services"].values():
        assert Path(svc["build"]["context"]).resolve() == REPO
        env = env_of(svc)
        assert all(env.get(var) is None for var in PASS_THROUGH), env
        assert parse_peers(env["PEERS"])
    settings = {"CLUSTER_TOKEN": "s3cret", "HEARTBEAT_MS": "40"}
    token = compose_config(path, project, tmp_path, settings)
    for svc in token["services"].values():
        env = env_of(svc)
        assert env["CLUSTER_TOKEN"] == "s3cret"
        assert env["HEARTBEAT_MS"] == "40"
        assert env.get("ELECTION_TIMEOUT_MS") is None


# --------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, args = line.partition(" ")
        out.append((word.upper(), " ".join(args.split())))
    assert not pending, "Dockerfile ends inside a continuation"
    return out


def instructions(name: str) -> list[str]:
    return [args for word, args in dockerfile_instructions() if word == name]


def final_stage() -> list[tuple[str, str]]:
    ins = dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


def healthcheck_command() -> list[str]:
    (hc,) = instructions("HEALTHCHECK")
    _, sep, cmd = hc.partition("CMD ")
    assert sep, "HEALTHCHECK must run a command"
    return json.loads(cmd)


def test_dockerfile_base_image():
    froms = instructions("FROM")
    assert froms
    for args in froms:
        assert args.split()[0] == "python:3.11-slim", args


def test_dockerfile_runs_as_non_root():
    users = [args for word, args in final_stage() if word == "USER"]
    assert users, "the runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0", ""), users[-1]


def test_dockerfile_data_volume_port_and_env():
    stage = final_stage()
    volumes = [a for w, a in stage if w == "VOLUME"]
    assert any("/data" in v.replace('"', " ").replace("[", " ").split() for v in volumes)
    assert "3000" in " ".join(a for w, a in stage if w == "EXPOSE").split()
    env = " ".join(a for w, a in stage if w == "ENV")
    assert "DATA_DIR=/data" in env.split()
    assert "PORT=3000" in env.split()


def test_dockerfile_entrypoint_and_signals():
    stage = final_stage()
    (entry,) = [a for w, a in stage if w == "ENTRYPOINT"]
    (cmd,) = [a for w, a in stage if w == "CMD"]
    assert json.loads(entry) == ["trioraft"]
    assert json.loads(cmd) == ["serve"]
    assert [a for w, a in stage if w == "STOPSIGNAL"] in ([], ["SIGTERM"])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "trioraft" in scripts["project"]["scripts"], "ENTRYPOINT needs the console script"


def test_dockerfile_healthcheck_probes_health_on_loopback():
    cmd = healthcheck_command()
    assert cmd[:2] == ["python", "-c"]
    compile(cmd[2], "<healthcheck>", "exec")
    assert "127.0.0.1" in cmd[2]
    assert "/health" in cmd[2]


def dockerignore_excludes(rel: str) -> bool:
    """Rough .dockerignore semantics: last matching pattern wins, '!' re-includes,
    and a pattern that matches a parent directory excludes everything below it."""
    patterns = (
        [
            p.strip()
            for p in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
            if p.strip() and not p.strip().startswith("#")
        ]
        if DOCKERIGNORE.exists()
        else []
    )
    parts = Path(rel).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        regex = re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerfile_copy_sources_exist_and_are_in_the_context():
    sources = []
    for args in instructions("COPY") + instructions("ADD"):
        words = args.split()
        if any(w.startswith("--from=") for w in words):
            continue  # from another build stage
        words = [w for w in words if not w.startswith("--")]
        sources.extend(words[:-1])
    assert sources, "the Dockerfile copies nothing from the repository"
    for src in sources:
        pattern = src.rstrip("/")
        if any(c in pattern for c in "*?["):
            matches = list(REPO.glob(pattern))
        else:
            matches = [REPO / pattern]
        assert matches, f"COPY source {src} matches nothing"
        for m in matches:
            assert m.exists(), f"COPY source {src} missing"
        for m in matches:
            rel = m.relative_to(REPO).as_posix()
            assert not dockerignore_excludes(rel), f".dockerignore excludes COPY source {rel}"


def test_dockerignore_keeps_local_state_out_of_the_context():
    for rel in (".git", "data/node1/log", "compose/.env", ".venv/bin/python"):
        assert dockerignore_excludes(rel), rel
    for rel in ("pyproject.toml", "trioraft/cli.py", "compose/Dockerfile"):
        assert not dockerignore_excludes(rel), rel


# --------------------------------------------------------------------------
# the healthcheck probe, run for real against a stub server


class _Stub(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        code = self.status if self.path == "/health" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def probe(port: int) -> int:
    cmd = healthcheck_command()
    assert cmd[0] == "python"
    env = {**os.environ, "PORT": str(port)}
    return run([sys.executable, *cmd[1:]], env=env).returncode


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_probe(status, healthy):
    handler = type("Handler", (_Stub,), {"status": status})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert (probe(server.server_address[1]) == 0) is healthy
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_healthcheck_probe_fails_when_nothing_listens():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    port = server.server_address[1]
    server.server_close()
    assert probe(port) != 0


# --------------------------------------------------------------------------
# README


def test_readme_covers_the_exercises_and_names_real_files():
    text = README.read_text(encoding="utf-8")
    for needle in (
        "docker compose -f compose/docker-compose.yml up",
        "down -v",
        "docker network disconnect trioraft5_raft",
        "docker network connect --alias node4 trioraft5_raft",
        "/status",
        "trioraft cluster --nodes 3",
        "trioraft cluster --nodes 5",
    ):
        assert needle in text, needle
    for ref in set(re.findall(r"(?<![\w/.])(?:tests/)?compose/[\w.\-]+", text)):
        ref = ref.rstrip(".")
        if ref != "compose/.env":  # the user's own, made from .env.example
            assert (REPO / ref).exists(), f"README names missing file {ref}"
    for k in (1, 2, 3, 4):
        assert f"Exercise {k}" in text, f"README lacks course exercise {k}"
