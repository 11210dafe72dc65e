"""Anthropic Messages answers built from the upstream chat stream (pure, no I/O).

`MessageEvents` reads the ``chat.completion.chunk`` objects of an answer and says
which Anthropic stream events they become
(https://docs.anthropic.com/en/docs/build-with-claude/streaming): ``message_start``;
per content block ``content_block_start``, its deltas (``thinking_delta`` from the
backend's ``reasoning_content`` or ``reasoning``, ``text_delta``, ``input_json_delta``
for tool arguments) and ``content_block_stop``; then ``message_delta`` (stop reason,
usage) and ``message_stop``; or, when the answer fails, ``error``. Blocks are numbered
from 0 in the order they start and one is open at a time, as the API does; the SDKs
index their snapshot by that number. A tool call starts a new block when its delta
carries a new ``index`` or a new ``id`` (Ollama streams every parallel call at index
0, each with its own id).

`MessageAssembler` folds the same events into the whole ``Message`` a client that did
not stream gets, so both shapes say the same thing. Errors are mapped to Anthropic's
statuses and types by `anthropic_error`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nexus_trio.dialects.anthropic_ids import client_tool_id, generated_tool_id

__all__ = [
    "Event",
    "MessageAssembler",
    "MessageEvents",
    "MessagesOrigin",
    "anthropic_error",
    "error_body",
    "refusal_message",
]

Json = dict[str, Any]
Event = tuple[str, Json]  # (event name, data); the name is also the data's "type"

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_FINISH_TO_STOP = {
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


@dataclass(frozen=True, slots=True)
class MessagesOrigin:
    """What the writer needs of the client's request (`ChatRequest.origin`)."""

    model: str  # the name the client asked for: the answer's ``model``
    stop_sequences: tuple[str, ...] = ()


def anthropic_error(status: int) -> tuple[int, str]:
    """The status and error type an Anthropic client gets for one of Nexus's statuses.

    503 (no backend can take the request now) is Anthropic's 529 ``overloaded_error``,
    which the SDKs retry; 502 (a backend failed) stays 502 as an ``api_error``, as a
    gateway's own failure is not Anthropic's 500; other 4xx are ``invalid_request_error``
    and other 5xx ``api_error``, with their own status.
    """
    if status == 503:
        return 529, "overloaded_error"
    if status in _ERROR_TYPES:
        return status, _ERROR_TYPES[status]
    return status, "invalid_request_error" if status < 500 else "api_error"


def error_body(type_: str, message: str, request_id: str | None = None) -> Json:
    """Anthropic's error object: ``{"type": "error", "error": {"type", "message"}}``, with
    the request id in a response (not in a stream's ``error`` event)."""
    body: Json = {"type": "error", "error": {"type": type_, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def refusal_message(body: bytes, status: int) -> str:
    """What a backend's refusal says: OpenAI's ``{"error": {"message"}}``, Ollama's
    ``{"error": "..."}``, Anthropic's own shape, or its text."""
    try:
        parsed = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()
        return text[:2000] or f"The backend answered HTTP {status}."
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return str(parsed["message"])
    return f"The backend answered HTTP {status}: {body[:2000].decode('utf-8', 'replace')}"


def _usage(usage: Mapping[str, int]) -> Json:
    out: Json = {"output_tokens": int(usage.get("completion_tokens", 0) or 0)}
    if "prompt_tokens" in usage:
        out["input_tokens"] = int(usage["prompt_tokens"] or 0)
    return out


@dataclass(slots=True)
class MessageEvents:
    """The Anthropic stream events of one answer (see the module docstring).

    Call `start` first, `feed` per upstream chunk, then `finish` (the answer is
    complete) or `fail` (it is not); each returns the events to send, in order.
    """

    origin: MessagesOrigin
    id: str = field(default_factory=lambda: "msg_" + uuid.uuid4().hex[:24])
    blocks: int = 0  # content blocks started so far
    open: str | None = None  # the type of the open block
    tool_index: int | None = None  # the open tool call: its upstream index and id
    tool_id: str | None = None
    called: bool = False  # a tool_use block was started
    finish_reason: str | None = None
    matched_stop: str | None = None  # the stop sequence that ended the answer
    done: bool = False

    def start(self) -> Event:
        """``message_start``: the message with no content yet. Its usage is zero: the
        prompt's count arrives with the backend's last chunk, in ``message_delta``."""
        message: Json = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.origin.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return "message_start", {"type": "message_start", "message": message}

    def _close(self, out: list[Event]) -> None:
        if self.open is not None:
            out.append(
                ("content_block_stop", {"type": "content_block_stop", "index": self.blocks - 1})
            )
            self.open = None

    def _open(self, block: Json, out: list[Event]) -> None:
        self._close(out)
        out.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": self.blocks, "content_block": block},
            )
        )
        self.blocks += 1
        self.open = block["type"]

    def _delta(self, delta: Json, out: list[Event]) -> None:
        out.append(
            (
                "content_block_delta",
                {"type": "content_block_delta", "index": self.blocks - 1, "delta": delta},
            )
        )

    def _text(self, kind: str, text: str, out: list[Event]) -> None:
        if self.open != kind:
            block = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {"type": "thinking", "thinking": "", "signature": ""}
            )
            self._open(block, out)
        if kind == "text":
            self._delta({"type": "text_delta", "text": text}, out)
        else:
            self._delta({"type": "thinking_delta", "thinking": text}, out)

    def _tool_calls(self, calls: list[Any], out: list[Event]) -> None:
        for position, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            index = call.get("index")
            index = index if isinstance(index, int) and not isinstance(index, bool) else position
            call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else None
            function = call.get("function")
            function = function if isinstance(function, dict) else {}
            if (
                self.open != "tool_use"
                or index != self.tool_index
                or (call_id is not None and call_id != self.tool_id)
            ):
                name = function.get("name")
                block = {
                    "type": "tool_use",
                    "id": client_tool_id(call_id) if call_id else generated_tool_id(),
                    "name": name if isinstance(name, str) else "",
                    "input": {},
                }
                self._open(block, out)
                self.tool_index, self.tool_id, self.called = index, call_id, True
            elif call_id is not None:
                self.tool_id = call_id
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                self._delta({"type": "input_json_delta", "partial_json": arguments}, out)

    def feed(self, chunk: Mapping[str, Any]) -> list[Event]:
        """The events one upstream chunk makes (often one, maybe none)."""
        out: list[Event] = []
        choices = chunk.get("choices")
        if self.done or not isinstance(choices, list):
            return out
        for choice in choices:  # one choice: Nexus asks for one
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                # vLLM has sent both names for the same text: one is read.
                reasoning = delta.get("reasoning_content")
                if not isinstance(reasoning, str) or not reasoning:
                    reasoning = delta.get("reasoning")
                if isinstance(reasoning, str) and reasoning:
                    self._text("thinking", reasoning, out)
                for key in ("content", "refusal"):
                    text = delta.get(key)
                    if isinstance(text, str) and text:
                        self._text("text", text, out)
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    self._tool_calls(calls, out)
            finish = choice.get("finish_reason")
            if isinstance(finish, str) and finish:
                self.finish_reason = finish
                # vLLM names the stop string that matched in the choice's "stop_reason".
                matched = choice.get("stop_reason")
                if isinstance(matched, str) and matched in self.origin.stop_sequences:
                    self.matched_stop = matched
        return out

    @property
    def stop_reason(self) -> str:
        """Anthropic's ``stop_reason`` for the upstream ``finish_reason``."""
        mapped = _FINISH_TO_STOP.get(self.finish_reason or "")
        if mapped is not None:
            return mapped
        if self.called:  # a server that says "stop" after a tool call
            return "tool_use"
        return "stop_sequence" if self.matched_stop is not None else "end_turn"

    def finish(self, usage: Mapping[str, int]) -> list[Event]:
        """The closing events: the open block's stop, ``message_delta`` (stop reason,
        cumulative usage) and ``message_stop``."""
        out: list[Event] = []
        if self.done:
            return out
        self._close(out)
        stop_reason = self.stop_reason
        delta = {
            "stop_reason": stop_reason,
            "stop_sequence": self.matched_stop if stop_reason == "stop_sequence" else None,
        }
        out.append(
            ("message_delta", {"type": "message_delta", "delta": delta, "usage": _usage(usage)})
        )
        out.append(("message_stop", {"type": "message_stop"}))
        self.done = True
        return out

    def fail(self, type_: str, message: str) -> list[Event]:
        """The open block's stop, then one ``error`` event: the answer ends incomplete."""
        out: list[Event] = []
        if self.done:
            return out
        self._close(out)
        out.append(("error", error_body(type_, message)))
        self.done = True
        return out


def _tool_input(text: str) -> Any:
    """A tool call's ``input`` from its joined arguments. Arguments that are not a JSON
    object (a model that wrote broken JSON) become ``{}``: the client then checks the
    input against the tool's schema and tells the model what is missing, as for any
    wrong call, rather than the whole answer failing."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(slots=True)
class MessageAssembler:
    """Folds `MessageEvents`' events into the whole ``Message`` object."""

    message: Json | None = None
    arguments: dict[int, list[str]] = field(default_factory=dict)

    def apply(self, events: Sequence[Event]) -> None:
        for name, data in events:
            if name == "message_start":
                self.message = {**data["message"], "content": []}
                self.arguments = {}
                continue
            assert self.message is not None, "message_start first"
            content: list[Json] = self.message["content"]
            if name == "content_block_start":
                content.append(dict(data["content_block"]))
            elif name == "content_block_delta":
                block, delta = content[data["index"]], data["delta"]
                if delta["type"] == "text_delta":
                    block["text"] += delta["text"]
                elif delta["type"] == "thinking_delta":
                    block["thinking"] += delta["thinking"]
                elif delta["type"] == "input_json_delta":
                    self.arguments.setdefault(data["index"], []).append(delta["partial_json"])
            elif name == "message_delta":
                self.message.update(data["delta"])
                self.message["usage"] = {**self.message["usage"], **data["usage"]}

    def result(self) -> Json:
        """The ``Message``, tool inputs parsed."""
        assert self.message is not None, "message_start first"
        for index, parts in self.arguments.items():
            self.message["content"][index]["input"] = _tool_input("".join(parts))
        return self.message
