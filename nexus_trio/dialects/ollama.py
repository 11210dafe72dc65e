"""Ollama's native API (``POST /api/chat``, ``POST /api/generate``): the request codec (pure).

`parse_ollama_chat` and `parse_ollama_generate` turn Ollama requests into the OpenAI chat
completion request every backend is asked (`nexus_trio.routing.requirements.ChatRequest`);
the answer is written back as Ollama's NDJSON lines by `nexus_trio.dialects.ollama_writer`.
Field by field (https://docs.ollama.com/api, ``api/types.go`` ``ChatRequest``,
``GenerateRequest``, ``Message``, ``Options``):

- ``messages``: ``system``/``user``/``assistant``/``tool`` with string ``content``;
  ``images`` (base64, or data URLs) → ``image_url`` parts with a ``data:`` URL (the type
  read from the image's first bytes); an assistant's ``tool_calls`` (``arguments`` a JSON
  object) → OpenAI calls with the JSON text of the object, and an id (``call_<m>_<c>``,
  the same for the same conversation, so prefix caches keep hitting) where Ollama gave
  none; a ``tool`` message's ``tool_call_id``, else its ``tool_name``, else the order of
  the answers, names the call it answers. ``thinking`` in past turns is dropped.
- ``tools`` as they are (Ollama's are OpenAI's); ``format``: ``"json"`` → ``json_object``,
  a JSON schema → ``json_schema``.
- ``options``: ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``,
  ``presence_penalty``, ``frequency_penalty`` as they are; ``num_predict`` →
  ``max_tokens`` (negative: no limit); ``num_ctx`` and every other runner option are
  Ollama's own and not translated.
- ``think``: a level (``"low"``, ``"medium"``, ``"high"``; ``"max"`` as ``"high"``) →
  ``reasoning_effort``; ``true`` asks nothing of the backend (a reasoning model reasons
  by its own configuration); ``false`` drops the backend's reasoning from the answer
  (``thinking`` is then never written). Ollama's own ``think: false`` also stops the
  model reasoning; no OpenAI field does that on every backend.
- ``keep_alive``, ``truncate``, ``shift``, ``template``, ``context`` are accepted and
  ignored (model residency is the backends' business).
- ``/api/generate``: ``system`` → a system message, ``prompt`` (with ``images``) → the
  user message. With ``suffix`` or ``raw: true`` it is a completion, not a chat turn
  (`generate_is_completion`), served elsewhere.

Model names: Ollama's clients tag every name (Open WebUI adds ``:latest`` to a name
without a tag), other backends list names without one; `resolve_model_name` accepts
either spelling wherever a model is named.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any

from nexus_trio import jsonparse
from nexus_trio.config import RoutingSettings
from nexus_trio.dialects.base import load_object
from nexus_trio.dialects.completions import parse_completion_request
from nexus_trio.dialects.openai_chat import chat_requirements
from nexus_trio.errors import RequestError
from nexus_trio.routing.requirements import ChatRequest

__all__ = [
    "OllamaOrigin",
    "generate_is_completion",
    "image_url",
    "load_body",
    "parse_ollama_chat",
    "parse_ollama_generate",
    "resolve_model_name",
]

Json = dict[str, Any]

LATEST = ":latest"
_ROLES = frozenset({"system", "user", "assistant", "tool"})
# Options that are OpenAI fields too, under the same name and meaning.
_SAME_OPTIONS: dict[str, tuple[type, ...]] = {
    "temperature": (int, float),
    "top_p": (int, float),
    "top_k": (int,),
    "seed": (int,),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
}
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "high"}
# The first bytes of an image's base64, and its media type (PNG, JPEG, GIF, WebP).
_IMAGE_MAGIC = (
    ("iVBORw0KGgo", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)


@dataclass(frozen=True, slots=True)
class OllamaOrigin:
    """What the writer needs of the client's request."""

    model: str  # the name the client asked for: every response line carries it
    shape: str = "chat"  # "chat" (``message``) or "generate" (``response``)
    think: bool = True  # False: the backend's reasoning is not written


def resolve_model_name(name: str, known: Collection[str]) -> str:
    """The model a client's ``name`` means among the ``known`` names (models and aliases):
    the name itself when known; else ``x:latest`` ↔ ``x``, the other spelling, when that
    one is known; else the name unchanged (routing then says it is not found).

    Example::

        resolve_model_name("qwen3:latest", ["qwen3"]) == "qwen3"
        resolve_model_name("llama3", ["llama3:latest"]) == "llama3:latest"
    """
    if name in known:
        return name
    if name.endswith(LATEST):
        other = name[: -len(LATEST)]
        return other if other and other in known else name
    if ":" not in name and name + LATEST in known:
        return name + LATEST
    return name


def _fail(message: str, param: str | None = None) -> RequestError:
    return RequestError(message, param=param)


def load_body(body: bytes) -> Json:
    """The request's JSON object.

    Raises:
        RequestError: not JSON, or not an object.
    """
    return load_object(body)


def _model(request: Json) -> str:
    model = request.get("model")
    if model is None:
        model = request.get("name")  # the older spelling
    if not isinstance(model, str) or not model.strip():
        raise _fail("model is required", "model")
    return model


def _stream(request: Json) -> bool:
    stream = request.get("stream", True)  # Ollama streams unless told not to
    if stream is None:
        return True
    if not isinstance(stream, bool):
        raise _fail(f"'stream' must be true or false, got {stream!r:.40}.", "stream")
    return stream


def image_url(image: object, where: str) -> Json:
    """An ``image_url`` part for one of Ollama's ``images`` (base64, or a data URL)."""
    if not isinstance(image, str) or not image:
        raise _fail(f"{where} must be a base64-encoded image.", where)
    if image.startswith("data:"):
        return {"type": "image_url", "image_url": {"url": image}}
    media = next((m for prefix, m in _IMAGE_MAGIC if image.startswith(prefix)), "image/jpeg")
    return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{image}"}}


def _content(message: Json, where: str) -> str | list[Json]:
    content = message.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise _fail(f"{where}.content must be a string.", f"{where}.content")
    images = message.get("images")
    if not images:
        return content
    if not isinstance(images, list):
        raise _fail(f"{where}.images must be an array of base64 images.", f"{where}.images")
    parts: list[Json] = [{"type": "text", "text": content}] if content else []
    parts += [image_url(image, f"{where}.images[{i}]") for i, image in enumerate(images)]
    return parts


def _arguments_text(arguments: object, where: str) -> str:
    if arguments is None:
        return "{}"
    if isinstance(arguments, str):  # some clients send OpenAI's string: taken as it is
        return arguments
    if not isinstance(arguments, dict):
        raise _fail(f"{where} must be a JSON object.", where)
    return jsonparse.dumps(arguments).decode()


def _tool_calls(calls: object, index: int) -> list[Json]:
    where = f"messages[{index}].tool_calls"
    if not isinstance(calls, list):
        raise _fail(f"{where} must be an array.", where)
    out = []
    for position, call in enumerate(calls):
        here = f"{where}[{position}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _fail(f"{here}.function.name is required.", f"{here}.function.name")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            call_id = f"call_{index}_{position}"
        arguments = _arguments_text(function.get("arguments"), f"{here}.function.arguments")
        out.append(
            {
                "id": call_id,
                "type": "function",
                "function": {"name": function["name"], "arguments": arguments},
            }
        )
    return out


def _messages(messages: object) -> list[Json]:
    if not isinstance(messages, list):
        raise _fail("'messages' must be an array of messages.", "messages")
    out: list[Json] = []
    unanswered: list[Json] = []  # calls of the last assistant turn not yet answered
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _fail(f"{where} must be an object.", where)
        role = message.get("role")
        if role not in _ROLES:
            raise _fail(
                f"{where}.role must be system, user, assistant or tool, got {role!r:.40}.",
                f"{where}.role",
            )
        content = _content(message, where)
        if role == "assistant":
            turn: Json = {"role": "assistant", "content": content}
            if message.get("tool_calls"):
                calls = _tool_calls(message["tool_calls"], index)
                turn["tool_calls"] = calls
                unanswered = list(calls)
                if not content:
                    turn["content"] = None  # OpenAI's null beside calls
            out.append(turn)
        elif role == "tool":
            call_id = _answered_call(message, unanswered, index)
            out.append({"role": "tool", "tool_call_id": call_id, "content": content})
        else:
            out.append({"role": role, "content": content})
    if not out:
        raise _fail("'messages' must not be empty.", "messages")
    return out


def _answered_call(message: Json, unanswered: list[Json], index: int) -> str:
    """The id of the call a tool message answers (and that call is then answered)."""
    call_id = message.get("tool_call_id")
    name = message.get("tool_name") or message.get("name")
    if isinstance(call_id, str) and call_id:
        match = next((c for c in unanswered if c["id"] == call_id), None)
    else:
        match = next((c for c in unanswered if c["function"]["name"] == name), None)
        match = match or (unanswered[0] if unanswered else None)
        call_id = match["id"] if match else f"call_{index}_0"
    if match is not None:
        unanswered.remove(match)
    return str(call_id)


def _format(value: object) -> Json | None:
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    raise _fail("'format' must be \"json\" or a JSON schema object.", "format")


def _options(options: object, payload: Json) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        raise _fail("'options' must be an object.", "options")
    for name, kinds in _SAME_OPTIONS.items():
        value = options.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise _fail(f"option {name!r} must be a number, got {value!r:.40}.", f"options.{name}")
        payload[name] = value
    predict = options.get("num_predict")
    if predict is not None:
        if isinstance(predict, bool) or not isinstance(predict, int):
            raise _fail("option 'num_predict' must be an integer.", "options.num_predict")
        if predict > 0:  # -1 (endless) and -2 (fill the context): no limit
            payload["max_tokens"] = predict
    stop = options.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _fail("option 'stop' must be an array of strings.", "options.stop")
        if stop:
            payload["stop"] = stop


def _think(value: object, payload: Json) -> bool:
    """Sets ``reasoning_effort`` for a level; whether reasoning is written back."""
    if value is None or value is True:
        return True
    if value is False:
        return False
    if isinstance(value, str) and value in _EFFORTS:
        payload["reasoning_effort"] = _EFFORTS[value]
        return True
    raise _fail(
        f"'think' must be true, false, or one of low, medium, high; got {value!r:.40}.", "think"
    )


def _request(
    request: Json, messages: list[Json], stream: bool, shape: str, known: Collection[str]
) -> ChatRequest:
    asked = _model(request)
    model = resolve_model_name(asked, known)
    payload: Json = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tools = request.get("tools")
    if tools:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise _fail("'tools' must be an array of tool definitions.", "tools")
        payload["tools"] = tools
    response_format = _format(request.get("format"))
    if response_format is not None:
        payload["response_format"] = response_format
    _options(request.get("options"), payload)
    think = _think(request.get("think"), payload)
    return ChatRequest(
        body=jsonparse.dumps(payload),
        payload=payload,
        needs=chat_requirements(payload, model, stream),
        streamed_upstream=True,
        client_wants_usage=False,
        origin=OllamaOrigin(model=asked, shape=shape, think=think),
    )


def parse_ollama_chat(body: bytes, known: Collection[str] = ()) -> ChatRequest:
    """A ``POST /api/chat`` body → the chat request that goes upstream (see the module
    docstring); ``known`` are the model names and aliases Nexus routes (for
    `resolve_model_name`).

    Raises:
        RequestError: the body is not JSON, or a field is wrong; the error names it.

    Example::

        chat = parse_ollama_chat(b'{"model": "m", "messages": [{"role": "user",'
                                 b' "content": "Hi"}]}')
        chat.payload["messages"] == [{"role": "user", "content": "Hi"}]
    """
    request = load_body(body)
    stream = _stream(request)
    _model(request)
    if "messages" not in request or request["messages"] is None:
        raise _fail("'messages' is required and must be a non-empty array.", "messages")
    return _request(request, _messages(request["messages"]), stream, "chat", known)


def generate_is_completion(request: Json) -> bool:
    """Whether a ``/api/generate`` request is a text completion rather than a chat turn:
    it has a ``suffix`` (fill-in-the-middle) or asks for ``raw`` prompting."""
    return bool(request.get("suffix")) or request.get("raw") is True


def parse_ollama_generate(body: bytes, known: Collection[str] = ()) -> ChatRequest:
    """A ``POST /api/generate`` body that is a chat turn (no ``suffix``, not ``raw``) → the
    chat request that goes upstream: ``system`` then ``prompt`` (with ``images``).

    Raises:
        RequestError: the body is not JSON, or a field is wrong.
    """
    request = load_body(body)
    stream = _stream(request)
    _model(request)
    messages: list[Json] = []
    system = request.get("system")
    if system:
        if not isinstance(system, str):
            raise _fail("'system' must be a string.", "system")
        messages.append({"role": "system", "content": system})
    prompt = request.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise _fail("'prompt' must be a string.", "prompt")
    user = _content({"content": prompt, "images": request.get("images")}, "request")
    messages.append({"role": "user", "content": user})
    return _request(request, messages, stream, "generate", known)


def parse_ollama_generate_completion(
    body: bytes, routing: RoutingSettings, known: Collection[str] = ()
) -> ChatRequest:
    """A ``POST /api/generate`` body with ``suffix`` or ``raw`` (`generate_is_completion`)
    → a text completion: the backends' own ``/v1/completions`` (fill-in-the-middle where a
    backend can, `nexus_trio.dialects.completions`), answered in generate's shape.

    ``prompt`` goes as it is (``raw``: no chat template; with a ``suffix``, the backend's
    fill-in-the-middle template); ``system`` has no place in a completion and is ignored;
    ``options`` as for chat (``num_predict`` → ``max_tokens``, ``stop``, sampling).

    Raises:
        RequestError: the body is not JSON, or a field is wrong; the error names it.
    """
    request = load_body(body)
    stream = _stream(request)
    asked = _model(request)
    prompt = request.get("prompt")
    if not isinstance(prompt, str):
        raise _fail("'prompt' must be a string.", "prompt")
    suffix = request.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise _fail("'suffix' must be a string.", "suffix")
    completion: Json = {"model": resolve_model_name(asked, known), "prompt": prompt,
                        "stream": stream}  # fmt: skip
    if suffix:
        completion["suffix"] = suffix
    _options(request.get("options"), completion)
    chat = parse_completion_request(jsonparse.dumps(completion), routing)
    return replace(chat, origin=OllamaOrigin(model=asked, shape="generate"))


def chat_parser(
    known: Callable[[], Collection[str]],
) -> Callable[[bytes, RoutingSettings], ChatRequest]:
    """`parse_ollama_chat` as a dialect's parser, resolving names among ``known()``."""
    return lambda body, routing: parse_ollama_chat(body, known())


def generate_parser(
    known: Callable[[], Collection[str]],
) -> Callable[[bytes, RoutingSettings], ChatRequest]:
    """`parse_ollama_generate` as a dialect's parser, resolving names among ``known()``: a
    chat turn, or a text completion when the request has ``suffix`` or ``raw``."""

    def parse(body: bytes, routing: RoutingSettings) -> ChatRequest:
        try:
            request = load_body(body)
        except RequestError:
            request = {}
        if generate_is_completion(request):
            return parse_ollama_generate_completion(body, routing, known())
        return parse_ollama_generate(body, known())

    return parse
