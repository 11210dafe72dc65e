"""The dashboard: a static page at ``/`` and its live feed on the WebSocket ``/ws``.

The page, its script and its style ship in the package (``static/``): no build
step, no CDN, works offline. On connect, ``/ws`` sends one ``Snapshot``
message, then every `nexus_trio.observe.feed` message as it happens. A client
that cannot keep up is closed with code 1013 (try again later), and every
dashboard is closed with 1001 (going away) when Nexus starts to shut down.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import trio
from quart import Blueprint, Response, websocket

from nexus_trio import __version__
from nexus_trio.catalog import listed_models
from nexus_trio.gatekeeper import KEY_SUBPROTOCOL
from nexus_trio.gateway import Gateway
from nexus_trio.observe.views import backend_view

__all__ = ["make_dashboard_blueprint", "snapshot"]

SNAPSHOT = "Snapshot"
# A message the client has not taken within this long marks it too slow (its
# socket buffers are full): it is closed, rather than holding its feed's buffer.
SEND_SECONDS = 10.0
CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN_LATER = 1013

_STATIC = resources.files("nexus_trio.api") / "static"
_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
# The page runs only its own script and style, and talks only to its own origin.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def snapshot(gateway: Gateway) -> dict[str, Any]:
    """Everything the page shows, as of now."""
    registry, observer = gateway.registry, gateway.observer
    return {
        "version": __version__,
        "uptime_seconds": round(gateway.uptime_seconds, 3),
        "draining": gateway.draining,
        "backends": [backend_view(b, trio.current_time()) for b in registry],
        "models": listed_models(registry, gateway.settings.routing, gateway.created),
        "requests": observer.recent(),
        "stats": observer.stats.to_json(),
        "queue_depth": len(gateway.queue),
    }


def make_dashboard_blueprint(gateway: Gateway) -> Blueprint:
    blueprint = Blueprint("dashboard", __name__)
    files = {path: ((_STATIC / name).read_bytes(), kind) for path, (name, kind) in _FILES.items()}

    def serve(path: str) -> Response:
        body, kind = files[path]
        response = Response(body, content_type=kind)
        response.headers["content-security-policy"] = _CSP
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["cache-control"] = "no-cache"
        return response

    @blueprint.get("/")
    async def page() -> Response:
        return serve("/")

    @blueprint.get("/dashboard.js")
    async def script() -> Response:
        return serve("/dashboard.js")

    @blueprint.get("/dashboard.css")
    async def style() -> Response:
        return serve("/dashboard.css")

    @blueprint.websocket("/ws")
    async def feed() -> None:
        code, reason = CLOSE_GOING_AWAY, "Nexus is shutting down"
        if KEY_SUBPROTOCOL in websocket.requested_subprotocols:
            # The page sent its key as a subprotocol (browsers cannot set headers on a
            # WebSocket); the door has checked it. Choosing it completes the handshake.
            await websocket.accept(subprotocol=KEY_SUBPROTOCOL)
        with gateway.observer.feed.subscribe() as messages:
            async with trio.open_nursery() as nursery:

                async def close_at_shutdown() -> None:
                    await gateway.drain.began.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(close_at_shutdown)
                if not gateway.draining:
                    await websocket.send_json({"update_type": SNAPSHOT, "data": snapshot(gateway)})
                    # Ends when the feed drops this client for falling behind.
                    async for text in messages:
                        with trio.move_on_after(SEND_SECONDS):
                            await websocket.send(text)
                            continue
                        break
                    code, reason = CLOSE_TRY_AGAIN_LATER, "too slow to keep up; reconnect"
                nursery.cancel_scope.cancel()
        with trio.move_on_after(SEND_SECONDS):
            await websocket.close(code, reason)

    return blueprint
