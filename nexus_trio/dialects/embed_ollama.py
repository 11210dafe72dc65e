"""Ollama's embeddings, ``POST /api/embed`` and the older ``POST /api/embeddings``.

Both go upstream as OpenAI embeddings (``/v1/embeddings``, floats), which every
backend type serves, Ollama included; the answer is translated back:

- ``/api/embed`` ``{model, input: str | [str], truncate?, dimensions?, options?,
  keep_alive?}`` → ``{model, embeddings: [[float]], total_duration, load_duration,
  prompt_eval_count}`` (durations in nanoseconds, as Ollama reports them: here the
  time Nexus took, and no load time it could know);
- ``/api/embeddings`` ``{model, prompt, options?, keep_alive?}`` → ``{embedding: [float]}``.

``truncate``, ``options`` and ``keep_alive`` are Ollama's own and not forwarded (an
OpenAI backend has no such fields). Errors are Ollama's ``{"error": "..."}`` with the
status; a model name is accepted with or without ``:latest`` (as Ollama clients write
it) when the other spelling is the one served.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from nexus_trio import jsonparse
from nexus_trio.config import RoutingSettings
from nexus_trio.dialects.base import Dialect, Downstream, load_object
from nexus_trio.dialects.embeddings import (
    check_dimensions,
    check_input,
    check_model,
    embeddings_request,
)
from nexus_trio.dialects.ollama import resolve_model_name
from nexus_trio.errors import NexusError, RequestError
from nexus_trio.proxy.tracker import Admitted
from nexus_trio.proxy.writer import WholeAnswer, Writer, nexus_headers
from nexus_trio.routing.requirements import ChatRequest
from nexus_trio.routing.router import Candidate

__all__ = ["OllamaEmbedWriter", "ollama_embed_dialects", "parse_ollama_embed"]


@dataclass(frozen=True, slots=True)
class EmbedOrigin:
    model: str  # as the client wrote it: the answer names it
    legacy: bool  # /api/embeddings: one ``embedding``


def parse_ollama_embed(body: bytes, known: Collection[str] = (), *, legacy: bool) -> ChatRequest:
    """Validate an ``/api/embed`` (``legacy``: ``/api/embeddings``) body; the OpenAI
    embeddings request that goes upstream.

    Raises:
        RequestError: not a JSON object, or ``model``, ``input`` (``prompt``),
            ``dimensions`` or ``truncate`` malformed (named).
    """
    field = "prompt" if legacy else "input"
    request = load_object(body, f"'model' and '{field}'")
    model = check_model(request)
    text = request.get(field)
    if text is None:
        raise RequestError(f"'{field}' is required: the text to embed.", param=field)
    if legacy and not isinstance(text, str):
        raise RequestError("'prompt' must be a string.", param="prompt")
    if isinstance(text, list) and not all(isinstance(t, str) for t in text):
        raise RequestError("'input' must be a string or an array of strings.", param="input")
    check_input(text, field)
    check_dimensions(request)
    if not isinstance(request.get("truncate", True), bool):
        raise RequestError("'truncate' must be true or false.", param="truncate")
    upstream: dict[str, Any] = {
        "model": resolve_model_name(model, known),
        "input": text,
        "encoding_format": "float",
    }
    if request.get("dimensions") is not None:
        upstream["dimensions"] = request["dimensions"]
    chat = embeddings_request(jsonparse.dumps(upstream), upstream, upstream["model"])
    return _with_origin(chat, EmbedOrigin(model, legacy))


def _with_origin(chat: ChatRequest, origin: EmbedOrigin) -> ChatRequest:
    return replace(chat, origin=origin)


def _floats(embedding: object) -> list[float]:
    """A vector from an OpenAI ``embedding`` (floats, or base64 float32 little-endian)."""
    if isinstance(embedding, str):
        raw = base64.b64decode(embedding)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    if isinstance(embedding, list):
        return embedding
    raise ValueError("an embedding is neither floats nor base64")


def ollama_embed_body(
    answer: Mapping[str, Any], model: str, legacy: bool, nanoseconds: int
) -> dict[str, Any]:
    """The Ollama answer for an OpenAI embeddings ``answer`` (pure).

    Raises:
        ValueError: ``answer`` is not an embeddings list.
    """
    data = answer.get("data")
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ValueError("no 'data' list")
    ordered = sorted(data, key=lambda d: d.get("index", 0))
    vectors = [_floats(d.get("embedding")) for d in ordered]
    if legacy:
        return {"embedding": vectors[0] if vectors else []}
    usage = answer.get("usage")
    count = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return {
        "model": model,
        "embeddings": vectors,
        "total_duration": nanoseconds,
        "load_duration": 0,
        "prompt_eval_count": count if isinstance(count, int) else 0,
    }


def _refusal_message(body: bytes, status: int) -> str:
    """The message of a backend's error body, whatever its shape."""
    try:
        payload = jsonparse.loads(body)
    except ValueError:
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    text = body.decode("utf-8", "replace").strip()
    return text[:500] or f"the backend answered HTTP {status}"


class OllamaEmbedWriter:
    """Writes an Ollama embeddings response from the backend's OpenAI answer."""

    __slots__ = ("_downstream", "_origin", "_request_id", "_started")

    def __init__(self, origin: EmbedOrigin | None, downstream: Downstream, request_id: str) -> None:
        self._origin = origin
        self._downstream = downstream
        self._request_id = request_id
        self._started = time.monotonic_ns()

    @property
    def sent(self) -> bool:
        return self._downstream.started

    # The answer is read whole: these are never called with anything to write.
    async def begin(self, candidate: Candidate) -> None:
        pass

    async def send(self, batch: Sequence[Admitted]) -> None:
        pass

    async def keep_alive(self) -> None:
        pass

    async def note(self, text: str) -> None:
        pass

    async def end(self, usage: Mapping[str, int]) -> None:
        pass

    async def _error(self, status: int, message: str, headers: Sequence[tuple[str, str]]) -> None:
        head = [("content-type", "application/json"), ("x-request-id", self._request_id)]
        await self._downstream.respond(
            status, [*head, *headers], jsonparse.dumps({"error": message})
        )

    async def fail(self, error: NexusError) -> None:
        if not self._downstream.started:
            message = error.message
            if error.code == "model_not_found" and self._origin is not None:
                message = f"model '{self._origin.model}' not found"  # Ollama's words
            await self._error(error.status, message, error.headers())
        await self._downstream.end()

    async def pass_through(self, answer: WholeAnswer) -> None:
        headers = nexus_headers(answer.candidate, self._request_id, "application/json")
        if answer.status != 200 or self._origin is None:
            message = _refusal_message(answer.body, answer.status)
            await self._downstream.respond(
                answer.status, headers, jsonparse.dumps({"error": message})
            )
            return
        try:
            body = ollama_embed_body(
                jsonparse.loads(answer.body),
                self._origin.model,
                self._origin.legacy,
                time.monotonic_ns() - self._started,
            )
        except (ValueError, struct.error):
            message = f"{answer.candidate.backend.name} answered embeddings Nexus cannot read"
            await self._downstream.respond(502, headers, jsonparse.dumps({"error": message}))
            return
        await self._downstream.respond(200, headers, jsonparse.dumps(body))


def ollama_embed_dialects(known: Callable[[], Collection[str]]) -> tuple[Dialect, Dialect]:
    """``/api/embed`` and ``/api/embeddings``, resolving model names among ``known()``
    (the models served and the aliases)."""

    def parser(legacy: bool) -> Callable[[bytes, RoutingSettings], ChatRequest]:
        return lambda body, routing: parse_ollama_embed(body, known(), legacy=legacy)

    def writer(request: ChatRequest | None, downstream: Downstream, request_id: str) -> Writer:
        origin = request.origin if request is not None else None
        return OllamaEmbedWriter(origin, downstream, request_id)

    return (
        Dialect(api="ollama_embed", parse=parser(False), writer=writer),
        Dialect(api="ollama_embeddings", parse=parser(True), writer=writer),
    )
