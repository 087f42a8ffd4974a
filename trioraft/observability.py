"""The operator's routes on every node: ``/metrics``, ``/ui`` and ``/ui/state``.

Two entry points, one line each where the app is built:

* ``register(app, node)`` (in ``api.create_app``): the routes, the sampler task
  (trioraft.metrics.Watcher) for the app's lifetime, and the CORS header on the
  read-only routes the live view fetches from the other members.
* ``instrument(asgi_app, node)`` (in ``server.serve``, around the fast path): the
  request-latency histogram and the optional access log, for every request.
"""

from __future__ import annotations

from typing import Any

import msgspec
import trio
from quart import Response, request
from quart_trio import QuartTrio

from trioraft import logs, metrics
from trioraft.metrics import NodeLike, Watcher, metrics_of
from trioraft.ui import page

__all__ = ["CORS_ROUTES", "instrument", "register", "ui_state"]

#: Read-only GET routes any origin may fetch: the live view served by one node
#: polls every member, and each member is another origin (host:port).
CORS_ROUTES = frozenset({"/status", "/ui/state", "/metrics", "/health"})

_READ_ROUTES = ("/kv/{key}", "/kv")
_WRITE_ROUTES = ("/kv/{key}", "/kv/{key}/cas", "/kv", "/txn")


def instrument(app: Any, node: NodeLike) -> Any:
    """Wrap the node's whole ASGI app: access log outside, latency histogram inside."""
    return logs.AccessLog(metrics.HttpMetrics(app, node))


def ui_state(node: NodeLike) -> dict[str, Any]:
    """What the live view polls from each member: /status plus history and counters."""
    m = metrics_of(node)
    status = node.status() if node.core is not None else {"id": node.id, "role": "starting"}
    reads = writes = 0.0
    for family in m.http_seconds.collect():
        for sample in family.samples:
            if not sample.name.endswith("_count"):
                continue
            route, method = sample.labels["route"], sample.labels["method"]
            if method == "GET" and route in _READ_ROUTES:
                reads += sample.value
            elif method in ("PUT", "POST", "DELETE") and route in _WRITE_ROUTES:
                writes += sample.value
    return {
        "status": status,
        "changes": [
            {"time": c.time, "term": c.term, "role": c.role, "leader": c.leader}
            for c in m.history
        ],
        "requests": {"reads": int(reads), "writes": int(writes)},
        "loop_lag_ms": round(m.last_loop_lag * 1000, 3),
    }


def register(app: QuartTrio, node: Any) -> None:
    """Add /metrics, /ui and /ui/state to the node's Quart app and start the sampler."""
    m = metrics_of(node)
    interval = max(0.02, node.config.heartbeat_ms / 1000)
    scope = trio.CancelScope()

    @app.before_serving
    async def _start_watcher() -> None:
        async def watch() -> None:
            with scope:
                await Watcher(node, interval).run()

        app.nursery.start_soon(watch)

    @app.after_serving
    async def _stop_watcher() -> None:
        scope.cancel()

    @app.after_request
    async def _cors(resp: Response) -> Response:
        if request.method == "GET" and request.path in CORS_ROUTES:
            resp.headers["Access-Control-Allow-Origin"] = "*"
        return resp

    @app.route("/metrics", methods=["GET"])
    async def metrics_route() -> Response:
        return Response(metrics.render(m), status=200, content_type=metrics.CONTENT_TYPE)

    @app.route("/ui", methods=["GET"])
    async def ui_route() -> Response:
        return Response(page(), status=200, content_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store"})

    @app.route("/ui/state", methods=["GET"])
    async def ui_state_route() -> Response:
        return Response(msgspec.json.encode(ui_state(node)), status=200,
                        content_type="application/json")
