"""The request that continues a stream on another backend (pure).

The original request, plus the text the client has already received as a
trailing assistant message (a prefill), asking for only what is left. Each
server family needs its own words for "continue this message":

- vLLM: ``continue_final_message: true`` with ``add_generation_prompt: false``
  (otherwise its chat template opens a new assistant turn);
- llama.cpp, Ollama and the rest: a trailing assistant message is continued
  as it is (llama.cpp repeats it first; `StreamTracker` strips that echo).

With greedy decoding on replicas of one model, the continuation is exactly
the text an uninterrupted run would have produced.
"""

from __future__ import annotations

import json
from typing import Any

from nexus_trio.config import BackendType

__all__ = ["continuation_body", "may_echo", "tokens_left"]

_LIMITS = ("max_tokens", "max_completion_tokens")


def may_echo(kind: BackendType) -> bool:
    """Whether a backend of this type may repeat the prefill before continuing it.

    vLLM with ``continue_final_message`` never does; for the others the echo is
    detected and stripped (and text that is not an echo passes unchanged).
    """
    return kind is not BackendType.VLLM


def tokens_left(payload: dict[str, Any], produced: int) -> int | None:
    """How many more tokens the answer may have under the client's own limit
    (``max_tokens``, ``max_completion_tokens``) once ``produced`` (about: content chunks)
    have been received; None when it set none."""
    limits = [
        value
        for name in _LIMITS
        if isinstance(value := payload.get(name), int) and not isinstance(value, bool)
    ]
    return max(0, min(limits) - produced) if limits else None


def continuation_body(
    payload: dict[str, Any], kind: BackendType, model: str, prefill: str, produced: int
) -> bytes:
    """The body that asks a ``kind`` backend to continue ``prefill`` with ``model``.

    ``produced`` is how many tokens (about: content chunks) the client has
    received, taken off ``max_tokens`` so the whole answer keeps its limit.
    """
    body = dict(payload)
    body["model"] = model
    body["messages"] = [*payload["messages"], {"role": "assistant", "content": prefill}]
    left = tokens_left(payload, produced)
    for limit in _LIMITS:
        value = payload.get(limit)
        if left is not None and isinstance(value, int) and not isinstance(value, bool):
            body[limit] = max(1, left)
    if kind is BackendType.VLLM:
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    return json.dumps(body).encode()
