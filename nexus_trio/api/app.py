"""The ASGI application: the inference APIs on the proxy's own path, the rest on Quart.

``make_app`` returns one ASGI callable. ``POST /v1/chat/completions``, ``/v1/messages``
and ``/v1/responses`` go to the request pipeline, `nexus_trio.api.frame`, each with its
dialect (see there for why it is plain ASGI); every other path, and the lifespan
protocol, goes to the quart-trio app built here. Errors are JSON, never HTML: in the
shape of the API the path belongs to (Anthropic's on ``/v1/messages*``), OpenAI's
elsewhere.
"""

from __future__ import annotations

import logging
from typing import Any

from quart import Response, jsonify
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from nexus_trio import __version__
from nexus_trio.api.admin import make_admin_blueprint
from nexus_trio.api.count_tokens import make_count_tokens_blueprint
from nexus_trio.api.dashboard import make_dashboard_blueprint
from nexus_trio.api.frame import CALLER_SCOPE_KEY, ASGIDownstream, request_id_of, serve_inference
from nexus_trio.api.observe import make_observe_blueprint
from nexus_trio.api.ollama import known_names, make_ollama_blueprint, serve_generate
from nexus_trio.api.responses import make_responses_blueprint
from nexus_trio.catalog import listed_models, model_entry
from nexus_trio.dialects import ANTHROPIC, CHAT, Dialect
from nexus_trio.dialects.anthropic_writer import error_response as anthropic_error_response
from nexus_trio.dialects.completions import COMPLETIONS, COMPLETIONS_PATH
from nexus_trio.dialects.embed_ollama import ollama_embed_dialects
from nexus_trio.dialects.embeddings import EMBEDDINGS, EMBEDDINGS_PATH
from nexus_trio.dialects.ollama_writer import (
    ollama_chat_dialect,
    ollama_error_response,
    ollama_generate_dialect,
)
from nexus_trio.dialects.response_store import ResponseStore
from nexus_trio.dialects.responses_writer import responses_dialect
from nexus_trio.errors import (
    MethodNotAllowed,
    ModelNotFound,
    NexusError,
    Unauthorized,
    error_body,
)
from nexus_trio.gateway import Gateway
from nexus_trio.instance import VIA_HEADER
from nexus_trio.routing.router import nearest_models

__all__ = ["make_app"]

log = logging.getLogger("nexus.api")

CHAT_PATH = "/v1/chat/completions"


def _error_response(status: int, message: str, type_: str, code: str | None) -> Response:
    response = jsonify(error_body(message, type_, code=code))
    response.status_code = status
    return response


def _nexus_error_response(error: NexusError) -> Response:
    response = jsonify(error.to_dict())
    response.status_code = error.status
    for name, value in error.headers():
        response.headers[name] = value
    return response


def make_quart_app(gateway: Gateway) -> QuartTrio:
    """Every route but chat completions."""
    app = QuartTrio("nexus_trio")
    app.config["MAX_CONTENT_LENGTH"] = gateway.settings.server.max_body_bytes
    # Quart cuts every response, streams included, after RESPONSE_TIMEOUT (60 s), silently.
    # Nothing here streams yet, but the dashboard will (SSE and WebSocket): responses end
    # when they are done, or when a shutdown drains them. The chat route is plain ASGI
    # (nexus_trio.api.frame) and never went through this timeout.
    app.config["RESPONSE_TIMEOUT"] = None
    app.register_blueprint(make_admin_blueprint(gateway))
    app.register_blueprint(make_observe_blueprint(gateway))
    app.register_blueprint(make_count_tokens_blueprint(gateway))
    app.register_blueprint(make_dashboard_blueprint(gateway))
    registry = gateway.registry
    routing = gateway.settings.routing

    @app.get("/v1/models")
    async def list_models() -> Response:
        entries = listed_models(registry, routing, gateway.created)
        return jsonify({"object": "list", "data": entries})

    @app.get("/v1/models/<path:model_id>")
    async def retrieve_model(model_id: str) -> Response:
        backends = registry.backends
        entry = None
        if model_id not in routing.aliases:  # served under its own name: no pattern applies
            entry = model_entry(model_id, backends, gateway.created)
        if entry is None:
            entry = model_entry(routing.resolve_alias(model_id), backends, gateway.created)
        if entry is None:
            raise ModelNotFound(model_id, nearest_models(model_id, registry.model_ids()))
        if entry["id"] != model_id:
            entry = {**entry, "id": model_id, "alias_for": entry["id"]}
        return jsonify(entry)

    @app.get("/health")
    async def health() -> Response:
        backends = registry.backends
        up = sum(b.routable for b in backends)
        if gateway.draining:
            status = "draining"  # load balancers: take this instance out now
        elif backends and up == len(backends):
            status = "healthy"
        elif up:
            status = "degraded"
        else:
            status = "unhealthy"
        body: dict[str, Any] = {
            "status": status,
            "backends": {
                b.name: {
                    "status": b.status,
                    "type": b.type.value,
                    "source": b.source,
                    "sources": sorted(b.sources),
                    "models": len(b.models),
                    "in_flight": b.in_flight,
                    "detail": b.status_detail or None,
                }
                for b in backends
            },
            "models": len(registry.model_ids()),
            "uptime_seconds": round(gateway.uptime_seconds, 3),
            "version": __version__,
            "totals": gateway.observer.stats.totals(),
        }
        response = jsonify(body)
        # 503 when nothing can serve: what load balancers and orchestrators look at.
        response.status_code = 200 if status in ("healthy", "degraded") else 503
        return response

    @app.errorhandler(NexusError)
    async def nexus_error(error: NexusError) -> Response:
        return _nexus_error_response(error)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if isinstance(error, RequestEntityTooLarge):
            return _error_response(
                413,
                "The request body is over the limit.",
                "invalid_request_error",
                "request_too_large",
            )
        if status == 404:
            message = (
                "No such endpoint. Nexus serves /v1/chat/completions, /v1/messages (Anthropic), "
                "/v1/responses, /v1/models, /v1/stats, /v1/history, /health, /metrics and "
                "the dashboard at /."
            )
        else:
            message = f"{error.name}: {error.description}"
        type_ = "invalid_request_error" if status < 500 else "server_error"
        return _error_response(status, message, type_, error.name.lower().replace(" ", "_"))

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unhandled error in Nexus", exc_info=error)
        return _error_response(
            500,
            "Nexus failed to handle this request; this is a bug.",
            "server_error",
            "internal_error",
        )

    return app


def make_app(gateway: Gateway) -> Any:
    """The ASGI callable hypercorn serves."""
    quart_app = make_quart_app(gateway)
    # The answers of /v1/responses kept for previous_response_id, one store per app.
    responses = ResponseStore(gateway.settings.server.responses_kept)
    quart_app.register_blueprint(make_responses_blueprint(responses))
    # Ollama's native API: listings here, /api/chat and /api/generate in the pipeline.
    quart_app.register_blueprint(make_ollama_blueprint(gateway))
    ollama_generate = ollama_generate_dialect(lambda: known_names(gateway))
    ollama_embed, ollama_embeddings = ollama_embed_dialects(lambda: known_names(gateway))
    # The inference APIs, each served by the one request pipeline with its dialect. A
    # query string (Claude Code's ``?beta=true``) is not part of the ASGI path.
    inference: dict[str, Dialect] = {
        CHAT_PATH: CHAT,
        "/v1/responses": responses_dialect(responses),
        "/v1/messages": ANTHROPIC,
        "/api/chat": ollama_chat_dialect(lambda: known_names(gateway)),
        "/api/generate": ollama_generate,
        COMPLETIONS_PATH: COMPLETIONS,
        EMBEDDINGS_PATH: EMBEDDINGS,
        "/api/embed": ollama_embed,
        "/api/embeddings": ollama_embeddings,
    }

    via = (VIA_HEADER.encode(), gateway.instance_id.encode())
    door = gateway.gatekeeper

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            send = _marked(send, via)
        dialect = inference.get(scope["path"]) if scope["type"] == "http" else None
        if scope["type"] in ("http", "websocket") and door.guards(scope["path"]):
            try:
                scope[CALLER_SCOPE_KEY] = door.caller_of(scope.get("headers", ()))
            except Unauthorized as refusal:
                await _refuse(scope, send, dialect, refusal)
                return
        if dialect is None:
            await quart_app(scope, receive, send)  # type: ignore[arg-type]
        elif scope["method"] == "POST" and dialect is ollama_generate:
            # An empty prompt (load) or a completion is answered before the pipeline.
            await serve_generate(gateway, dialect, scope, receive, send, serve_inference)
        elif scope["method"] == "POST":
            await serve_inference(gateway, dialect, scope, receive, send)
        else:  # answered in the API's own error shape
            writer = dialect.writer(None, ASGIDownstream(send), request_id_of(scope))
            await writer.fail(MethodNotAllowed(scope["path"]))

    return app


async def _refuse(scope: dict[str, Any], send: Any, dialect: Dialect | None,
                  error: NexusError) -> None:  # fmt: skip
    """Answer ``error`` before anything else runs, in the shape of the API the path is
    of: the dialect's, Anthropic's on /v1/messages*, Ollama's on /api/*, else OpenAI's.
    A WebSocket is closed before it opens (HTTP 403)."""
    request_id = request_id_of(scope)
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    downstream = ASGIDownstream(send)
    if dialect is not None:
        await dialect.writer(None, downstream, request_id).fail(error)
        return
    path: str = scope["path"]
    extra = error.headers()
    if path.startswith("/v1/messages"):
        await downstream.respond(*anthropic_error_response(error.status, error.message,
                                                           request_id, extra))  # fmt: skip
    elif path.startswith("/api/"):
        await downstream.respond(
            *ollama_error_response(error.status, error.message, request_id, extra)
        )
    else:
        head = [("content-type", "application/json"), ("x-request-id", request_id), *extra]
        await downstream.respond(error.status, head, error.to_json())


def _marked(send: Any, via: tuple[bytes, bytes]) -> Any:
    """``send`` adding ``X-Nexus-Via`` to the response head: every response, whoever
    writes it (Quart, the inference pipeline, an error), says which Nexus sent it, so
    that no Nexus takes it for a backend (`nexus_trio.instance`)."""

    async def marked(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), via]}
        await send(message)

    return marked
