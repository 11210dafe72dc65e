"""One health check of one backend: is it up, what does it serve, what is warm.

Cheap, type-specific requests that never run a generation:

============  ==========================================================
ollama        ``/api/version``; models from ``/api/tags`` + ``/api/show``
              (cached per digest); loaded models from ``/api/ps``
              (read every second too: `nexus_trio.load_watch`)
llamacpp      ``/health`` (503 while the model loads); ``/v1/models``;
              ``/props`` for the context per slot (``n_ctx``) and slots
vllm          ``/health``; ``/v1/models`` (with ``max_model_len``)
exo           ``/node_id``; ``/v1/models``
localai       ``/readyz``; ``/v1/models``
others        ``/v1/models`` (cloud APIs and generic servers)
============  ==========================================================

The parsing is pure (``parse_*``); ``check_backend`` does the I/O and raises
``BackendError`` when the backend is down.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import trio

from nexus_trio.backends.engine import parse_ollama_ps
from nexus_trio.backends.listing import OllamaShowCache, get_json, list_models
from nexus_trio.config import BackendType
from nexus_trio.errors import BackendError, BackendStatus, BackendTimeout
from nexus_trio.registry import Backend, Checkup
from nexus_trio.upstream.client import backend_headers, translate_httpx_error

__all__ = [
    "Checkup",
    "check_backend",
    "check_with_deadline",
    "parse_llamacpp_props",
]

# The liveness request per type, before the model listing; None: the listing is enough.
_LIVENESS: dict[BackendType, str] = {
    BackendType.OLLAMA: "/api/version",
    BackendType.LLAMACPP: "/health",
    BackendType.VLLM: "/health",
    BackendType.EXO: "/node_id",
    BackendType.LOCALAI: "/readyz",
}


def parse_llamacpp_props(payload: Any) -> tuple[int | None, int | None]:
    """(context per slot, slot count) from llama.cpp's ``GET /props``."""
    if not isinstance(payload, dict):
        raise ValueError("expected an object")
    settings = payload.get("default_generation_settings")
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    slots = payload.get("total_slots")

    def positive(value: object) -> int | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return value if ok else None  # type: ignore[return-value]

    return positive(n_ctx), positive(slots)


async def _alive(client: httpx.AsyncClient, backend: Backend, path: str) -> None:
    try:
        response = await client.get(backend.url + path, headers=backend_headers(backend))
    except httpx.HTTPError as exc:
        raise translate_httpx_error(backend.name, exc) from exc
    if response.status_code != 200:
        detail = "loading the model" if response.status_code == 503 else f"GET {path}"
        raise BackendStatus(backend.name, response.status_code, detail)


async def check_backend(
    client: httpx.AsyncClient, backend: Backend, cache: OllamaShowCache
) -> Checkup:
    """Check ``backend`` once. The caller sets the deadline.

    Raises:
        BackendError: it is down, loading, or answers something we cannot read.
    """
    liveness = _LIVENESS.get(backend.type)
    if liveness is not None:
        await _alive(client, backend, liveness)
    models = await list_models(client, backend, cache)
    if backend.type is BackendType.OLLAMA:
        try:
            loaded = parse_ollama_ps(await get_json(client, backend, "GET", "/api/ps"))
        except (BackendError, ValueError):
            return Checkup(models)  # older servers: unknown, which routing treats as warm
        return Checkup(models, engine=loaded)
    if backend.type is BackendType.LLAMACPP:
        try:
            n_ctx, slots = parse_llamacpp_props(await get_json(client, backend, "GET", "/props"))
        except (BackendError, ValueError):
            return Checkup(models)
        if n_ctx is not None:
            # n_ctx is what one request may use; n_ctx_train (from /v1/models) is the
            # model's own limit, larger than what this server was started with.
            models = [replace(m, context_length=n_ctx) for m in models]
        return Checkup(models, slots=slots)
    return Checkup(models)


async def check_with_deadline(
    client: httpx.AsyncClient, backend: Backend, cache: OllamaShowCache, timeout_seconds: float
) -> Checkup:
    """`check_backend` under a deadline, a miss being a `BackendError` like any other."""
    with trio.move_on_after(timeout_seconds):
        return await check_backend(client, backend, cache)
    raise BackendTimeout(backend.name, f"no answer within {timeout_seconds:g} s")
