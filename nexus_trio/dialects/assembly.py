"""A whole chat completion, assembled from the chunks of its stream (pure).

Fold every ``chat.completion.chunk`` of an answer into `ChatAssembler`, then ask
for the ``chat.completion`` a backend would have sent had it not streamed: the
same ``id``, ``created``, ``model`` and ``system_fingerprint``; per choice one
message whose ``content``, ``reasoning_content`` (or ``reasoning``), ``refusal``
and tool call ``arguments`` are the streamed pieces joined; its ``finish_reason``;
and the ``usage``. The shape follows OpenAI's reference
(https://platform.openai.com/docs/api-reference/chat/object).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nexus_trio import jsonparse
from nexus_trio.proxy.tracker import add_usage

__all__ = ["ChatAssembler", "ToolCall", "chunks_of", "merge_call", "whole_answer"]

# Streamed text fields of a delta, joined into the message under the same name.
_TEXT_KEYS = ("content", "reasoning_content", "reasoning", "refusal")


@dataclass(slots=True)
class ToolCall:
    """One tool call as its stream builds it."""

    id: str | None = None
    type: str = "function"
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "function": {"name": self.name, "arguments": "".join(self.arguments)},
        }


@dataclass(slots=True)
class _Choice:
    texts: dict[str, list[str]] = field(default_factory=dict)
    tool_calls: dict[int, ToolCall] = field(default_factory=dict)
    function_call: ToolCall | None = None  # the legacy single call
    finish_reason: str | None = None

    def add(self, delta: Mapping[str, Any]) -> None:
        for key in _TEXT_KEYS:
            piece = delta.get(key)
            if isinstance(piece, str):
                self.texts.setdefault(key, []).append(piece)
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for position, call in enumerate(calls):
                if isinstance(call, dict):
                    index = call.get("index")
                    slot = index if isinstance(index, int) else position
                    merge_call(self.tool_calls.setdefault(slot, ToolCall()), call)
        legacy = delta.get("function_call")
        if isinstance(legacy, dict):
            self.function_call = self.function_call or ToolCall()
            merge_call(self.function_call, {"function": legacy})

    def message(self) -> dict[str, Any]:
        joined = {key: "".join(parts) for key, parts in self.texts.items()}
        content = joined.pop("content", "")
        calls = [self.tool_calls[i].message() for i in sorted(self.tool_calls)]
        message: dict[str, Any] = {
            "role": "assistant",
            # OpenAI sends null, not "", beside tool calls.
            "content": content if content or not (calls or self.function_call) else None,
        }
        message.update((key, text) for key, text in joined.items() if text)
        if calls:
            message["tool_calls"] = calls
        if self.function_call is not None:
            function = self.function_call.message()["function"]
            message["function_call"] = function
        return message


def merge_call(call: ToolCall, delta: Mapping[str, Any]) -> None:
    """Fold one streamed ``tool_calls`` delta into ``call`` (id, type, name, arguments)."""
    if isinstance(delta.get("id"), str):
        call.id = delta["id"]
    if isinstance(delta.get("type"), str):
        call.type = delta["type"]
    function = delta.get("function")
    if isinstance(function, dict):
        name = function.get("name")
        # Named in the first chunk (OpenAI, vLLM, llama.cpp); a server that repeats the
        # whole name in later chunks must not double it.
        if isinstance(name, str) and name != call.name:
            call.name += name
        if isinstance(function.get("arguments"), str):
            call.arguments.append(function["arguments"])


@dataclass(slots=True)
class ChatAssembler:
    """Feed it chunks with `add`; `completion` is the answer as one object."""

    id: str | None = None
    created: int | None = None
    model: str | None = None
    system_fingerprint: str | None = None
    choices: dict[int, _Choice] = field(default_factory=dict)

    def add(self, chunk: Mapping[str, Any]) -> None:
        if self.id is None:
            self.id, self.created, self.model = (
                chunk.get("id"), chunk.get("created"), chunk.get("model"),
            )  # fmt: skip
        if isinstance(chunk.get("system_fingerprint"), str):
            self.system_fingerprint = chunk["system_fingerprint"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for position, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", position)
            assembled = self.choices.setdefault(index if isinstance(index, int) else position,
                                                _Choice())  # fmt: skip
            delta = choice.get("delta")
            if isinstance(delta, dict):
                assembled.add(delta)
            if isinstance(choice.get("finish_reason"), str):
                assembled.finish_reason = choice["finish_reason"]

    def completion(self, usage: Mapping[str, int]) -> dict[str, Any]:
        """The ``chat.completion`` object; ``usage`` as the backends reported it."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": index,
                    "message": self.choices[index].message(),
                    "logprobs": None,
                    "finish_reason": self.choices[index].finish_reason,
                }
                for index in sorted(self.choices)
            ],
            "system_fingerprint": self.system_fingerprint,
        }
        if usage:
            body["usage"] = dict(usage)
        return body


def chunks_of(completion: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The stream a whole ``chat.completion`` would have been: per choice, one chunk with
    the message as its delta (tool calls indexed), then one with its finish reason. For
    writers that translate streams and get a backend's whole answer instead (a server that
    ignored ``"stream": true``). Usage is not among the chunks: the proxy reports it.
    """
    head = {
        "id": completion.get("id"), "object": "chat.completion.chunk",
        "created": completion.get("created"), "model": completion.get("model"),
    }  # fmt: skip
    choices = completion.get("choices")
    chunks: list[dict[str, Any]] = []
    for position, choice in enumerate(choices if isinstance(choices, list) else []):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", position)
        message = choice.get("message")
        delta = dict(message) if isinstance(message, dict) else {}
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            delta["tool_calls"] = [
                {**call, "index": i} for i, call in enumerate(calls) if isinstance(call, dict)
            ]
        chunks.append({**head, "choices": [{"index": index, "delta": delta,
                                            "finish_reason": None}]})  # fmt: skip
        finish = choice.get("finish_reason")
        chunks.append({**head, "choices": [{"index": index, "delta": {},
                                            "finish_reason": finish}]})  # fmt: skip
    return chunks


def whole_answer(body: bytes) -> tuple[list[dict[str, Any]], dict[str, int]] | None:
    """A backend's whole ``chat.completion`` body as the stream it would have been
    (`chunks_of`) and its usage counts; None when the body is no completion."""
    try:
        completion = jsonparse.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
        return None
    usage: dict[str, int] = {}
    add_usage(usage, completion.get("usage"))
    return chunks_of(completion), usage
