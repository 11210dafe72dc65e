"""Ollama responses (``/api/chat``, ``/api/generate``): the NDJSON stream writer and the
whole-answer writer, and the dialects that pair them with their parsers.

Both translate the proxy's chat chunks with `nexus_trio.dialects.ollama_lines`. A stream
is ``application/x-ndjson``, one JSON object a line, the last one ``"done": true``; a
``"stream": false`` answer is that, merged into one ``application/json`` object. Errors
are Ollama's ``{"error": "message"}``: before anything was sent, as a response with the
status (404 ``model 'x' not found`` as Ollama words it, 400 for a bad body, 5xx for the
backends' failures, ``Retry-After`` kept); after, as a last line (the ollama client
raises on a line with ``error``), and the stream ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import trio

from nexus_trio import jsonparse
from nexus_trio.dialects.anthropic_events import refusal_message
from nexus_trio.dialects.assembly import whole_answer
from nexus_trio.dialects.base import Dialect, Downstream
from nexus_trio.dialects.ollama import OllamaOrigin, chat_parser, generate_parser
from nexus_trio.dialects.ollama_lines import Durations, OllamaLines, merge_lines
from nexus_trio.errors import NexusError
from nexus_trio.proxy.tracker import Admitted
from nexus_trio.proxy.writer import WholeAnswer, Writer, nexus_headers
from nexus_trio.routing.requirements import ChatRequest
from nexus_trio.routing.router import Candidate

__all__ = [
    "NDJSON",
    "OllamaJSONWriter",
    "OllamaStreamWriter",
    "error_message",
    "ollama_chat_dialect",
    "ollama_error_response",
    "ollama_generate_dialect",
]

NDJSON = "application/x-ndjson"
# How long a whole answer, once assembled, may take to reach a slow client.
_WHOLE_WRITE_SECONDS = 10.0

Json = dict[str, Any]


def _line(obj: Json) -> bytes:
    return jsonparse.dumps(obj) + b"\n"


def error_message(error: NexusError, model: str) -> str:
    """What Ollama would say: its own words for a model it does not have, else Nexus's."""
    if error.code == "model_not_found" and model:
        return f"model '{model}' not found"
    return error.message


def ollama_error_response(
    status: int, message: str, request_id: str, headers: Sequence[tuple[str, str]] = ()
) -> tuple[int, list[tuple[str, str]], bytes]:
    """An Ollama-shaped error response: status, headers, ``{"error": message}``."""
    head = [("content-type", "application/json"), ("x-request-id", request_id), *headers]
    return status, head, jsonparse.dumps({"error": message})


class _OllamaWriter:
    """What both writers share: the translation, the timings, error rendering."""

    __slots__ = ("_begun_ns", "_downstream", "_lines", "_origin", "_request_id", "_start_ns")

    def __init__(self, origin: OllamaOrigin, downstream: Downstream, request_id: str) -> None:
        self._origin = origin
        self._downstream = downstream
        self._request_id = request_id
        self._start_ns = time.perf_counter_ns()
        self._begun_ns = self._start_ns
        self._lines = self._fresh()

    def _fresh(self) -> OllamaLines:
        origin = self._origin
        return OllamaLines(origin.model, origin.shape, origin.think, clock=time.time_ns)

    @property
    def sent(self) -> bool:
        return self._downstream.started

    async def keep_alive(self) -> None:
        pass  # Ollama sends nothing before the first token

    async def note(self, text: str) -> None:
        pass  # a continuation is invisible in Ollama's lines

    def _durations(self) -> Durations:
        now = time.perf_counter_ns()
        return Durations(
            now - self._start_ns, self._begun_ns - self._start_ns, now - self._begun_ns
        )

    def _translate(self, batch: Sequence[Admitted]) -> list[Json]:
        feed = self._lines.feed
        return [line for admitted in batch for chunk in admitted.chunks for line in feed(chunk)]

    async def _answer_error(
        self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        await self._downstream.respond(
            *ollama_error_response(status, message, self._request_id, headers)
        )


class OllamaStreamWriter(_OllamaWriter):
    """Writes the answer as NDJSON lines as they come."""

    __slots__ = ()

    async def begin(self, candidate: Candidate) -> None:
        self._begun_ns = time.perf_counter_ns()
        await self._downstream.start(200, nexus_headers(candidate, self._request_id, NDJSON))

    async def send(self, batch: Sequence[Admitted]) -> None:
        lines = self._translate(batch)
        if lines:
            await self._downstream.send(b"".join(map(_line, lines)))

    async def end(self, usage: Mapping[str, int]) -> None:
        lines = self._lines.finish(usage, self._durations())
        await self._downstream.send(b"".join(map(_line, lines)))
        await self._downstream.end()

    async def fail(self, error: NexusError) -> None:
        message = error_message(error, self._origin.model)
        if not self._downstream.started:
            await self._answer_error(error.status, message, error.headers())
            return
        await self._downstream.send(_line(self._lines.fail(message)))
        await self._downstream.end()

    async def pass_through(self, answer: WholeAnswer) -> None:
        whole = whole_answer(answer.body) if answer.status == 200 else None
        if whole is None:
            message = refusal_message(answer.body, answer.status)
            if not self._downstream.started:
                await self._answer_error(answer.status, message)
                return
            await self._downstream.send(_line(self._lines.fail(message)))
            await self._downstream.end()
            return
        # A backend that ignored "stream": its whole answer, written as if streamed.
        chunks, usage = whole
        await self.begin(answer.candidate)
        lines = [line for chunk in chunks for line in self._lines.feed(chunk)]
        lines += self._lines.finish(usage, self._durations())
        await self._downstream.send(b"".join(map(_line, lines)))
        await self._downstream.end()


class OllamaJSONWriter(_OllamaWriter):
    """Gathers the lines and sends them merged into one object at the end."""

    __slots__ = ("_candidate", "_kept")

    def __init__(self, origin: OllamaOrigin, downstream: Downstream, request_id: str) -> None:
        super().__init__(origin, downstream, request_id)
        self._candidate: Candidate | None = None
        self._kept: list[Json] = []

    async def begin(self, candidate: Candidate) -> None:
        # Again after an answer that reached nobody was given up: start afresh.
        self._begun_ns = time.perf_counter_ns()
        self._candidate, self._lines, self._kept = candidate, self._fresh(), []

    async def send(self, batch: Sequence[Admitted]) -> None:
        self._kept += self._translate(batch)

    async def _respond(self, candidate: Candidate, usage: Mapping[str, int]) -> None:
        self._kept += self._lines.finish(usage, self._durations())
        body = jsonparse.dumps(merge_lines(self._kept, self._origin.shape))
        headers = nexus_headers(candidate, self._request_id, "application/json")
        # Head and body together or not at all, bounded for a client that stopped reading.
        with trio.move_on_after(_WHOLE_WRITE_SECONDS, shield=True):
            await self._downstream.respond(200, headers, body)

    async def end(self, usage: Mapping[str, int]) -> None:
        assert self._candidate is not None, "end() before begin()"
        await self._respond(self._candidate, usage)

    async def fail(self, error: NexusError) -> None:
        if not self._downstream.started:
            message = error_message(error, self._origin.model)
            await self._answer_error(error.status, message, error.headers())
        await self._downstream.end()

    async def pass_through(self, answer: WholeAnswer) -> None:
        whole = whole_answer(answer.body) if answer.status == 200 else None
        if whole is None:
            await self._answer_error(answer.status, refusal_message(answer.body, answer.status))
            return
        chunks, usage = whole
        await self.begin(answer.candidate)
        self._kept = [line for chunk in chunks for line in self._lines.feed(chunk)]
        await self._respond(answer.candidate, usage)


def ollama_writer(request: ChatRequest | None, downstream: Downstream, request_id: str) -> Writer:
    """The writer for an Ollama request (a stream or one object); for a request that did
    not parse, one that writes only its error."""
    origin = request.origin if request is not None else None
    if not isinstance(origin, OllamaOrigin):
        return OllamaJSONWriter(OllamaOrigin(model=""), downstream, request_id)
    if request is not None and request.needs.stream:
        return OllamaStreamWriter(origin, downstream, request_id)
    return OllamaJSONWriter(origin, downstream, request_id)


def ollama_chat_dialect(known: Callable[[], Collection[str]]) -> Dialect:
    """``POST /api/chat``; ``known()`` are the names a model may be asked by (models and
    aliases), for ``:latest`` either way (`nexus_trio.dialects.ollama.resolve_model_name`)."""
    return Dialect(api="ollama_chat", parse=chat_parser(known), writer=ollama_writer)


def ollama_generate_dialect(known: Callable[[], Collection[str]]) -> Dialect:
    """``POST /api/generate`` as a chat turn (see `ollama_chat_dialect`)."""
    return Dialect(api="ollama_generate", parse=generate_parser(known), writer=ollama_writer)
