"""Anthropic Messages responses: the stream writer and the whole-message writer.

Both translate the proxy's chat chunks with `nexus_trio.dialects.anthropic_events` and
differ only in how the result goes out. Errors before anything was sent are a JSON
response ``{"type": "error", "error": {"type", "message"}, "request_id"}`` with
Anthropic's status (`anthropic_error`), ``Retry-After`` kept; after, an ``event:
error`` and the end of the stream.

The stream writer also sends a sign of life while no backend has produced a token yet
(a model loading, a long prompt being read): from the first `keep_alive` call it
starts the 200 response with ``message_start``, then sends ``ping`` events, as the
API does "while waiting" — so that clients with a read timeout (Claude Code's) keep
waiting. Such a response carries no ``X-Nexus-Backend`` headers (no backend had been
chosen), and an error after it is an ``error`` event, not a status. `keep_alive` runs
in another task, so every write that may meet it is made under one lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import trio

from nexus_trio import jsonparse
from nexus_trio.dialects.anthropic_events import (
    Event,
    MessageAssembler,
    MessageEvents,
    MessagesOrigin,
    anthropic_error,
    error_body,
    refusal_message,
)
from nexus_trio.dialects.assembly import whole_answer
from nexus_trio.dialects.base import Downstream
from nexus_trio.errors import NexusError
from nexus_trio.proxy.sse import named_event
from nexus_trio.proxy.tracker import Admitted
from nexus_trio.proxy.writer import Headers, WholeAnswer, Writer, nexus_headers
from nexus_trio.routing.requirements import ChatRequest
from nexus_trio.routing.router import Candidate

__all__ = [
    "AnthropicJSONWriter",
    "AnthropicStreamWriter",
    "answer_error",
    "error_response",
    "messages_writer",
]

# How long a whole answer, once assembled, may take to reach a slow client.
_WHOLE_WRITE_SECONDS = 10.0
_PING = named_event("ping", {"type": "ping"})


def _encode(events: Sequence[Event]) -> bytes:
    return b"".join(named_event(name, data) for name, data in events)


def _id_headers(request_id: str) -> Headers:
    # ``request-id`` is where Anthropic's SDKs read a response's id from.
    return [("request-id", request_id)]


def error_response(
    status: int, message: str, request_id: str, headers: Sequence[tuple[str, str]] = ()
) -> tuple[int, Headers, bytes]:
    """An error response in Anthropic's shape for Nexus's ``status``: its status, headers
    (``headers`` kept, such as ``Retry-After``) and body."""
    status, type_ = anthropic_error(status)
    body = jsonparse.dumps(error_body(type_, message, request_id))
    head = [
        ("content-type", "application/json"),
        ("x-request-id", request_id),
        *_id_headers(request_id),
        *headers,
    ]
    return status, head, body


async def answer_error(
    downstream: Downstream,
    status: int,
    message: str,
    request_id: str,
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    """An error response in Anthropic's shape, for Nexus's ``status`` (nothing sent yet)."""
    await downstream.respond(*error_response(status, message, request_id, headers))


class _AnthropicWriter:
    """What both writers share: the request's context, and error rendering."""

    __slots__ = ("_downstream", "_events", "_origin", "_request_id")

    def __init__(self, origin: MessagesOrigin, downstream: Downstream, request_id: str) -> None:
        self._origin = origin
        self._downstream = downstream
        self._request_id = request_id
        self._events = MessageEvents(origin)

    @property
    def sent(self) -> bool:
        return self._downstream.started

    async def note(self, text: str) -> None:
        pass  # a continuation is invisible in Anthropic's events

    def _translate(self, batch: Sequence[Admitted]) -> list[Event]:
        feed = self._events.feed
        return [event for admitted in batch for chunk in admitted.chunks for event in feed(chunk)]


class AnthropicStreamWriter(_AnthropicWriter):
    """Writes the answer as Anthropic stream events (see the module docstring)."""

    __slots__ = ("_begun", "_lock", "_started_message")

    def __init__(self, origin: MessagesOrigin, downstream: Downstream, request_id: str) -> None:
        super().__init__(origin, downstream, request_id)
        self._lock = trio.Lock()
        self._begun = False  # a backend serves the answer
        self._started_message = False  # message_start has been sent

    async def _open(self, headers: Headers) -> None:
        """The 200 head (unless sent) and ``message_start`` (unless sent)."""
        if not self._downstream.started:
            await self._downstream.start(
                200, [*headers, *_id_headers(self._request_id), ("cache-control", "no-cache")]
            )
        if not self._started_message:
            self._started_message = True
            await self._downstream.send(_encode([self._events.start()]))

    async def keep_alive(self) -> None:
        if self._begun or self._events.done:
            return
        async with self._lock:
            if self._begun or self._events.done:
                return
            if not self._started_message:
                headers: Headers = [
                    ("content-type", "text/event-stream"),
                    ("x-request-id", self._request_id),
                ]
                await self._open(headers)
            await self._downstream.send(_PING)

    async def begin(self, candidate: Candidate) -> None:
        async with self._lock:
            self._begun = True
            await self._open(nexus_headers(candidate, self._request_id, "text/event-stream"))

    async def send(self, batch: Sequence[Admitted]) -> None:
        # After begin: keep_alive no longer writes, so no lock is needed.
        events = self._translate(batch)
        if events:
            await self._downstream.send(_encode(events))

    async def end(self, usage: Mapping[str, int]) -> None:
        async with self._lock:
            await self._downstream.send(_encode(self._events.finish(usage)))
            await self._downstream.end()

    async def fail(self, error: NexusError) -> None:
        async with self._lock:
            if not self._downstream.started:
                self._events.done = True
                await answer_error(
                    self._downstream, error.status, error.message, self._request_id, error.headers()
                )
                return
            _, type_ = anthropic_error(error.status)
            await self._downstream.send(_encode(self._events.fail(type_, error.message)))
            await self._downstream.end()

    async def pass_through(self, answer: WholeAnswer) -> None:
        whole = whole_answer(answer.body) if answer.status == 200 else None
        async with self._lock:
            if whole is None:
                message = refusal_message(answer.body, answer.status)
                if not self._downstream.started:
                    self._events.done = True
                    await answer_error(self._downstream, answer.status, message, self._request_id)
                    return
                _, type_ = anthropic_error(answer.status)
                await self._downstream.send(_encode(self._events.fail(type_, message)))
                await self._downstream.end()
                return
            # A backend that ignored "stream": its whole answer, written as if streamed.
            chunks, usage = whole
            self._begun = True
            headers = nexus_headers(answer.candidate, self._request_id, "text/event-stream")
            await self._open(headers)
            events = [e for chunk in chunks for e in self._events.feed(chunk)]
            events += self._events.finish(usage)
            await self._downstream.send(_encode(events))
            await self._downstream.end()


class AnthropicJSONWriter(_AnthropicWriter):
    """Assembles the ``Message`` object and sends it whole at the end."""

    __slots__ = ("_assembler", "_candidate")

    def __init__(self, origin: MessagesOrigin, downstream: Downstream, request_id: str) -> None:
        super().__init__(origin, downstream, request_id)
        self._candidate: Candidate | None = None
        self._assembler = MessageAssembler()

    async def keep_alive(self) -> None:
        pass  # a JSON response has no sign of life before its body

    async def begin(self, candidate: Candidate) -> None:
        # Again after an answer that reached nobody was given up: start afresh.
        self._candidate = candidate
        self._events = MessageEvents(self._origin)
        self._assembler = MessageAssembler()
        self._assembler.apply([self._events.start()])

    async def send(self, batch: Sequence[Admitted]) -> None:
        self._assembler.apply(self._translate(batch))

    async def _respond(self, candidate: Candidate, usage: Mapping[str, int]) -> None:
        self._assembler.apply(self._events.finish(usage))
        body = jsonparse.dumps(self._assembler.result())
        headers = [
            *nexus_headers(candidate, self._request_id, "application/json"),
            *_id_headers(self._request_id),
        ]
        # Head and body together or not at all, bounded for a client that stopped reading.
        with trio.move_on_after(_WHOLE_WRITE_SECONDS, shield=True):
            await self._downstream.respond(200, headers, body)

    async def end(self, usage: Mapping[str, int]) -> None:
        assert self._candidate is not None, "end() before begin()"
        await self._respond(self._candidate, usage)

    async def fail(self, error: NexusError) -> None:
        if not self._downstream.started:
            await answer_error(
                self._downstream, error.status, error.message, self._request_id, error.headers()
            )
        await self._downstream.end()

    async def pass_through(self, answer: WholeAnswer) -> None:
        whole = whole_answer(answer.body) if answer.status == 200 else None
        if whole is None:
            message = refusal_message(answer.body, answer.status)
            await answer_error(self._downstream, answer.status, message, self._request_id)
            return
        chunks, usage = whole
        await self.begin(answer.candidate)
        self._assembler.apply([e for chunk in chunks for e in self._events.feed(chunk)])
        await self._respond(answer.candidate, usage)


def messages_writer(request: ChatRequest | None, downstream: Downstream, request_id: str) -> Writer:
    """The writer for a Messages request (a stream or a whole message); for a request
    that did not parse, one that writes only its error."""
    origin = request.origin if request is not None else None
    if not isinstance(origin, MessagesOrigin):
        return AnthropicJSONWriter(MessagesOrigin(model=""), downstream, request_id)
    if request is not None and request.needs.stream:
        return AnthropicStreamWriter(origin, downstream, request_id)
    return AnthropicJSONWriter(origin, downstream, request_id)
