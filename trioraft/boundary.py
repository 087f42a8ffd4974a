"""The client API's boundary: what is checked before a request body is read or parsed.

Shared by the Quart routes (`trioraft.api`) and the ASGI fast path
(`trioraft.fastpath`), so both answer byte for byte alike. Rules, in the
order they are applied to every request outside `/raft/*` (issue 10):

1. Client authentication (`trioraft.auth`), from the headers alone, before
   anything is read: `/status`, `/health`, `/ready`, `/openapi.json` stay open.
2. ``Content-Length`` against the route's limit (`body_limit`): over it is a
   413 at once, without reading the body (the connection is then closed, see
   `fastpath.KeepAliveGuard`); a body sent without a length is cut off at
   the same limit.
3. The URL path, percent-decoded, must be UTF-8: ``/kv/%FF`` is a 400, never
   a key that aliases ``/kv/%FE`` (both used to decode to U+FFFD).
4. A header that must be single (``Idempotency-Key``, ``Authorization``) given
   twice is refused (401 for Authorization, 400 otherwise), so both paths
   never pick different copies.
5. JSON bodies are UTF-8 only (no BOM, no UTF-16: RFC 8259 section 8.1),
   decoded by one decoder whose every failure, deep nesting and out-of-range
   numbers included, is a 400.

Anything from a request that reaches a log line goes through `loggable`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec

from trioraft import kv
from trioraft.auth import ClientAuth
from trioraft.errors import ApiError

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_RAFT_BODY_BYTES",
    "OPEN_ROUTES",
    "SMALL_BODY_BYTES",
    "RequestHeaders",
    "body_limit",
    "decode_json",
    "header_values",
    "loggable",
    "precheck",
    "precheck_scanned",
    "single_header",
]

# A value may be 1 MiB of UTF-8; JSON escaping can grow it, so the body limit
# leaves room. A transaction is capped separately by kv.MAX_TXN_BYTES.
MAX_BODY_BYTES = 2 * kv.MAX_VALUE_BYTES + 64 * 1024
MAX_RAFT_BODY_BYTES = 8 << 20  # the course JSON routes (peers use streams)
SMALL_BODY_BYTES = 64 * 1024  # routes that take no body: a stray one is not read past this
OPEN_ROUTES = frozenset({"/status", "/health", "/ready", "/openapi.json"})
_WRITE_METHODS = frozenset({"PUT", "POST", "DELETE", "PATCH"})
WRITE_ROLE_GETS = frozenset({"/cluster/snapshot"})


def body_limit(method: str, path: str) -> int:
    """The most body bytes a request to `path` may carry."""
    if path.startswith("/raft/"):
        return MAX_RAFT_BODY_BYTES
    if method in ("PUT", "POST") and (path.startswith("/kv") or path == "/txn"):
        return MAX_BODY_BYTES
    return SMALL_BODY_BYTES


def header_values(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Every value of header `name` (lower-case) in an ASGI header list."""
    return [value for key, value in headers if key.lower() == name]


def single_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The one value of a header that must not repeat (latin-1), None when absent."""
    values = header_values(headers, name)
    if len(values) > 1:
        raise ApiError(400, "bad_request", f"the {name.decode()} header is given more than once")
    return values[0].decode("latin-1") if values else None


_NO_VALUES: tuple[bytes, ...] = ()


class RequestHeaders:
    """The headers the boundary reads, found in one pass over an ASGI header list
    (the fast path reads them once per request)."""

    __slots__ = ("authorization", "body_expected", "content_length", "idempotency_key")

    def __init__(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        authorization: list[bytes] | None = None
        lengths: list[bytes] | None = None
        idempotency: list[bytes] | None = None
        chunked = False
        for name, value in headers:
            name = name.lower()  # (ASGI servers lower-case them already)
            if name == b"content-length":
                lengths = [value] if lengths is None else [*lengths, value]
            elif name == b"authorization":
                authorization = [value] if authorization is None else [*authorization, value]
            elif name == b"idempotency-key":
                idempotency = [value] if idempotency is None else [*idempotency, value]
            elif name == b"transfer-encoding":
                chunked = True
        self.authorization: Sequence[bytes] = authorization or _NO_VALUES
        self.content_length: Sequence[bytes] = lengths or _NO_VALUES
        self.idempotency_key: Sequence[bytes] = idempotency or _NO_VALUES
        # A body is on its way unless the request says it has none.
        self.body_expected = chunked or any(v.strip() not in (b"", b"0") for v in
                                            self.content_length)  # fmt: skip

    def single_idempotency_key(self) -> str | None:
        """`single_header(headers, b"idempotency-key")`, from the scan."""
        values = self.idempotency_key
        if len(values) > 1:
            raise ApiError(400, "bad_request", "the idempotency-key header is given more than once")
        return values[0].decode("latin-1") if values else None


def precheck(
    method: str, path: str, raw_path: bytes | None, headers: Iterable[tuple[bytes, bytes]],
    auth: ClientAuth,
) -> None:
    """Rules 1-3 of the module docstring; raises ApiError / Unauthorized / Forbidden."""
    precheck_scanned(method, path, raw_path, RequestHeaders(headers), auth)


def precheck_scanned(
    method: str, path: str, raw_path: bytes | None, headers: RequestHeaders, auth: ClientAuth
) -> None:
    """`precheck` on headers already scanned."""
    if path.startswith("/raft/"):
        return  # the peer routes check the cluster token themselves
    if path not in OPEN_ROUTES:
        # A backup is the whole store and an operator's act: the write role (issue 12).
        needs_write = method in _WRITE_METHODS or path in WRITE_ROLE_GETS
        auth.check(needs_write, headers.authorization)
    lengths = headers.content_length
    if lengths:
        text = lengths[0].strip()
        if len(lengths) > 1 or not text.isdigit() or len(text) > 18:
            raise ApiError(400, "bad_request", "the Content-Length header is not one number")
        limit = body_limit(method, path)
        if int(text) > limit:
            raise ApiError(413, "too_large", f"request body over {limit} bytes")
    if raw_path is not None:
        target = raw_path.split(b"?", 1)[0]
        try:
            if b"%" in target:
                unquote_to_bytes(target).decode("utf-8")
            else:
                target.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(
                400, "bad_request", "the URL path is not valid UTF-8 once percent-decoded"
            ) from None


def decode_json(raw: bytes) -> Any:
    """Rule 5: the body as JSON, or ApiError 400 for anything that is not UTF-8 JSON."""
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, ValueError):
        raise ApiError(400, "bad_request", "the body is not valid JSON") from None


def loggable(text: str) -> str:
    """`text` with every control and non-ASCII character escaped: one safe log token."""
    return text.encode("unicode_escape").decode("ascii")
