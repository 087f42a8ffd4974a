"""Transactions: a builder for ``POST /txn`` (compare, then the success or failure branch).

::

    result = (
        client.txn()
        .compare("color", "==", "blue")
        .success(TxnOp.put("color", "green"), TxnOp.get("x"))
        .failure(TxnOp.get("color"))
        .commit()  # `await ....commit()` with AsyncClient
    )
    result.succeeded, result.results

The whole transaction is one log entry: applied atomically, at most once (it
carries an Idempotency-Key like every write), its `get`s linearizable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar

from ._errors import TxnResult

__all__ = ["COMPARE_OPS", "AsyncTxn", "Txn", "TxnOp"]

COMPARE_OPS = ("==", "!=", "exists", "absent")
R = TypeVar("R")


def _check_key(key: str, what: str = "key") -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{what} must be a non-empty string")


def _check_value(value: str | None, what: str, nullable: bool) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string" + (" or None" if nullable else ""))


@dataclass(frozen=True, slots=True)
class TxnOp:
    """One operation of a transaction branch; build it with the class methods."""

    body: dict[str, Any]

    @classmethod
    def put(cls, key: str, value: str) -> TxnOp:
        _check_key(key)
        _check_value(value, "value", nullable=False)
        return cls({"op": "put", "key": key, "value": value})

    @classmethod
    def delete(cls, key: str) -> TxnOp:
        _check_key(key)
        return cls({"op": "delete", "key": key})

    @classmethod
    def get(cls, key: str) -> TxnOp:
        _check_key(key)
        return cls({"op": "get", "key": key})

    @classmethod
    def cas(cls, key: str, expected: str | None, value: str | None) -> TxnOp:
        _check_key(key)
        _check_value(expected, "expected", nullable=True)
        _check_value(value, "value", nullable=True)
        return cls({"op": "cas", "key": key, "expected": expected, "value": value})

    @classmethod
    def delete_prefix(cls, prefix: str) -> TxnOp:
        """Delete every key starting with `prefix` (result ``{"deleted": n}``)."""
        _check_key(prefix, "prefix")
        return cls({"op": "delete_prefix", "prefix": prefix})


class _Builder(Generic[R]):
    def __init__(self, commit: Callable[[dict[str, Any]], R]) -> None:
        self._commit = commit
        self._compare: list[dict[str, Any]] = []
        self._success: list[dict[str, Any]] = []
        self._failure: list[dict[str, Any]] = []

    def compare(self, key: str, op: str = "==", value: str | None = None) -> Self:
        """Add a condition: `op` is ``==``, ``!=`` (value None: absent), ``exists``, ``absent``."""
        _check_key(key)
        if op not in COMPARE_OPS:
            raise ValueError(f"compare op must be one of {', '.join(COMPARE_OPS)}, not {op!r}")
        _check_value(value, "value", nullable=True)
        self._compare.append({"key": key, "op": op, "value": value})
        return self

    def success(self, *ops: TxnOp) -> Self:
        """Operations to run, in order, if every comparison holds."""
        self._success += [_op(o) for o in ops]
        return self

    def failure(self, *ops: TxnOp) -> Self:
        """Operations to run, in order, if any comparison does not hold."""
        self._failure += [_op(o) for o in ops]
        return self

    def body(self) -> dict[str, Any]:
        """The ``POST /txn`` JSON body."""
        return {
            "compare": list(self._compare),
            "success": list(self._success),
            "failure": list(self._failure),
        }

    def _run(self) -> R:
        return self._commit(self.body())


def _op(op: TxnOp) -> dict[str, Any]:
    if not isinstance(op, TxnOp):
        raise TypeError(f"expected a TxnOp (TxnOp.put(...), ...), got {type(op).__name__}")
    return dict(op.body)


class Txn(_Builder[TxnResult]):
    """A transaction of the blocking :class:`~trioraft.client.Client`."""

    def commit(self) -> TxnResult:
        return self._run()


class AsyncTxn(_Builder[Awaitable[TxnResult]]):
    """A transaction of :class:`~trioraft.client.AsyncClient`: ``await txn.commit()``."""

    async def commit(self) -> TxnResult:
        return await self._run()


def txn_result(body: dict[str, Any]) -> TxnResult:
    results = body.get("results", [])
    return TxnResult(
        succeeded=bool(body.get("succeeded", False)),
        results=[r for r in results if isinstance(r, dict)] if isinstance(results, list) else [],
    )
