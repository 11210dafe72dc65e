"""Ollama's native listing and management endpoints, and the front of ``/api/generate``.

``/api/chat`` and ``/api/generate`` are inference: the request pipeline serves them with
the Ollama dialects (`nexus_trio.dialects.ollama_writer`). Here:

- ``GET/HEAD /api/version``: `OLLAMA_VERSION`.
- ``GET/HEAD /api/tags``: every model of the fleet, whatever serves it, named with a tag
  (``:latest`` when it has none: Open WebUI adds it before looking a name up); size,
  digest and details from the Ollama backends' own ``/api/tags`` (asked now, within
  `_ASK_SECONDS`), else ``0``, a digest of the name and empty details.
- ``POST /api/show``: capabilities and context length from what the registry knows.
- ``GET /api/ps``: the Ollama backends' loaded models (their ``/api/ps``), and every
  model the other backends serve (a vLLM or llama.cpp server holds its model loaded).
- ``/api/pull``, ``/api/push``, ``/api/create``, ``/api/copy``, ``DELETE /api/delete``,
  ``/api/blobs/*``: 501, the backends' business. Any other ``/api/*``: 404.

Every error is ``{"error": "message"}``. ``GET /`` stays Nexus's dashboard: clients find
an Ollama server by ``/api/version`` (Open WebUI's connection check, VS Code), not by
Ollama's "Ollama is running" banner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any

import trio
from quart import Blueprint, Response, jsonify, request

from nexus_trio import jsonparse
from nexus_trio.backends.listing import get_json
from nexus_trio.config import BackendType, is_alias_pattern
from nexus_trio.dialects.base import Dialect
from nexus_trio.dialects.ollama import generate_is_completion, load_body, resolve_model_name
from nexus_trio.dialects.ollama_lines import created_at
from nexus_trio.errors import BackendError, RequestError
from nexus_trio.gateway import Gateway
from nexus_trio.registry import Backend

__all__ = [
    "OLLAMA_VERSION",
    "known_names",
    "make_ollama_blueprint",
    "serve_generate",
    "tagged",
]

# The Ollama API version Nexus speaks. Clients gate features on it and parse it as
# numbers (Open WebUI: int per dot-segment; one editor refuses anything below 0.13.4).
# 0.13.5: /api/chat and /api/generate with tools, think, format schemas, tool call ids.
OLLAMA_VERSION = "0.13.5"
# How long a listing waits for an Ollama backend's own answer before doing without it.
_ASK_SECONDS = 2.0
# A model a non-Ollama server serves stays loaded; /api/ps says it expires this far ahead.
_RESIDENT_SECONDS = 24 * 3600
_EMPTY_DETAILS = {
    "parent_model": "",
    "format": "",
    "family": "",
    "families": [],
    "parameter_size": "",
    "quantization_level": "",
}
_MANAGEMENT = {
    "/api/pull": "pulling models",
    "/api/push": "pushing models",
    "/api/create": "creating models",
    "/api/copy": "copying models",
    "/api/delete": "deleting models",
}
_CAPABILITIES = ("tools", "vision", "embedding", "thinking")

Json = dict[str, Any]
ASGI = Callable[..., Awaitable[Any]]


def tagged(model: str) -> str:
    """The name Ollama lists ``model`` under: with a tag, ``:latest`` if it has none."""
    return model if ":" in model else f"{model}:latest"


def _error(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def known_names(gateway: Gateway) -> Collection[str]:
    """Every name a model may be asked by: the models served and the aliases."""
    return {*gateway.registry.model_ids(), *gateway.settings.routing.aliases}


def _served(gateway: Gateway, name: str) -> str | None:
    """The model ``name`` means (``:latest`` either way, aliases resolved), if served."""
    model = resolve_model_name(name, known_names(gateway))
    model = gateway.settings.routing.resolve_alias(model)
    model = resolve_model_name(model, gateway.registry.model_ids())
    return model if any(model in b.models for b in gateway.registry) else None


async def _ask_ollamas(gateway: Gateway, path: str) -> dict[str, Json]:
    """Each entry of the Ollama backends' own ``GET path`` listing, by name (first wins);
    a backend that does not answer within `_ASK_SECONDS` is done without."""
    found: dict[str, Json] = {}

    async def ask(backend: Backend) -> None:
        with trio.move_on_after(_ASK_SECONDS):
            try:
                payload = await get_json(gateway.client, backend, "GET", path)
            except BackendError:
                return
            entries = payload.get("models") if isinstance(payload, dict) else None
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                    found.setdefault(entry["name"], entry)

    async with trio.open_nursery() as nursery:
        for backend in gateway.registry:
            if backend.type is BackendType.OLLAMA and backend.routable:
                nursery.start_soon(ask, backend)
    return found


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _entry(model: str, name: str, own: Json | None, modified: str) -> Json:
    """One ``/api/tags`` entry for ``model`` listed as ``name``."""
    own = own or {}
    details = own.get("details")
    return {
        "name": name,
        "model": name,
        "modified_at": own.get("modified_at") or modified,
        "size": own.get("size") if isinstance(own.get("size"), int) else 0,
        "digest": own.get("digest") if isinstance(own.get("digest"), str) else _digest(model),
        "details": {**_EMPTY_DETAILS, **details} if isinstance(details, dict) else _EMPTY_DETAILS,
    }


def _listed(gateway: Gateway) -> list[tuple[str, str]]:
    """(model, name) for every served model and alias, each name once."""
    routing = gateway.settings.routing
    pairs = [(m, tagged(m)) for m in gateway.registry.model_ids()]
    pairs += [
        (routing.resolve_alias(a), tagged(a))
        for a in sorted(routing.aliases)
        if not is_alias_pattern(a) and _served(gateway, a)
    ]
    seen: set[str] = set()
    unique = []
    for model, name in pairs:
        if name not in seen:
            seen.add(name)
            unique.append((resolve_model_name(model, gateway.registry.model_ids()), name))
    return unique


def _capabilities(gateway: Gateway, model: str) -> tuple[list[str], int | None]:
    """Ollama's capability names for ``model`` and its largest known context."""
    infos = [b.models[model] for b in gateway.registry if model in b.models]
    known = [i.capabilities for i in infos if i.capabilities is not None]
    contexts = [i.context_length for i in infos if i.context_length]
    values = {c.value for caps in known for c in caps} if known else {"tools"}
    # An embedding-only model (every backend that says so) does not complete.
    embeds_only = bool(known) and all(i.embeds_only for i in infos if i.capabilities is not None)
    names = [] if embeds_only else ["completion"]
    names += [c for c in _CAPABILITIES if c in values]
    return names, max(contexts) if contexts else None


def make_ollama_blueprint(gateway: Gateway) -> Blueprint:
    """The listing and management routes of Ollama's API (see the module docstring)."""
    blueprint = Blueprint("ollama", __name__)
    modified = created_at(gateway.created * 1_000_000_000)

    @blueprint.route("/api/version", methods=["GET", "HEAD"])
    async def version() -> Response:
        return jsonify({"version": OLLAMA_VERSION})

    @blueprint.route("/api/tags", methods=["GET", "HEAD"])
    async def tags() -> Response:
        own = await _ask_ollamas(gateway, "/api/tags")
        models = [_entry(m, n, own.get(n) or own.get(m), modified) for m, n in _listed(gateway)]
        return jsonify({"models": models})

    @blueprint.post("/api/show")
    async def show() -> Response:
        body = await request.get_json(force=True, silent=True)
        name = (body.get("model") or body.get("name")) if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            return _error(400, "model is required")
        model = _served(gateway, name)
        if model is None:
            return _error(404, f"model '{name}' not found")
        own = await _ask_ollamas(gateway, "/api/tags")
        entry = _entry(model, tagged(name), own.get(tagged(model)) or own.get(model), modified)
        capabilities, context = _capabilities(gateway, model)
        arch = entry["details"]["family"] or "unknown"
        model_info: Json = {"general.architecture": arch, "general.basename": model}
        if context:
            model_info[f"{arch}.context_length"] = context
        return jsonify(
            {
                "license": "",
                "modelfile": "",
                "parameters": "",
                "template": "",
                "details": entry["details"],
                "model_info": model_info,
                "capabilities": capabilities,
                "modified_at": entry["modified_at"],
            }
        )

    @blueprint.get("/api/ps")
    async def ps() -> Response:
        own = await _ask_ollamas(gateway, "/api/ps")
        resident = created_at((_now_seconds() + _RESIDENT_SECONDS) * 1_000_000_000)
        models: list[Json] = []
        seen: set[str] = set()
        for backend in gateway.registry:
            if not backend.routable:
                continue
            for model, info in sorted(backend.models.items()):
                name = tagged(model)
                if name in seen:
                    continue
                if backend.type is BackendType.OLLAMA:
                    loaded = own.get(model) or own.get(name)
                    if loaded is None and not (own or not backend.is_warm(model)):
                        loaded = {}  # its /api/ps did not answer: the registry's last word
                    if loaded is None:
                        continue
                else:
                    loaded = {}
                seen.add(name)
                entry = _entry(model, name, loaded, modified)
                del entry["modified_at"]
                entry["expires_at"] = loaded.get("expires_at") or resident
                entry["size_vram"] = loaded.get("size_vram", entry["size"])
                entry["context_length"] = loaded.get("context_length") or info.context_length or 0
                models.append(entry)
        return jsonify({"models": models})

    @blueprint.route("/api/blobs/<path:digest>", methods=["HEAD", "POST"])
    async def blobs(digest: str) -> Response:
        return _management("uploading blobs")

    for path, what in _MANAGEMENT.items():
        method = "DELETE" if path == "/api/delete" else "POST"

        async def manage(what: str = what) -> Response:
            return _management(what)

        blueprint.add_url_rule(path, f"manage_{path[5:]}", manage, methods=[method])

    @blueprint.route("/api/<path:rest>", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
    async def unknown(rest: str) -> Response:
        if rest in ("embed", "embeddings"):
            return _error(
                501, f"/api/{rest} needs Nexus's embeddings support, which this server lacks."
            )
        return _error(404, f"{request.method} /api/{rest}: no such Ollama endpoint on Nexus.")

    return blueprint


def _now_seconds() -> int:
    return int(datetime.now(UTC).timestamp())


def _management(what: str) -> Response:
    return _error(
        501,
        f"{what[0].upper()}{what[1:]} is the backends' business: Nexus routes to the models "
        "its backends serve; run this on the backend itself (e.g. `ollama pull` on an "
        "Ollama server), and Nexus lists the result at its next check.",
    )


async def _body_of(receive: ASGI, limit: int) -> tuple[list[Json], bytes | None]:
    """The request's body messages as received, and the body (None if it is over
    ``limit`` or the client left: the pipeline then answers as it always does)."""
    messages: list[Json] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        size += len(message.get("body", b""))
        if size > limit:
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(m.get("body", b"") for m in messages)


def _replay(messages: list[Json], receive: ASGI) -> ASGI:
    """``receive`` with ``messages`` given again first."""
    pending = list(messages)

    async def again() -> Json:
        if pending:
            return pending.pop(0)
        result: Json = await receive()
        return result

    return again


async def _respond(send: ASGI, status: int, body: Json) -> None:
    data = jsonparse.dumps(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


async def serve_generate(
    gateway: Gateway, dialect: Dialect, scope: Json, receive: ASGI, send: ASGI,
    serve: Callable[..., Awaitable[None]],
) -> None:  # fmt: skip
    """``POST /api/generate``: an empty prompt is Ollama's "load the model" (answered at
    once, as loaded when some backend serves the model); anything else goes to ``serve``
    (the request pipeline) with ``dialect``, which makes it a chat turn or, with
    ``suffix`` or ``raw``, a text completion."""
    messages, body = await _body_of(receive, gateway.settings.server.max_body_bytes)
    replayed = _replay(messages, receive)
    if body is None:
        await serve(gateway, dialect, scope, replayed, send)
        return
    try:
        request = load_body(body)
    except RequestError:
        request = {}
    name = request.get("model") or request.get("name")
    loads = not (request.get("prompt") or request.get("images") or generate_is_completion(request))
    if isinstance(name, str) and name and loads:
        if _served(gateway, name) is None:
            await _respond(send, 404, {"error": f"model '{name}' not found"})
            return
        reason = "unload" if request.get("keep_alive") in (0, "0", "0s") else "load"
        now = created_at(_now_seconds() * 1_000_000_000)
        answer = {"model": name, "created_at": now, "response": "", "done": True,
                  "done_reason": reason}  # fmt: skip
        await _respond(send, 200, answer)
        return
    await serve(gateway, dialect, scope, replayed, send)
