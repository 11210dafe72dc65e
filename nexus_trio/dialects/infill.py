"""llama.cpp's ``POST /infill``: fill in the middle, asked and read as a legacy completion.

llama.cpp refuses ``suffix`` on ``/v1/completions`` and fills in the middle on
``/infill`` instead, with the model's FIM tokens (``input_prefix``, ``input_suffix``,
and ``prompt`` for text already written after the middle's start). Its stream is its
own (tools/server/README.md, "POST /infill" and "POST /completion"): ``data:`` lines of
``{"content": "...", "stop": false, ...}``, the last with ``"stop": true``,
``stop_type`` (``eos``, ``word``, ``limit``), ``tokens_predicted`` and
``tokens_evaluated``, and no ``[DONE]``. `InfillParser` reads it as OpenAI
``text_completion`` chunks ending in ``[DONE]``, so the proxy relays it like any other.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from nexus_trio.proxy.sse import DONE, DONE_EVENT, SSEEvent, SSEParser, data_event

__all__ = ["INFILL_PATH", "InfillParser", "infill_payload", "translate_infill"]

INFILL_PATH = "/infill"
# Sampling options a completion request and /infill name alike.
_SHARED = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "presence_penalty",
           "frequency_penalty", "repeat_penalty")  # fmt: skip


def infill_payload(completion: dict[str, Any], prefix: str, middle: str,
                   limit: int | None) -> dict[str, Any]:  # fmt: skip
    """The ``/infill`` request for a completion request with a ``suffix``: ``prefix``
    before the gap, ``middle`` the text already written in it (a continuation), at most
    ``limit`` tokens more."""
    payload: dict[str, Any] = {
        "input_prefix": prefix,
        "input_suffix": completion.get("suffix") or "",
        "prompt": middle,
        "stream": True,
    }
    for name in _SHARED:
        if completion.get(name) is not None:
            payload[name] = completion[name]
    if limit is not None:
        payload["n_predict"] = limit
    return payload


def translate_infill(native: dict[str, Any], base: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``text_completion`` chunks one native ``/infill`` stream object stands for
    (``base`` holds their ``id``, ``object``, ``created``, ``model``): its text, and after
    the last one the finish and the usage."""
    out: list[dict[str, Any]] = []
    content = native.get("content")
    if isinstance(content, str) and content:
        out.append({**base, "choices": [_choice(content, None)]})
    if native.get("stop") is True:
        reason = "length" if native.get("stop_type") == "limit" else "stop"
        out.append({**base, "choices": [_choice("", reason)]})
        prompt, completion = native.get("tokens_evaluated"), native.get("tokens_predicted")
        if isinstance(prompt, int) and isinstance(completion, int):
            usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": prompt + completion}  # fmt: skip
            out.append({**base, "choices": [], "usage": usage})
    return out


def _choice(text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}


class InfillParser(SSEParser):
    """An SSE parser for llama.cpp's ``/infill`` stream that yields OpenAI
    ``text_completion`` events (and the ``[DONE]`` llama.cpp does not send). Errors and
    what is not JSON pass unchanged, for the tracker to judge."""

    __slots__ = ("_base",)

    def __init__(self, model: str) -> None:
        super().__init__()
        self._base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                      "created": int(time.time()), "model": model}  # fmt: skip

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        for event in super().feed(chunk):
            try:
                native = event.parsed() if event.data is not None and not event.is_done else None
            except (ValueError, RecursionError):
                native = None
            if not isinstance(native, dict) or "error" in native:
                out.append(event)
                continue
            for translated in translate_infill(native, self._base):
                out.append(_event(translated))
            if native.get("stop") is True:
                out.append(SSEEvent(DONE_EVENT, DONE))
        return out


def _event(chunk: dict[str, Any]) -> SSEEvent:
    raw = data_event(chunk)
    return SSEEvent(raw, raw[6:-2].decode(), _parsed=chunk)  # b"data: " JSON b"\n\n"
