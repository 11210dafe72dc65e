"""OpenAI Responses requests (``POST /v1/responses``) as chat completion requests (pure).

`parse_responses_request` turns a Responses request into the chat request every backend
is asked (`nexus_trio.routing.requirements.ChatRequest`), following OpenAI's reference
(https://platform.openai.com/docs/api-reference/responses/create) and what clients send
(Codex: see ``shared/research/dialects.md`` §2):

- ``instructions`` → a leading ``system`` message (never carried over from a previous
  response, as OpenAI documents for ``previous_response_id``).
- ``input``: a string is one user message. A list holds items: messages (``role``
  user / assistant / system / developer, developer sent as system; ``content`` a string
  or parts: ``input_text``, ``input_image`` by URL or data URL, ``output_text`` and
  ``refusal`` in the assistant's history); ``function_call`` items, consecutive ones
  folded into one assistant message's ``tool_calls`` (``call_id`` is the id, the
  arguments go as given); ``function_call_output`` → a ``tool`` message (a string, or
  ``input_text`` / ``input_image`` parts). ``reasoning`` items (a model's thinking, which
  the next turn's template drops anyway) and ``compaction`` items (OpenAI's encrypted
  context, meaningless elsewhere) are dropped. Anything else — ``item_reference``
  (Nexus keeps whole conversations, not items: use ``previous_response_id``), the call
  items of tools OpenAI runs itself — is refused, naming it.
- ``tools`` of type ``function`` (flat: name, description, parameters, strict) → chat
  tools; any other type is a tool OpenAI runs on its servers, refused by name.
  ``tool_choice`` none / auto / required / a function / ``allowed_tools``;
  ``parallel_tool_calls`` (always sent with tools: llama.cpp's default is false, OpenAI's
  true).
- ``max_output_tokens`` → ``max_tokens``; ``temperature``, ``top_p``; ``text.format``
  ``json_schema`` / ``json_object`` → ``response_format`` (``text`` adds nothing).
- ``previous_response_id``: the kept conversation comes first (`ResponseStore`).
- Accepted and ignored: ``reasoning`` (``reasoning.effort`` is not sent on: Ollama refuses
  it for a model that cannot think, vLLM refuses values beyond low/medium/high, and a
  local model's effort is its own), ``include``, ``store`` (read by the writer),
  ``metadata`` (echoed), ``prompt_cache_key``, ``client_metadata``, ``user``,
  ``service_tier``, ``truncation``, ``background`` (answered at once), ``text.verbosity``
  and fields not yet known.
- Refused, because ignoring them would lose part of the request: ``conversation`` (the
  Conversations API), ``prompt`` (prompt templates stored at OpenAI), ``input_file``
  parts, images by ``file_id``.

Every refusal is a `RequestError` (400) whose ``param`` names the field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nexus_trio import jsonparse
from nexus_trio.config import RoutingSettings
from nexus_trio.dialects.base import load_object
from nexus_trio.dialects.openai_chat import chat_requirements
from nexus_trio.dialects.response_store import ResponseStore
from nexus_trio.errors import RequestError
from nexus_trio.routing.requirements import ChatRequest

__all__ = ["ResponsesOrigin", "parse_responses_request", "to_chat_messages"]

Message = dict[str, Any]  # one chat message
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_DROPPED_ITEMS = frozenset({"reasoning", "compaction"})
_TOOL_CHOICES = frozenset({"none", "auto", "required"})


@dataclass(frozen=True, slots=True)
class ResponsesOrigin:
    """What the Responses writers need of the client's request (`ChatRequest.origin`)."""

    model: str  # the name the client asked for
    store: bool  # keep the answer for previous_response_id and GET
    conversation: tuple[Message, ...]  # the chat messages sent, without the instructions
    echo: Mapping[str, Any]  # the request's fields the Response object repeats


def _invalid(message: str, param: str | None) -> RequestError:
    return RequestError(message, param=param)


def _object(value: object, param: str, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(f"'{param}' must be an object ({what}).", param)
    return value


def _string(value: object, param: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or not (empty or value):
        raise _invalid(f"'{param}' must be a {'' if empty else 'non-empty '}string.", param)
    return value


def _kind(value: object) -> str:
    """A ``type`` or ``role`` as a string to look up ("" when it is not a string)."""
    return value if isinstance(value, str) else ""


def _number(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise _invalid(f"'{name}' must be a number, got {value!r:.40}.", name)
    return value


def parse_responses_request(
    body: bytes, routing: RoutingSettings, store: ResponseStore
) -> ChatRequest:
    """Translate a ``POST /v1/responses`` body into the chat request sent upstream.

    The conversation of ``previous_response_id`` comes from ``store``. The chat request
    always asks for a stream with usage; its ``origin`` is a `ResponsesOrigin`.

    Raises:
        RequestError: the body is not a Responses request Nexus can serve; the error
            names the field (``param``).
        ResponseNotKept: ``previous_response_id`` names a response not kept (404).
    """
    request = load_object(body, "'model' and 'input'")
    model = request.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("'model' is required and must be a non-empty string.", "model")
    stream = request.get("stream") or False
    if not isinstance(stream, bool):
        raise _invalid(f"'stream' must be true or false, got {stream!r:.40}.", "stream")
    keep = request.get("store")
    if keep is not None and not isinstance(keep, bool):
        raise _invalid(f"'store' must be true or false, got {keep!r:.40}.", "store")
    for refused, why in _REFUSED_FIELDS.items():
        if request.get(refused) is not None:
            raise _invalid(why, refused)

    instructions = request.get("instructions")
    if instructions is not None:
        _string(instructions, "instructions")
    previous_id = request.get("previous_response_id")
    earlier: tuple[Message, ...] = ()
    if previous_id is not None:
        _string(previous_id, "previous_response_id", empty=False)
        earlier = store.require(previous_id, param="previous_response_id").conversation
    if "input" not in request or request["input"] is None:
        raise _invalid("'input' is required: a string, or an array of input items.", "input")
    conversation = (*earlier, *to_chat_messages(request["input"]))
    if not conversation:
        raise _invalid("'input' must hold at least one item.", "input")

    messages = list(conversation)
    if instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    payload: dict[str, Any] = {"model": model, "messages": messages}
    tools = _chat_tools(request.get("tools"))
    tool_choice = request.get("tool_choice")
    if tool_choice is not None:
        tools, payload["tool_choice"] = _chat_tool_choice(tool_choice, tools)
    parallel = request.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _invalid("'parallel_tool_calls' must be true or false.", "parallel_tool_calls")
    if tools:
        payload["tools"] = tools
        payload["parallel_tool_calls"] = parallel is not False
    max_output = request.get("max_output_tokens")
    if max_output is not None:
        if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 1:
            raise _invalid(
                f"'max_output_tokens' must be a positive integer, got {max_output!r:.40}.",
                "max_output_tokens",
            )
        payload["max_tokens"] = max_output
    for name in ("temperature", "top_p"):
        if (value := _number(request, name)) is not None:
            payload[name] = value
    text = request.get("text")
    if text is not None:
        response_format = _response_format(_object(text, "text", 'e.g. {"format": {...}}'))
        if response_format is not None:
            payload["response_format"] = response_format
    payload["stream"] = True
    payload["stream_options"] = {"include_usage": True}

    needs = chat_requirements(payload, model, stream)
    origin = ResponsesOrigin(
        model=model,
        store=keep is not False,
        conversation=conversation,
        echo=_echo(request, parallel),
    )
    return ChatRequest(
        body=jsonparse.dumps(payload), payload=payload, needs=needs, streamed_upstream=True,
        client_wants_usage=False, origin=origin,
        session=_session(request.get("prompt_cache_key")) or _session(request.get("user")),
    )  # fmt: skip


_REFUSED_FIELDS: Mapping[str, str] = {
    "conversation": "'conversation' needs OpenAI's Conversations API, which Nexus does not "
    "have; send the conversation in 'input', or continue one with 'previous_response_id'.",
    "prompt": "'prompt' names a prompt template stored at OpenAI, which Nexus cannot read; "
    "send the prompt's text in 'instructions' and 'input'.",
}


def _session(value: object) -> str | None:
    """A session id the client gave (``prompt_cache_key``, ``user``), if it is one."""
    return value if isinstance(value, str) and value else None


def _echo(request: Mapping[str, Any], parallel: bool | None) -> dict[str, Any]:
    """The request's fields as the Response object repeats them (OpenAI's defaults where
    the client sent nothing)."""
    text = request.get("text")
    return {
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "metadata": request.get("metadata") if isinstance(request.get("metadata"), dict) else {},
        "parallel_tool_calls": parallel is not False,
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": request.get("reasoning") if isinstance(request.get("reasoning"), dict)
        else {"effort": None, "summary": None},
        "store": request.get("store") is not False,
        "temperature": request.get("temperature", 1.0),
        "text": text if isinstance(text, dict) and text else {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0),
        "truncation": request.get("truncation") or "disabled",
        "user": request.get("user"),
    }  # fmt: skip


# -- input -----------------------------------------------------------------------------


def to_chat_messages(value: object) -> list[Message]:
    """The chat messages of a Responses ``input`` (a string, or a list of items).

    Raises:
        RequestError: an item or part Nexus cannot send; ``param`` is its path.
    """
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _invalid("'input' must be a string or an array of input items.", "input")
    messages: list[Message] = []
    # Where the function_call items of the current run go: the assistant message they
    # follow, or the one the first of them made. A run ends at any other item.
    calls_to: Message | None = None
    for index, item in enumerate(value):
        param = f"input[{index}]"
        if not isinstance(item, dict):
            raise _invalid(f"'{param}' must be an object (an input item).", param)
        kind = _kind(item.get("type"))
        if "type" not in item and "role" in item:
            kind = "message"
        if kind == "function_call":
            call = _tool_call(item, param)
            if calls_to is None:
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant" and "tool_calls" not in last:
                    calls_to = last  # the text the model said before calling
                else:
                    calls_to = {"role": "assistant", "content": None}
                    messages.append(calls_to)
                calls_to["tool_calls"] = []
            calls_to["tool_calls"].append(call)
            continue
        if kind in _DROPPED_ITEMS:
            continue  # transparent: calls around a reasoning item are one run
        calls_to = None
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call_output":
            messages.append(_tool_output(item, param))
        elif kind == "item_reference":
            raise _invalid(
                f"'{param}' is an item_reference: Nexus keeps whole conversations, not "
                "items. Send the item itself, or continue with 'previous_response_id'.",
                param,
            )
        else:
            raise _invalid(
                f"'{param}' has type {item.get('type')!r:.60}, which Nexus cannot send to a "
                "model: it takes messages, function_call and function_call_output items (reasoning "
                "and compaction items are dropped).",
                f"{param}.type",
            )
    return messages


def _message(item: Mapping[str, Any], param: str) -> Message:
    role = _ROLES.get(_kind(item.get("role")))
    if role is None:
        raise _invalid(
            f"'{param}.role' must be user, assistant, system or developer, got "
            f"{item.get('role')!r:.40}.",
            f"{param}.role",
        )
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise _invalid(
            f"'{param}.content' must be a string or an array of content parts.",
            f"{param}.content",
        )
    parts = _parts(content, f"{param}.content", refusals=role == "assistant")
    if role == "user":
        if any(part["type"] != "text" for part in parts):
            return {"role": role, "content": parts}
    else:
        for index, part in enumerate(parts):
            if part["type"] != "text":
                where = f"{param}.content[{index}]"
                raise _invalid(
                    f"'{where}' is an image in a {item.get('role')} message; models take "
                    "images from the user only.",
                    where,
                )
    # Text as one string: every backend's template takes that.
    return {"role": role, "content": "".join(part["text"] for part in parts)}


def _parts(parts: list[Any], param: str, *, refusals: bool) -> list[dict[str, Any]]:
    """Chat content parts (``text``, ``image_url``) of Responses content parts."""
    out: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        where = f"{param}[{index}]"
        if not isinstance(part, dict):
            raise _invalid(f"'{where}' must be an object (a content part).", where)
        kind = _kind(part.get("type"))
        if kind in _TEXT_PARTS:
            out.append({"type": "text", "text": _string(part.get("text"), f"{where}.text")})
        elif kind == "refusal" and refusals:
            out.append({"type": "text", "text": _string(part.get("refusal"), f"{where}.refusal")})
        elif kind == "input_image":
            out.append(_image(part, where))
        elif kind == "input_file":
            raise _invalid(
                f"'{where}' is an input_file, which Nexus cannot send to a model; send its "
                "text as input_text.",
                where,
            )
        else:
            raise _invalid(
                f"'{where}' has type {part.get('type')!r:.60}; Nexus takes input_text, "
                "input_image, output_text and refusal parts.",
                f"{where}.type",
            )
    return out


def _image(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise _invalid(
            f"'{where}.image_url' must be the image's URL or a data URL (an image by "
            "file_id needs OpenAI's file store).",
            f"{where}.image_url",
        )
    image: dict[str, Any] = {"url": url}
    if isinstance(part.get("detail"), str):
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _tool_call(item: Mapping[str, Any], param: str) -> dict[str, Any]:
    call_id = _string(item.get("call_id"), f"{param}.call_id", empty=False)
    name = _string(item.get("name"), f"{param}.name", empty=False)
    arguments = _string(item.get("arguments"), f"{param}.arguments")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_output(item: Mapping[str, Any], param: str) -> Message:
    call_id = _string(item.get("call_id"), f"{param}.call_id", empty=False)
    output = item.get("output")
    content: str | list[dict[str, Any]]
    if isinstance(output, str):
        content = output
    elif isinstance(output, list):
        parts = _parts(output, f"{param}.output", refusals=False)
        if all(part["type"] == "text" for part in parts):
            content = "".join(part["text"] for part in parts)
        else:
            content = parts
    else:
        raise _invalid(
            f"'{param}.output' must be a string or an array of input_text / input_image parts.",
            f"{param}.output",
        )
    return {"role": "tool", "tool_call_id": call_id, "content": content}


# -- tools and formats -----------------------------------------------------------------


def _chat_tools(value: object) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid("'tools' must be an array of tool definitions.", "tools")
    tools = []
    for index, tool in enumerate(value):
        param = f"tools[{index}]"
        tool = _object(tool, param, 'e.g. {"type": "function", "name": ...}')
        kind = tool.get("type")
        if kind != "function":
            raise _invalid(
                f"'{param}' has type {kind!r:.60}, a tool OpenAI runs on its own servers; "
                "Nexus serves only tools of type 'function', which your code runs.",
                f"{param}.type",
            )
        # Flat, as the Responses API has it; the chat shape nested under "function" too.
        spec = tool["function"] if isinstance(tool.get("function"), dict) else tool
        function: dict[str, Any] = {"name": _string(spec.get("name"), f"{param}.name",
                                                    empty=False)}  # fmt: skip
        for key in ("description", "parameters", "strict"):
            if spec.get(key) is not None:
                function[key] = spec[key]
        tools.append({"type": "function", "function": function})
    return tools


ToolChoice = str | dict[str, Any]


def _chat_tool_choice(
    choice: object, tools: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], ToolChoice]:
    """The chat ``tool_choice`` (and the tools it leaves) of a Responses one."""
    if isinstance(choice, str) and choice in _TOOL_CHOICES:
        return tools, choice
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function":
            name = _string(choice.get("name"), "tool_choice.name", empty=False)
            return tools, {"type": "function", "function": {"name": name}}
        if kind == "allowed_tools":
            return _allowed_tools(choice, tools)
        raise _invalid(
            f"'tool_choice' has type {kind!r:.60}; Nexus serves only function tools, so it "
            "takes none, auto, required, a function or allowed_tools.",
            "tool_choice",
        )
    raise _invalid(
        "'tool_choice' must be none, auto, required, or an object such as "
        '{"type": "function", "name": "..."}.',
        "tool_choice",
    )


def _allowed_tools(
    choice: Mapping[str, Any], tools: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], ToolChoice]:
    mode = choice.get("mode", "auto")
    if mode not in ("auto", "required"):
        raise _invalid("'tool_choice.mode' must be auto or required.", "tool_choice.mode")
    allowed = choice.get("tools")
    if not isinstance(allowed, list):
        raise _invalid("'tool_choice.tools' must be an array of tools.", "tool_choice.tools")
    names = {t["name"] for t in allowed if isinstance(t, dict) and isinstance(t.get("name"), str)}
    return [t for t in tools if t["function"]["name"] in names], mode


_FORMATS: Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any] | None]] = {
    "text": lambda _: None,
    "json_object": lambda _: {"type": "json_object"},
    "json_schema": lambda spec: {
        "type": "json_schema",
        "json_schema": {
            key: spec[key]
            for key in ("name", "schema", "strict", "description")
            if spec.get(key) is not None
        },
    },
}


def _response_format(text: Mapping[str, Any]) -> dict[str, Any] | None:
    spec = text.get("format")
    if spec is None:
        return None
    spec = _object(spec, "text.format", 'e.g. {"type": "json_schema", "name", "schema"}')
    convert = _FORMATS.get(_kind(spec.get("type")))
    if convert is None:
        raise _invalid(
            f"'text.format.type' must be text, json_object or json_schema, got "
            f"{spec.get('type')!r:.40}.",
            "text.format.type",
        )
    if spec.get("type") == "json_schema":
        _string(spec.get("name"), "text.format.name", empty=False)
        _object(spec.get("schema"), "text.format.schema", "a JSON Schema")
    return convert(spec)
