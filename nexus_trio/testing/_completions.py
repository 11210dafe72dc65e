"""``/v1/chat/completions`` without I/O: validate a request, plan its answer, encode it.

The wire shapes are OpenAI's (https://platform.openai.com/docs/api-reference/chat):
a ``chat.completion`` object, or ``chat.completion.chunk`` SSE events ending in
``data: [DONE]``, with a ``choices: []`` usage chunk before it when
``stream_options.include_usage`` is set. Where the servers differ (error wording,
``system_fingerprint``) the flavour decides.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from ._text import (
    answer_tokens,
    continuation,
    estimate_prompt_tokens,
    message_text,
    split_pieces,
    tool_arguments,
    tool_call_id,
)
from ._types import Flavor, SimModel

__all__ = ["Answer", "ChatError", "StreamEncoder", "completion_body", "error_payload", "plan_chat"]

DONE: Final = b"data: [DONE]\n\n"
FINGERPRINTS: Final[Mapping[Flavor, str | None]] = {
    Flavor.OLLAMA: "fp_ollama",
    Flavor.VLLM: None,
    Flavor.LLAMACPP: "b6795-5cca2542",
    Flavor.GENERIC: "fp_simulated",
    # LM Studio, exo and LocalAI send no system_fingerprint (null, as vLLM)
    Flavor.LMSTUDIO: None,
    Flavor.EXO: None,
    Flavor.LOCALAI: None,
}
_SENTINEL: Final = "\x00piece\x00"


def error_payload(
    flavor: Flavor,
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | int | None = None,
) -> dict[str, Any]:
    """The error body a server of ``flavor`` sends on its OpenAI-compatible routes."""
    if flavor is Flavor.OLLAMA:  # ollama: openai/openai.go NewError; no param, no code
        type_ = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
        return {"error": {"message": message, "type": type_, "param": None, "code": None}}
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class ChatError(Exception):
    """A request the server refuses, with the status and body it answers."""

    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        super().__init__(payload["error"]["message"])
        self.status = status
        self.payload = payload


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass(frozen=True, slots=True)
class Answer:
    """Everything about the answer to one request, decided before a byte is sent."""

    model: str  # as requested
    served: str  # the id of the SimModel that answers
    stream: bool
    include_usage: bool
    pieces: tuple[str, ...]  # the content chunks, in order (text, or argument pieces)
    content: str | None  # the whole message content; None for a tool call
    tool_call: ToolCall | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


def plan_chat(
    body: object,
    *,
    flavor: Flavor,
    models: Mapping[str, SimModel],
    echo_prefill: bool,
    fixed_arguments: Mapping[str, Mapping[str, Any]] | None = None,
    system_keeps_user_turn: bool = False,
) -> Answer:
    """Validate a parsed request body and decide its answer.

    ``fixed_arguments`` maps tool names to the arguments a call to that tool carries
    (instead of generated ones); such a tool is called before the first one offered.
    With ``system_keeps_user_turn``, system messages after the user's last one do not
    end the user's turn: a tool call may still answer it.

    Raises:
        ChatError: the request is invalid (400), names an unknown model (404), or
            asks for a capability the model lacks (400).
    """

    def fail(
        status: int, message: str, param: str | None = None, code: str | None = None
    ) -> NoReturn:
        raise ChatError(status, error_payload(flavor, status, message, param=param, code=code))

    if not isinstance(body, dict):
        fail(400, "We could not parse the JSON body of your request: expected a JSON object.")
    model_id = body.get("model")
    model = models.get(model_id) if isinstance(model_id, str) else None
    if model is None:
        name = model_id if isinstance(model_id, str) else ""
        if flavor is Flavor.OLLAMA:
            fail(404, f'model "{name}" not found, try pulling it first')
        fail(404, f"The model `{name}` does not exist.", "model", "model_not_found")
    assert isinstance(model_id, str)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        fail(400, "`messages` must be a non-empty list of message objects.", "messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        fail(400, "Every message must be an object with a string `role`.", "messages")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        fail(400, "`stream` must be a boolean.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        fail(400, "`stream_options` must be an object.", "stream_options")
    include_usage = stream and options.get("include_usage") is True
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        fail(400, "`max_tokens` must be a positive integer.", "max_tokens")
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        fail(400, "`tools` must be a list.", "tools")

    if not model.vision and any(_has_image(m) for m in messages):
        fail(400, f"model `{model.id}` does not support images", "messages")
    if tools and not model.tools:
        fail(400, _no_tools_message(flavor, model.id), "tools")
    prompt_tokens = estimate_prompt_tokens(messages)
    wanted = prompt_tokens + (limit or 0)
    if flavor is not Flavor.OLLAMA and wanted > model.context_length:  # ollama truncates
        fail(
            400,
            f"This model's maximum context length is {model.context_length} tokens. "
            f"However, you requested {wanted} tokens ({prompt_tokens} in the messages, "
            f"{limit or 0} in the completion). Please reduce the length of the messages "
            "or completion.",
            "messages",
            "context_length_exceeded",
        )

    fixed = fixed_arguments or {}
    turn = messages
    if system_keeps_user_turn:
        while len(turn) > 1 and turn[-1]["role"] == "system":
            turn = turn[:-1]
    tool = _chosen_tool(tools, body.get("tool_choice"), turn[-1]["role"], fixed, fail)
    if tool is not None:
        name = str(tool["function"]["name"])
        arguments = (
            json.dumps(fixed[name], separators=(",", ":"))
            if name in fixed
            else tool_arguments(model.id, messages, tool)
        )
        call = ToolCall(tool_call_id(model.id, messages), name, arguments)
        pieces = tuple(split_pieces(call.arguments))
        return Answer(
            model_id, model.id, stream, include_usage, pieces, None, call, "tool_calls",
            prompt_tokens, len(pieces),
        )  # fmt: skip

    echo = ""
    if messages[-1]["role"] == "assistant":
        prefix = message_text(messages[-1].get("content"))
        tokens = continuation(model.id, messages[:-1], prefix)
        echo = prefix if echo_prefill else ""
    else:
        tokens = answer_tokens(model.id, messages)
    finish = "stop"
    if limit is not None and len(tokens) > limit:
        tokens, finish = tokens[:limit], "length"
    pieces = tuple([echo, *tokens] if echo else tokens)
    return Answer(
        model_id, model.id, stream, include_usage, pieces, "".join(pieces), None, finish,
        prompt_tokens, len(tokens),
    )  # fmt: skip


def _has_image(message: Mapping[str, Any]) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type") == "image_url" for part in content
    )


def _no_tools_message(flavor: Flavor, model_id: str) -> str:
    if flavor is Flavor.OLLAMA:
        name = model_id if ":" in model_id else f"{model_id}:latest"
        return f"registry.ollama.ai/library/{name} does not support tools"
    if flavor is Flavor.VLLM:
        return (
            '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
        )
    if flavor is Flavor.LLAMACPP:
        return "tools param requires --jinja flag"
    return f"model `{model_id}` does not support tools"


def _chosen_tool(
    tools: Sequence[Any],
    choice: object,
    last_role: str,
    fixed: Mapping[str, object],
    fail: Callable[..., NoReturn],
) -> Mapping[str, Any] | None:
    """The tool to call, or ``None`` to answer with text."""
    if not tools or choice == "none" or last_role != "user":
        return None
    functions = [
        t for t in tools
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)
    ]  # fmt: skip
    if len(functions) != len(tools):
        fail(400, "Every tool must be {'type': 'function', 'function': {'name': ...}}.", "tools")
    if isinstance(choice, dict):
        function = choice.get("function")
        wanted = function.get("name") if isinstance(function, dict) else None
        for tool in functions:
            if tool["function"]["name"] == wanted:
                return tool
        fail(400, f"`tool_choice` names the function {wanted!r}, which is not in `tools`.",
             "tool_choice")  # fmt: skip
    return next((t for t in functions if t["function"]["name"] in fixed), functions[0])


def completion_body(
    answer: Answer, *, completion_id: str, created: int, fingerprint: str | None
) -> dict[str, Any]:
    """The ``chat.completion`` object of a non-streamed answer."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.tool_call is not None:
        call = answer.tool_call
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": answer.model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": answer.usage(),
    }


class StreamEncoder:
    """The SSE events of one streamed answer, as bytes ready for the wire.

    Content events come from a template cut once, so a chunk costs one
    ``json.dumps`` of its piece, not of a whole chunk object.
    """

    def __init__(
        self, answer: Answer, *, completion_id: str, created: int, fingerprint: str | None
    ) -> None:
        self._answer = answer
        self._base: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": answer.model,
            "system_fingerprint": fingerprint,
        }
        template = self._event({"content": _SENTINEL}, None)
        if answer.tool_call is not None:
            piece = {"tool_calls": [{"index": 0, "function": {"arguments": _SENTINEL}}]}
            template = self._event(piece, None)
        head, _, tail = template.partition(json.dumps(_SENTINEL).encode())
        self._head, self._tail = head, tail

    def _event(self, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk = {**self._base, "choices": [choice]}
        if self._answer.include_usage:
            chunk["usage"] = None
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    def first(self) -> bytes:
        """The opening event: the role, or the head of the tool call."""
        call = self._answer.tool_call
        if call is None:
            return self._event({"role": "assistant", "content": ""}, None)
        head = {
            "index": 0,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        return self._event({"role": "assistant", "content": None, "tool_calls": [head]}, None)

    def piece(self, text: str) -> bytes:
        """One content event (a token, or a piece of the tool-call arguments)."""
        return self._head + json.dumps(text).encode() + self._tail

    def last(self) -> bytes:
        """The finish event, the usage event if asked for, and ``[DONE]``."""
        out = self._event({}, self._answer.finish_reason)
        if self._answer.include_usage:
            usage = {**self._base, "choices": [], "usage": self._answer.usage()}
            out += b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n"
        return out + DONE

    def broken(self) -> bytes:
        """A content event cut in half: ``data:`` with JSON no parser accepts."""
        whole = self.piece(self._answer.pieces[0] if self._answer.pieces else "x")
        return whole[: len(whole) // 2] + b"\n\n"

    def error(self, message: str) -> bytes:
        """An in-band error event and ``[DONE]`` (vLLM's way to fail after the headers)."""
        error = {"message": message, "type": "server_error", "param": None, "code": 500}
        return b"data: " + json.dumps({"error": error}).encode() + b"\n\n" + DONE
