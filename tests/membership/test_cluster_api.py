"""The /cluster/* routes on in-process servers: every answer matches the OpenAPI
schemas, changes relay from followers, refusals are definite, client tokens
guard them, and X-Raft-Leader / /status speak names."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.api.conftest import make_configs, start_cluster
from trioraft.backup import decode_backup
from trioraft.openapi import spec
from trioraft.server import serve
from trioraft.testing.procs import free_ports

jsonschema = pytest.importorskip("jsonschema")
COMPONENTS = spec()["components"]


def valid(instance: Any, schema_name: str) -> None:
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": COMPONENTS}
    jsonschema.Draft202012Validator(schema).validate(instance)


def error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    valid(body, "Error")
    assert body["code"] == code


async def test_membership_routes_end_to_end(tmp_path: Path) -> None:
    configs = make_configs(3, tmp_path)
    async with start_cluster(configs) as cluster, trio.open_nursery() as extra:
        c = cluster.client
        leader_url = cluster.leader_url
        follower_url = cluster.follower_urls[0]
        r = await c.get(f"{follower_url}/cluster/members")  # relayed: the leader's view
        assert r.status_code == 200, r.text
        body = r.json()
        valid(body, "ClusterMembers")
        assert body["from_leader"] is True
        assert [m["name"] for m in body["members"]] == ["node1", "node2", "node3"]
        assert r.headers["X-Raft-Leader"] in {"node1", "node2", "node3"}

        # Refusals change nothing.
        error(await c.delete(f"{leader_url}/cluster/members/nobody"), 404, "not_found")
        error(await c.post(f"{leader_url}/cluster/members/node2/promote"), 409, "not_a_learner")
        error(await c.post(f"{follower_url}/cluster/members",
                           json={"name": "node9", "url": "http://127.0.0.1:1"}),
              409, "not_joining")  # fmt: skip
        error(await c.post(f"{leader_url}/cluster/members", json={"name": "bad name!",
                                                                   "url": "x"}),
              400, "bad_request")  # fmt: skip
        error(await c.post(f"{leader_url}/cluster/leader/transfer", json={"to": "nobody"}),
              404, "not_found")  # fmt: skip
        after = (await c.get(f"{leader_url}/cluster/members")).json()
        assert after["members"] == body["members"] or len(after["members"]) == 3

        # A fourth node joins (empty, --join) and is added through a follower.
        port = free_ports(1)[0]
        cfg4 = replace(configs[0], id="node4", listen_port=port,
                       advertise_url=f"http://127.0.0.1:{port}", peers={},
                       data_dir=tmp_path / "node4", join=(leader_url,))  # fmt: skip
        node4 = await extra.start(serve, cfg4)
        with trio.fail_after(20):
            while node4.core is None:  # noqa: ASYNC110 - polling the node's state
                await trio.sleep(0.05)
        r = await c.post(f"{follower_url}/cluster/members",
                         json={"name": "node4", "url": cfg4.advertise_url, "promote": True,
                               "timeout_ms": 20_000})  # fmt: skip
        assert r.status_code == 200, r.text
        added = r.json()
        valid(added, "MemberChange")
        assert added["voter"] is True
        assert added["member_id"] == node4.id != "node4"
        # Adding it again (a retry after a 504, say) changes nothing and says so.
        again = await c.post(f"{leader_url}/cluster/members",
                             json={"name": "node4", "url": cfg4.advertise_url})
        assert again.status_code == 200, again.text
        assert again.json()["member_id"] == node4.id
        assert "already a member" in again.json()["note"]

        status = (await c.get(f"{cfg4.advertise_url}/status")).json()
        valid(status, "Status")
        assert status["id"] == "node4"
        assert status["member_id"] == node4.id
        assert status["members"]["node4"]["member_id"] == node4.id
        assert status["cluster_id"] == (await c.get(f"{leader_url}/status")).json()["cluster_id"]

        # Leadership to node4, by name, from a follower.
        with trio.fail_after(30):
            while True:
                r = await c.post(f"{follower_url}/cluster/leader/transfer",
                                 json={"to": "node4", "timeout_ms": 5000})  # fmt: skip
                if r.status_code == 200:
                    break
                assert r.status_code in (409, 503, 504), r.text  # not caught up yet, or moving
                await trio.sleep(0.2)
        valid(r.json(), "Transfer")
        assert r.json()["leader"] == "node4"
        r = await c.get(f"{leader_url}/kv/anything")
        assert r.headers["X-Raft-Leader"] == "node4"  # a name, not the member id

        # A consistent backup from any node.
        w = await c.put(f"{follower_url}/kv/k", json={"value": "v"})
        assert w.status_code == 200
        r = await c.get(f"{follower_url}/cluster/snapshot")
        assert r.status_code == 200
        backup = decode_backup(r.content)
        assert backup.index >= w.json()["index"]
        assert {m.display_name for m in backup.config.members} == {
            "node1", "node2", "node3", "node4"}

        # Remove the leader (node4): it hands over, the change commits, it stops.
        r = await c.delete(f"{follower_url}/cluster/members/node4", timeout=30)
        assert r.status_code == 200, r.text
        valid(r.json(), "MemberChange")
        with trio.fail_after(30):
            while node4.membership.removed is None:  # noqa: ASYNC110
                await trio.sleep(0.05)
        body = (await c.get(f"{leader_url}/cluster/members")).json()
        assert [m["name"] for m in body["members"]] == ["node1", "node2", "node3"]
        extra.cancel_scope.cancel()


async def test_client_tokens_guard_the_membership_routes(tmp_path: Path) -> None:
    configs = [replace(c, client_tokens=(("read", "r-token"), ("write", "w-token")))
               for c in make_configs(1, tmp_path)]  # fmt: skip
    async with start_cluster(configs) as cluster:
        c, url = cluster.client, cluster.leader_url
        read = {"Authorization": "Bearer r-token"}
        write = {"Authorization": "Bearer w-token"}
        error(await c.get(f"{url}/cluster/members"), 401, "unauthorized")
        assert (await c.get(f"{url}/cluster/members", headers=read)).status_code == 200
        error(await c.get(f"{url}/cluster/snapshot", headers=read), 403, "forbidden")
        assert (await c.get(f"{url}/cluster/snapshot", headers=write)).status_code == 200
        error(await c.delete(f"{url}/cluster/members/node1", headers=read), 403, "forbidden")
        error(await c.post(f"{url}/cluster/leader/transfer", headers=read, json={}), 403,
              "forbidden")  # fmt: skip
        # The last voter cannot go.
        error(await c.delete(f"{url}/cluster/members/node1", headers=write), 409, "last_voter")
