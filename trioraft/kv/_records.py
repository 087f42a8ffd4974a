"""Exactly-once records: what the dedup table keeps of an applied command, and replays.

A record is the command's fingerprint followed by msgpack of its effect:

    Put [index]   Delete [deleted]   DeletePrefix [count]   Cas [ok, index]
    Txn [succeeded, index, [per op: None (put, get) | bool (delete, cas) | int]]

Never a value: a retry's answer is rebuilt from the retried command (whose
fingerprint must match) and this summary; values that were *read* (get
results, a failed CAS's current) come back as None, flagged `replayed`.
Replaying is total: a damaged record gives an `InvalidResult`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from ._commands import Cas, Command, Delete, DeletePrefix, Get, Op, Put, Txn
from ._results import (
    CasResult,
    DeletePrefixResult,
    DeleteResult,
    GetResult,
    InvalidResult,
    OpResult,
    PutResult,
    Result,
    TxnResult,
)

__all__ = ["fingerprint", "replay", "summary"]

_encoder = msgspec.msgpack.Encoder()
FP = 16  # bytes of a command fingerprint at the start of every record


def fingerprint(command: Command) -> bytes:
    """A digest of the whole command, canonically re-encoded (request id included)."""
    return hashlib.blake2b(_encoder.encode(command), digest_size=FP).digest()


def _op_summary(result: OpResult) -> Any:
    match result:
        case DeleteResult(deleted=deleted):
            return deleted
        case CasResult(ok=ok):
            return ok
        case DeletePrefixResult(deleted=deleted):
            return deleted
    return None


def summary(command: Command, result: Result, index: int) -> bytes:
    match result:
        case PutResult(index=index):
            return _encoder.encode((index,))
        case DeleteResult(deleted=deleted):
            return _encoder.encode((deleted,))
        case DeletePrefixResult(deleted=deleted):
            return _encoder.encode((deleted,))
        case CasResult(ok=ok, index=index):
            return _encoder.encode((ok, index))
        case TxnResult(succeeded=succeeded, results=results):
            return _encoder.encode((succeeded, index, [_op_summary(r) for r in results]))
    raise AssertionError(f"no summary for {result!r} of {command!r}")


class _Unreadable(Exception):
    pass


def _int(x: object) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise _Unreadable
    return x


def _bool(x: object) -> bool:
    if not isinstance(x, bool):
        raise _Unreadable
    return x


def _replay_op(op: Op, flag: object, index: int) -> OpResult:
    match op:
        case Put(key=key, value=value):
            return PutResult(key, value, index)
        case Get(key=key):
            return GetResult(key, None)  # read values are not kept
        case Delete(key=key):
            return DeleteResult(key, _bool(flag))
        case Cas(value=value):
            ok = _bool(flag)
            return CasResult(ok, value if ok else None, index)
        case DeletePrefix(prefix=prefix):
            return DeletePrefixResult(prefix, _int(flag))
    raise _Unreadable


def replay(command: Command, fingerprint: bytes, record: bytes) -> Result:
    """The answer to a retry, rebuilt from the retried command and its record."""
    if record[:FP] != fingerprint:
        return InvalidResult(
            f"Idempotency-Key {command.request_id!r} was already used for a different "
            "request; use a new key for a new write"
        )
    try:
        summary = msgspec.msgpack.decode(record[FP:])
        if not isinstance(summary, list):
            raise _Unreadable
        match command:
            case Put() | Delete() | DeletePrefix():
                (flag,) = summary
                return _replay_op(command, flag, _int(flag) if isinstance(command, Put) else 0)
            case Cas():
                ok, index = summary
                return CasResult(_bool(ok), command.value if ok else None, _int(index),
                                 replayed=not ok)
            case Txn():
                succeeded, index, flags = summary
                branch = command.success if _bool(succeeded) else command.failure
                if not isinstance(flags, list) or len(flags) != len(branch):
                    raise _Unreadable
                results = [
                    _replay_op(op, f, _int(index)) for op, f in zip(branch, flags, strict=True)
                ]
                # Flag the answer only where it differs from the first: reads.
                missing = any(isinstance(r, GetResult) or (isinstance(r, CasResult) and not r.ok)
                              for r in results)
                return TxnResult(succeeded, results, replayed=missing)
    except (_Unreadable, msgspec.MsgspecError, ValueError, TypeError):
        pass
    # Only a damaged table gets here (a record's fingerprint matched its command).
    return InvalidResult(f"The stored outcome of request {command.request_id!r} is unreadable.")
