"""Results of applying commands, and their JSON form for the HTTP API.

Results are msgspec Structs in a tagged union because they are replicated
state: the exactly-once table stores them and snapshots carry them, so a retry
gets the very same answer on whichever node it lands.

`result_to_json` gives the bodies of API.md section 3:

=================  ==========================================================
result             JSON body
=================  ==========================================================
`PutResult`        ``{"key", "value", "index"}``
`DeleteResult`     ``{"key", "deleted"}``
`DeletePrefixResult` ``{"prefix", "deleted": count}``
`CasResult`        ``{"ok": true, "index"}`` / ``{"ok": false, "current"}``
`GetResult`        ``{"key", "value"}`` (value null when absent; in a txn)
`TxnResult`        ``{"succeeded", "results": [one body per op]}``
`ExpiredRequest`   ``{"error", "code": "request_expired", "request_id"}``
`InvalidResult`    ``{"error", "code": "bad_request"}``
`TooLargeResult`   ``{"error", "code": "too_large"}``
=================  ==========================================================

A *replayed* answer (a retry of an already applied request id) is rebuilt
from the exactly-once table, which keeps no values read: a failed CAS's
`current` and a transaction's `get` values are then null, and the body says
``"replayed": true``.

The HTTP status (409 for a failed CAS, ...) is the API layer's choice.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import msgspec

__all__ = [
    "CasResult",
    "DeletePrefixResult",
    "DeleteResult",
    "ExpiredRequest",
    "GetResult",
    "InvalidResult",
    "OpResult",
    "PutResult",
    "Result",
    "TooLargeResult",
    "TxnResult",
    "decode_results",
    "encode_results",
    "result_to_json",
]


class PutResult(msgspec.Struct, frozen=True, array_like=True, tag="put"):
    key: str
    value: str
    index: int  # log index of the entry that wrote it


class DeleteResult(msgspec.Struct, frozen=True, array_like=True, tag="delete"):
    key: str
    deleted: bool  # False when the key was already absent


class DeletePrefixResult(msgspec.Struct, frozen=True, array_like=True, tag="delete_prefix"):
    prefix: str
    deleted: int  # how many keys were removed


class CasResult(msgspec.Struct, frozen=True, array_like=True, tag="cas"):
    ok: bool
    current: str | None  # the value after the operation (None = absent)
    index: int  # log index of the entry, also when not ok
    # A retry answered from the exactly-once table: a failed CAS's `current`
    # is then unknown (None), as read values are not kept.
    replayed: bool = False


class GetResult(msgspec.Struct, frozen=True, array_like=True, tag="get"):
    key: str
    value: str | None  # None when absent


OpResult: TypeAlias = PutResult | DeleteResult | GetResult | CasResult | DeletePrefixResult


class TxnResult(msgspec.Struct, frozen=True, array_like=True, tag="txn"):
    succeeded: bool  # True when every compare held and `success` ran
    results: list[OpResult]  # one per op of the branch that ran, in order
    # A retry answered from the exactly-once table: get values are None.
    replayed: bool = False


class ExpiredRequest(msgspec.Struct, frozen=True, array_like=True, tag="expired"):
    """The request id is older than anything remembered for its client.

    The command was not applied now; whether an earlier copy of it was is no
    longer known. The client must read the state to find out.
    """

    request_id: str


class InvalidResult(msgspec.Struct, frozen=True, array_like=True, tag="invalid"):
    """The log entry was not a valid command; nothing changed."""

    reason: str


class TooLargeResult(msgspec.Struct, frozen=True, array_like=True, tag="too_large"):
    """The command would have produced a result over its limit; nothing changed."""

    reason: str


Result: TypeAlias = (
    PutResult
    | DeleteResult
    | DeletePrefixResult
    | CasResult
    | GetResult
    | TxnResult
    | ExpiredRequest
    | InvalidResult
    | TooLargeResult
)


_results_encoder = msgspec.msgpack.Encoder()
_results_decoder = msgspec.msgpack.Decoder(list[Result])


def encode_results(results: list[Result]) -> bytes:
    """Results as msgpack (a follower relays them from the leader)."""
    return _results_encoder.encode(results)


def decode_results(data: bytes) -> list[Result]:
    """Inverse of `encode_results`; raises ValueError on garbage."""
    try:
        return list(_results_decoder.decode(data))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"malformed results: {exc}") from None


_REPLAYED: dict[bool, dict[str, bool]] = {False: {}, True: {"replayed": True}}


def result_to_json(result: Result) -> dict[str, Any]:
    """The API.md JSON body for `result` (a fresh dict each call)."""
    match result:
        case PutResult(key=key, value=value, index=index):
            return {"key": key, "value": value, "index": index}
        case DeleteResult(key=key, deleted=deleted):
            return {"key": key, "deleted": deleted}
        case DeletePrefixResult(prefix=prefix, deleted=deleted):
            return {"prefix": prefix, "deleted": deleted}
        case CasResult(ok=True, index=index):
            return {"ok": True, "index": index}
        case CasResult(current=current, replayed=replayed):
            return {"ok": False, "current": current, **_REPLAYED[replayed]}
        case GetResult(key=key, value=value):
            return {"key": key, "value": value}
        case TxnResult(succeeded=succeeded, results=results, replayed=replayed):
            return {
                "succeeded": succeeded,
                "results": [result_to_json(r) for r in results],
                **_REPLAYED[replayed],
            }
        case ExpiredRequest(request_id=request_id):
            return {
                "error": (
                    f"Request {request_id!r} is too old to be deduplicated; "
                    "it was not applied now and may or may not have been applied before."
                ),
                "code": "request_expired",
                "request_id": request_id,
            }
        case InvalidResult(reason=reason):
            return {"error": reason, "code": "bad_request"}
        case TooLargeResult(reason=reason):
            return {"error": reason, "code": "too_large"}
    raise TypeError(f"not a key-value result: {result!r}")
