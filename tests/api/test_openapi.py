"""trioraft.openapi.spec() describes exactly the client routes of the app, and
what a live node answers matches its schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.api.api_helpers import assert_ok
from tests.api.conftest import Cluster, make_configs
from trioraft.api import create_app
from trioraft.node import RaftNode
from trioraft.openapi import spec
from trioraft.storage import MemoryStorage

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def client_routes() -> dict[str, set[str]]:
    """The app's client routes as OpenAPI paths -> lower-case methods."""
    node = RaftNode(make_configs(1, Path("unused"))[0], MemoryStorage(), {})
    app = create_app(node)
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        path = rule.rule
        if path.startswith(("/raft/", "/static")) or path == "/openapi.json":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", path)
        methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
        routes.setdefault(path, set()).update(methods)
    return routes


def spec_routes(doc: dict[str, Any]) -> dict[str, set[str]]:
    return {path: set(item) & HTTP_METHODS for path, item in doc["paths"].items()}


def test_every_client_route_is_in_the_spec_and_nothing_else() -> None:
    assert spec_routes(spec()) == client_routes()


def test_the_spec_covers_the_api_md_routes() -> None:
    routes = spec_routes(spec())
    assert routes["/kv/{key}"] == {"get", "put", "delete"}
    assert routes["/kv/{key}/cas"] == {"post"}
    assert routes["/kv"] == {"get", "post", "delete"}
    assert routes["/txn"] == {"post"}
    for path in ("/status", "/debug", "/health", "/ready"):
        assert routes[path] == {"get"}


def test_the_spec_is_openapi_3_1_and_json_serializable() -> None:
    doc = spec()
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"]
    assert json.loads(json.dumps(doc)) == doc


def test_every_ref_resolves() -> None:
    doc = spec()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if "$ref" in x:
                target: Any = doc
                for part in x["$ref"].removeprefix("#/").split("/"):
                    target = target[part]
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(doc)


def test_the_spec_describes_client_authentication() -> None:
    doc = spec()
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path in ("/status", "/health", "/ready"):
        assert doc["paths"][path]["get"]["security"] == []
    for path, method in [("/kv/{key}", "get"), ("/kv/{key}", "put"), ("/kv", "delete"),
                         ("/txn", "post"), ("/debug", "get")]:
        op = doc["paths"][path][method]
        assert {"bearerAuth": []} in op["security"]
        assert {"401", "403"} <= set(op["responses"])
    assert {"unauthorized", "forbidden"} <= set(
        doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"])


def test_spec_returns_a_fresh_copy() -> None:
    doc = spec()
    doc["paths"].clear()
    assert spec()["paths"]


def test_the_spec_documents_errors_parameters_and_limits() -> None:
    doc = spec()
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "code"]
    for code in ("bad_request", "not_found", "cas_failed", "too_large", "no_leader",
                 "no_quorum", "unknown_outcome"):
        assert code in error["properties"]["code"]["enum"]
    params = doc["components"]["parameters"]
    assert {"consistency", "redirect", "prefix", "limit", "IdempotencyKey"} <= set(params)
    assert params["IdempotencyKey"]["in"] == "header"
    assert params["IdempotencyKey"]["name"] == "Idempotency-Key"
    put = doc["paths"]["/kv/{key}"]["put"]
    assert {"200", "307", "400", "413", "503", "504"} <= set(put["responses"])
    assert "409" in doc["paths"]["/kv/{key}/cas"]["post"]["responses"]
    assert "1024" in json.dumps(doc["paths"]["/kv/{key}"]["parameters"])


async def test_get_openapi_json_serves_the_spec(single: Cluster) -> None:
    r = await single.client.get(f"{single.leader_url}/openapi.json")
    assert assert_ok(r) == spec()


# ------------------------------------------------------------ live responses


@pytest.fixture
def validate():
    jsonschema = pytest.importorskip("jsonschema")
    components = spec()["components"]

    def check(instance: Any, schema_name: str) -> None:
        schema = {"$ref": f"#/components/schemas/{schema_name}", "components": components}
        jsonschema.Draft202012Validator(schema).validate(instance)

    return check


async def test_live_responses_match_the_schemas(single: Cluster, validate) -> None:
    base, c = single.leader_url, single.client
    validate(assert_ok(await c.put(f"{base}/kv/k", json={"value": "v"})), "PutResult")
    validate(assert_ok(await c.post(f"{base}/kv", json={"key": "j", "value": "v"})),
             "PutResult")
    validate(assert_ok(await c.get(f"{base}/kv/k")), "GetResult")
    validate(assert_ok(await c.get(f"{base}/kv", params={"limit": 1})), "RangeResult")
    validate(assert_ok(await c.post(f"{base}/kv/k/cas", json={"expected": "v", "value": "w"})),
             "CasOk")
    r = await c.post(f"{base}/kv/k/cas", json={"expected": "v", "value": "w"})
    assert r.status_code == 409
    validate(r.json(), "CasFailed")
    txn = {"compare": [{"key": "k", "op": "exists"}],
           "success": [{"op": "get", "key": "k"}, {"op": "get", "key": "none"},
                       {"op": "put", "key": "p", "value": "v"}, {"op": "delete", "key": "j"},
                       {"op": "cas", "key": "k", "expected": "no", "value": "x"},
                       {"op": "cas", "key": "k", "expected": "w", "value": "x"}]}
    validate(assert_ok(await c.post(f"{base}/txn", json=txn)), "TxnResult")
    validate(assert_ok(await c.delete(f"{base}/kv/k")), "DeleteResult")
    validate(assert_ok(await c.get(f"{base}/status")), "Status")
    validate(assert_ok(await c.get(f"{base}/debug")), "Debug")
    validate(assert_ok(await c.get(f"{base}/health")), "Health")
    validate(assert_ok(await c.get(f"{base}/ready")), "Ready")
    for r in [await c.get(f"{base}/kv/absent"), await c.put(f"{base}/kv/k", json={}),
              await c.patch(f"{base}/kv/k"), await c.get(f"{base}/nowhere")]:
        validate(r.json(), "Error")
