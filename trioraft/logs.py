"""Logging for `trioraft serve`: structured events, text or JSON lines, an access log.

The runtime reports what an operator needs as *events*: a name and fields,

    event(log, "leader_changed", term=7, leader="node2", role="follower")

which come out as one line each, in text::

    2026-11-26T01:11:30.683Z INFO  node=node1 leader_changed term=7 leader=node2 role=follower

or, with ``--log-format json``, as one JSON object per line::

    {"time": "2026-11-26T01:11:30.683Z", "level": "info", "node": "node1",
     "event": "leader_changed", "fields": {"term": 7, "leader": "node2", "role": "follower"}}

A plain ``log.info("...")`` line is the event ``"message"`` with the field
``message`` (and ``logger``). Nothing from outside can forge a line: in text,
every control character of a message or field (a percent-decoded ``%0A`` in a
path, say) is written escaped (``\\n``), and traceback lines are indented; JSON
escapes by itself.

Event names the runtime uses (docs/operations.md "Logs" lists them all):
``node_started``, ``node_stopped``, ``recovered``, ``role_changed``,
``leader_changed``, ``snapshot_taken``, ``snapshot_installed``,
``snapshot_sent``, ``snapshot_send_failed``, ``membership_changed``,
``slow_fsync``, ``loop_lag``, ``peer_up``, ``peer_down``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, TextIO

__all__ = [
    "ACCESS_LOGGER",
    "LOG_FORMATS",
    "AccessLog",
    "JsonFormatter",
    "TextFormatter",
    "configure",
    "escape",
    "event",
]

LOG_FORMATS = ("text", "json")
ACCESS_LOGGER = "trioraft.access"

# Everything below 0x20 and DEL, plus the C1 controls and the Unicode line and
# paragraph separators: a terminal or a log shipper may treat any as a break.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_CONTROL |= {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"}


# json.dumps(ensure_ascii=False) leaves DEL, the C1 controls and U+2028/2029 as
# they are; each can end a line for some reader (str.splitlines does).
_JSON_UNSAFE = {c: f"\\u{c:04x}" for c in (0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)}


def escape(text: str) -> str:
    """`text` with every control character written as an escape (``\\n``, ``\\x1b``)."""
    return text.translate(_CONTROL)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log the structured event `name` with `fields` (JSON-serialisable values)."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s %s", name, _pairs(fields),
                   extra={"event": name, "fields": fields}, stacklevel=2)


def _pairs(fields: Mapping[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if text == "" or any(c in text for c in ' "=') or escape(text) != text:
            text = json.dumps(text, ensure_ascii=False)  # quoted; control chars escaped
        parts.append(f"{key}={escape(text)}")
    return " ".join(parts)


def _time(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


def _event_of(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    name = getattr(record, "event", None)
    fields = getattr(record, "fields", None)
    if isinstance(name, str) and isinstance(fields, dict):
        return name, dict(fields)
    return "message", {"logger": record.name, "message": record.getMessage()}


class TextFormatter(logging.Formatter):
    """``time LEVEL node=ID event k=v ...``; plain messages as ``logger: message``."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = escape(node)

    def format(self, record: logging.LogRecord) -> str:
        name, fields = _event_of(record)
        if name == "message":
            body = f"{record.name}: {escape(str(fields['message']))}"
        else:
            body = f"{escape(name)} {_pairs(fields)}".rstrip()
        line = f"{_time(record)} {record.levelname:<7} node={self.node} {body}"
        if record.exc_info:
            # Indented, so a forged line inside an exception message cannot pass
            # for a record of its own.
            trace = self.formatException(record.exc_info)
            line += "".join(f"\n    {escape(t)}" for t in trace.splitlines())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, node, event, fields."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        name, fields = _event_of(record)
        out: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "node": self.node,
            "event": name,
            "fields": fields,
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False).translate(_JSON_UNSAFE)


def configure(
    node: str,
    level: str = "warning",
    fmt: str = "text",
    *,
    access_log: bool = False,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every log record to `stream` (stderr) as text or JSON lines; returns the handler.

    `access_log` turns on one INFO line per HTTP request on ``trioraft.access``
    whatever `level` is (the :class:`AccessLog` middleware writes them).
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(node) if fmt == "json" else TextFormatter(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    access = logging.getLogger(ACCESS_LOGGER)
    access.setLevel(logging.INFO if access_log else logging.WARNING)
    return handler


# ---------------------------------------------------------------- access log

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AccessLog:
    """ASGI middleware: one ``http_request`` event per request on ``trioraft.access``.

    Fields: method, path (as the client encoded it: ``raw_path``, never the
    percent-decoded form), query, status, bytes (response body), duration_ms,
    client. Costs nothing when the access logger is off.
    """

    def __init__(self, app: Any) -> None:
        self.app: ASGIApp = app
        self.log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        size = 0

        async def sending(message: Message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            raw = scope.get("raw_path") or scope["path"].encode("utf-8", "backslashreplace")
            client = scope.get("client")
            event(
                self.log,
                "http_request",
                method=scope["method"],
                path=raw.decode("latin-1"),
                query=scope.get("query_string", b"").decode("latin-1"),
                status=status,
                bytes=size,
                duration_ms=round((time.perf_counter() - start) * 1000, 3),
                client=f"{client[0]}:{client[1]}" if client else None,
            )
