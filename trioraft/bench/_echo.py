"""Echo servers: the ceiling a trioraft node could reach if Raft cost nothing.

* :func:`create_echo_app` is a bare quart-trio app (``POST /echo`` returns the body,
  ``GET /echo`` a small JSON object), served by :func:`serve_echo` through
  ``hypercorn.trio.serve`` with :func:`hypercorn_config`, the same way a node serves.
* :func:`asgi_echo` is the same two routes as a bare ASGI callable (no framework),
  served exactly as a node serves its HTTP API (:func:`trioraft.server.serve_asgi`:
  the node's listener, its hypercorn connection handler and settings): the ceiling
  of the node's own ASGI fast path, which answers ``PUT``/``GET /kv/...`` without
  Quart. The client-path ratio (issue 13) is measured against this one.
* :func:`serve_raw` is a trivial HTTP/1.1 server on Trio sockets and h11, with no
  framework at all: the ceiling of the load generator itself.

Both also answer ``?status=N`` with that status and a JSON error body, which the
tests use to check that errors are counted.

Run one: ``python -m trioraft.bench._echo --port 8080 [--asgi | --raw]``. It prints
``listening on http://HOST:PORT`` once bound (so ``--port 0`` is usable) and stops
on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import msgspec
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio

from trioraft.server import hypercorn_config, serve_asgi  # how a node serves

__all__ = ["asgi_echo", "create_echo_app", "hypercorn_config", "main", "serve_echo", "serve_raw"]

_PING = msgspec.json.encode({"ok": True, "server": "echo"})


def _error(status: int) -> Response:
    body = msgspec.json.encode({"error": f"asked for {status}", "code": f"status_{status}"})
    return Response(body, status=status, content_type="application/json")


def create_echo_app() -> QuartTrio:
    app = QuartTrio("trioraft.bench.echo")

    @app.post("/echo")
    async def echo() -> Response:
        if "status" in request.args:
            return _error(int(request.args["status"]))
        body = await request.get_data()
        return Response(body, status=200, content_type="application/octet-stream")

    @app.get("/echo")
    async def ping() -> Response:
        if "status" in request.args:
            return _error(int(request.args["status"]))
        return Response(_PING, status=200, content_type="application/json")

    return app


async def asgi_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``POST /echo`` -> the body, ``GET /echo`` -> a small JSON object, as one bare
    ASGI app answering like the node's fast path does (two sends: start, body)."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body"):
            break
    status, ctype, payload = _raw_answer(
        scope["method"].encode(), scope["raw_path"] + b"?" + scope["query_string"], b"".join(chunks)
    )
    headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def serve_echo(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    asgi: bool = False,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the quart-trio echo app with the node's hypercorn settings (or the bare
    ASGI one, with ``asgi=True``, exactly as a node serves: ``serve_asgi``);
    ``nursery.start`` returns its base URL."""
    if asgi:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve_asgi, asgi_echo, host, port)
            task_status.started(f"http://{host}:{bound}")
            if shutdown_trigger is None:
                await trio.sleep_forever()
            await shutdown_trigger()
            nursery.cancel_scope.cancel()
        return
    config = hypercorn_config(f"{host}:{port}")
    stop = trio.Event()

    async def wait_stop() -> None:
        await (shutdown_trigger() if shutdown_trigger is not None else stop.wait())

    async with trio.open_nursery() as nursery:
        urls: list[str] = await nursery.start(_serve_app, create_echo_app(), config, wait_stop)
        task_status.started(urls[0])


async def _serve_app(
    app: Any,
    config: Config,
    trigger: Callable[[], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await serve(app, config, shutdown_trigger=trigger, task_status=task_status)


# --------------------------------------------------------------------------- raw h11


async def _raw_connection(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                target = event.target
                method = event.method
                body = bytearray()
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                    else:
                        return
                status, ctype, payload = _raw_answer(method, target, bytes(body))
                headers = [
                    (b"content-type", ctype),
                    (b"content-length", str(len(payload)).encode()),
                ]
                out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
                out += conn.send(h11.Data(data=payload)) or b""
                out += conn.send(h11.EndOfMessage()) or b""
                await stream.send_all(out)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
        return
    finally:
        await trio.aclose_forcefully(stream)


def _raw_answer(method: bytes, target: bytes, body: bytes) -> tuple[int, bytes, bytes]:
    path, _, query = target.partition(b"?")
    if path != b"/echo":
        return 404, b"application/json", b'{"error":"no such route","code":"not_found"}'
    if query.startswith(b"status="):
        status = int(query[7:].split(b"&", 1)[0])
        err = msgspec.json.encode({"error": f"asked for {status}", "code": f"status_{status}"})
        return status, b"application/json", err
    if method == b"POST":
        return 200, b"application/octet-stream", body
    return 200, b"application/json", _PING


async def serve_raw(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/echo`` with bare h11 until cancelled; ``nursery.start`` returns the URL."""
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=1024)
    sock = listeners[0].socket
    bound_host, bound_port = sock.getsockname()[:2]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, _raw_connection, listeners)
        task_status.started(f"http://{bound_host}:{bound_port}")


# --------------------------------------------------------------------------- CLI


async def _amain(host: str, port: int, raw: bool, asgi: bool) -> None:
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            if raw:
                url = await nursery.start(serve_raw, host, port)
            else:
                url = await nursery.start(
                    lambda task_status: serve_echo(
                        host, port, shutdown_trigger=stop.wait, asgi=asgi,
                        task_status=task_status,
                    )
                )
            print(f"listening on {url}", flush=True)
            async for _ in signals:
                break
            stop.set()
            if raw:
                nursery.cancel_scope.cancel()
            else:
                nursery.cancel_scope.deadline = trio.current_time() + 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trioraft.bench._echo", description="echo server for the bench ceiling"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--raw", action="store_true", help="bare trio+h11 instead of hypercorn")
    kind.add_argument(
        "--asgi", action="store_true",
        help="a bare ASGI app, served as a node serves (serve_asgi), instead of quart-trio"
    )
    args = parser.parse_args(argv)
    trio.run(_amain, args.host, args.port, args.raw, args.asgi)
    return 0


if __name__ == "__main__":
    sys.exit(main())
