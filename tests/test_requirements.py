"""Reading a chat request: no body makes anything but a 400 that names the field, and a
valid body is forwarded byte for byte (or with only its model changed)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nexus_trio.config import RoutingSettings
from nexus_trio.dialects.openai_chat import parse_chat_request as parse_with
from nexus_trio.errors import RequestError
from nexus_trio.routing.requirements import ChatRequest

STREAM_UPSTREAM = RoutingSettings()
AS_SENT = RoutingSettings(stream_upstream=False)


def parse_chat_request(body: bytes, *, stream_upstream: bool = True) -> ChatRequest:
    return parse_with(body, STREAM_UPSTREAM if stream_upstream else AS_SENT)


IMAGE_PARTS = ("image_url", "input_image", "image")
FIELDS = (
    "model",
    "messages",
    "stream",
    "stop",
    "tools",
    "tool_choice",
    "max_tokens",
    "max_completion_tokens",
    "response_format",
    "n",
    "logprobs",
    "stream_options",
)

PROPERTY = settings(max_examples=150, deadline=None)


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def hello(**fields: Any) -> dict[str, Any]:
    return {"model": "llama3:8b", "messages": [{"role": "user", "content": "Hi"}], **fields}


# -- what a client may send -----------------------------------------------------------------------

text = st.text(max_size=30)
scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | text  # NaN, ±inf too
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
comparable_json = st.recursive(  # no NaN, so a round trip compares equal
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)

text_part = st.fixed_dictionaries({"type": st.just("text"), "text": text})
image_part = st.fixed_dictionaries(
    {
        "type": st.sampled_from(IMAGE_PARTS),
        "image_url": st.just({"url": "data:image/png;base64,iVBORw0KGgo="}),
    }
)
valid_content = st.none() | text | st.lists(text_part | image_part, max_size=3)
valid_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"])},
    optional={"content": valid_content},
)
tool = st.just({"type": "function", "function": {"name": "get_weather", "parameters": {}}})
model_names = st.text(min_size=1, max_size=40).filter(str.strip)
counts = st.none() | st.integers(1, 10**6)

VALID: dict[str, st.SearchStrategy[Any]] = {
    "stream": st.none() | st.booleans(),
    "stop": st.none() | text | st.lists(text, max_size=4),
    "tools": st.none() | st.lists(tool, max_size=2),
    "tool_choice": st.sampled_from(["auto", "none", "required"])
    | st.just({"type": "function", "function": {"name": "get_weather"}}),
    "max_tokens": counts,
    "max_completion_tokens": counts,
    "response_format": st.none()
    | st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema"])}),
    "n": st.none() | st.integers(1, 3),
    "logprobs": st.none() | st.booleans(),
    "stream_options": st.none()
    | st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
}
extra_fields = st.dictionaries(text.filter(lambda k: k not in FIELDS), comparable_json, max_size=3)


@st.composite
def valid_payloads(draw: st.DrawFn) -> dict[str, Any]:
    payload = draw(
        st.fixed_dictionaries(
            {"model": model_names, "messages": st.lists(valid_message, min_size=1, max_size=4)},
            optional=VALID,
        )
    )
    return {**draw(extra_fields), **payload}


# Anything at all. Each field is mostly valid, so that one wrong field is often the only one.
def mostly(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(valid, valid, valid, json_values)


any_message = mostly(valid_message) | st.fixed_dictionaries(
    {}, optional={"role": mostly(st.just("user")), "content": mostly(valid_content)}
)
any_content_parts = st.lists(mostly(text_part | image_part), max_size=3)
any_messages = mostly(
    st.lists(any_message, min_size=1, max_size=3)
    | st.lists(
        st.fixed_dictionaries({"role": st.just("user"), "content": any_content_parts}),
        min_size=1,
        max_size=2,
    )
)
any_fields = {name: mostly(strategy) for name, strategy in VALID.items()}
shaped_objects = st.fixed_dictionaries(
    {"model": mostly(model_names), "messages": any_messages}, optional=any_fields
) | st.fixed_dictionaries({}, optional={"model": model_names, "messages": any_messages})


def nested(n: int, prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    return prefix + b"[" * n + b"]" * n + suffix


# A valid request with one field (or one message) replaced by any JSON value at all.
spoiled = st.builds(
    lambda payload, name, value: {**payload, name: value},
    valid_payloads(),
    st.sampled_from(FIELDS),
    json_values,
) | st.builds(
    lambda payload, value: {**payload, "messages": [*payload["messages"], value]},
    valid_payloads(),
    any_message,
)


def to_json(payload: Any, ensure_ascii: bool, encoding: str) -> bytes:
    return json.dumps(payload, ensure_ascii=ensure_ascii).encode(encoding)


encodings = st.sampled_from(["utf-8", "utf-8", "utf-16", "utf-32"])  # JSON allows all three
objects = st.builds(to_json, spoiled | shaped_objects, st.booleans(), encodings)
not_objects = st.one_of(
    st.builds(to_json, json_values.filter(lambda v: not isinstance(v, dict)), st.booleans(),
              encodings),
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.integers(1, 200_000).map(lambda n: b"[" * n),
    st.integers(1, 50_000).map(lambda n: b'{"a":' * n),
    st.integers(1, 100_000).map(
        lambda n: nested(n, b'{"model":"m","messages":[{"role":"user","content":', b"}]}")
    ),
)  # fmt: skip


# -- the reference: which fields of a payload are wrong -------------------------------------------


def positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def wrong_fields(body: bytes) -> set[str] | None:
    """Every ``param`` a client could be told to fix; None when the body is no JSON object."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(payload, dict):
        return None
    wrong = set()
    model = payload.get("model")
    if not (isinstance(model, str) and model.strip()):
        wrong.add("model")
    messages = payload.get("messages")
    if not (isinstance(messages, list) and messages):
        wrong.add("messages")
    else:
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                wrong.add(f"messages[{i}]")
                continue
            role = message.get("role")
            if not (isinstance(role, str) and role):
                wrong.add(f"messages[{i}].role")
            content = message.get("content")
            if isinstance(content, list):
                wrong |= {
                    f"messages[{i}].content[{j}]"
                    for j, part in enumerate(content)
                    if not isinstance(part, dict)
                }
            elif content is not None and not isinstance(content, str):
                wrong.add(f"messages[{i}].content")
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        wrong.add("stream")
    options = payload.get("stream_options")
    if stream is True and options is not None and not isinstance(options, dict):
        wrong.add("stream_options")
    stop = payload.get("stop")
    if not (
        stop is None
        or isinstance(stop, str)
        or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        wrong.add("stop")
    if payload.get("tools") is not None and not isinstance(payload["tools"], list):
        wrong.add("tools")
    if payload.get("response_format") is not None and not isinstance(
        payload["response_format"], dict
    ):
        wrong.add("response_format")
    for name in ("max_tokens", "max_completion_tokens"):
        if payload.get(name) is not None and not positive_int(payload[name]):
            wrong.add(name)
    return wrong


# -- properties ---------------------------------------------------------------------------------


def parse_or_error(body: bytes) -> ChatRequest | RequestError:
    try:
        return parse_chat_request(body)
    except RequestError as exc:  # anything else fails the test
        return exc


@PROPERTY
@given(body=not_objects)
def test_a_body_that_is_no_json_object_is_a_400_without_param(body: bytes) -> None:
    wrong = wrong_fields(body)  # None, unless st.binary or st.text made a JSON object
    result = parse_or_error(body)
    if isinstance(result, ChatRequest):
        assert wrong == set()
        return
    assert type(result) is RequestError
    assert result.status == 400
    assert result.message
    if wrong is None:
        assert result.param is None
    else:
        assert result.param in wrong


@settings(PROPERTY, max_examples=250)
@given(body=objects)
def test_an_object_parses_or_is_a_400_naming_a_wrong_field(body: bytes) -> None:
    wrong = wrong_fields(body)
    result = parse_or_error(body)
    if isinstance(result, ChatRequest):
        assert wrong == set(), f"accepted a body with wrong {wrong}"
        assert json.loads(result.body) == forwarded(json.loads(body), True)
        return
    assert type(result) is RequestError
    assert result.status == 400
    assert result.message
    assert wrong, "refused a valid body"
    assert result.param in wrong, (result.param, wrong)


def forwarded(payload: dict[str, Any], stream_upstream: bool) -> dict[str, Any]:
    """What a backend is sent: a stream asking for usage (Nexus counts every request's
    tokens, and assembles a whole answer from a stream), unless the answer could not be
    assembled from one or the setting is off for a client that asked for no stream."""
    stream = payload.get("stream") is True
    assemblable = payload.get("n") in (None, 1) and not payload.get("logprobs")
    if not stream and not (stream_upstream and assemblable):
        return payload
    options = payload.get("stream_options") if stream else None
    if isinstance(options, dict) and options.get("include_usage") is True:
        return payload
    return {**payload, "stream": True, "stream_options": {**(options or {}), "include_usage": True}}


def text_length(messages: list[dict[str, Any]]) -> int:
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(p["text"]) for p in content if p.get("type") == "text")
    return total


@PROPERTY
@given(
    payload=valid_payloads(),
    ensure_ascii=st.booleans(),
    other=model_names,
    stream_upstream=st.booleans(),
)
@example(  # an integer beyond 64 bits must reach the backend exactly, even rewritten
    payload={"model": "m", "messages": [{"role": "user"}], "": -9223372036854775809},
    ensure_ascii=False,
    other="n",
    stream_upstream=False,
)
@example(
    payload={"model": "m", "messages": [{"role": "user"}], "stream": False, "x": 2**70},
    ensure_ascii=True,
    other="n",
    stream_upstream=True,
)
def test_valid_bodies_are_forwarded_untouched_or_with_only_the_model_changed(
    payload: dict[str, Any], ensure_ascii: bool, other: str, stream_upstream: bool
) -> None:
    body = json.dumps(payload, ensure_ascii=ensure_ascii).encode()
    request = parse_chat_request(body, stream_upstream=stream_upstream)
    sent = forwarded(payload, stream_upstream)
    assert request.streamed_upstream is (sent.get("stream") is True)
    if sent is payload:
        assert request.body_for(payload["model"]) == body  # the client's bytes
    elif {"stream", "stream_options"}.isdisjoint(payload):  # the client's bytes, spliced
        assert request.body_for(payload["model"]) == (
            b'{"stream":true,"stream_options":{"include_usage":true},' + body[1:]
        )
    elif payload.get("stream") is True and "stream_options" not in payload:
        assert (
            request.body_for(payload["model"])
            == b'{"stream_options":{"include_usage":true},' + body[1:]
        )
    if sent is not payload:
        assert request.client_wants_usage is False
    assert json.loads(request.body_for(payload["model"])) == sent
    if other != payload["model"]:
        assert json.loads(request.body_for(other)) == {**sent, "model": other}

    needs = request.needs
    messages = payload["messages"]
    assert needs.model == payload["model"]
    assert needs.stream is bool(payload.get("stream"))
    assert needs.vision == any(
        isinstance(m.get("content"), list) and any(p["type"] in IMAGE_PARTS for p in m["content"])
        for m in messages
    )
    assert needs.tools == (bool(payload.get("tools")) and payload.get("tool_choice") != "none")
    assert needs.json == (
        (payload.get("response_format") or {}).get("type") in ("json_object", "json_schema")
    )
    completion = max(payload.get("max_tokens") or 0, payload.get("max_completion_tokens") or 0)
    # A low estimate: it never asks for more than one token per character of text.
    assert completion <= needs.context_tokens <= completion + text_length(messages)


# -- examples -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[" * 100_000,
        nested(100_000),
        b'{"a":' * 100_000,
        nested(50_000, b'{"model":"m","messages":[{"role":"user","content":', b"}]}"),
        b'"just a string"',
        b"null",
        b"[]",
    ],
)
def test_not_a_json_object_is_a_400_without_param(body: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        parse_chat_request(body)
    assert caught.value.status == 400
    assert caught.value.param is None
    assert "JSON" in caught.value.message


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"messages": [{"role": "user", "content": "Hi"}]}, "model"),
        (hello(model="   "), "model"),
        (hello(model=["llama3:8b"]), "model"),
        (hello(messages=[]), "messages"),
        (hello(messages={"role": "user"}), "messages"),
        (hello(messages=["Hi"]), "messages[0]"),
        (hello(messages=[{"role": "user", "content": "a"}, {"content": "b"}]), "messages[1].role"),
        (hello(messages=[{"role": "user", "content": {"text": "a"}}]), "messages[0].content"),
        (hello(messages=[{"role": "user", "content": ["a"]}]), "messages[0].content[0]"),
        (hello(stream="true"), "stream"),
        (hello(stream=1), "stream"),
        (hello(stop=["a", 1]), "stop"),
        (hello(stop=5), "stop"),
        (hello(tools={"type": "function"}), "tools"),
        (hello(response_format="json_object"), "response_format"),
        (hello(max_tokens=0), "max_tokens"),
        (hello(max_tokens=True), "max_tokens"),
        (hello(max_tokens=1.5), "max_tokens"),
        (hello(max_completion_tokens="100"), "max_completion_tokens"),
    ],
)
def test_a_wrong_field_is_named(payload: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_chat_request(encode(payload))
    assert caught.value.param == param
    assert caught.value.status == 400
    assert caught.value.message


def test_stop_may_be_a_string_or_a_list() -> None:
    assert parse_chat_request(encode(hello(stop="\n\n"))).payload["stop"] == "\n\n"
    assert parse_chat_request(encode(hello(stop=["a", "b"]))).payload["stop"] == ["a", "b"]


def test_stream_null_means_not_streaming() -> None:
    assert parse_chat_request(encode(hello(stream=None))).needs.stream is False
    assert parse_chat_request(encode(hello(stream=True))).needs.stream is True
    assert parse_chat_request(encode(hello())).needs.stream is False


@pytest.mark.parametrize("kind", IMAGE_PARTS)
def test_an_image_part_needs_vision(kind: str) -> None:
    parts = [{"type": "text", "text": "What is this?"}, {"type": kind, "image_url": {"url": "x"}}]
    request = parse_chat_request(encode(hello(messages=[{"role": "user", "content": parts}])))
    assert request.needs.vision
    assert not parse_chat_request(encode(hello())).needs.vision


@pytest.mark.parametrize(
    ("fields", "needs_tools"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, True),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"}, True),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"},
            False,
        ),
        ({"tools": []}, False),
        ({"tools": None}, False),
        ({}, False),
    ],
)
def test_tools_are_needed_unless_tool_choice_is_none(
    fields: dict[str, Any], needs_tools: bool
) -> None:
    assert parse_chat_request(encode(hello(**fields))).needs.tools is needs_tools


@pytest.mark.parametrize(
    ("response_format", "needs_json"),
    [
        ({"type": "json_object"}, True),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}, True),
        ({"type": "text"}, False),
        (None, False),
    ],
)
def test_json_response_format_needs_json(
    response_format: dict[str, Any] | None, needs_json: bool
) -> None:
    request = parse_chat_request(encode(hello(response_format=response_format)))
    assert request.needs.json is needs_json


def test_context_need_counts_the_prompt_and_the_completion() -> None:
    short = parse_chat_request(encode(hello(max_tokens=100))).needs.context_tokens
    long_prompt = hello(messages=[{"role": "user", "content": "word " * 40_000}], max_tokens=100)
    long = parse_chat_request(encode(long_prompt)).needs.context_tokens
    assert 100 <= short < long <= 100 + 200_000
    both = hello(max_tokens=10, max_completion_tokens=500)
    assert parse_chat_request(encode(both)).needs.context_tokens >= 500


def test_a_huge_prompt_parses() -> None:
    body = encode(hello(messages=[{"role": "user", "content": "é" * 4_000_000}]))
    as_sent = parse_chat_request(body, stream_upstream=False)
    assert as_sent.body_for("llama3:8b") is body  # not copied
    assert as_sent.needs.context_tokens > 100_000
    streamed = parse_chat_request(body)  # asks for a stream without re-encoding the rest
    assert streamed.body_for("llama3:8b").endswith(body[1:])


def test_unicode_survives_a_model_change() -> None:
    payload = hello(messages=[{"role": "user", "content": "naïve 日本語 🦙"}], model="lláma")
    request = parse_chat_request(json.dumps(payload, ensure_ascii=False).encode())
    sent = json.loads(request.body_for("llama3:8b"))
    assert sent == {**forwarded(payload, True), "model": "llama3:8b"}
    assert sent["messages"] == payload["messages"]


def test_a_lone_surrogate_survives_a_model_change() -> None:
    body = b'{"model": "house", "messages": [{"role": "user", "content": "\\ud800"}]}'
    request = parse_chat_request(body)
    changed = json.loads(request.body_for("llama3:8b"))
    assert changed["messages"] == [{"role": "user", "content": "\ud800"}]
    assert changed["model"] == "llama3:8b"
