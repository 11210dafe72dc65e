"""The legacy completion's answer: ``text_completion`` chunks relayed, or one object.

The stream is the backend's own bytes (as `OpenAIStreamWriter` relays chat), with
the prompt sent first as text when the client asked for ``echo``. The whole answer is
``{id, object: "text_completion", created, model, choices: [{index, text,
finish_reason, logprobs}], usage}``, assembled from the same chunks. Errors are
OpenAI's, as for chat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from nexus_trio import jsonparse
from nexus_trio.dialects.base import Downstream
from nexus_trio.dialects.openai_chat import OpenAIJSONWriter, OpenAIStreamWriter
from nexus_trio.proxy.sse import data_event
from nexus_trio.proxy.tracker import Admitted
from nexus_trio.proxy.writer import Writer, nexus_headers
from nexus_trio.routing.requirements import ChatRequest
from nexus_trio.routing.router import Candidate

__all__ = [
    "CompletionAssembler",
    "CompletionJSONWriter",
    "CompletionOrigin",
    "CompletionStreamWriter",
    "completion_writer",
]

# How long a whole answer, once assembled, may take to reach a slow client.
_WHOLE_WRITE_SECONDS = 10.0
_LOGPROB_LISTS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


@dataclass(frozen=True, slots=True)
class CompletionOrigin:
    """What the writers need of the client's request."""

    prompt: str
    echo: bool  # put the prompt before the answer's text


class CompletionAssembler:
    """Adds up ``text_completion`` chunks into the one object a non-streaming client
    gets."""

    __slots__ = ("_finish", "_head", "_logprobs", "_text")

    def __init__(self, echo: str = "") -> None:
        self._head: dict[str, Any] = {}
        self._text: list[str] = [echo] if echo else []
        self._finish: Any = None
        self._logprobs: dict[str, list[Any]] | None = None

    def add(self, chunk: Mapping[str, Any]) -> None:
        if not self._head:
            self._head = {k: chunk.get(k) for k in ("id", "created", "model")}
            if chunk.get("system_fingerprint") is not None:
                self._head["system_fingerprint"] = chunk["system_fingerprint"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            text = choice.get("text")
            if isinstance(text, str):
                self._text.append(text)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict):
                merged = self._logprobs if self._logprobs is not None else {}
                for key in _LOGPROB_LISTS:
                    if isinstance(logprobs.get(key), list):
                        merged.setdefault(key, []).extend(logprobs[key])
                self._logprobs = merged

    def completion(self, usage: Mapping[str, int]) -> dict[str, Any]:
        choice = {"index": 0, "text": "".join(self._text), "logprobs": self._logprobs,
                  "finish_reason": self._finish or "stop"}  # fmt: skip
        head = self._head
        out: dict[str, Any] = {
            "id": head.get("id"),
            "object": "text_completion",
            "created": head.get("created"),
            "model": head.get("model"),
        }
        if "system_fingerprint" in head:
            out["system_fingerprint"] = head["system_fingerprint"]
        out["choices"] = [choice]
        if usage:
            out["usage"] = dict(usage)
        return out


class CompletionStreamWriter(OpenAIStreamWriter):
    """Relays the ``text_completion`` stream; with ``echo``, the prompt goes first, in a
    chunk of the answer's id."""

    __slots__ = ("_echo",)

    def __init__(self, downstream: Downstream, request_id: str, echo: str) -> None:
        super().__init__(downstream, request_id)
        self._echo = echo

    async def send(self, batch: Sequence[Admitted]) -> None:
        if self._echo:
            first = next((c for a in batch for c in a.chunks if c.get("choices")), None)
            if first is not None:
                echoed = {k: first.get(k) for k in ("id", "object", "created", "model")}
                echoed["choices"] = [{"index": 0, "text": self._echo, "logprobs": None,
                                      "finish_reason": None}]  # fmt: skip
                self._echo = ""
                await self._downstream.send(data_event(echoed))
        await super().send(batch)


class CompletionJSONWriter(OpenAIJSONWriter):
    """Assembles the ``text_completion`` object and sends it whole at the end."""

    __slots__ = ("_echo", "_text")

    def __init__(self, downstream: Downstream, request_id: str, echo: str) -> None:
        super().__init__(downstream, request_id)
        self._echo = echo
        self._text = CompletionAssembler(echo)

    async def begin(self, candidate: Candidate) -> None:
        # Again after an answer that reached nobody was given up: start afresh.
        self._candidate, self._text = candidate, CompletionAssembler(self._echo)

    async def send(self, batch: Sequence[Admitted]) -> None:
        add = self._text.add
        for admitted in batch:
            for chunk in admitted.chunks:
                add(chunk)

    async def end(self, usage: Mapping[str, int]) -> None:
        assert self._candidate is not None, "end() before begin()"
        body = jsonparse.dumps(self._text.completion(usage))
        headers = nexus_headers(self._candidate, self._request_id, "application/json")
        with trio.move_on_after(_WHOLE_WRITE_SECONDS, shield=True):
            await self._downstream.respond(200, headers, body)


def completion_writer(request: ChatRequest | None, downstream: Downstream,
                      request_id: str) -> Writer:  # fmt: skip
    """The writer for a completion request (None: only an error will be written)."""
    origin = request.origin if request is not None else None
    echo = origin.prompt if isinstance(origin, CompletionOrigin) and origin.echo else ""
    if request is not None and request.needs.stream:
        return CompletionStreamWriter(downstream, request_id, echo)
    return CompletionJSONWriter(downstream, request_id, echo)
