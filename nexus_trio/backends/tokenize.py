"""How many tokens a chat prompt is, asked of the backend's own tokenizer where it has one.

llama.cpp renders the conversation with the model's chat template
(``POST /apply-template`` → ``{"prompt"}``) and tokenizes the text (``POST /tokenize``
→ ``{"tokens": [...]}``); vLLM does both in one call (``POST /tokenize`` with
``messages`` → ``{"count"}``). Other servers (Ollama, LM Studio, …) have no such
endpoint on their OpenAI side: the count is then estimated from the text, as
`estimate_input_tokens` does. The count is what the request would cost with the
template applied, tools included where the server renders them.

A count is advice (Anthropic's ``count_tokens``, for a client deciding when to compact
its context), so any failure — a slow backend, an older server without the endpoint —
falls back to the estimate, within `TOKENIZE_SECONDS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import httpx
import trio

from nexus_trio.backends.listing import get_json
from nexus_trio.config import BackendType
from nexus_trio.errors import BackendError
from nexus_trio.registry import Backend

__all__ = ["TOKENIZE_SECONDS", "count_prompt_tokens", "estimate_input_tokens"]

# Long enough for a tokenizer over a long conversation, short enough for a client waiting.
TOKENIZE_SECONDS = 3.0
_BYTES_PER_TOKEN = 4  # what Ollama's own estimator and Nexus's routing assume
_TOKENS_PER_MESSAGE = 4  # the template's role markers around each message


def _text_bytes(content: object) -> int:
    if isinstance(content, str):
        return len(content.encode("utf-8", "surrogatepass"))
    if isinstance(content, list):
        return sum(_text_bytes(part.get("text")) for part in content if isinstance(part, dict))
    return 0


def estimate_input_tokens(payload: Mapping[str, Any]) -> int:
    """An estimate of the prompt tokens of a chat ``payload``: four bytes of text a token
    (the messages, the tool calls' arguments and the tools' schemas), plus a few per
    message for the template around it."""
    messages = payload.get("messages")
    messages = messages if isinstance(messages, list) else []
    size = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        size += _text_bytes(message.get("content"))
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                size += len(json.dumps(call.get("function", {})))
    tools = payload.get("tools")
    if isinstance(tools, list) and tools:
        size += len(json.dumps(tools))
    return math.ceil(size / _BYTES_PER_TOKEN) + _TOKENS_PER_MESSAGE * len(messages)


def _template_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {key: payload[key] for key in ("messages", "tools") if payload.get(key)}


async def _count_llamacpp(
    client: httpx.AsyncClient, backend: Backend, model: str, payload: Mapping[str, Any]
) -> int | None:
    rendered = await get_json(
        client, backend, "POST", "/apply-template", json=_template_fields(payload)
    )
    prompt = rendered.get("prompt") if isinstance(rendered, dict) else None
    if not isinstance(prompt, str):
        return None
    # The rendered prompt already holds the template's special tokens as text.
    tokens = await get_json(
        client, backend, "POST", "/tokenize",
        json={"content": prompt, "add_special": False, "parse_special": True},
    )  # fmt: skip
    listed = tokens.get("tokens") if isinstance(tokens, dict) else None
    return len(listed) if isinstance(listed, list) else None


async def _count_vllm(
    client: httpx.AsyncClient, backend: Backend, model: str, payload: Mapping[str, Any]
) -> int | None:
    body = {"model": model, **_template_fields(payload), "add_generation_prompt": True}
    counted = await get_json(client, backend, "POST", "/tokenize", json=body)
    count = counted.get("count") if isinstance(counted, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


_COUNTERS = {BackendType.LLAMACPP: _count_llamacpp, BackendType.VLLM: _count_vllm}


async def count_prompt_tokens(
    client: httpx.AsyncClient, backend: Backend, model: str, payload: Mapping[str, Any]
) -> int | None:
    """The prompt tokens of the chat ``payload`` by ``backend``'s tokenizer for ``model``,
    or None when it has none, fails, or takes longer than `TOKENIZE_SECONDS` (the caller
    then estimates)."""
    counter = _COUNTERS.get(backend.type)
    if counter is None:
        return None
    with trio.move_on_after(TOKENIZE_SECONDS):
        try:
            return await counter(client, backend, model, payload)
        except BackendError:
            return None
    return None
