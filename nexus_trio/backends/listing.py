"""What models a backend serves, and what each can do, read off its own API.

Ollama has a native API that says more than its OpenAI-compatible one
(``/api/tags`` lists models with digests; ``/api/show`` gives capabilities and
context length), so it is used there. Every other type answers
``GET /v1/models``; vLLM adds ``max_model_len`` to each entry and llama.cpp a
``meta`` object with ``n_ctx_train``.

Parsing is pure (``parse_*``) so it is tested on recorded shapes; ``list_models``
does the I/O and translates httpx errors into ``BackendError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import trio

from nexus_trio.config import BackendType
from nexus_trio.errors import BackendError, BackendProtocolError, BackendStatus
from nexus_trio.registry import Backend, Capability, ModelInfo
from nexus_trio.upstream.client import backend_headers, translate_httpx_error

__all__ = [
    "OllamaShowCache",
    "get_json",
    "list_models",
    "parse_ollama_show",
    "parse_openai_models",
]

_OLLAMA_CAPABILITIES = {
    "vision": Capability.VISION,
    "tools": Capability.TOOLS,
    "insert": Capability.INSERT,
    "completion": Capability.COMPLETION,
    "embedding": Capability.EMBEDDING,
}


def _positive_int(value: object) -> bool:
    # bool is an int to Python, but `true` is no context length.
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def parse_openai_models(payload: Any, default_owner: str) -> list[ModelInfo]:
    """Models from a ``GET /v1/models`` answer (OpenAI list shape)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise ValueError("expected an object with a 'data' array")
    models = []
    for entry in payload["data"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        # vLLM says max_model_len, exo context_length, llama.cpp meta.n_ctx_train.
        context = entry.get("max_model_len") or entry.get("context_length")
        meta = entry.get("meta")
        if context is None and isinstance(meta, dict):
            context = meta.get("n_ctx") or meta.get("n_ctx_train")
        owner = entry.get("owned_by")
        models.append(
            ModelInfo(
                id=entry["id"],
                owned_by=owner if isinstance(owner, str) and owner else default_owner,
                context_length=context if _positive_int(context) else None,
            )
        )
    return models


def parse_ollama_show(name: str, payload: Any) -> ModelInfo:
    """One model from Ollama's ``POST /api/show`` answer."""
    if not isinstance(payload, dict):
        raise ValueError("expected an object")
    context = None
    model_info = payload.get("model_info")
    if isinstance(model_info, dict):
        for key, value in model_info.items():
            if key.endswith(".context_length") and _positive_int(value):
                context = value
                break
    capabilities: frozenset[Capability] | None = None
    listed = payload.get("capabilities")
    if isinstance(listed, list):
        # Ollama's OpenAI endpoint honours response_format for every model.
        capabilities = frozenset(
            {Capability.JSON}
            | {_OLLAMA_CAPABILITIES[c] for c in listed if c in _OLLAMA_CAPABILITIES}
        )
    return ModelInfo(id=name, owned_by="ollama", context_length=context, capabilities=capabilities)


class OllamaShowCache:
    """``/api/show`` answers by (model, digest): a model only changes with its digest."""

    def __init__(self) -> None:
        self._shown: dict[tuple[str, str], ModelInfo] = {}

    def get(self, name: str, digest: str) -> ModelInfo | None:
        return self._shown.get((name, digest))

    def put(self, name: str, digest: str, info: ModelInfo) -> None:
        self._shown[(name, digest)] = info


async def get_json(
    client: httpx.AsyncClient, backend: Backend, method: str, path: str, **kwargs: Any
) -> Any:
    try:
        response = await client.request(
            method, backend.url + path, headers=backend_headers(backend), **kwargs
        )
    except httpx.HTTPError as exc:
        raise translate_httpx_error(backend.name, exc) from exc
    if response.status_code != 200:
        raise BackendStatus(backend.name, response.status_code, f"{method} {path}")
    try:
        return response.json()
    except ValueError as exc:
        raise BackendProtocolError(backend.name, f"{method} {path} is not JSON") from exc


async def _list_ollama(
    client: httpx.AsyncClient, backend: Backend, cache: OllamaShowCache
) -> list[ModelInfo]:
    tags = await get_json(client, backend, "GET", "/api/tags")
    entries = tags.get("models") if isinstance(tags, dict) else None
    if not isinstance(entries, list):
        raise BackendProtocolError(backend.name, "/api/tags has no 'models' array")
    names = [
        (e["name"], str(e.get("digest", "")))
        for e in entries
        if isinstance(e, dict) and isinstance(e.get("name"), str)
    ]
    shown: dict[str, ModelInfo] = {}

    async def show(name: str, digest: str) -> None:
        info = cache.get(name, digest)
        if info is None:
            payload = await get_json(client, backend, "POST", "/api/show", json={"model": name})
            try:
                info = parse_ollama_show(name, payload)
            except ValueError as exc:
                raise BackendProtocolError(backend.name, f"/api/show {name}: {exc}") from exc
            cache.put(name, digest, info)
        shown[name] = info

    async with trio.open_nursery() as nursery:
        for name, digest in names:
            nursery.start_soon(show, name, digest)
    return [shown[name] for name, _ in names]


_OWNER_BY_TYPE: Mapping[BackendType, str] = {t: t.value for t in BackendType}


async def list_models(
    client: httpx.AsyncClient, backend: Backend, cache: OllamaShowCache | None = None
) -> list[ModelInfo]:
    """Ask the backend what it serves. The caller sets the deadline.

    Raises:
        BackendError: unreachable, a non-200 answer, or a body we cannot read.
    """
    if backend.type is BackendType.OLLAMA:
        try:
            return await _list_ollama(client, backend, cache or OllamaShowCache())
        except* BackendError as group:
            raise group.exceptions[0]  # noqa: B904 - keeps the httpx cause it carries
    payload = await get_json(client, backend, "GET", "/v1/models")
    try:
        return parse_openai_models(payload, _OWNER_BY_TYPE[backend.type])
    except ValueError as exc:
        raise BackendProtocolError(backend.name, f"/v1/models: {exc}") from exc
