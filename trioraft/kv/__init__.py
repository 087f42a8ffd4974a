"""The key-value state machine: commands, results, apply, snapshots, exactly-once.

This package knows nothing of Raft or I/O (an import-linter contract enforces
it). The node encodes a client's request with `encode_command`, proposes the
bytes, and when the entry commits feeds it to `KVStateMachine.apply`, whose
result `result_to_json` turns into the HTTP body. Limits and the memory bound
of the exactly-once table are documented in `trioraft.kv._limits`.
"""

from ._commands import (
    Cas,
    Command,
    Compare,
    CompareOp,
    Delete,
    DeletePrefix,
    Get,
    Op,
    Put,
    Txn,
    decode_command,
    encode_command,
    parse_request_id,
    validate_command,
    validate_key,
    validate_value,
)
from ._errors import InvalidCommand, InvalidSnapshot, TooLarge
from ._limits import (
    DEDUP_CLIENTS,
    DEDUP_MAX_BYTES,
    DEDUP_WINDOW,
    MAX_KEY_BYTES,
    MAX_REQUEST_ID_BYTES,
    MAX_SEQ,
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    MAX_TXN_RESULT_BYTES,
    MAX_VALUE_BYTES,
)
from ._machine import KVStateMachine
from ._results import (
    CasResult,
    DeletePrefixResult,
    DeleteResult,
    ExpiredRequest,
    GetResult,
    InvalidResult,
    OpResult,
    PutResult,
    Result,
    TooLargeResult,
    TxnResult,
    decode_results,
    encode_results,
    result_to_json,
)

__all__ = [
    "DEDUP_CLIENTS",
    "DEDUP_MAX_BYTES",
    "DEDUP_WINDOW",
    "MAX_KEY_BYTES",
    "MAX_REQUEST_ID_BYTES",
    "MAX_SEQ",
    "MAX_TXN_BYTES",
    "MAX_TXN_OPS",
    "MAX_TXN_RESULT_BYTES",
    "MAX_VALUE_BYTES",
    "Cas",
    "CasResult",
    "Command",
    "Compare",
    "CompareOp",
    "Delete",
    "DeletePrefix",
    "DeletePrefixResult",
    "DeleteResult",
    "ExpiredRequest",
    "Get",
    "GetResult",
    "InvalidCommand",
    "InvalidResult",
    "InvalidSnapshot",
    "KVStateMachine",
    "Op",
    "OpResult",
    "Put",
    "PutResult",
    "Result",
    "TooLarge",
    "TooLargeResult",
    "Txn",
    "TxnResult",
    "decode_command",
    "decode_results",
    "encode_command",
    "encode_results",
    "parse_request_id",
    "result_to_json",
    "validate_command",
    "validate_key",
    "validate_value",
]
