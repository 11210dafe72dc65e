"""What a chat request needs from a backend, read from its JSON (pure).

Only the fields routing needs are checked; everything else in the body is the
backend's business and is forwarded untouched. Checking a field means naming
it when it is wrong, so the client learns what to fix (``param``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nexus_trio import jsonparse
from nexus_trio.errors import RequestError

__all__ = ["ChatRequest", "Requirements", "parse_chat_request"]

# A rough, deliberately low estimate of tokens per byte of prompt text: too high
# would refuse requests a backend could serve; the backend has the last word.
BYTES_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a backend must offer to serve one request."""

    model: str
    stream: bool = False
    vision: bool = False
    tools: bool = False
    json: bool = False
    context_tokens: int = 0  # estimated prompt tokens + requested completion tokens


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated chat completion request: its bytes, its JSON, its needs."""

    body: bytes
    payload: dict[str, Any]
    needs: Requirements
    # A stream always asks its backend for usage (Nexus counts every request's tokens);
    # this says whether the client asked too, and so gets the usage chunk.
    client_wants_usage: bool = True

    def body_for(self, model: str) -> bytes:
        """The body to send upstream: the client's bytes, unless the model name must change."""
        if model == self.needs.model:
            return self.body
        # ASCII escapes: the same JSON, and a lone surrogate the client sent survives.
        return json.dumps({**self.payload, "model": model}).encode()


def _invalid(message: str, param: str | None) -> RequestError:
    return RequestError(message, param=param)


def _optional_positive_int(payload: dict[str, Any], name: str) -> int:
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


def parse_chat_request(body: bytes) -> ChatRequest:
    """Validate a ``POST /v1/chat/completions`` body.

    Raises:
        RequestError: the body is not JSON, or a field routing relies on is wrong;
            the error names the field.
    """
    try:
        payload = jsonparse.loads(body)
    except RecursionError:
        raise _invalid("The request body nests JSON too deeply.", None) from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _invalid(
            f"The request body is not valid JSON ({exc}). Send a JSON object with "
            "'model' and 'messages'.",
            None,
        ) from None
    if not isinstance(payload, dict):
        raise _invalid("The request body must be a JSON object with 'model' and 'messages'.", None)

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
    wants_json = isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )

    completion = max(
        _optional_positive_int(payload, "max_tokens"),
        _optional_positive_int(payload, "max_completion_tokens"),
    )
    vision, text_bytes = _content_needs(messages)
    needs = Requirements(
        model=model,
        stream=stream,
        vision=vision,
        tools=bool(tools) and payload.get("tool_choice") != "none",
        json=wants_json,
        context_tokens=text_bytes // BYTES_PER_TOKEN + completion,
    )
    if not stream:
        return ChatRequest(body=body, payload=payload, needs=needs)
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid(
            "'stream_options' must be an object such as {\"include_usage\": true}.",
            "stream_options",
        )
    if options is not None and options.get("include_usage") is True:
        return ChatRequest(body=body, payload=payload, needs=needs)
    asking = {**payload, "stream_options": {**(options or {}), "include_usage": True}}
    if "stream_options" not in payload and json.detect_encoding(body).startswith("utf-8"):
        # The client's bytes, with the option spliced in front: no re-encoding.
        start = body.index(b"{") + 1
        body = body[:start] + _ASK_FOR_USAGE + body[start:]
    else:  # the option is there already, or the body is UTF-16/32 (JSON allows both)
        body = json.dumps(asking).encode()
    return ChatRequest(body=body, payload=asking, needs=needs, client_wants_usage=False)


_ASK_FOR_USAGE = b'"stream_options":{"include_usage":true},'
