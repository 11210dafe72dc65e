"""The OpenAI Responses dialect (``POST /v1/responses``): its writers, and `responses_dialect`.

The request becomes a chat request in `nexus_trio.dialects.responses`; the answer,
read from the backend as a chat stream, becomes Responses events in
`nexus_trio.dialects.responses_output`. Here they meet the client:

- `ResponsesStreamWriter` (``stream: true``): ``event: <type>`` / ``data: <json>`` pairs,
  no ``[DONE]``. ``response.created`` goes out at the commit point (the first token), so a
  failure before it is still an OpenAI-shaped error with its status; after it, a failure
  that cannot be continued ends the stream with ``response.failed``.
- `ResponsesJSONWriter`: the Response object, whole, at the end.

Neither has a sign of life to send while the answer is prepared (`Writer.keep_alive`):
OpenAI's stream has no ping event, and an SSE comment would first need the response head,
which would fix the status at 200 before Nexus knows whether a backend answers. Clients
wait long enough (Codex: 300 s of silence) for the first-token deadlines to act first.

A backend's own refusal is passed on as OpenAI error JSON with its status (Ollama's native
``{"error": "text"}`` made OpenAI-shaped); a backend that answered a whole completion
instead of a stream is written as if it had streamed it (`whole_answer`).

Finished responses (completed or incomplete, unless the request said ``store: false``) are
kept in the app's `ResponseStore`, for ``previous_response_id`` and
``GET /v1/responses/{id}``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from nexus_trio import jsonparse
from nexus_trio.config import RoutingSettings
from nexus_trio.dialects.assembly import whole_answer
from nexus_trio.dialects.base import Dialect, Downstream
from nexus_trio.dialects.openai_chat import answer_error
from nexus_trio.dialects.response_store import KeptResponse, ResponseStore
from nexus_trio.dialects.responses import ResponsesOrigin, parse_responses_request
from nexus_trio.dialects.responses_output import Event, ResponseBuilder
from nexus_trio.errors import NexusError, error_body
from nexus_trio.proxy.sse import named_event
from nexus_trio.proxy.tracker import Admitted
from nexus_trio.proxy.writer import WholeAnswer, Writer, nexus_headers
from nexus_trio.routing.requirements import ChatRequest
from nexus_trio.routing.router import Candidate

__all__ = ["ResponsesJSONWriter", "ResponsesStreamWriter", "responses_dialect"]

# How long a whole answer, once assembled, may take to reach a slow client.
_WHOLE_WRITE_SECONDS = 10.0
# Nexus's error codes a Responses client knows by OpenAI's name (Codex acts on these:
# it waits and retries on a rate limit, and stops on a full context window).
_OPENAI_CODES = {"rate_limited": "rate_limit_exceeded",
                 "context_length_exceeded": "context_length_exceeded"}  # fmt: skip


def _failure_code(error: NexusError) -> str:
    return _OPENAI_CODES.get(error.code or "", "server_error")


class _ResponsesWriter:
    """What both writers share: the builder, the store, refusals, whole answers."""

    __slots__ = ("_builder", "_candidate", "_downstream", "_origin", "_request_id", "_shell",
                 "_store")  # fmt: skip

    def __init__(
        self,
        origin: ResponsesOrigin,
        store: ResponseStore,
        downstream: Downstream,
        request_id: str,
    ) -> None:
        self._origin, self._store = origin, store
        self._downstream, self._request_id = downstream, request_id
        self._shell = {"id": f"resp_{uuid.uuid4().hex}", "model": origin.model, **origin.echo,
                       "background": False}  # fmt: skip
        self._builder = ResponseBuilder(self._shell)
        self._candidate: Candidate | None = None

    @property
    def sent(self) -> bool:
        return self._downstream.started

    async def keep_alive(self) -> None:
        pass  # see the module docstring

    async def note(self, text: str) -> None:
        pass  # the Responses stream has no place for it

    async def begin(self, candidate: Candidate) -> None:
        # Again (not streamed) after an answer that reached nobody was given up: afresh.
        self._candidate, self._builder = candidate, ResponseBuilder(self._shell)

    async def send(self, batch: Sequence[Admitted]) -> None:
        add = self._builder.add
        for admitted in batch:
            for chunk in admitted.chunks:
                add(chunk)

    async def end(self, usage: Mapping[str, int]) -> None:
        raise NotImplementedError

    async def pass_through(self, answer: WholeAnswer) -> None:
        if answer.status != 200:
            await self._downstream.respond(
                answer.status,
                nexus_headers(answer.candidate, self._request_id, "application/json"),
                _openai_error(answer),
            )
            return
        chunks, usage = whole_answer(answer.body) or ([], {})
        await self.begin(answer.candidate)
        await self.send([Admitted(chunks=tuple(chunks))])
        await self.end(usage)

    def _keep(self, response: dict[str, Any]) -> None:
        """Keep the finished response for the next turn, unless the client said not to."""
        if self._origin.store:
            conversation = (*self._origin.conversation, self._builder.chat_message())
            self._store.keep(response["id"], KeptResponse(response, conversation))


class ResponsesStreamWriter(_ResponsesWriter):
    """Writes the answer as Responses stream events as it comes."""

    __slots__ = ()

    async def begin(self, candidate: Candidate) -> None:
        await super().begin(candidate)
        headers = nexus_headers(candidate, self._request_id, "text/event-stream")
        await self._downstream.start(200, [*headers, ("cache-control", "no-cache")])
        await self._write(self._builder.start())

    async def send(self, batch: Sequence[Admitted]) -> None:
        add = self._builder.add
        events: list[Event] = []
        for admitted in batch:
            for chunk in admitted.chunks:
                events += add(chunk)
        if events:
            await self._write(events)

    async def end(self, usage: Mapping[str, int]) -> None:
        events = self._builder.finish(usage)
        self._keep(events[-1]["response"])
        await self._write(events)
        await self._downstream.end()

    async def fail(self, error: NexusError) -> None:
        if not self._downstream.started:
            await answer_error(self._downstream, error, self._request_id)
            return
        await self._write(self._builder.fail(_failure_code(error), error.message))
        await self._downstream.end()

    async def _write(self, events: list[Event]) -> None:
        await self._downstream.send(b"".join(named_event(e["type"], e) for e in events))


class ResponsesJSONWriter(_ResponsesWriter):
    """Builds the Response object and sends it whole at the end."""

    __slots__ = ()

    async def end(self, usage: Mapping[str, int]) -> None:
        assert self._candidate is not None, "end() before begin()"
        self._builder.finish(usage)
        response = self._builder.response()
        self._keep(response)
        headers = nexus_headers(self._candidate, self._request_id, "application/json")
        # Head and body together or not at all (as the OpenAI JSON writer), bounded.
        with trio.move_on_after(_WHOLE_WRITE_SECONDS, shield=True):
            await self._downstream.respond(200, headers, jsonparse.dumps(response))

    async def fail(self, error: NexusError) -> None:
        if not self._downstream.started:
            await answer_error(self._downstream, error, self._request_id)
        await self._downstream.end()


class _ErrorWriter:
    """The writer of a request that never parsed: it only ever writes an error."""

    __slots__ = ("_downstream", "_request_id")

    def __init__(self, downstream: Downstream, request_id: str) -> None:
        self._downstream, self._request_id = downstream, request_id

    @property
    def sent(self) -> bool:
        return self._downstream.started

    async def begin(self, candidate: Candidate) -> None:
        raise AssertionError("a request that did not parse has no answer")

    async def send(self, batch: Sequence[Admitted]) -> None:
        raise AssertionError("a request that did not parse has no answer")

    async def keep_alive(self) -> None:
        pass

    async def note(self, text: str) -> None:
        pass

    async def end(self, usage: Mapping[str, int]) -> None:
        await self._downstream.end()

    async def fail(self, error: NexusError) -> None:
        if not self._downstream.started:
            await answer_error(self._downstream, error, self._request_id)
        await self._downstream.end()

    async def pass_through(self, answer: WholeAnswer) -> None:
        raise AssertionError("a request that did not parse has no answer")


def _parsed(body: bytes) -> Any:
    try:
        return jsonparse.loads(body)
    except (ValueError, RecursionError):
        return None


def _openai_error(answer: WholeAnswer) -> bytes:
    """A backend's refusal as OpenAI error JSON: as it came when it already is, else its
    message in that shape (Ollama's ``{"error": "text"}``, a plain-text body)."""
    body = _parsed(answer.body)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return answer.body
    if isinstance(error, str):
        message = error
    else:
        message = answer.body[:2000].decode("utf-8", "replace").strip() or (
            f"The backend refused the request with HTTP {answer.status}."
        )
    type_ = "invalid_request_error" if answer.status < 500 else "server_error"
    return jsonparse.dumps(error_body(message, type_))


def responses_dialect(store: ResponseStore) -> Dialect:
    """The Responses API at the front door, keeping its answers in ``store``.

    Example: ``inference["/v1/responses"] = responses_dialect(ResponseStore(1000))``.
    """

    def parse(body: bytes, routing: RoutingSettings) -> ChatRequest:
        return parse_responses_request(body, routing, store)

    def writer(chat: ChatRequest | None, downstream: Downstream, request_id: str) -> Writer:
        origin = chat.origin if chat is not None else None
        if chat is None or not isinstance(origin, ResponsesOrigin):
            return _ErrorWriter(downstream, request_id)
        if chat.needs.stream:
            return ResponsesStreamWriter(origin, store, downstream, request_id)
        return ResponsesJSONWriter(origin, store, downstream, request_id)

    return Dialect(api="responses", parse=parse, writer=writer)
