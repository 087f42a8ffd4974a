"""What the load generator sends: pre-encoded requests for trioraft's API or etcd's.

Both protocols get the same keys (``k0000000000000042``-style, ``key_size`` bytes)
and the same ``value_size``-byte value, so a side-by-side run loads them alike:

* ``trioraft``: ``PUT /kv/{key}`` with ``{"value": ...}``, ``GET /kv/{key}?consistency=``,
  and the rest of the API (cas, delete, txn, bulk) and the raw echo operations.
* ``etcd``: the v3 JSON gateway (grpc-gateway inside etcd): ``POST /v3/kv/put`` with
  ``{"key": b64, "value": b64}`` and ``POST /v3/kv/range`` with ``{"key": b64}``
  (linearizable unless ``serializable`` is set, which is what ``stale`` sends). A
  range for an absent key answers 200 with no ``kvs``. Only ``write``, ``read`` and
  ``delete`` exist for etcd.
"""

from __future__ import annotations

import base64
import bisect
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import msgspec

__all__ = [
    "BULK_PUTS",
    "ETCD_OPS",
    "OPS",
    "Protocol",
    "Request",
    "Workload",
    "label",
    "make_keys",
    "txn_body",
]

Protocol = Literal["trioraft", "etcd"]

#: operation -> HTTP statuses that count as a successful answer.
OPS: Mapping[str, frozenset[int]] = {
    "write": frozenset({200}),
    "read": frozenset({200, 404}),
    "cas": frozenset({200, 409}),
    "delete": frozenset({200}),
    "txn": frozenset({200, 409}),
    "bulk": frozenset({200}),
    "echo": frozenset({200}),  # POST {path} with a body of value_size bytes
    "get": frozenset({200}),  # GET {path}
}

#: The operations the etcd protocol can send.
ETCD_OPS = frozenset({"write", "read", "delete"})

BULK_PUTS = 100  # puts per "bulk" transaction


def make_keys(n: int, size: int) -> list[bytes]:
    width = len(str(n - 1))
    keys = []
    for i in range(n):
        digits = str(i).rjust(width, "0")
        key = ("k" + digits.rjust(size - 1, "0")) if size > width else digits
        keys.append(key.encode())
    return keys


@dataclass(slots=True)
class Request:
    op: str
    method: bytes
    target: bytes
    body: bytes | None


class Workload:
    """Pre-encoded requests, so the hot loop only picks indices."""

    def __init__(
        self,
        *,
        keys: int,
        key_size: int,
        value_size: int,
        mix: tuple[tuple[str, float], ...],
        consistency: str,
        path: str,
        seed: int,
        protocol: Protocol = "trioraft",
    ) -> None:
        rng = random.Random(seed)
        alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
        value = "".join(rng.choice(alphabet) for _ in range(value_size))
        self.protocol: Protocol = protocol
        self.keys = make_keys(keys, key_size)
        self.names = [name for name, w in mix if w > 0]
        if protocol == "etcd" and (unknown := set(self.names) - ETCD_OPS):
            raise ValueError(
                f"the etcd protocol has no {', '.join(sorted(unknown))} operation "
                f"(it has: {', '.join(sorted(ETCD_OPS))})"
            )
        weights = [w for _, w in mix if w > 0]
        total = sum(weights)
        acc = 0.0
        self.cumulative: list[float] = []
        for w in weights:
            acc += w / total
            self.cumulative.append(acc)
        self.cumulative[-1] = 1.0
        enc = msgspec.json.encode
        self.write_body = enc({"value": value})
        self.cas_body = enc({"expected": value, "value": value})
        self.echo_body = value.encode()
        self.read_query = b"?consistency=" + consistency.encode()
        self.path = path.encode()
        self.value = value
        self._b64_value = base64.b64encode(value.encode()).decode()
        self._serializable = consistency == "stale"
        self._etcd_cache: dict[tuple[str, bytes], Request] = {}

    def pick(self, rng: random.Random) -> Request:
        i = bisect.bisect_left(self.cumulative, rng.random()) if len(self.names) > 1 else 0
        op = self.names[min(i, len(self.names) - 1)]
        if op == "echo":
            return Request(op, b"POST", self.path, self.echo_body)
        if op == "get":
            return Request(op, b"GET", self.path, None)
        key = self.keys[rng.randrange(len(self.keys))]
        return self.for_key(op, key)

    def for_key(self, op: str, key: bytes) -> Request:
        if self.protocol == "etcd":
            return self._etcd(op, key)
        if op == "write":
            return Request(op, b"PUT", b"/kv/" + key, self.write_body)
        if op == "read":
            return Request(op, b"GET", b"/kv/" + key + self.read_query, None)
        if op == "cas":
            return Request(op, b"POST", b"/kv/" + key + b"/cas", self.cas_body)
        if op == "delete":
            return Request(op, b"DELETE", b"/kv/" + key, None)
        if op == "txn":
            return Request(op, b"POST", b"/txn", txn_body(key.decode(), self.value))
        if op == "bulk":
            return Request(op, b"POST", b"/txn", self.bulk_body(key))
        raise AssertionError(op)

    def _etcd(self, op: str, key: bytes) -> Request:
        # Encoded once per (op, key): the gateway's JSON costs the client no more
        # per request than trioraft's pre-encoded bodies do.
        cached = self._etcd_cache.get((op, key))
        if cached is not None:
            return cached
        b64key = base64.b64encode(key).decode()
        if op == "write":
            body = msgspec.json.encode({"key": b64key, "value": self._b64_value})
            req = Request(op, b"POST", b"/v3/kv/put", body)
        elif op == "read":
            query: dict[str, object] = {"key": b64key}
            if self._serializable:
                query["serializable"] = True
            req = Request(op, b"POST", b"/v3/kv/range", msgspec.json.encode(query))
        elif op == "delete":
            body = msgspec.json.encode({"key": b64key})
            req = Request(op, b"POST", b"/v3/kv/deleterange", body)
        else:
            raise AssertionError(op)
        self._etcd_cache[(op, key)] = req
        return req

    def bulk_body(self, key: bytes) -> bytes:
        """A transaction of BULK_PUTS puts (no guard): the bulk-write path."""
        k = key.decode()
        return msgspec.json.encode(
            {"success": [{"op": "put", "key": f"{k}-{i}", "value": self.value}
                         for i in range(BULK_PUTS)]}
        )  # fmt: skip


def txn_body(key: str, value: str) -> bytes:
    """One etcd-style transaction: if ``key`` holds ``value``, put it again, else read it."""
    return msgspec.json.encode(
        {
            "compare": [{"key": key, "target": "value", "op": "==", "value": value}],
            "success": [{"op": "put", "key": key, "value": value}],
            "failure": [{"op": "get", "key": key}],
        }
    )


def label(status: int, body: bytes) -> str:
    """The outcome label of one answer: ``"200"``, ``"503 no_leader"``, ``"500"``..."""
    if status < 400:
        return str(status)
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return str(status)
    code = decoded.get("code") if isinstance(decoded, dict) else None
    return f"{status} {code}" if isinstance(code, str) else str(status)
