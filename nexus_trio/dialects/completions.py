"""OpenAI legacy completions (``POST /v1/completions``), fill-in-the-middle included.

A completion goes to the backend's own ``/v1/completions``, streamed with usage
whatever the client asked (so deadlines, hedging and mid-stream continuation apply as
for chat); the answer comes back as ``text_completion`` chunks, relayed as they came,
or assembled into one ``text_completion`` object (`completions_writer`).

A request with a non-empty ``suffix`` fills in the middle, which backends do each in
their own way: Ollama takes the ``suffix`` on ``/v1/completions`` (a model with the
``insert`` capability); llama.cpp refuses it there and fills in on ``/infill``
(`nexus_trio.dialects.infill`); vLLM refuses it. Routing sends such a request only to
the first two (``Requirements.fim``). A stream that dies mid-answer continues with the
prompt plus the text relayed so far as the new prompt, the suffix unchanged.

Supported: ``prompt`` as a string (or a list of one), ``suffix``, ``max_tokens``,
``stop``, ``echo`` (Nexus puts the prompt before the text itself: llama.cpp refuses
it), ``logprobs`` (passed on: the backend's own), sampling options (passed on), ``n``
and ``best_of`` of 1, ``stream`` with ``stream_options.include_usage``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from typing import Any

from nexus_trio.config import BackendType, RoutingSettings
from nexus_trio.dialects.base import Dialect, load_object
from nexus_trio.dialects.completions_writer import CompletionOrigin, completion_writer
from nexus_trio.dialects.infill import INFILL_PATH, InfillParser, infill_payload
from nexus_trio.dialects.openai_chat import BYTES_PER_TOKEN, optional_positive_int
from nexus_trio.errors import RequestError
from nexus_trio.proxy.continuation import tokens_left
from nexus_trio.routing.requirements import Asked, ChatRequest, Requirements

__all__ = ["COMPLETIONS", "COMPLETIONS_PATH", "CompletionPlan", "parse_completion_request"]

COMPLETIONS_PATH = "/v1/completions"
# Fields Nexus answers itself and never sends upstream.
_OURS = ("echo",)


@dataclass(frozen=True, slots=True)
class CompletionPlan:
    """How a completion goes to each type of backend (`UpstreamPlan`)."""

    payload: dict[str, Any]  # the upstream completion request, for the client's model
    prompt: str
    fim: bool  # a non-empty suffix: fill in the middle

    @property
    def text(self) -> bool:
        return True

    def ask(self, model: str, kind: BackendType, context_length: int | None) -> Asked:
        return self._asked(model, kind, "", self.payload.get("max_tokens"))

    def resume(
        self, model: str, kind: BackendType, context_length: int | None, prefill: str,
        produced: int,
    ) -> Asked:  # fmt: skip
        return self._asked(model, kind, prefill, tokens_left(self.payload, produced))

    def _asked(self, model: str, kind: BackendType, prefill: str, limit: int | None) -> Asked:
        if limit is not None:
            limit = max(1, limit)
        if self.fim and kind is BackendType.LLAMACPP:
            payload = infill_payload(self.payload, self.prompt, prefill, limit)
            return Asked(INFILL_PATH, _encode(payload), partial(InfillParser, model))
        body = {**self.payload, "model": model, "prompt": self.prompt + prefill}
        if limit is not None:
            body["max_tokens"] = limit
        return Asked(COMPLETIONS_PATH, _encode(body))


def _encode(payload: dict[str, Any]) -> bytes:
    # ASCII escapes: the same JSON, and a lone surrogate the client sent survives.
    return json.dumps(payload).encode()


def _invalid(message: str, param: str | None) -> RequestError:
    return RequestError(message, param=param)


def _prompt(payload: dict[str, Any]) -> str:
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise _invalid(
            f"'prompt' holds {len(prompt)} prompts; Nexus answers one per request. Send "
            "one request per prompt.",
            "prompt",
        )
    if isinstance(prompt, list) and prompt and all(isinstance(p, int | list) for p in prompt):
        raise _invalid(
            "'prompt' as token ids is not supported (backends tokenize differently). Send "
            "the prompt as a string.",
            "prompt",
        )
    raise _invalid("'prompt' is required and must be a string (or a list of one).", "prompt")


def _one(payload: dict[str, Any], name: str) -> None:
    value = payload.get(name)
    if value is not None and value != 1:
        raise _invalid(
            f"'{name}' must be 1 (Nexus relays one choice per request), got {value!r:.40}.",
            name,
        )


def parse_completion_request(body: bytes, routing: RoutingSettings) -> ChatRequest:
    """Validate a ``POST /v1/completions`` body; the request that goes upstream.

    Raises:
        RequestError: the body is not JSON, or a field is wrong or unsupported; the error
            names the field.
    """
    payload = load_object(body, "'model' and 'prompt'")
    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("'model' is required and must be a non-empty string.", "model")
    prompt = _prompt(payload)
    suffix = payload.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise _invalid("'suffix' must be a string.", "suffix")
    stream = payload.get("stream") or False
    if not isinstance(stream, bool):
        raise _invalid(f"'stream' must be true or false, got {stream!r:.40}.", "stream")
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid(
            "'stream_options' must be an object such as {\"include_usage\": true}.",
            "stream_options",
        )
    stop = payload.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _invalid("'stop' must be a string or an array of strings.", "stop")
    echo = payload.get("echo") or False
    if not isinstance(echo, bool):
        raise _invalid("'echo' must be true or false.", "echo")
    _one(payload, "n")
    _one(payload, "best_of")
    limit = optional_positive_int(payload, "max_tokens")

    fim = bool(suffix)
    upstream = {k: v for k, v in payload.items() if k not in _OURS and k != "suffix"}
    if fim:
        upstream["suffix"] = suffix
    upstream["prompt"] = prompt
    upstream["stream"] = True
    upstream["stream_options"] = {**(options or {}), "include_usage": True}
    needs = Requirements(
        model=model,
        stream=stream,
        fim=fim,
        context_tokens=(len(prompt) + len(suffix or "")) // BYTES_PER_TOKEN + limit,
    )
    plan = CompletionPlan(upstream, prompt, fim)
    return ChatRequest(
        body=plan.ask(model, BackendType.GENERIC, None).body,
        payload=upstream,
        needs=needs,
        streamed_upstream=True,
        client_wants_usage=stream
        and isinstance(options, dict)
        and options.get("include_usage") is True,
        origin=CompletionOrigin(prompt, echo),
        path=COMPLETIONS_PATH,
        plan=plan,
    )


COMPLETIONS = Dialect(api="completions", parse=parse_completion_request, writer=completion_writer)
