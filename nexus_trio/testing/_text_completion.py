"""``POST /v1/completions`` (legacy completions) and llama.cpp's ``POST /infill``.

Text as deterministic as chat's (`completion_tokens`): the same model completes the
same prompt (before the same suffix) with the same words on either endpoint, and a
prompt extended by part of its completion goes on with the rest of it.

Fill-in-the-middle as each server does it: Ollama takes ``suffix`` on
``/v1/completions`` for a model with the ``insert`` capability; llama.cpp refuses it
there ("Unsupported param: suffix") and fills in on ``/infill`` for a model with FIM
tokens (its own stream shape; 501 otherwise); vLLM refuses it ("suffix is not
currently supported"). The chat fault knobs apply alike.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

from ._chat import _send_whole, _stream, handle_chat, received
from ._completions import DONE, FINGERPRINTS, Answer, ChatError, error_payload
from ._http import Request, Responder
from ._text import completion_tokens
from ._types import Flavor, SimModel

if TYPE_CHECKING:
    from ._backend import SimulatedBackend

__all__ = ["completions", "infill"]


async def completions(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    """``POST /v1/completions`` (counted as a chat request: ``stats.last_chat_body``)."""
    await handle_chat(backend, request, responder, partial(_respond, native=False))


async def infill(backend: SimulatedBackend, request: Request, responder: Responder) -> None:
    """llama.cpp's ``POST /infill``."""
    await handle_chat(backend, request, responder, partial(_respond, native=True))


def _tokens(model: SimModel, prompt: str, suffix: str, limit: object) -> tuple[list[str], str]:
    tokens = completion_tokens(model.id, prompt, suffix)
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(tokens):
        return tokens[:limit], "length"
    return tokens, "stop"


def plan_completion(body: object, flavor: Flavor, models: dict[str, SimModel]) -> Answer:
    """Validate a ``/v1/completions`` body as ``flavor`` does and decide its answer.

    Raises:
        ChatError: the request is refused.
    """

    def fail(status: int, message: str, param: str | None = None) -> NoReturn:
        raise ChatError(status, error_payload(flavor, status, message, param=param))

    if not isinstance(body, dict):
        fail(400, "We could not parse the JSON body of your request: expected a JSON object.")
    name = body.get("model")
    model = models.get(name) if isinstance(name, str) else None
    if model is None:
        fail(404, f"The model `{name}` does not exist.", "model")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        fail(400, "`prompt` must be a string.", "prompt")
    suffix = body.get("suffix")
    if flavor is Flavor.LLAMACPP:
        if "suffix" in body:
            fail(400, "Unsupported param: suffix")
        if body.get("echo"):
            fail(400, "Only no echo is supported")
    elif flavor is Flavor.VLLM and suffix is not None:
        fail(400, "suffix is not currently supported", "suffix")
    elif flavor is Flavor.OLLAMA and suffix and not model.insert:
        named = model.id if ":" in model.id else f"{model.id}:latest"
        fail(400, f"registry.ollama.ai/library/{named} does not support insert")
    tokens, finish = _tokens(model, prompt, suffix or "", body.get("max_tokens"))
    stream = body.get("stream") is True
    options = body.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    prompt_tokens = len((prompt + (suffix or "")).split()) + 1
    return Answer(str(name), model.id, stream, include_usage, tuple(tokens), "".join(tokens),
                  None, finish, prompt_tokens, len(tokens))  # fmt: skip


def plan_infill(body: object, models: dict[str, SimModel]) -> Answer:
    """Validate an ``/infill`` body as llama.cpp does and decide its answer.

    Raises:
        ChatError: the request is refused (501: the model has no FIM tokens).
    """
    model = next(iter(models.values()))  # llama.cpp serves one model
    if not model.insert:
        message = ("Infill is not supported by this model: prefix token is missing. suffix "
                   "token is missing. middle token is missing. ")  # fmt: skip
        raise ChatError(501, {"error": {"code": 501, "message": message,
                                        "type": "not_supported_error"}})  # fmt: skip
    if not isinstance(body, dict):
        raise ChatError(400, {"error": {"code": 400, "message": "Invalid JSON",
                                        "type": "invalid_request_error"}})  # fmt: skip
    prefix, suffix = str(body.get("input_prefix") or ""), str(body.get("input_suffix") or "")
    middle = str(body.get("prompt") or "")
    tokens, finish = _tokens(model, prefix + middle, suffix, body.get("n_predict"))
    prompt_tokens = len((prefix + middle + suffix).split()) + 3  # and the three FIM tokens
    return Answer(model.id, model.id, body.get("stream") is True, False, tuple(tokens),
                  "".join(tokens), None, finish, prompt_tokens, len(tokens))  # fmt: skip


@dataclass
class TextEncoder:
    """The SSE events of a streamed text completion (`_chat._stream` sends them)."""

    answer: Answer
    base: dict[str, Any]

    def first(self) -> bytes:
        return b""  # a completion has no role chunk: the first event is text

    def _event(self, text: str, finish: str | None) -> bytes:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return _data({**self.base, "choices": [choice]})

    def piece(self, text: str) -> bytes:
        return self._event(text, None)

    def last(self) -> bytes:
        out = self._event("", self.answer.finish_reason)
        if self.answer.include_usage:
            out += _data({**self.base, "choices": [], "usage": self.answer.usage()})
        return out + DONE

    def broken(self) -> bytes:
        whole = self.piece(self.answer.pieces[0] if self.answer.pieces else "x")
        return whole[: len(whole) // 2] + b"\n\n"

    def error(self, message: str) -> bytes:
        error = {"message": message, "type": "server_error", "param": None, "code": 500}
        return _data({"error": error}) + DONE


@dataclass
class InfillEncoder(TextEncoder):
    """llama.cpp's own stream: ``{"content", "stop": false}`` lines, a last one with
    ``stop: true`` and the counts, and no ``[DONE]``."""

    sent: int = 0

    def _native(self, content: str, stop: bool, predicted: int) -> dict[str, Any]:
        return {"index": 0, "content": content, "tokens": [], "stop": stop, "id_slot": 0,
                "tokens_predicted": predicted,
                "tokens_evaluated": self.answer.prompt_tokens}  # fmt: skip

    def piece(self, text: str) -> bytes:
        self.sent += 1
        return _data(self._native(text, False, self.sent))

    def last(self) -> bytes:
        final = self._native("", True, self.answer.completion_tokens)
        final.update({
            "model": self.answer.model, "stop_type": "limit" if
            self.answer.finish_reason == "length" else "eos", "stopping_word": "",
            "truncated": False, "tokens_cached": self.answer.prompt_tokens
            + self.answer.completion_tokens,
            "timings": {"prompt_n": self.answer.prompt_tokens,
                        "predicted_n": self.answer.completion_tokens},
        })  # fmt: skip
        return _data(final)

    def whole(self) -> dict[str, Any]:
        whole: dict[str, Any] = json.loads(self.last()[6:])
        whole["content"] = self.answer.content
        return whole


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _respond(backend: SimulatedBackend, request: Request, responder: Responder, *,
                   native: bool) -> None:  # fmt: skip
    taken = await received(backend, request, responder)
    if taken is None:
        return
    faults, body = taken
    plan: Callable[[], Answer] = (
        partial(plan_infill, body, backend.models_by_id)
        if native
        else partial(plan_completion, body, backend.flavor, backend.models_by_id)
    )
    try:
        answer = plan()
    except ChatError as exc:
        await responder.send_json(exc.status, exc.payload)
        return
    await backend.load(answer.served)
    fingerprint = FINGERPRINTS[backend.flavor]
    base: dict[str, Any] = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                            "created": int(time.time()), "model": answer.model}  # fmt: skip
    if fingerprint is not None:
        base["system_fingerprint"] = fingerprint
    encoder = InfillEncoder(answer, {}) if native else TextEncoder(answer, base)
    if answer.stream:
        await _stream(backend, responder, faults, answer, encoder)  # type: ignore[arg-type]
        return
    if isinstance(encoder, InfillEncoder):
        payload = encoder.whole()
    else:
        choice = {"text": answer.content, "index": 0, "logprobs": None,
                  "finish_reason": answer.finish_reason}  # fmt: skip
        payload = {**base, "choices": [choice], "usage": answer.usage()}
    await _send_whole(backend, responder, faults, payload)
