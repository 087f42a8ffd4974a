"""/status (API.md §4), /debug (course fields), /health, /ready, and what a
node without a leader answers."""

from __future__ import annotations

from tests.api.api_helpers import assert_error, assert_no_traceback, assert_ok
from tests.api.conftest import Cluster

STATUS_FIELDS = {
    "id", "role", "term", "leader", "commit_index", "applied_index", "last_log_index",
    "snapshot_index", "members",
}
ROLES = {"leader", "follower", "candidate", "precandidate", "learner"}


async def test_status_has_the_api_md_fields_on_every_node(trio3: Cluster) -> None:
    leader = trio3.leader.id
    for node in trio3.nodes:
        body = assert_ok(await trio3.client.get(f"{trio3.urls[node.id]}/status"))
        assert set(body) >= STATUS_FIELDS
        assert body["id"] == node.id
        assert body["role"] in ROLES
        assert body["role"] == ("leader" if node.id == leader else "follower")
        assert body["leader"] == leader
        for f in ("term", "commit_index", "applied_index", "last_log_index", "snapshot_index"):
            assert isinstance(body[f], int)
            assert body[f] >= 0
        assert body["term"] >= 1
        assert body["applied_index"] <= body["commit_index"] <= body["last_log_index"]
        assert {n: {"url": m["url"], "voter": m["voter"]} for n, m in body["members"].items()} == {
            n: {"url": url, "voter": True} for n, url in trio3.urls.items()
        }
        # Issue 12: each member also names its member id (initial members: the name).
        assert all(m["member_id"] == n for n, m in body["members"].items())


async def test_status_indexes_follow_writes(single: Cluster) -> None:
    before = assert_ok(await single.client.get(f"{single.leader_url}/status"))
    index = assert_ok(await single.client.put(f"{single.leader_url}/kv/k",
                                              json={"value": "v"}))["index"]
    after = assert_ok(await single.client.get(f"{single.leader_url}/status"))
    assert index > before["commit_index"]
    assert after["commit_index"] >= index
    assert after["applied_index"] >= index
    assert after["last_log_index"] >= index


async def test_debug_has_the_course_fields(trio3: Cluster) -> None:
    assert_ok(await trio3.client.put(f"{trio3.leader_url}/kv/k", json={"value": "v"}))
    await trio3.settle()
    leader = trio3.leader.id
    for node in trio3.nodes:
        body = assert_ok(await trio3.client.get(f"{trio3.urls[node.id]}/debug"))
        assert set(body) >= {"nodeId", "state", "term", "leaderId", "logLength",
                             "commitIndex", "stateMachine"}
        assert body["nodeId"] == node.id
        assert body["state"] == ("leader" if node.id == leader else "follower")
        assert body["leaderId"] == leader
        assert isinstance(body["term"], int)
        assert body["logLength"] >= body["commitIndex"] >= 1
        assert body["stateMachine"] == {"k": "v"}


async def test_health_is_200_on_every_node(trio3: Cluster) -> None:
    for node in trio3.nodes:
        r = await trio3.client.get(f"{trio3.urls[node.id]}/health")
        assert assert_ok(r)["ok"] is True


async def test_ready_is_200_with_a_leader(trio3: Cluster) -> None:
    for url in trio3.all_urls:
        body = assert_ok(await trio3.client.get(f"{url}/ready"))
        assert body["ready"] is True
        assert body["leader"] == trio3.leader.id


# ------------------------------------------------------------------ no leader


async def test_without_a_leader_health_is_200_and_ready_is_503(leaderless: Cluster) -> None:
    url = leaderless.all_urls[0]
    assert assert_ok(await leaderless.client.get(f"{url}/health"))["ok"] is True
    r = await leaderless.client.get(f"{url}/ready")
    assert r.status_code == 503
    assert "X-Raft-Leader" not in r.headers
    assert r.headers["Retry-After"]
    assert r.json()["ready"] is False


async def test_without_a_leader_a_write_is_503_no_leader(leaderless: Cluster) -> None:
    url = leaderless.all_urls[0]
    r = await leaderless.client.put(f"{url}/kv/k", json={"value": "v"})
    assert_error(r, 503, "no_leader")
    assert "X-Raft-Leader" not in r.headers
    r = await leaderless.client.get(f"{url}/kv", params={"consistency": "stale"})
    assert assert_ok(r)["items"] == []


async def test_without_a_leader_a_redirect_write_is_503_not_307(leaderless: Cluster) -> None:
    url = leaderless.all_urls[0]
    r = await leaderless.client.put(f"{url}/kv/k?redirect=true", json={"value": "v"})
    assert_error(r, 503, "no_leader")


async def test_without_a_leader_a_linearizable_read_is_503_and_stale_works(
    leaderless: Cluster,
) -> None:
    url = leaderless.all_urls[0]
    r = await leaderless.client.get(f"{url}/kv/k")
    assert r.status_code == 503
    assert_error(r, 503, r.json()["code"])
    assert_no_traceback(r)
    r = await leaderless.client.get(f"{url}/kv/k", params={"consistency": "stale"})
    assert_error(r, 404, "not_found")


async def test_without_a_leader_status_reports_leader_null(leaderless: Cluster) -> None:
    body = assert_ok(await leaderless.client.get(f"{leaderless.all_urls[0]}/status"))
    assert body["leader"] is None
    assert body["role"] in {"follower", "candidate", "precandidate"}
