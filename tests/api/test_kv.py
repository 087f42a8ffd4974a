"""The key-value routes of API.md §3 on a real node: PUT/GET/DELETE /kv/{key},
POST /kv (course form), CAS, range reads and /txn."""

from __future__ import annotations

import pytest

from tests.api.api_helpers import assert_error, assert_ok
from tests.api.conftest import Cluster, quote_key


async def put(c: Cluster, key: str, value: str, url: str | None = None) -> dict:
    return assert_ok(await c.client.put(f"{url or c.leader_url}/kv/{quote_key(key)}",
                                        json={"value": value}))


# ------------------------------------------------------------------ PUT / GET / DELETE


async def test_put_returns_key_value_and_log_index(single: Cluster) -> None:
    body = await put(single, "k", "v")
    assert set(body) == {"key", "value", "index"}
    assert body["key"] == "k"
    assert body["value"] == "v"
    assert isinstance(body["index"], int)
    assert body["index"] >= 1


async def test_put_indexes_increase(single: Cluster) -> None:
    first = await put(single, "k", "1")
    second = await put(single, "k", "2")
    assert second["index"] > first["index"]


async def test_get_returns_key_and_value(single: Cluster) -> None:
    await put(single, "k", "v")
    body = assert_ok(await single.client.get(f"{single.leader_url}/kv/k"))
    assert body == {"key": "k", "value": "v"}


async def test_get_absent_key_is_404_not_found(single: Cluster) -> None:
    r = await single.client.get(f"{single.leader_url}/kv/absent")
    assert_error(r, 404, "not_found")


async def test_empty_value_is_a_value(single: Cluster) -> None:
    await put(single, "k", "")
    body = assert_ok(await single.client.get(f"{single.leader_url}/kv/k"))
    assert body == {"key": "k", "value": ""}


async def test_delete_existing_key_reports_deleted(single: Cluster) -> None:
    await put(single, "k", "v")
    body = assert_ok(await single.client.delete(f"{single.leader_url}/kv/k"))
    assert body == {"key": "k", "deleted": True}
    r = await single.client.get(f"{single.leader_url}/kv/k")
    assert_error(r, 404, "not_found")


async def test_delete_absent_key_reports_not_deleted(single: Cluster) -> None:
    body = assert_ok(await single.client.delete(f"{single.leader_url}/kv/never"))
    assert body == {"key": "never", "deleted": False}


# Keys in the path are percent-decoded. A slash may be sent as "/" or "%2F":
# both mean "/" in the key (the server routes on the decoded path), so
# /kv/a%2Fb and /kv/a/b are the same key "a/b".
KEYS = [
    "plain",
    "with space",
    "ünïcødé-€-日本",
    "a/b/c",
    "trailing/",
    "a//b",
    "q?x",
    "pct%25",
    "hash#",
    "plus+sign",
    "amp&eq=",
    "..",
    ".",
    "x/cas",  # PUT/GET/DELETE reach the key "x/cas"; only POST .../cas means CAS
    "k" * 1024,  # the largest key
]


@pytest.mark.parametrize("key", KEYS, ids=range(len(KEYS)))
async def test_percent_encoded_keys_round_trip(single: Cluster, key: str) -> None:
    url = f"{single.leader_url}/kv/{quote_key(key)}"
    body = assert_ok(await single.client.put(url, json={"value": "v"}))
    assert body["key"] == key
    assert assert_ok(await single.client.get(url)) == {"key": key, "value": "v"}
    items = assert_ok(await single.client.get(f"{single.leader_url}/kv"))["items"]
    assert items == [{"key": key, "value": "v"}]
    assert assert_ok(await single.client.delete(url)) == {"key": key, "deleted": True}


async def test_encoded_and_literal_slashes_name_the_same_key(single: Cluster) -> None:
    await put(single, "a/b", "v")  # sent as a%2Fb
    body = assert_ok(await single.client.get(f"{single.leader_url}/kv/a/b"))
    assert body == {"key": "a/b", "value": "v"}


async def test_key_with_leading_slash_is_not_rewritten_to_another_key(single: Cluster) -> None:
    # "/kv/%2Flead" decodes to "/kv//lead". It must never be answered with a
    # redirect to "/kv/lead" (a different key); today it is a JSON 404.
    r = await single.client.put(f"{single.leader_url}/kv/%2Flead", json={"value": "v"})
    assert r.status_code != 308
    assert r.status_code in (200, 400, 404)
    assert r.headers["content-type"].startswith("application/json")
    items = assert_ok(await single.client.get(f"{single.leader_url}/kv"))["items"]
    assert {"key": "lead", "value": "v"} not in items


@pytest.mark.parametrize("key", ["/lead", "/", "//a/", "/x/cas"])
async def test_keys_beginning_with_slash_put_get_cas_range_delete(
    single: Cluster, key: str
) -> None:
    url = f"{single.leader_url}/kv/{quote_key(key)}"
    assert assert_ok(await single.client.put(url, json={"value": "v"}))["key"] == key
    assert assert_ok(await single.client.get(url)) == {"key": key, "value": "v"}
    assert assert_ok(await single.client.post(f"{url}/cas", json={"expected": "v",
                                                                  "value": "w"}))["ok"]
    items = assert_ok(await single.client.get(f"{single.leader_url}/kv"))["items"]
    assert items == [{"key": key, "value": "w"}]
    assert assert_ok(await single.client.delete(url)) == {"key": key, "deleted": True}


async def test_key_with_leading_slash_round_trips_in_the_path(single: Cluster) -> None:
    url = f"{single.leader_url}/kv/{quote_key('/lead')}"
    assert assert_ok(await single.client.put(url, json={"value": "v"}))["key"] == "/lead"
    assert assert_ok(await single.client.get(url))["value"] == "v"
    assert assert_ok(await single.client.get(url + "?consistency=stale&x=1"))["value"] == "v"
    cas = await single.client.post(url + "/cas", json={"expected": "v", "value": "w"})
    assert assert_ok(cas)["ok"] is True


@pytest.mark.parametrize("key", ["a\nb", "\r", "tab\there", "\x00"])
async def test_keys_with_control_characters_have_a_path_form(single: Cluster, key: str) -> None:
    url = f"{single.leader_url}/kv/{quote_key(key)}"
    for query in ("", "?redirect=false"):  # the fast path, then the Quart routes
        assert assert_ok(await single.client.put(url + query, json={"value": "v"}))["key"] == key
        assert assert_ok(await single.client.get(url + query))["key"] == key


async def test_key_with_leading_slash_works_in_the_course_form(single: Cluster) -> None:
    r = await single.client.post(f"{single.leader_url}/kv", json={"key": "/lead", "value": "v"})
    assert assert_ok(r)["key"] == "/lead"
    items = assert_ok(await single.client.get(f"{single.leader_url}/kv"))["items"]
    assert items == [{"key": "/lead", "value": "v"}]


# ------------------------------------------------------------------ POST /kv


async def test_post_kv_course_form_writes(single: Cluster) -> None:
    r = await single.client.post(f"{single.leader_url}/kv", json={"key": "k", "value": "v"})
    body = assert_ok(r)
    assert set(body) == {"key", "value", "index"}
    assert (body["key"], body["value"]) == ("k", "v")
    assert assert_ok(await single.client.get(f"{single.leader_url}/kv/k"))["value"] == "v"


# ------------------------------------------------------------------ CAS


async def cas(c: Cluster, key: str, expected: str | None, value: str | None):
    return await c.client.post(f"{c.leader_url}/kv/{quote_key(key)}/cas",
                               json={"expected": expected, "value": value})


async def test_cas_with_matching_expected_sets(single: Cluster) -> None:
    await put(single, "k", "old")
    body = assert_ok(await cas(single, "k", "old", "new"))
    assert body["ok"] is True
    assert assert_ok(await single.client.get(f"{single.leader_url}/kv/k"))["value"] == "new"


async def test_cas_expected_null_creates_an_absent_key(single: Cluster) -> None:
    assert assert_ok(await cas(single, "k", None, "v"))["ok"] is True
    assert assert_ok(await single.client.get(f"{single.leader_url}/kv/k"))["value"] == "v"


async def test_cas_expected_null_fails_on_a_present_key(single: Cluster) -> None:
    await put(single, "k", "v")
    body = assert_error(await cas(single, "k", None, "w"), 409, "cas_failed")
    assert body["ok"] is False
    assert body["current"] == "v"
    assert assert_ok(await single.client.get(f"{single.leader_url}/kv/k"))["value"] == "v"


async def test_cas_value_null_deletes(single: Cluster) -> None:
    await put(single, "k", "v")
    assert assert_ok(await cas(single, "k", "v", None))["ok"] is True
    assert_error(await single.client.get(f"{single.leader_url}/kv/k"), 404, "not_found")


async def test_cas_mismatch_is_409_with_current_and_changes_nothing(single: Cluster) -> None:
    await put(single, "k", "actual")
    before = await single.state()
    body = assert_error(await cas(single, "k", "wrong", "new"), 409, "cas_failed")
    assert body["ok"] is False
    assert body["current"] == "actual"
    after = await single.state()
    assert [n["items"] for n in after.values()] == [n["items"] for n in before.values()]


async def test_cas_mismatch_on_absent_key_reports_current_null(single: Cluster) -> None:
    body = assert_error(await cas(single, "k", "something", "new"), 409, "cas_failed")
    assert body["current"] is None


# ------------------------------------------------------------------ range


async def test_range_by_prefix_in_key_order(single: Cluster) -> None:
    for k in ["b/2", "a/1", "b/1", "c", "b/3"]:
        await put(single, k, k.upper())
    body = assert_ok(await single.client.get(f"{single.leader_url}/kv",
                                             params={"prefix": "b/"}))
    assert body == {
        "items": [{"key": "b/1", "value": "B/1"}, {"key": "b/2", "value": "B/2"},
                  {"key": "b/3", "value": "B/3"}],
        "more": False,
    }


async def test_range_limit_sets_more(single: Cluster) -> None:
    for k in ["p1", "p2", "p3"]:
        await put(single, k, "v")
    body = assert_ok(await single.client.get(f"{single.leader_url}/kv",
                                             params={"prefix": "p", "limit": "2"}))
    assert [i["key"] for i in body["items"]] == ["p1", "p2"]
    assert body["more"] is True
    body = assert_ok(await single.client.get(f"{single.leader_url}/kv",
                                             params={"prefix": "p", "limit": "3"}))
    assert len(body["items"]) == 3
    assert body["more"] is False


async def test_range_without_prefix_lists_everything(single: Cluster) -> None:
    await put(single, "x", "1")
    await put(single, "y", "2")
    body = assert_ok(await single.client.get(f"{single.leader_url}/kv"))
    assert body == {"items": [{"key": "x", "value": "1"}, {"key": "y", "value": "2"}],
                    "more": False}


async def test_range_with_no_match_is_empty(single: Cluster) -> None:
    body = assert_ok(await single.client.get(f"{single.leader_url}/kv",
                                             params={"prefix": "nothing"}))
    assert body == {"items": [], "more": False}


# ------------------------------------------------------------------ /txn


async def txn(c: Cluster, body: dict, url: str | None = None):
    return await c.client.post(f"{url or c.leader_url}/txn", json=body)


async def test_txn_success_branch_runs_all_ops(single: Cluster) -> None:
    await put(single, "k", "v")
    await put(single, "gone", "x")
    r = await txn(single, {
        "compare": [{"key": "k", "op": "==", "value": "v"}],
        "success": [
            {"op": "get", "key": "k"},
            {"op": "put", "key": "new", "value": "n"},
            {"op": "delete", "key": "gone"},
            {"op": "cas", "key": "c", "expected": None, "value": "created"},
        ],
        "failure": [{"op": "put", "key": "failed", "value": "yes"}],
    })
    body = assert_ok(r)
    assert body["succeeded"] is True
    get, put_, delete, cas_ = body["results"]
    assert get == {"key": "k", "value": "v"}
    assert (put_["key"], put_["value"]) == ("new", "n")
    assert isinstance(put_["index"], int)
    assert delete == {"key": "gone", "deleted": True}
    assert cas_["ok"] is True
    items = assert_ok(await single.client.get(f"{single.leader_url}/kv"))["items"]
    assert items == [{"key": "c", "value": "created"}, {"key": "k", "value": "v"},
                     {"key": "new", "value": "n"}]


async def test_txn_failure_branch_runs_when_a_compare_fails(single: Cluster) -> None:
    await put(single, "k", "v")
    r = await txn(single, {
        "compare": [{"key": "k", "op": "==", "value": "v"},
                    {"key": "k", "op": "!=", "value": "v"}],
        "success": [{"op": "put", "key": "s", "value": "1"}],
        "failure": [{"op": "put", "key": "f", "value": "1"}, {"op": "get", "key": "absent"}],
    })
    body = assert_ok(r)
    assert body["succeeded"] is False
    assert body["results"][1] == {"key": "absent", "value": None}
    keys = [i["key"] for i in assert_ok(await single.client.get(f"{single.leader_url}/kv"))[
        "items"]]
    assert keys == ["f", "k"]


@pytest.mark.parametrize(
    ("op", "present", "holds"),
    [("exists", True, True), ("exists", False, False),
     ("absent", True, False), ("absent", False, True)],
)
async def test_txn_exists_and_absent_compares(
    single: Cluster, op: str, present: bool, holds: bool
) -> None:
    if present:
        await put(single, "k", "v")
    body = assert_ok(await txn(single, {"compare": [{"key": "k", "op": op}]}))
    assert body == {"succeeded": holds, "results": []}


async def test_txn_cas_op_mismatch_reports_current_inside_results(single: Cluster) -> None:
    await put(single, "k", "v")
    body = assert_ok(await txn(single, {
        "success": [{"op": "cas", "key": "k", "expected": "other", "value": "w"}]}))
    assert body["succeeded"] is True
    assert body["results"] == [{"ok": False, "current": "v"}]


async def test_txn_empty_object_is_a_no_op_success(single: Cluster) -> None:
    assert assert_ok(await txn(single, {})) == {"succeeded": True, "results": []}
