"""The tokenizer endpoints of llama.cpp and vLLM, with the simulators' word tokenizer.

- llama.cpp: ``POST /apply-template`` ``{"messages"}`` → ``{"prompt"}`` (the chat
  template of ``/props``, rendered); ``POST /tokenize`` ``{"content"}`` →
  ``{"tokens": [...]}``.
- vLLM: ``POST /tokenize`` with ``{"model", "messages"}`` or ``{"model", "prompt"}`` →
  ``{"count", "max_model_len", "tokens", "token_strs"}``.

A token is a whitespace-separated word (`estimate_prompt_tokens` for messages), so a
test can tell a count from the backend from Nexus's own estimate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._completions import error_payload
from ._http import Request, Responder
from ._text import estimate_prompt_tokens, message_text
from ._types import Flavor

if TYPE_CHECKING:
    from ._backend import SimulatedBackend

__all__ = ["chat_prompt", "llamacpp_apply_template", "llamacpp_tokenize", "vllm_tokenize"]


def chat_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """The prompt the simulated llama.cpp's chat template renders (ChatML, as ``/props``
    says), ready for the assistant's answer."""
    turns = "".join(
        f"<|im_start|>{m.get('role')}\n{message_text(m.get('content'))}<|im_end|>\n"
        for m in messages
    )
    return turns + "<|im_start|>assistant\n"


def _body(request: Request) -> dict[str, Any] | None:
    try:
        body = json.loads(request.body)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def _bad(responder: Responder, flavor: Flavor, message: str) -> None:
    await responder.send_json(400, error_payload(flavor, 400, message))


async def llamacpp_apply_template(
    backend: SimulatedBackend, request: Request, responder: Responder
) -> None:
    body = _body(request)
    messages = body.get("messages") if body else None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        await _bad(responder, backend.flavor, "'messages' is required")
        return
    await responder.send_json(200, {"prompt": chat_prompt(messages)})


async def llamacpp_tokenize(
    backend: SimulatedBackend, request: Request, responder: Responder
) -> None:
    body = _body(request)
    content = body.get("content") if body else None
    if not isinstance(content, str):
        await _bad(responder, backend.flavor, "'content' must be a string")
        return
    await responder.send_json(200, {"tokens": list(range(len(content.split())))})


async def vllm_tokenize(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    body = _body(request) or {}
    model = backend.models_by_id.get(body.get("model", ""))
    if model is None:
        message = f"The model `{body.get('model')}` does not exist."
        await responder.send_json(404, error_payload(backend.flavor, 404, message))
        return
    messages, prompt = body.get("messages"), body.get("prompt")
    if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
        count = estimate_prompt_tokens(messages)
    elif isinstance(prompt, str):
        count = len(prompt.split())
    else:
        await _bad(responder, backend.flavor, "Either 'messages' or 'prompt' is required.")
        return
    await responder.send_json(
        200,
        {
            "count": count,
            "max_model_len": model.context_length,
            "tokens": list(range(count)),
            "token_strs": None,
        },
    )
