"""OpenAPI fragments of the membership routes (`trioraft.cluster_api`), merged into
`trioraft.openapi.spec()`. Kept apart so the two documents' owners do not collide."""

from __future__ import annotations

from typing import Any

__all__ = ["ERROR_CODES", "PATHS", "SCHEMAS", "STATUS_FIELDS"]

_JSON = "application/json"

ERROR_CODES = [
    "member_exists", "change_in_progress", "not_caught_up", "last_voter", "invalid_change",
    "transfer_refused", "not_joining", "not_a_learner", "timeout",
]

_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
_MILLIS = {"type": "integer", "minimum": 0, "maximum": 3_600_000}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _resp(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _ok(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _err(description: str) -> dict[str, Any]:
    return _ok(_ref("Error"), description)


_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {}]
_CONFLICT = _err(
    "refused, nothing changed: member_exists (that name is a member), change_in_progress "
    "(another change is not committed yet, or a new leader has not committed its first "
    "entry: retry shortly), not_caught_up, last_voter, invalid_change, not_joining (the "
    "node at url is not a node waiting to join this cluster), not_a_learner, "
    "transfer_refused"
)
_ERRORS: dict[str, Any] = {
    "400": _resp("BadRequest"),
    "401": _resp("Unauthorized"),
    "403": _resp("Forbidden"),
    "404": _err("not_found: no member has that name"),
    "409": _CONFLICT,
    "503": _resp("Unavailable"),
    "504": _err("unknown_outcome: proposed but not known to be committed in time (it may "
                "still commit: check GET /cluster/members); timeout (a transfer)"),
}
_NAME_PARAM = {"name": "name", "in": "path", "required": True,
               "description": "the member's name (its --id)", "schema": _NAME}


def _body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return {"required": bool(required), "content": {_JSON: {"schema": schema}}}


SCHEMAS: dict[str, Any] = {
    "ClusterMember": {
        "type": "object",
        "required": ["name", "member_id", "url", "voter", "leader"],
        "properties": {
            "name": {"type": "string"},
            "member_id": {"type": "string", "description": "this incarnation's id"},
            "url": {"type": "string"},
            "voter": {"type": "boolean", "description": "false: a learner"},
            "leader": {"type": "boolean"},
            "match_index": {"type": "integer", "description": "leader's view only"},
            "lag": {"type": "integer", "description": "entries behind the leader's log"},
            "replication": {"type": "string", "enum": ["self", "probe", "replicate",
                                                       "snapshot"]},
            "caught_up": {"type": "boolean"},
            "reachable": {"type": "boolean"},
            "last_contact_ms": {"type": "integer"},
        },
    },
    "ClusterMembers": {
        "type": "object",
        "required": ["cluster_id", "leader", "members", "change_in_progress", "from_leader"],
        "properties": {
            "cluster_id": {"type": "string"},
            "leader": {"type": ["string", "null"]},
            "term": {"type": "integer"},
            "commit_index": {"type": "integer"},
            "last_log_index": {"type": "integer"},
            "change_in_progress": {"type": "boolean"},
            "last_change": {"type": ["object", "null"]},
            "served_by": {"type": "string"},
            "from_leader": {"type": "boolean", "description": "false: no leader could be "
                            "asked; this node's own view, without match indexes"},
            "members": {"type": "array", "items": _ref("ClusterMember")},
        },
    },
    "MemberChange": {
        "type": "object",
        "required": ["index", "name"],
        "properties": {
            "index": {"type": "integer", "description": "the committed CONFIG entry"},
            "name": {"type": "string"},
            "member_id": {"type": ["string", "null"]},
            "voter": {"type": "boolean"},
            "removed": {"type": "boolean"},
            "note": {"type": ["string", "null"]},
            "member": {"type": ["object", "null"]},
        },
    },
    "Transfer": {
        "type": "object",
        "required": ["leader", "previous"],
        "properties": {"leader": {"type": ["string", "null"]}, "previous": {"type": "string"}},
    },
}

# Fields /status gains (the Status schema lists them as optional).
STATUS_FIELDS: dict[str, Any] = {
    "member_id": {"type": "string"},
    "cluster_id": {"type": "string"},
    "learners": {"type": "array", "items": {"type": "string"}},
    "change_in_progress": {"type": "boolean"},
    "starting": {"type": "string", "description": "present while the node decides who it "
                 "is (bootstrap or join): why it waits"},
}

PATHS: dict[str, Any] = {
    "/cluster/members": {
        "get": {
            "summary": "Every member: name, member id, URL, voter or learner; match index, "
            "lag and reachability from the leader",
            "security": _SECURITY,
            "responses": {"200": _ok(_ref("ClusterMembers"), "the members"),
                          "401": _resp("Unauthorized"), "403": _resp("Forbidden"),
                          "503": _resp("Unavailable")},
        },
        "post": {
            "summary": "Add a learner: the node at url must be running empty with --join "
            "(its member id is asked from it); promote: true waits until it is caught up and "
            "promotes it",
            "security": _SECURITY,
            "requestBody": _body({"name": _NAME, "url": {"type": "string", "format": "uri"},
                                  "promote": {"type": "boolean", "default": False},
                                  "timeout_ms": _MILLIS}, ["name", "url"]),
            "responses": {"200": _ok(_ref("MemberChange"), "added (and promoted, if asked "
                                     "and caught up in time: see voter and note)"),
                          **_ERRORS},
        },
    },
    "/cluster/members/{name}/promote": {
        "parameters": [_NAME_PARAM],
        "post": {
            "summary": "Promote a caught-up learner to voter",
            "security": _SECURITY,
            "requestBody": _body({"wait_ms": _MILLIS, "timeout_ms": _MILLIS}),
            "responses": {"200": _ok(_ref("MemberChange"), "promoted"), **_ERRORS},
        },
    },
    "/cluster/members/{name}": {
        "parameters": [_NAME_PARAM],
        "delete": {
            "summary": "Remove a member (the leader too: it hands leadership over first); "
            "the removed node stops",
            "security": _SECURITY,
            "responses": {"200": _ok(_ref("MemberChange"), "removed"), **_ERRORS},
        },
    },
    "/cluster/leader/transfer": {
        "post": {
            "summary": "Hand leadership to a caught-up voter (to: null picks the most "
            "caught-up one)",
            "security": _SECURITY,
            "requestBody": _body({"to": {"type": ["string", "null"],
                                         "pattern": _NAME["pattern"]},
                                  "timeout_ms": _MILLIS}),
            "responses": {"200": _ok(_ref("Transfer"), "the new leader"), **_ERRORS},
        },
    },
    "/cluster/snapshot": {
        "get": {
            "summary": "A consistent online backup (every write acknowledged before the "
            "request is in it); `trioraft snapshot save FILE`, `trioraft restore FILE`",
            "security": _SECURITY,
            "responses": {
                "200": {"description": "the backup file (docs/operations.md)",
                        "content": {"application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}}}},
                "401": _resp("Unauthorized"), "403": _resp("Forbidden"),
                "503": _resp("Unavailable"),
            },
        },
    },
}
