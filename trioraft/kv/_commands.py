"""Commands of the key-value state machine, their wire encoding and validation.

A command is what a client asks the cluster to do; it travels through the Raft
log as opaque bytes produced by `encode_command` and is turned back into a
`Command` by every replica when the entry is applied.

Rules
-----
* Commands are msgspec Structs in a tagged union (the tag is the first array
  element on the wire), encoded as compact msgpack arrays.
* `Put`, `Delete`, `DeletePrefix`, `Cas` and `Txn` are commands; `Get` only
  appears inside a `Txn` (plain reads do not go through the log).
* `DeletePrefix(prefix)` removes every key that starts with the (non-empty)
  prefix, atomically, in one log entry; it reports how many it removed.
* `Cas(expected=None)` means "only if absent"; `Cas(value=None)` means delete.
* A `Txn` works like etcd's: if every `Compare` holds, its `success` ops run,
  otherwise its `failure` ops run, all within the one log entry, in order (a
  later op sees the effect of an earlier one). A `Cas` inside a transaction
  whose expectation is false does not abort the transaction: it changes
  nothing and reports `ok=False` in its own slot of the results.
* `request_id` is `"client:seq"` (see `parse_request_id`) and makes a command
  exactly-once; inside a transaction only the `Txn` itself may carry one.
* Validation is deterministic (it depends only on the command) because every
  replica repeats it in `apply`.
"""

from __future__ import annotations

import re
from typing import Literal, TypeAlias

import msgspec

from ._errors import InvalidCommand, TooLarge
from ._limits import (
    MAX_KEY_BYTES,
    MAX_REQUEST_ID_BYTES,
    MAX_SEQ,
    MAX_TXN_BYTES,
    MAX_TXN_OPS,
    MAX_VALUE_BYTES,
)

__all__ = [
    "Cas",
    "Command",
    "Compare",
    "CompareOp",
    "Delete",
    "DeletePrefix",
    "Get",
    "Op",
    "Put",
    "Txn",
    "decode_command",
    "encode_command",
    "parse_request_id",
    "validate_command",
    "validate_key",
    "validate_value",
]

CompareOp: TypeAlias = Literal["==", "!=", "exists", "absent"]
_COMPARE_OPS: frozenset[str] = frozenset({"==", "!=", "exists", "absent"})


class _Wire(msgspec.Struct, frozen=True, array_like=True):
    """Wire form: a compact msgpack array of the fields (the tag first)."""


class Put(_Wire, frozen=True, tag="put"):
    """Set `key` to `value`."""

    key: str
    value: str
    request_id: str | None = None


class Delete(_Wire, frozen=True, tag="delete"):
    """Remove `key` (reports whether it existed)."""

    key: str
    request_id: str | None = None


class DeletePrefix(_Wire, frozen=True, tag="delete_prefix"):
    """Remove every key starting with `prefix` (non-empty), atomically."""

    prefix: str
    request_id: str | None = None


class Cas(_Wire, frozen=True, tag="cas"):
    """Compare-and-set: if the current value equals `expected`, store `value`.

    `expected=None` means "only if the key is absent"; `value=None` deletes.
    """

    key: str
    expected: str | None
    value: str | None
    request_id: str | None = None


class Get(_Wire, frozen=True, tag="get"):
    """Read `key`; only valid as an operation inside a `Txn`."""

    key: str


class Compare(_Wire, frozen=True):
    """One guard of a `Txn`.

    `==` / `!=` compare the current value (None when absent) with `value`, so
    `Compare(k, "!=", "x")` also holds when `k` is absent. `exists` / `absent`
    test presence and take no `value`.
    """

    key: str
    op: CompareOp
    value: str | None = None


Op: TypeAlias = Put | Delete | Get | Cas | DeletePrefix  # what a Txn may run


class Txn(_Wire, frozen=True, tag="txn"):
    """If all `compare` guards hold run `success`, else `failure`, atomically."""

    compare: list[Compare] = msgspec.field(default_factory=list)
    success: list[Op] = msgspec.field(default_factory=list)
    failure: list[Op] = msgspec.field(default_factory=list)
    request_id: str | None = None


Command: TypeAlias = Put | Delete | DeletePrefix | Cas | Txn

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Command] = msgspec.msgpack.Decoder(Command)


# ------------------------------------------------------------------ validation


def _utf8_len(text: str, what: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidCommand(f"The {what} is not valid UTF-8 text.") from None


def validate_key(key: object) -> int:
    """Check that `key` is a non-empty string of at most MAX_KEY_BYTES UTF-8 bytes.

    Returns its size in bytes. Raises `InvalidCommand` or `TooLarge`.
    """
    if not isinstance(key, str):
        raise InvalidCommand("The key must be a string.")
    if not key:
        raise InvalidCommand("The key must not be empty.")
    # A str has at least as many UTF-8 bytes as characters: reject huge keys cheaply.
    size = MAX_KEY_BYTES + 1 if len(key) > MAX_KEY_BYTES else _utf8_len(key, "key")
    if size > MAX_KEY_BYTES:
        raise TooLarge(f"The key is longer than the limit of {MAX_KEY_BYTES} bytes.")
    return size


def validate_value(value: object) -> int:
    """Check that `value` is a string of at most MAX_VALUE_BYTES UTF-8 bytes.

    Returns its size in bytes. Raises `InvalidCommand` or `TooLarge`.
    """
    if not isinstance(value, str):
        raise InvalidCommand("The value must be a string.")
    size = MAX_VALUE_BYTES + 1 if len(value) > MAX_VALUE_BYTES else _utf8_len(value, "value")
    if size > MAX_VALUE_BYTES:
        raise TooLarge(f"The value is longer than the limit of {MAX_VALUE_BYTES} bytes.")
    return size


def _validate_optional_value(value: object) -> int:
    return 0 if value is None else validate_value(value)


_SEQ_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_CLIENT_RE = re.compile(r"[!-~]+")


def parse_request_id(request_id: object) -> tuple[str, int]:
    """Split `"client:seq"` into `(client, seq)`, accepting only the canonical form.

    The client part is everything before the last colon: one or more
    printable ASCII characters (``!`` to ``~``). seq is a decimal integer in
    ``[0, MAX_SEQ]`` with no sign and no leading zeros, so each seq has one
    spelling (``z:0001`` is refused, not taken for ``z:1``). Raises
    `InvalidCommand` (or `TooLarge` beyond MAX_REQUEST_ID_BYTES).
    """
    if not isinstance(request_id, str):
        raise InvalidCommand("The request id must be a string.")
    if len(request_id) > MAX_REQUEST_ID_BYTES:
        raise TooLarge(f"The request id is longer than the limit of {MAX_REQUEST_ID_BYTES} bytes.")
    client, sep, seq = request_id.rpartition(":")
    if not sep or not _CLIENT_RE.fullmatch(client) or not _SEQ_RE.fullmatch(seq):
        raise InvalidCommand(
            "The request id must look like 'client:seq': a client of printable ASCII "
            "characters and a sequence number in its canonical decimal form "
            "(no sign, no leading zeros)."
        )
    number = int(seq)
    if number > MAX_SEQ:
        raise InvalidCommand(f"The request id's sequence number is above the limit of {MAX_SEQ}.")
    return client, number


def _validate_op(op: object) -> int:
    """Validate a Put, Delete, Get or Cas; return its bytes of keys and values."""
    if isinstance(op, Put):
        return validate_key(op.key) + validate_value(op.value)
    if isinstance(op, Delete | Get):
        return validate_key(op.key)
    if isinstance(op, DeletePrefix):
        if not isinstance(op.prefix, str) or not op.prefix:
            raise InvalidCommand("The prefix of a delete_prefix must be a non-empty string.")
        return validate_key(op.prefix)
    if isinstance(op, Cas):
        return (
            validate_key(op.key)
            + _validate_optional_value(op.expected)
            + _validate_optional_value(op.value)
        )
    raise InvalidCommand("A transaction op must be a put, delete, delete_prefix, get or cas.")


def _validate_nested_op(op: object) -> int:
    if isinstance(op, Put | Delete | DeletePrefix | Cas) and op.request_id is not None:
        raise InvalidCommand("Only the transaction itself may carry a request id, not its ops.")
    return _validate_op(op)


def _validate_compare(compare: object) -> int:
    if not isinstance(compare, Compare):
        raise InvalidCommand("A transaction guard must be a compare.")
    if compare.op not in _COMPARE_OPS:
        raise InvalidCommand(
            f"Unknown compare operator {compare.op!r}; use '==', '!=', 'exists' or 'absent'."
        )
    if compare.op in ("exists", "absent") and compare.value is not None:
        raise InvalidCommand(f"A compare with '{compare.op}' takes no value.")
    return validate_key(compare.key) + _validate_optional_value(compare.value)


def validate_command(command: object, *, check_request_id: bool = True) -> None:
    """Raise `InvalidCommand` / `TooLarge` unless `command` is a valid `Command`.

    With `check_request_id=False` (what `apply` does) a malformed request id is
    not an error: the command is then simply applied without deduplication.
    """
    if not isinstance(command, Put | Delete | DeletePrefix | Cas | Txn):
        raise InvalidCommand("The command must be a put, delete, delete_prefix, cas or txn.")
    if check_request_id and command.request_id is not None:
        parse_request_id(command.request_id)
    if not isinstance(command, Txn):
        _validate_op(command)
        return
    n_ops = len(command.compare) + len(command.success) + len(command.failure)
    if n_ops > MAX_TXN_OPS:
        raise TooLarge(f"The transaction has {n_ops} compares and ops; the limit is {MAX_TXN_OPS}.")
    total = sum(_validate_compare(c) for c in command.compare)
    total += sum(_validate_nested_op(op) for op in command.success)
    total += sum(_validate_nested_op(op) for op in command.failure)
    if total > MAX_TXN_BYTES:
        raise TooLarge(
            f"The transaction carries {total} bytes of keys and values; "
            f"the limit is {MAX_TXN_BYTES}."
        )


# -------------------------------------------------------------------- encoding


def encode_command(command: Command) -> bytes:
    """Validate `command` and encode it as msgpack for the Raft log.

    Raises `InvalidCommand` / `TooLarge`, so a command that encodes is one
    that every replica will accept.
    """
    validate_command(command)
    return _encoder.encode(command)


def _decode_unchecked(data: bytes) -> Command:
    try:
        return _decoder.decode(data)
    except (msgspec.MsgspecError, ValueError, TypeError) as exc:
        raise InvalidCommand(f"The command could not be decoded: {exc}") from None


def decode_command(data: bytes) -> Command:
    """Decode and validate bytes made by `encode_command`.

    Raises `InvalidCommand` (or `TooLarge`) on anything else, never another error.
    """
    command = _decode_unchecked(data)
    validate_command(command)
    return command


def decode_for_apply(data: bytes) -> Command:
    """Decode and validate a log entry as `apply` does (request id not checked)."""
    command = _decode_unchecked(data)
    validate_command(command, check_request_id=False)
    return command
