"""Anthropic Messages (``POST /v1/messages``): the request codec (pure).

`parse_messages_request` turns a Messages request into the OpenAI chat completion
request every backend is asked (`nexus_trio.routing.requirements.ChatRequest`); the
answer is written back in Anthropic's shape by `nexus_trio.dialects.anthropic_writer`.
Field by field (https://docs.anthropic.com/en/api/messages, and the SDK's
``MessageCreateParams``):

- ``system`` (a string or text blocks) → one leading ``system`` message, blocks joined
  by a blank line. Claude Code's first block, ``x-anthropic-billing-header: …; cch=…;``,
  changes on every request; its ``cch`` is set to a fixed value (see `_BILLING`).
- ``messages``: ``text`` → text parts (empty ones dropped, as Anthropic rejects them);
  ``image`` (base64 or URL) → an ``image_url`` part (base64 as a ``data:`` URL);
  ``document`` with a plain-text source → text; ``tool_use`` → the assistant's
  ``tool_calls`` (``arguments`` = the JSON text of ``input``); ``tool_result`` → a
  ``role: "tool"`` message with the same id, placed before the user text of the same
  turn (OpenAI wants each call's result right after the call); ``thinking``,
  ``redacted_thinking`` and server-tool blocks are dropped. A message whose content is
  a single text becomes a string (what every chat template takes); several parts stay
  a list. A ``role: "system"`` message inside ``messages`` stays where it is, as a
  ``system`` message (see `_system_message`).
- ``tools`` with ``input_schema`` → functions (server tools, which carry their own
  ``type`` and no schema, are dropped: no backend can run them); ``tool_choice`` auto →
  ``"auto"``, any → ``"required"``, tool → the named function, none → ``"none"``;
  ``parallel_tool_calls`` is always set (llama.cpp defaults it to false), false when
  ``disable_parallel_tool_use``.
- ``max_tokens`` (required, as Anthropic requires it) → ``max_tokens``;
  ``stop_sequences`` → ``stop``; ``temperature``, ``top_p``, ``top_k`` as they are;
  ``output_config.format`` (a JSON schema) → ``response_format``.
- ``metadata``, ``thinking``, ``cache_control``, ``context_management``,
  ``output_config.effort``, ``service_tier``, ``container`` and fields not known yet
  are accepted and ignored.

Tool-call ids are mapped by `nexus_trio.dialects.anthropic_ids`: the backend always
sees the ids it produced.
"""

from __future__ import annotations

import re
from typing import Any

from nexus_trio import jsonparse
from nexus_trio.config import RoutingSettings
from nexus_trio.dialects.anthropic_events import MessagesOrigin
from nexus_trio.dialects.anthropic_ids import upstream_tool_id
from nexus_trio.dialects.anthropic_writer import messages_writer
from nexus_trio.dialects.base import Dialect, load_object
from nexus_trio.dialects.openai_chat import chat_requirements
from nexus_trio.errors import RequestError
from nexus_trio.routing.requirements import ChatRequest

__all__ = ["ANTHROPIC", "parse_count_tokens_request", "parse_messages_request"]

Json = dict[str, Any]

# Claude Code puts ``x-anthropic-billing-header: cc_version=…; cc_entrypoint=cli;
# cch=<hash>;`` at the top of its system prompt, and the hash changes on every request.
# A backend's prefix cache (llama.cpp's, vLLM's) would then miss from the first token
# on and reprocess the whole prompt each turn. The value means nothing to a local
# model, so it is fixed, to what llama.cpp's own Anthropic endpoint writes (PR #21793).
_BILLING = re.compile(r"(\bcch=)[^;\s]*")
_BILLING_PREFIX = "x-anthropic-billing-header"
_FIXED_CCH = r"\g<1>fffff"
# Blocks that carry nothing a chat backend can use: the model's own hidden reasoning
# (its signature is meaningless to another model), and server tools' calls and results.
_DROPPED_BLOCKS = frozenset(
    {
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "container_upload",
        "mcp_tool_use",
        "mcp_tool_result",
    }
)
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
# count_tokens has no max_tokens: routing then checks that the prompt alone fits.
_COUNT_MAX_TOKENS = 1


def _fail(message: str, param: str | None = None) -> RequestError:
    return RequestError(message, param=param)


def _load(body: bytes) -> Json:
    return load_object(body, "'model', 'max_tokens' and 'messages'")


def _text_of_blocks(blocks: list[Any], where: str) -> list[str]:
    """The texts of a list of text blocks (``system``, a system message, mid_conv_system)."""
    texts = []
    for index, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise _fail(f"{where}[{index}] must be a content block object.", f"{where}[{index}]")
        kind = block.get("type")
        if kind == "mid_conv_system":  # {"type": "mid_conv_system", "content": [text…]}
            inner = block.get("content")
            if isinstance(inner, str):
                texts.append(inner)
            elif isinstance(inner, list):
                texts.extend(_text_of_blocks(inner, f"{where}[{index}].content"))
            continue
        text = block.get("text")
        if kind != "text" or not isinstance(text, str):
            raise _fail(
                f'{where}[{index}] must be a text block ({{"type": "text", '
                f'"text": ...}}), got type {kind!r:.40}.',
                f"{where}[{index}]",
            )
        if text:
            texts.append(text)
    return texts


def _system_text(system: object, where: str) -> str:
    if isinstance(system, str):
        texts = [system] if system else []
    elif isinstance(system, list):
        texts = _text_of_blocks(system, where)
    else:
        raise _fail(f"'{where}' must be a string or an array of text blocks.", where)
    return "\n\n".join(
        _BILLING.sub(_FIXED_CCH, text) if text.startswith(_BILLING_PREFIX) else text
        for text in texts
    )


def _image_part(block: Json, where: str) -> Json:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _fail(f"{where}.source must be an object.", f"{where}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise _fail(f"{where}.source needs 'media_type' and 'data' strings.", f"{where}.source")
        url = f"data:{media_type};base64,{data}"
    elif kind == "url":
        link = source.get("url")
        if not isinstance(link, str) or not link:
            raise _fail(f"{where}.source.url must be a string.", f"{where}.source.url")
        url = link
    else:
        raise _fail(
            f"{where}.source.type must be 'base64' or 'url' (Nexus cannot fetch "
            f"uploaded files), got {kind!r:.40}.",
            f"{where}.source.type",
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _document_text(block: Json, where: str) -> str:
    source = block.get("source")
    if isinstance(source, dict):
        if source.get("type") == "text" and isinstance(source.get("data"), str):
            return str(source["data"])
        if source.get("type") == "content" and isinstance(source.get("content"), list | str):
            content = source["content"]
            return (
                content
                if isinstance(content, str)
                else "\n\n".join(_text_of_blocks(content, f"{where}.source.content"))
            )
    raise _fail(
        f"{where}: only plain-text documents can be sent to local models (PDF and "
        "file sources cannot); send the text as a text block.",
        where,
    )


def _content(parts: list[Json]) -> str | list[Json]:
    """A message's content: a lone text as a string (every chat template takes it), else
    the parts."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _tool_result(block: Json, where: str) -> tuple[Json, list[Json]]:
    """A ``tool_result`` block → the ``tool`` message, and the images it held.

    The tool message gets the text (chat servers take only text there); images go into
    the user message that follows, after the tool messages. ``is_error`` has no OpenAI
    equivalent: the text is prefixed with ``"Error: "`` so that the model knows the call
    failed (Claude Code's own error texts say so too, but a client's may not).
    """
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise _fail(f"{where}.tool_use_id must be a non-empty string.", f"{where}.tool_use_id")
    content = block.get("content")
    texts: list[str] = []
    images: list[Json] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for index, part in enumerate(content):
            inner = f"{where}.content[{index}]"
            if not isinstance(part, dict):
                raise _fail(f"{inner} must be a content block object.", inner)
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "image":
                images.append(_image_part(part, inner))
            elif kind == "document":
                texts.append(_document_text(part, inner))
            elif kind == "search_result":
                texts.extend(_text_of_blocks(part.get("content") or [], f"{inner}.content"))
            # tool_reference and blocks not known yet carry nothing a chat server reads
    elif content is not None:
        raise _fail(f"{where}.content must be a string or an array of blocks.", f"{where}.content")
    text = "\n".join(t for t in texts if t)
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"
    message = {"role": "tool", "tool_call_id": upstream_tool_id(tool_use_id), "content": text}
    return message, images


def _tool_call(block: Json, where: str) -> Json:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not call_id:
        raise _fail(f"{where}.id must be a non-empty string.", f"{where}.id")
    if not isinstance(name, str) or not name:
        raise _fail(f"{where}.name must be a non-empty string.", f"{where}.name")
    return {
        "id": upstream_tool_id(call_id),
        "type": "function",
        "function": {"name": name, "arguments": jsonparse.dumps(arguments).decode()},
    }


def _turn(message: object, index: int) -> list[Json]:
    """One Anthropic message → its OpenAI messages (none, if nothing is left of it)."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _fail(f"{where} must be an object with 'role' and 'content'.", where)
    role, content = message.get("role"), message.get("content")
    if role == "system":
        return _system_message(content, f"{where}.content")
    if role not in ("user", "assistant"):
        raise _fail(
            f"{where}.role must be 'user', 'assistant' or 'system', got {role!r:.40}.",
            f"{where}.role",
        )
    if isinstance(content, str):
        return [{"role": role, "content": content}] if content else []
    if not isinstance(content, list):
        raise _fail(
            f"{where}.content must be a string or an array of content blocks.", f"{where}.content"
        )
    parts: list[Json] = []
    tool_messages: list[Json] = []
    calls: list[Json] = []
    for block_index, block in enumerate(content):
        inner = f"{where}.content[{block_index}]"
        if not isinstance(block, dict):
            raise _fail(f"{inner} must be a content block object.", inner)
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise _fail(f"{inner}.text must be a string.", f"{inner}.text")
            if text:
                parts.append({"type": "text", "text": text})
        elif kind == "image":
            parts.append(_image_part(block, inner))
        elif kind == "document":
            parts.append({"type": "text", "text": _document_text(block, inner)})
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_call(block, inner))
        elif kind == "tool_result" and role == "user":
            tool_message, images = _tool_result(block, inner)
            tool_messages.append(tool_message)
            parts.extend(images)
        elif kind in ("tool_use", "tool_result"):
            side = "assistant" if kind == "tool_use" else "user"
            raise _fail(f"{inner}: a {kind} block belongs in a {side} message.", inner)
        elif kind in _DROPPED_BLOCKS or isinstance(kind, str):
            # Dropped: what no chat server can read, and block types not known yet (the
            # API adds them; refusing would break a client that upgraded first).
            continue
        else:
            raise _fail(f"{inner}.type must be a string.", f"{inner}.type")
    out = tool_messages  # results first: each answers a call of the turn before
    if role == "assistant":
        if parts or calls:
            assistant: Json = {"role": "assistant", "content": _content(parts) if parts else None}
            if calls:
                assistant["tool_calls"] = calls
            out.append(assistant)
    elif parts:
        out.append({"role": "user", "content": _content(parts)})
    return out


def _system_message(content: object, where: str) -> list[Json]:
    """A ``role: "system"`` message inside ``messages`` stays a system message where it
    is. Claude Code sends one as the last message of its first request (context it adds
    to the conversation); moving it to the top would change the prompt prefix every time
    one appears (no backend cache hit), and folding it into a user turn would change what
    it says. Chat templates that accept only one leading system message reject it; the
    backend's error then says so."""
    text = _system_text(content, where)
    return [{"role": "system", "content": text}] if text else []


def _tools(tools: object) -> list[Json]:
    if not isinstance(tools, list):
        raise _fail("'tools' must be an array of tool definitions.", "tools")
    functions = []
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise _fail(f"{where} must be an object.", where)
        schema = tool.get("input_schema")
        kind = tool.get("type")
        if schema is None and kind not in (None, "custom"):
            continue  # a server tool (web_search_…, bash_…): Anthropic runs those, not models
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _fail(f"{where}.name must be a non-empty string.", f"{where}.name")
        if not isinstance(schema, dict):
            raise _fail(
                f"{where}.input_schema must be a JSON schema object.", f"{where}.input_schema"
            )
        function: Json = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        functions.append({"type": "function", "function": function})
    return functions


def _tool_choice(choice: object, payload: Json) -> None:
    """``tool_choice`` → ``tool_choice`` and ``parallel_tool_calls`` in ``payload``."""
    if choice is None:
        choice = {"type": "auto"}
    if not isinstance(choice, dict):
        raise _fail('\'tool_choice\' must be an object such as {"type": "auto"}.', "tool_choice")
    kind = choice.get("type")
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise _fail("tool_choice.name must name a tool.", "tool_choice.name")
        payload["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif kind in _TOOL_CHOICES:
        payload["tool_choice"] = _TOOL_CHOICES[kind]
    else:
        raise _fail(
            f"tool_choice.type must be 'auto', 'any', 'tool' or 'none', got {kind!r:.40}.",
            "tool_choice.type",
        )
    if kind != "none":
        # Stated either way: llama.cpp defaults to one call per turn, Anthropic to several.
        payload["parallel_tool_calls"] = choice.get("disable_parallel_tool_use") is not True


def _number(request: Json, name: str, payload: Json, kind: type | tuple[type, ...]) -> None:
    value = request.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _fail(f"'{name}' must be a number, got {value!r:.40}.", name)
    payload[name] = value


def _response_format(output_config: object) -> Json | None:
    """``output_config.format`` (structured outputs) → ``response_format``; ``effort``
    has no chat equivalent and is ignored."""
    if not isinstance(output_config, dict):
        return None
    format_ = output_config.get("format")
    if isinstance(format_, dict) and format_.get("type") == "json_schema":
        schema = format_.get("schema")
        if isinstance(schema, dict):
            return {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": schema, "strict": True},
            }
    return None


def _conversation(request: Json) -> tuple[str, list[Json]]:
    """The model and the OpenAI messages of a Messages or count_tokens request."""
    model = request.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _fail("'model' is required and must be a non-empty string.", "model")
    turns = request.get("messages")
    if not isinstance(turns, list) or not turns:
        raise _fail("'messages' is required and must be a non-empty array.", "messages")
    messages: list[Json] = []
    system = request.get("system")
    if system is not None:
        text = _system_text(system, "system")
        if text:
            messages.append({"role": "system", "content": text})
    for index, turn in enumerate(turns):
        messages.extend(_turn(turn, index))
    if not any(m["role"] != "system" for m in messages):
        raise _fail("'messages' has nothing left to answer: every message is empty.", "messages")
    return model, messages


def _upstream(request: Json, max_tokens: int, stream: bool) -> Json:
    """The OpenAI chat payload for a (checked) Messages request."""
    model, messages = _conversation(request)
    payload: Json = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
    }
    tools = request.get("tools")
    if tools is not None:
        functions = _tools(tools)
        if functions:
            payload["tools"] = functions
            _tool_choice(request.get("tool_choice"), payload)
    stop = request.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _fail("'stop_sequences' must be an array of strings.", "stop_sequences")
        if stop:
            payload["stop"] = stop
    _number(request, "temperature", payload, (int, float))
    _number(request, "top_p", payload, (int, float))
    _number(request, "top_k", payload, int)
    response_format = _response_format(request.get("output_config"))
    if response_format is not None:
        payload["response_format"] = response_format
    return payload


def _max_tokens(request: Json) -> int:
    value = request.get("max_tokens")
    if value is None:
        raise _fail("'max_tokens' is required: the most tokens the answer may have.", "max_tokens")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        # Anthropic takes 0 to pre-warm its prompt cache; there is none to warm here.
        raise _fail(f"'max_tokens' must be a positive integer, got {value!r:.40}.", "max_tokens")
    return value


def parse_messages_request(body: bytes, routing: RoutingSettings) -> ChatRequest:
    """A ``POST /v1/messages`` body → the chat request that goes upstream (see the module
    docstring for each field). ``routing`` is unused: every Messages request is streamed
    from its backend, as a Messages answer is always written from a stream.

    Raises:
        RequestError: the body is not JSON, or a field is wrong; the error names it.

    Example::

        chat = parse_messages_request(
            b'{"model": "m", "max_tokens": 64, "messages": [{"role": "user", '
            b'"content": "Hi"}]}',
            settings.routing,
        )
        chat.payload["messages"] == [{"role": "user", "content": "Hi"}]
    """
    request = _load(body)
    stream = request.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _fail(f"'stream' must be true or false, got {stream!r:.40}.", "stream")
    max_tokens = _max_tokens(request)
    payload = _upstream(request, max_tokens, stream)
    stop = payload.get("stop", [])
    origin = MessagesOrigin(model=payload["model"], stop_sequences=tuple(stop))
    # Anthropic requires max_tokens, and clients set it to the most a Claude model may
    # write (Claude Code: 32,000 and up), not to what they expect: routing asks only that
    # the prompt fit, and a backend whose context cannot hold the limit is asked without
    # it (`ChatRequest.limit_is_ceiling`), stopping where its context ends.
    uncapped = {key: value for key, value in payload.items() if key != "max_tokens"}
    return ChatRequest(
        body=jsonparse.dumps(payload),
        payload=payload,
        needs=chat_requirements(uncapped, payload["model"], stream),
        streamed_upstream=True,
        client_wants_usage=False,
        origin=origin,
        limit_is_ceiling=True,
        session=_user_id(request),
    )


def _user_id(request: Json) -> str | None:
    """``metadata.user_id``: who the request is for (Claude Code: one id per session)."""
    metadata = request.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    return user if isinstance(user, str) and user else None


def parse_count_tokens_request(body: bytes) -> ChatRequest:
    """A ``POST /v1/messages/count_tokens`` body (a Messages request without
    ``max_tokens``) → the chat request whose prompt is to be counted.

    Raises:
        RequestError: as `parse_messages_request`.
    """
    request = _load(body)
    payload = _upstream(request, _COUNT_MAX_TOKENS, stream=False)
    return ChatRequest(
        body=jsonparse.dumps(payload),
        payload=payload,
        needs=chat_requirements(payload, payload["model"], False),
        origin=MessagesOrigin(model=payload["model"]),
    )


ANTHROPIC = Dialect(
    api="messages", parse=parse_messages_request, writer=messages_writer, keeps_alive=True
)
