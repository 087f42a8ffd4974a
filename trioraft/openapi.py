"""The OpenAPI 3.1 description of the client HTTP API (API.md §3-4), served at /openapi.json.

Only the client routes are described; the peer routes under /raft/* are an
internal protocol between nodes. A test checks that every client route of the
app appears here with the same methods, and nothing else does.
"""

from __future__ import annotations

import copy
from typing import Any

from trioraft import kv, openapi_cluster

__all__ = ["spec"]

_JSON = "application/json"


def _at_most(bound: int) -> str:
    """A regex of the canonical decimals 0..bound (no sign, no leading zeros)."""
    digits = str(bound)
    shorter = f"[1-9][0-9]{{0,{len(digits) - 2}}}" if len(digits) > 1 else ""
    same_length = [digits]
    for i, d in enumerate(digits):
        low = "1" if i == 0 else "0"
        if int(d) > int(low):
            rest = len(digits) - i - 1
            same_length.append(f"{digits[:i]}[{low}-{int(d) - 1}][0-9]{{{rest}}}")
    return "|".join(["0", *([shorter] if shorter else []), *same_length])


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _body(_ref("Error"), description)


def _resp(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _param(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/parameters/{name}"}


_KEY_PARAM: dict[str, Any] = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": (
        "The key, percent-encoded and percent-decoded by the server (UTF-8). "
        "A slash may be sent as '/' or '%2F': both mean '/' in the key, so "
        "'/kv/a%2Fb' and '/kv/a/b' name the same key 'a/b', and '/kv//a' or "
        "'/kv/%2Fa' the key '/a'. The keys '.' and '..' must be sent as '%2E' "
        "and '%2E%2E' (HTTP clients remove literal dot segments). A key ending in '/cas' "
        "cannot be used with POST /kv/{key}/cas. The percent-decoded path must be UTF-8 "
        "(else 400). "
        "The empty key ('PUT /kv/') is 400 bad_request. At most "
        f"{kv.MAX_KEY_BYTES} UTF-8 bytes, non-empty."
    ),
    "schema": {"type": "string", "minLength": 1},
}

_AUTH_ERRORS: dict[str, Any] = {
    "401": _resp("Unauthorized"),
    "403": _resp("Forbidden"),
}
_WRITE_ERRORS: dict[str, Any] = {
    "400": _resp("BadRequest"),
    **_AUTH_ERRORS,
    "413": _resp("TooLarge"),
    "503": _resp("Unavailable"),
    "504": _resp("UnknownOutcome"),
}
_READ_ERRORS: dict[str, Any] = {
    "400": _resp("BadRequest"),
    **_AUTH_ERRORS,
    "413": _resp("TooLarge"),
    "503": _resp("Unavailable"),
}
# Client routes: a bearer token when the node has client tokens, else none.
_CLIENT_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {}]
_OPEN: list[dict[str, list[str]]] = []

_ERROR_CODES = [
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "cas_failed",
    "too_large",
    "no_leader",
    "no_quorum",
    "unknown_outcome",
    "request_expired",
    "internal",
    *openapi_cluster.ERROR_CODES,  # the membership routes (issue 12)
]

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": (
            "Every error. 400, 404, 409, 413 and 503 mean the operation did not take "
            "effect and never will: retrying is safe. Only 504 leaves the outcome open."
        ),
        "required": ["error", "code"],
        "properties": {
            "error": {"type": "string", "description": "a human sentence"},
            "code": {"type": "string", "enum": _ERROR_CODES},
        },
    },
    "Key": {"type": "string", "minLength": 1, "description": f"at most {kv.MAX_KEY_BYTES} bytes"},
    "Value": {"type": "string", "description": f"at most {kv.MAX_VALUE_BYTES} UTF-8 bytes"},
    "PutBody": {
        "type": "object",
        "required": ["value"],
        "properties": {"value": _ref("Value")},
    },
    "PostKvBody": {
        "type": "object",
        "description": "The course form of a put.",
        "required": ["key", "value"],
        "properties": {"key": _ref("Key"), "value": _ref("Value")},
    },
    "PutResult": {
        "type": "object",
        "required": ["key", "value", "index"],
        "properties": {
            "key": _ref("Key"),
            "value": _ref("Value"),
            "index": {"type": "integer", "description": "log index of the write"},
        },
    },
    "GetResult": {
        "type": "object",
        "required": ["key", "value"],
        "properties": {"key": _ref("Key"), "value": _ref("Value")},
    },
    "DeleteResult": {
        "type": "object",
        "required": ["key", "deleted"],
        "properties": {
            "key": _ref("Key"),
            "deleted": {"type": "boolean", "description": "false if the key was absent"},
        },
    },
    "CasBody": {
        "type": "object",
        "required": ["expected", "value"],
        "properties": {
            "expected": {
                "type": ["string", "null"],
                "description": "the current value required; null means 'only if absent'",
            },
            "value": {
                "type": ["string", "null"],
                "description": "the new value; null deletes the key",
            },
        },
    },
    "CasOk": {
        "type": "object",
        "required": ["ok"],
        "properties": {"ok": {"const": True}, "index": {"type": "integer"}},
    },
    "CasFailed": {
        "type": "object",
        "required": ["ok", "current", "error", "code"],
        "properties": {
            "ok": {"const": False},
            "current": {
                "type": ["string", "null"],
                "description": "the value now (null: absent; also null in a replayed answer)",
            },
            "error": {"type": "string"},
            "code": {"const": "cas_failed"},
            "replayed": _ref("Replayed"),
        },
    },
    "Replayed": {
        "const": True,
        "description": (
            "Present in the answer to a retried Idempotency-Key when the first answer held "
            "values read (a failed CAS's current, a transaction's get values): those are not "
            "kept by the exactly-once table and are null here."
        ),
    },
    "DeletePrefixResult": {
        "type": "object",
        "required": ["prefix", "deleted"],
        "properties": {
            "prefix": _ref("Key"),
            "deleted": {"type": "integer", "minimum": 0, "description": "keys removed"},
        },
    },
    "RangeResult": {
        "type": "object",
        "required": ["items", "more"],
        "properties": {
            "items": {"type": "array", "items": _ref("GetResult")},
            "more": {"type": "boolean", "description": "more keys match beyond limit"},
        },
    },
    "TxnCompare": {
        "type": "object",
        "required": ["key"],
        "properties": {
            "key": _ref("Key"),
            "op": {"type": "string", "enum": ["==", "!=", "exists", "absent"], "default": "=="},
            "value": {"type": ["string", "null"]},
        },
    },
    "TxnOp": {
        "description": (
            "One operation: put (key, value), delete (key), get (key), cas (key, expected, "
            "value: null as in POST /kv/{key}/cas) or delete_prefix (prefix)."
        ),
        "oneOf": [
            {
                "type": "object",
                "required": ["op", "key", "value"],
                "properties": {"op": {"const": "put"}, "key": _ref("Key"), "value": _ref("Value")},
            },
            {
                "type": "object",
                "required": ["op", "key"],
                "properties": {"op": {"enum": ["delete", "get"]}, "key": _ref("Key")},
            },
            {
                "type": "object",
                "required": ["op", "key"],
                "properties": {
                    "op": {"const": "cas"},
                    "key": _ref("Key"),
                    "expected": {"type": ["string", "null"], "default": None},
                    "value": {"type": ["string", "null"], "default": None},
                },
            },
            {
                "type": "object",
                "required": ["op", "prefix"],
                "properties": {
                    "op": {"const": "delete_prefix"},
                    "prefix": {
                        **_ref("Key"),
                        "description": "remove every key starting with it",
                    },
                },
            },
        ],
    },
    "TxnBody": {
        "type": "object",
        "description": (
            "If every compare holds, run `success`, else `failure`, atomically. At most "
            f"{kv.MAX_TXN_OPS} compares and ops and {kv.MAX_TXN_BYTES} bytes of keys and values; "
            f"its get values (and failed cas currents) may total at most "
            f"{kv.MAX_TXN_RESULT_BYTES} bytes, else it changes nothing and answers 413."
        ),
        "properties": {
            "compare": {"type": "array", "items": _ref("TxnCompare"), "default": []},
            "success": {"type": "array", "items": _ref("TxnOp"), "default": []},
            "failure": {"type": "array", "items": _ref("TxnOp"), "default": []},
        },
    },
    "TxnResult": {
        "type": "object",
        "required": ["succeeded", "results"],
        "properties": {
            "succeeded": {"type": "boolean"},
            "results": {
                "type": "array",
                "description": "one result per op of the branch that ran",
                "items": {
                    "anyOf": [
                        _ref("PutResult"),
                        _ref("DeleteResult"),
                        {
                            "type": "object",
                            "required": ["key", "value"],
                            "properties": {
                                "key": _ref("Key"),
                                "value": {"type": ["string", "null"]},
                            },
                        },
                        _ref("CasOk"),
                        {
                            "type": "object",
                            "required": ["ok", "current"],
                            "properties": {
                                "ok": {"const": False},
                                "current": {"type": ["string", "null"]},
                            },
                        },
                        _ref("DeletePrefixResult"),
                    ]
                },
            },
            "replayed": _ref("Replayed"),
        },
    },
    "Status": {
        "type": "object",
        "required": [
            "id", "role", "term", "leader", "commit_index", "applied_index",
            "last_log_index", "snapshot_index", "members",
        ],
        "properties": {
            "id": {"type": "string"},
            "role": {
                "type": "string",
                "enum": ["leader", "follower", "candidate", "precandidate", "learner"],
            },
            "term": {"type": "integer"},
            "leader": {"type": ["string", "null"]},
            "commit_index": {"type": "integer"},
            "applied_index": {"type": "integer"},
            "last_log_index": {"type": "integer"},
            "snapshot_index": {"type": "integer"},
            "members": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "required": ["url", "voter"],
                    "properties": {"url": {"type": "string"}, "voter": {"type": "boolean"},
                                   "member_id": {"type": "string"}},
                },
            },
            **openapi_cluster.STATUS_FIELDS,
        },
    },
    "Debug": {
        "type": "object",
        "description": (
            "The course design's fields. stateMachine is bounded: at most 100 keys and 64 KiB, "
            "in key order (stateMachineTruncated says whether more exist); page through the "
            "whole store with GET /kv?prefix=&limit=&after=."
        ),
        "required": [
            "nodeId", "state", "term", "leaderId", "logLength", "commitIndex", "stateMachine",
            "stateMachineKeys", "stateMachineTruncated",
        ],
        "properties": {
            "nodeId": {"type": "string"},
            "state": {"type": "string"},
            "term": {"type": "integer"},
            "leaderId": {"type": ["string", "null"]},
            "logLength": {"type": "integer"},
            "commitIndex": {"type": "integer"},
            "stateMachine": {"type": "object", "additionalProperties": {"type": "string"}},
            "stateMachineKeys": {"type": "integer", "description": "keys in the store"},
            "stateMachineTruncated": {"type": "boolean"},
            "note": {"type": "string"},
        },
    },
    "Health": {
        "type": "object",
        "required": ["ok"],
        "properties": {"ok": {"const": True}, "id": {"type": "string"}},
    },
    "Ready": {
        "type": "object",
        "required": ["ready", "leader"],
        "properties": {"ready": {"type": "boolean"}, "leader": {"type": ["string", "null"]}},
    },
}

_PARAMETERS: dict[str, Any] = {
    "consistency": {
        "name": "consistency",
        "in": "query",
        "description": (
            "linearizable (default): never older than a write that completed before the "
            "read started, on any node. stale: the local state machine, unchecked."
        ),
        "schema": {"type": "string", "enum": ["linearizable", "stale"], "default": "linearizable"},
    },
    "redirect": {
        "name": "redirect",
        "in": "query",
        "description": (
            "On a follower, answer a write with 307 and Location on the leader instead of "
            "forwarding it."
        ),
        "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
    },
    "IdempotencyKey": {
        "name": "Idempotency-Key",
        "in": "header",
        "description": (
            "'<client-id>:<seq>': client-id printable ASCII, seq a decimal integer below "
            f"2^63 with no sign or leading zeros, at most {kv.MAX_REQUEST_ID_BYTES} bytes; "
            "sent once. A retry with the same key returns the first result and applies at "
            "most once; the same key with a different request is a 400. The last "
            f"{kv.DEDUP_WINDOW} requests of each of up to {kv.DEDUP_CLIENTS} clients are "
            "remembered (values read are not: see Replayed); an older seq gets 504 "
            "request_expired."
        ),
        "schema": {
            "type": "string",
            "pattern": f"^[!-~]+:({_at_most(kv.MAX_SEQ)})$",
            "maxLength": kv.MAX_REQUEST_ID_BYTES,
        },
    },
    "prefix": {
        "name": "prefix",
        "in": "query",
        "description": "only keys starting with this string (default: all keys)",
        "schema": {"type": "string", "default": ""},
    },
    "after": {
        "name": "after",
        "in": "query",
        "description": (
            "only keys after this one (exclusive): pass the last key of a page to get the next"
        ),
        "schema": {"type": "string", "minLength": 1},
    },
    "deletePrefix": {
        "name": "prefix",
        "in": "query",
        "required": True,
        "description": "remove every key starting with this (non-empty) string, atomically",
        "schema": {"type": "string", "minLength": 1},
    },
    "limit": {
        "name": "limit",
        "in": "query",
        "description": "at most this many items, in key order",
        "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000},
    },
}

_RESPONSES: dict[str, Any] = {
    "BadRequest": _err("bad_request: malformed JSON, missing or non-string fields, empty key"),
    "Unauthorized": {
        **_err("unauthorized: client tokens are on and no known bearer token was sent"),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    "Forbidden": _err("forbidden: the token's role (read) does not allow writes"),
    "NotFound": _err("not_found: the key is absent"),
    "TooLarge": _err(
        f"too_large: key over {kv.MAX_KEY_BYTES} bytes, value over {kv.MAX_VALUE_BYTES} "
        "bytes, or body over the limit"
    ),
    "Unavailable": {
        **_err("no_leader (no leader known) or no_quorum (the leader cannot reach a majority)"),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
    "UnknownOutcome": _err(
        "unknown_outcome: proposed but not known to be committed in time; it may or may "
        "not apply. Also request_expired: the Idempotency-Key is too old to deduplicate."
    ),
    "Redirect": {
        "description": "?redirect=true on a follower: the same request, on the leader",
        "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
    },
}


def _write_op(
    summary: str, ok: dict[str, Any], body: dict[str, Any] | None,
    parameters: list[dict[str, str]] | None = None, more: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": _CLIENT_SECURITY,
        "parameters": [*(parameters or []), _param("redirect"), _param("IdempotencyKey")],
        "responses": {"200": ok, "307": _resp("Redirect"), **_WRITE_ERRORS, **(more or {})},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {_JSON: {"schema": body}}}
    return op


_PATHS: dict[str, Any] = {
    "/kv/{key}": {
        "parameters": [_KEY_PARAM],
        "get": {
            "summary": "Read one key",
            "security": _CLIENT_SECURITY,
            "parameters": [_param("consistency")],
            "responses": {
                "200": _body(_ref("GetResult"), "the value"),
                "404": _resp("NotFound"),
                **_READ_ERRORS,
            },
        },
        "put": _write_op("Write one key", _body(_ref("PutResult"), "written"), _ref("PutBody")),
        "delete": _write_op(
            "Delete one key", _body(_ref("DeleteResult"), "deleted (or already absent)"), None
        ),
    },
    "/kv/{key}/cas": {
        "parameters": [_KEY_PARAM],
        "post": _write_op(
            "Compare and set",
            _body(_ref("CasOk"), "the precondition held and the write applied"),
            _ref("CasBody"),
            more={"409": _body(_ref("CasFailed"), "cas_failed: the precondition was false")},
        ),
    },
    "/kv": {
        "get": {
            "summary": "Range read by prefix, in key order",
            "security": _CLIENT_SECURITY,
            "parameters": [
                _param("prefix"), _param("limit"), _param("after"), _param("consistency"),
            ],
            "responses": {"200": _body(_ref("RangeResult"), "the items"), **_READ_ERRORS},
        },
        "delete": _write_op(
            "Delete every key with a prefix, atomically (one log entry)",
            _body(_ref("DeletePrefixResult"), "deleted (the count may be 0)"), None,
            parameters=[_param("deletePrefix")],
        ),
        "post": _write_op(
            "Write one key (course form)", _body(_ref("PutResult"), "written"),
            _ref("PostKvBody"),
        ),
    },
    "/txn": {
        "post": _write_op(
            "Atomic multi-key transaction", _body(_ref("TxnResult"), "the branch ran"),
            _ref("TxnBody"),
        ),
    },
    "/status": {
        "get": {
            "summary": "This node's Raft status",
            "security": _OPEN,
            "responses": {"200": _body(_ref("Status"), "status")},
        }
    },
    "/debug": {
        "get": {
            "summary": "The course design's debug view (bounded; a read route)",
            "security": _CLIENT_SECURITY,
            "responses": {"200": _body(_ref("Debug"), "debug"), **_AUTH_ERRORS},
        }
    },
    "/health": {
        "get": {
            "summary": "Liveness: 200 while the process serves",
            "security": _OPEN,
            "responses": {"200": _body(_ref("Health"), "serving")},
        }
    },
    "/ready": {
        "get": {
            "summary": "Readiness: a leader is known and this node is caught up",
            "security": _OPEN,
            "responses": {
                "200": _body(_ref("Ready"), "ready"),
                "503": _resp("Unavailable"),
            },
        }
    },
    "/metrics": {
        "get": {
            "summary": "Prometheus metrics of this node (text exposition format 0.0.4)",
            "responses": {"200": {"description": "the metrics (docs/operations.md, Metrics)",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }
    },
    "/ui": {
        "get": {
            "summary": "The live cluster view: one self-contained HTML page",
            "responses": {"200": {"description": "the page",
                                  "content": {"text/html": {"schema": {"type": "string"}}}}},
        }
    },
    "/ui/state": {
        "get": {
            "summary": "What the live view polls: /status, recent role and leader changes, "
            "request counters, event-loop lag",
            "responses": {"200": _body({"type": "object", "required": ["status", "changes",
                                        "requests", "loop_lag_ms"]}, "the view's data")},
        }
    },
}

_PATHS.update(openapi_cluster.PATHS)
_SCHEMAS.update(openapi_cluster.SCHEMAS)

_SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "trioraft client API",
        "version": "1",
        "description": (
            "A replicated key-value store on Raft. Any node serves any request: a follower "
            "forwards writes to the leader (or redirects with ?redirect=true). Every "
            "response carries X-Raft-Leader: <id> when a leader is known. Unknown routes "
            "answer 404 and wrong methods 405, both with the Error body."
        ),
    },
    "paths": _PATHS,
    "security": _CLIENT_SECURITY,
    "components": {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": (
                    "A client token (trioraft serve --client-token ROLE:TOKEN). Off unless "
                    "configured; role read allows the GET routes and /debug, write allows "
                    "everything. /status, /health, /ready and /openapi.json need none. The "
                    "peer credential (--cluster-token) is separate and not accepted here."
                ),
            }
        },
        "schemas": _SCHEMAS,
        "parameters": _PARAMETERS,
        "responses": _RESPONSES,
        "headers": {
            "X-Raft-Leader": {
                "description": "the leader's id, when one is known",
                "schema": {"type": "string"},
            }
        },
    },
}


def spec() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a fresh copy: callers may modify it)."""
    return copy.deepcopy(_SPEC)
