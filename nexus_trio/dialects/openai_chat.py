"""OpenAI chat completions (``POST /v1/chat/completions``): the dialect every backend
speaks, so parsing is validation and writing is (nearly) passing through.

`parse_chat_request` checks only the fields routing needs; everything else in the
body is the backend's business and is forwarded untouched. Checking a field means
naming it when it is wrong, so the client learns what to fix (``param``).

Two writers: `OpenAIStreamWriter` relays the upstream SSE bytes (the tracker's
output) to a client that asked for a stream; `OpenAIJSONWriter` assembles the one
``chat.completion`` object a client that did not ask for one expects
(`nexus_trio.dialects.assembly`). Errors are OpenAI's
``{"error": {"message", "type", "param", "code"}}``, as a response before the first
byte, as a ``data:`` event on a stream after it (the SDKs raise on it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from nexus_trio import jsonparse
from nexus_trio.config import RoutingSettings
from nexus_trio.dialects.assembly import ChatAssembler
from nexus_trio.dialects.base import Dialect, Downstream, load_object
from nexus_trio.errors import NexusError, RequestError
from nexus_trio.proxy.sse import comment_event, data_event
from nexus_trio.proxy.tracker import Admitted
from nexus_trio.proxy.writer import WholeAnswer, Writer, nexus_headers
from nexus_trio.routing.requirements import ChatRequest, Requirements
from nexus_trio.routing.router import Candidate

__all__ = [
    "CHAT",
    "OpenAIJSONWriter",
    "OpenAIStreamWriter",
    "answer_error",
    "chat_requirements",
    "optional_positive_int",
    "parse_chat_request",
]

# A rough, deliberately low estimate of tokens per byte of prompt text: too high
# would refuse requests a backend could serve; the backend has the last word.
BYTES_PER_TOKEN = 4
# How long a whole answer, once assembled, may take to reach a slow client.
_WHOLE_WRITE_SECONDS = 10.0


def _invalid(message: str, param: str | None) -> RequestError:
    return RequestError(message, param=param)


def optional_positive_int(payload: dict[str, Any], name: str) -> int:
    """``payload[name]`` when it is a positive integer, 0 when absent.

    Raises:
        RequestError: it is something else; the error names it.
    """
    value = payload.get(name)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _invalid(f"'{name}' must be a positive integer, got {value!r:.40}.", name)
    return value


def _content_needs(messages: list[Any]) -> tuple[bool, int]:
    """(has an image, bytes of text) over every message's content."""
    vision = False
    text_bytes = 0
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"messages[{index}] must be an object.", f"messages[{index}]")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise _invalid(
                f"messages[{index}].role must be a string such as 'user'.",
                f"messages[{index}].role",
            )
        content = message.get("content")
        if isinstance(content, str):
            text_bytes += len(content)
        elif isinstance(content, list):
            for part_index, part in enumerate(content):
                if not isinstance(part, dict):
                    raise _invalid(
                        f"messages[{index}].content[{part_index}] must be an object.",
                        f"messages[{index}].content[{part_index}]",
                    )
                kind = part.get("type")
                if kind in ("image_url", "input_image", "image"):
                    vision = True
                elif isinstance(part.get("text"), str):
                    text_bytes += len(part["text"])
        elif content is not None:
            raise _invalid(
                f"messages[{index}].content must be a string, an array of parts, or null.",
                f"messages[{index}].content",
            )
    return vision, text_bytes


def parse_chat_request(body: bytes, routing: RoutingSettings) -> ChatRequest:
    """Validate a ``POST /v1/chat/completions`` body; the request that goes upstream.

    The upstream body asks for a stream with usage (``stream_options.include_usage``),
    whatever the client asked, unless the answer could not be assembled from one
    (``n`` > 1, ``logprobs``) or ``routing.stream_upstream`` is off for non-streaming
    requests: then the client's bytes go as they came.

    Raises:
        RequestError: the body is not JSON, or a field routing relies on is wrong;
            the error names the field.
    """
    payload = load_object(body, "'model' and 'messages'")

    model = payload.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("'model' is required and must be a non-empty string.", "model")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' is required and must be a non-empty array.", "messages")
    stream = payload.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _invalid(f"'stream' must be true or false, got {stream!r:.40}.", "stream")

    stop = payload.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _invalid("'stop' must be a string or an array of strings.", "stop")

    tools = payload.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _invalid("'tools' must be an array of tool definitions.", "tools")
    response_format = payload.get("response_format")
    if response_format is not None and not isinstance(response_format, dict):
        raise _invalid(
            '\'response_format\' must be an object such as {"type": "json_object"}.',
            "response_format",
        )

    needs = chat_requirements(payload, model, stream)
    if not stream and not (routing.stream_upstream and _assemblable(payload)):
        return ChatRequest(body=body, payload=payload, needs=needs)
    options = payload.get("stream_options")
    if stream and options is not None and not isinstance(options, dict):
        raise _invalid(
            "'stream_options' must be an object such as {\"include_usage\": true}.",
            "stream_options",
        )
    client_wants_usage = stream and isinstance(options, dict) and options.get("include_usage")
    if client_wants_usage is True:
        return ChatRequest(body=body, payload=payload, needs=needs, streamed_upstream=True)
    kept = options if stream and isinstance(options, dict) else {}
    asking = {**payload, "stream": True, "stream_options": {**kept, "include_usage": True}}
    if _SPLICEABLE.isdisjoint(payload) or (stream and "stream_options" not in payload):
        if json.detect_encoding(body).startswith("utf-8"):
            # The client's bytes, with what it lacks spliced in front: no re-encoding.
            splice = _ASK_FOR_USAGE if stream else _ASK_FOR_STREAM
            start = body.index(b"{") + 1
            body = body[:start] + splice + body[start:]
        else:  # UTF-16/32, as JSON allows
            body = json.dumps(asking).encode()
    else:  # a key would be there twice: written afresh (jsonparse keeps every value exact)
        body = json.dumps(asking).encode()
    return ChatRequest(body=body, payload=asking, needs=needs, streamed_upstream=True,
                       client_wants_usage=False)  # fmt: skip


def chat_requirements(payload: dict[str, Any], model: str, stream: bool) -> Requirements:
    """What a backend must offer to answer the chat request ``payload`` (already checked:
    ``messages`` a list, ``tools`` a list or absent): vision for an image part, tools
    unless ``tool_choice`` is "none", JSON output, and a context that holds the prompt
    (estimated) and the requested completion.

    Raises:
        RequestError: a message, or ``max_tokens``, is not well formed.
    """
    completion = max(
        optional_positive_int(payload, "max_tokens"),
        optional_positive_int(payload, "max_completion_tokens"),
    )
    response_format = payload.get("response_format")
    wants_json = isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )
    vision, text_bytes = _content_needs(payload["messages"])
    return Requirements(
        model=model,
        stream=stream,
        vision=vision,
        tools=bool(payload.get("tools")) and payload.get("tool_choice") != "none",
        json=wants_json,
        context_tokens=text_bytes // BYTES_PER_TOKEN + completion,
    )


def _assemblable(payload: dict[str, Any]) -> bool:
    """Whether a whole answer to ``payload`` can be assembled from a stream of it: one
    choice, and no log probabilities (they stay the backend's own shape)."""
    return payload.get("n") in (None, 1) and not payload.get("logprobs")


_SPLICEABLE = frozenset({"stream", "stream_options"})
_ASK_FOR_USAGE = b'"stream_options":{"include_usage":true},'
_ASK_FOR_STREAM = b'"stream":true,"stream_options":{"include_usage":true},'


async def answer_error(downstream: Downstream, error: NexusError, request_id: str) -> None:
    """``error`` as an OpenAI-shaped JSON response with its status (nothing sent yet)."""
    headers = [("content-type", "application/json"), ("x-request-id", request_id)]
    await downstream.respond(error.status, [*headers, *error.headers()], error.to_json())


class _OpenAIWriter:
    """What both OpenAI writers do alike."""

    __slots__ = ("_downstream", "_request_id")

    def __init__(self, downstream: Downstream, request_id: str) -> None:
        self._downstream = downstream
        self._request_id = request_id

    @property
    def sent(self) -> bool:
        return self._downstream.started

    async def keep_alive(self) -> None:
        pass

    async def note(self, text: str) -> None:
        pass

    async def pass_through(self, answer: WholeAnswer) -> None:
        headers = nexus_headers(answer.candidate, self._request_id, answer.content_type)
        await self._downstream.respond(answer.status, headers, answer.body)


class OpenAIStreamWriter(_OpenAIWriter):
    """Relays the stream: the backend's bytes as they came, Nexus's own where it had to
    write them (a continuation)."""

    __slots__ = ()

    async def begin(self, candidate: Candidate) -> None:
        headers = nexus_headers(candidate, self._request_id, "text/event-stream")
        await self._downstream.start(200, [*headers, ("cache-control", "no-cache")])

    async def send(self, batch: Sequence[Admitted]) -> None:
        await self._downstream.send(b"".join(admitted.relay for admitted in batch))

    async def note(self, text: str) -> None:
        await self._downstream.send(comment_event(text))

    async def end(self, usage: Mapping[str, int]) -> None:
        await self._downstream.end()

    async def fail(self, error: NexusError) -> None:
        if not self._downstream.started:
            await answer_error(self._downstream, error, self._request_id)
            return
        await self._downstream.send(data_event(error.to_dict()))
        await self._downstream.end()


class OpenAIJSONWriter(_OpenAIWriter):
    """Assembles the ``chat.completion`` object and sends it whole at the end."""

    __slots__ = ("_assembler", "_candidate")

    def __init__(self, downstream: Downstream, request_id: str) -> None:
        super().__init__(downstream, request_id)
        self._candidate: Candidate | None = None
        self._assembler = ChatAssembler()

    async def begin(self, candidate: Candidate) -> None:
        # Again after an answer that reached nobody was given up: start afresh.
        self._candidate, self._assembler = candidate, ChatAssembler()

    async def send(self, batch: Sequence[Admitted]) -> None:
        add = self._assembler.add
        for admitted in batch:
            for chunk in admitted.chunks:
                add(chunk)

    async def end(self, usage: Mapping[str, int]) -> None:
        assert self._candidate is not None, "end() before begin()"
        body = jsonparse.dumps(self._assembler.completion(usage))
        headers = nexus_headers(self._candidate, self._request_id, "application/json")
        # Head and body go out together or not at all: a deadline landing between them
        # would leave a response with a length and no body. Bounded, for a client that
        # stopped reading.
        with trio.move_on_after(_WHOLE_WRITE_SECONDS, shield=True):
            await self._downstream.respond(200, headers, body)

    async def fail(self, error: NexusError) -> None:
        if not self._downstream.started:
            await answer_error(self._downstream, error, self._request_id)
        await self._downstream.end()


def _writer(request: ChatRequest | None, downstream: Downstream, request_id: str) -> Writer:
    if request is not None and request.needs.stream:
        return OpenAIStreamWriter(downstream, request_id)
    return OpenAIJSONWriter(downstream, request_id)


CHAT = Dialect(api="chat", parse=parse_chat_request, writer=_writer)
