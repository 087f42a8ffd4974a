"""compose/node4.yml (the documented way to add a node to the compose cluster) is
a valid Compose file that joins the three-node cluster."""

from __future__ import annotations

from pathlib import Path

import yaml

from trioraft.config import parse_serve_args

COMPOSE = Path(__file__).resolve().parents[2] / "compose"


def test_node4_joins_the_three_node_cluster() -> None:
    doc = yaml.safe_load((COMPOSE / "node4.yml").read_text())
    three = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    node = doc["services"]["node4"]
    env = {k: str(v) for k, v in node["environment"].items() if v is not None}
    assert env["NODE_ID"] == "node4"
    assert "PEERS" not in env
    members = {s: f"http://{s}:3000" for s in three["services"]}
    assert env["JOIN"].split(",") == list(members.values())
    assert node["networks"] == ["raft"]
    assert node["volumes"] == ["node4-data:/data"]
    assert "node4-data" in doc["volumes"]
    # The environment is a valid `serve` configuration with a join list.
    cfg = parse_serve_args(["--listen", "0.0.0.0:3000"],
                           {**env, "CLUSTER_TOKEN": "t0ken"})  # fmt: skip
    assert cfg.join == tuple(members.values())
    assert cfg.id == "node4"
