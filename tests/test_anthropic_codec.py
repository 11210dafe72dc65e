"""The Anthropic Messages codec without I/O: requests → chat, chunks → events, ids."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_trio.config import RoutingSettings
from nexus_trio.dialects.anthropic import parse_count_tokens_request, parse_messages_request
from nexus_trio.dialects.anthropic_events import (
    MessageAssembler,
    MessageEvents,
    MessagesOrigin,
    anthropic_error,
    refusal_message,
)
from nexus_trio.dialects.anthropic_ids import ESCAPE, client_tool_id, upstream_tool_id
from nexus_trio.errors import RequestError

ROUTING = RoutingSettings()
SAFE = re.compile(r"[A-Za-z0-9_-]+")


def parse(request: dict[str, Any]) -> dict[str, Any]:
    chat = parse_messages_request(json.dumps(request).encode(), ROUTING)
    assert json.loads(chat.body) == chat.payload
    return chat.payload


def request(*messages: Any, **fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 64, "messages": list(messages), **fields}


USER_HI = {"role": "user", "content": "Hi"}


# -- tool-call ids ---------------------------------------------------------------------


@given(st.text())
def test_any_backend_id_round_trips_through_a_safe_client_id(upstream: str) -> None:
    shown = client_tool_id(upstream)
    assert SAFE.fullmatch(shown)
    assert upstream_tool_id(shown) == upstream


@given(st.from_regex(SAFE, fullmatch=True))
def test_safe_ids_pass_unchanged_unless_they_look_escaped(upstream: str) -> None:
    shown = client_tool_id(upstream)
    assert (shown == upstream) == (not upstream.startswith(ESCAPE))
    assert upstream_tool_id(shown) == upstream


def test_kimi_ids_are_escaped_and_foreign_ids_go_as_they_came() -> None:
    assert client_tool_id("call_abc") == "call_abc"
    assert client_tool_id("functions.Bash:0") != "functions.Bash:0"
    assert upstream_tool_id(client_tool_id("functions.Bash:0")) == "functions.Bash:0"
    assert upstream_tool_id("toolu_01ABC") == "toolu_01ABC"
    assert upstream_tool_id(ESCAPE + "***") == ESCAPE + "***"  # not base64url: not ours


# -- requests ----------------------------------------------------------------------------


def test_a_plain_request_becomes_a_streamed_chat_request() -> None:
    chat = parse_messages_request(json.dumps(request(USER_HI, stream=True)).encode(), ROUTING)
    assert chat.payload == {
        "model": "m",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 64,
    }
    assert chat.streamed_upstream
    assert chat.needs.stream
    assert not chat.client_wants_usage
    assert chat.origin.model == "m"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"not json", None),
        (b"[]", None),
        (json.dumps({"model": "m", "messages": [USER_HI]}).encode(), "max_tokens"),
        (json.dumps(request(USER_HI, max_tokens=0)).encode(), "max_tokens"),
        (json.dumps(request(USER_HI, max_tokens=True)).encode(), "max_tokens"),
        (json.dumps({"max_tokens": 5, "messages": [USER_HI]}).encode(), "model"),
        (json.dumps(request()).encode(), "messages"),
        (json.dumps(request({"role": "tool", "content": "x"})).encode(), "messages[0].role"),
        (json.dumps(request(USER_HI, stream="yes")).encode(), "stream"),
        (json.dumps(request(USER_HI, system=5)).encode(), "system"),
        (json.dumps(request(USER_HI, stop_sequences="x")).encode(), "stop_sequences"),
        (json.dumps(request(USER_HI, temperature="hot")).encode(), "temperature"),
        (
            json.dumps(
                request(
                    USER_HI,
                    tools=[{"name": "t", "input_schema": {"type": "object"}}],
                    tool_choice={"type": "maybe"},
                )
            ).encode(),
            "tool_choice.type",
        ),
        (
            json.dumps(
                request({"role": "user", "content": [{"type": "tool_use", "id": "x"}]})
            ).encode(),
            "messages[0].content[0]",
        ),
        (
            json.dumps(
                request(
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "file", "id": "f"}}],
                    }
                )
            ).encode(),
            "messages[0].content[0].source.type",
        ),
        (json.dumps(request({"role": "user", "content": ""})).encode(), "messages"),
    ],
)
def test_a_bad_request_is_refused_naming_the_field(body: bytes, param: str | None) -> None:
    with pytest.raises(RequestError) as caught:
        parse_messages_request(body, ROUTING)
    assert caught.value.status == 400
    if param is not None:
        assert caught.value.param == param


def test_system_blocks_join_and_the_billing_hash_is_fixed() -> None:
    def system_of(cch: str) -> str:
        payload = parse(
            request(
                USER_HI,
                system=[
                    {
                        "type": "text",
                        "text": f"x-anthropic-billing-header: cc_version=2.1.90.abc; "
                        f"cc_entrypoint=cli; cch={cch};",
                    },
                    {"type": "text", "text": "You are Claude Code.", "cache_control": {}},
                    {"type": "text", "text": ""},
                ],
            )
        )
        assert payload["messages"][0]["role"] == "system"
        return str(payload["messages"][0]["content"])

    first, second = system_of("1a2b3"), system_of("ffe09")
    assert first == second  # the backend's prefix cache hits
    assert first.endswith("cch=fffff;\n\nYou are Claude Code.")
    assert "cc_version=2.1.90.abc" in first
    # Only the billing line is touched.
    payload = parse(request(USER_HI, system="Keep cch=12345; as it is"))
    assert payload["messages"][0]["content"] == "Keep cch=12345; as it is"


def test_a_system_message_inside_messages_stays_in_place() -> None:
    payload = parse(
        request(
            USER_HI,
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Go on"},
            {"role": "system", "content": [{"type": "text", "text": "Today is Monday."}]},
            system="Top",
        )
    )
    assert [m["role"] for m in payload["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "system",
    ]
    assert payload["messages"][-1]["content"] == "Today is Monday."


def test_content_blocks_become_parts() -> None:
    payload = parse(
        request(
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": ""},
                    {"type": "text", "text": "Look:"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                    {"type": "document", "source": {"type": "text", "data": "A doc."}},
                    {"type": "some_future_block", "whatever": 1},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "xx"},
                    {"type": "text", "text": "Seen."},
                ],
            },
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "only"}]},
        )
    )
    assert payload["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                {"type": "text", "text": "A doc."},
            ],
        },
        {"role": "assistant", "content": "Seen."},
    ]
    assert parse_messages_request(
        json.dumps(payload | {"messages": [{"role": "user", "content": "x"}]}).encode(),
        ROUTING,
    )


def test_tool_use_and_results_keep_the_backend_ids_and_come_before_the_text() -> None:
    kimi = "functions.Bash:0"
    payload = parse(
        request(
            {"role": "user", "content": "List files"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Running."},
                    {
                        "type": "tool_use",
                        "id": client_tool_id(kimi),
                        "name": "Bash",
                        "input": {"command": "ls", "n": [1, 2]},
                    },
                    {"type": "tool_use", "id": "call_2", "name": "Read", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And then?"},
                    {"type": "tool_result", "tool_use_id": client_tool_id(kimi), "content": "a b"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_2",
                        "is_error": True,
                        "content": [
                            {"type": "text", "text": "No such file"},
                            {
                                "type": "image",
                                "source": {"type": "url", "url": "https://x/shot.png"},
                            },
                        ],
                    },
                ],
            },
            tools=[
                {"name": "Bash", "description": "Run", "input_schema": {"type": "object"}},
                {"name": "Read", "input_schema": {"type": "object"}, "strict": True},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
            ],
        )
    )
    messages = payload["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": "Running.",
        "tool_calls": [
            {
                "id": kimi,
                "type": "function",
                "function": {"name": "Bash", "arguments": '{"command":"ls","n":[1,2]}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "Read", "arguments": "{}"}},
        ],
    }
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": kimi, "content": "a b"},
        {"role": "tool", "tool_call_id": "call_2", "content": "Error: No such file"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "And then?"},
                {"type": "image_url", "image_url": {"url": "https://x/shot.png"}},
            ],
        },
    ]
    assert payload["tools"] == [
        {
            "type": "function",
            "function": {"name": "Bash", "parameters": {"type": "object"}, "description": "Run"},
        },
        {
            "type": "function",
            "function": {"name": "Read", "parameters": {"type": "object"}, "strict": True},
        },
    ]
    assert payload["tool_choice"] == "auto"
    assert payload["parallel_tool_calls"] is True


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", True),
        ({"type": "any"}, "required", True),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        (
            {"type": "tool", "name": "Bash", "disable_parallel_tool_use": True},
            {"type": "function", "function": {"name": "Bash"}},
            False,
        ),
        ({"type": "none"}, "none", None),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: Any, parallel: bool | None) -> None:
    tools = [{"name": "Bash", "input_schema": {"type": "object"}}]
    chat = parse_messages_request(
        json.dumps(request(USER_HI, tools=tools, tool_choice=choice)).encode(), ROUTING
    )
    assert chat.payload["tool_choice"] == expected
    assert chat.payload.get("parallel_tool_calls") == parallel
    assert chat.needs.tools == (choice["type"] != "none")


def test_sampling_fields_map_and_the_rest_is_ignored() -> None:
    payload = parse(
        request(
            USER_HI,
            stop_sequences=["END", "\n\nHuman:"],
            temperature=0.2,
            top_p=0.9,
            top_k=20,
            metadata={"user_id": "u"},
            thinking={"type": "adaptive"},
            cache_control={"type": "ephemeral"},
            context_management={"edits": [{"type": "clear_thinking_20251015"}]},
            output_config={"effort": "high"},
            service_tier="auto",
            container=None,
            some_future_field={"a": 1},
        )
    )
    assert payload["stop"] == ["END", "\n\nHuman:"]
    assert (payload["temperature"], payload["top_p"], payload["top_k"]) == (0.2, 0.9, 20)
    for key in (
        "metadata",
        "thinking",
        "cache_control",
        "context_management",
        "service_tier",
        "some_future_field",
        "response_format",
        "user",
    ):
        assert key not in payload


def test_structured_output_becomes_a_response_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    chat = parse_messages_request(
        json.dumps(
            request(USER_HI, output_config={"format": {"type": "json_schema", "schema": schema}})
        ).encode(),
        ROUTING,
    )
    assert chat.payload["response_format"]["json_schema"]["schema"] == schema
    assert chat.needs.json


def test_count_tokens_needs_no_max_tokens() -> None:
    chat = parse_count_tokens_request(json.dumps({"model": "m", "messages": [USER_HI]}).encode())
    assert chat.payload["messages"] == [{"role": "user", "content": "Hi"}]
    with pytest.raises(RequestError):
        parse_count_tokens_request(b'{"model": "m"}')


# Any valid request: nothing the backend needs is lost.

backend_ids = st.text(min_size=1, max_size=12)
texts = st.text(min_size=1, max_size=20)
images = st.one_of(
    st.builds(
        lambda data: {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": data},
        },
        st.text("ABCDEFabcdef0123456789+/", min_size=1, max_size=12),
    ),
    st.builds(
        lambda path: {"type": "image", "source": {"type": "url", "url": f"https://x/{path}"}},
        st.text("abcxyz", min_size=1, max_size=8),
    ),
)
inputs = st.dictionaries(
    st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)), max_size=3
)


@st.composite
def conversations(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, str, Any]]]:
    """A valid request, and the tool calls it makes: (backend id, name, input)."""
    turns: list[dict[str, Any]] = [{"role": "user", "content": draw(texts)}]
    calls: list[tuple[str, str, Any]] = []
    for _ in range(draw(st.integers(0, 3))):
        made = draw(
            st.lists(st.tuples(backend_ids, texts, inputs), max_size=3, unique_by=lambda c: c[0])
        )
        said = draw(st.lists(texts, max_size=2))
        turns.append(
            {
                "role": "assistant",
                "content": [{"type": "text", "text": t} for t in said]
                + [
                    {"type": "tool_use", "id": client_tool_id(i), "name": n, "input": a}
                    for i, n, a in made
                ],
            }
        )
        results: list[dict[str, Any]] = [
            {
                "type": "tool_result",
                "tool_use_id": client_tool_id(i),
                "content": draw(
                    st.one_of(
                        texts,
                        st.lists(
                            st.builds(lambda t: {"type": "text", "text": t}, texts), max_size=2
                        ),
                    )
                ),
            }
            for i, _, _ in made
        ]
        user = draw(
            st.lists(
                st.one_of(st.builds(lambda t: {"type": "text", "text": t}, texts), images),
                max_size=3,
            )
        )
        content = draw(st.permutations(results + user)) if results or user else None
        turns.append({"role": "user", "content": content or draw(texts)})
        calls += made
    system = draw(
        st.one_of(
            st.none(), texts, st.lists(st.builds(lambda t: {"type": "text", "text": t}, texts))
        )
    )
    body = request(*turns)
    if system is not None:
        body["system"] = system
    return body, calls


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if p.get("type") == "text"]
    return []


@given(conversations())
def test_any_valid_request_loses_nothing_the_backend_needs(
    case: tuple[dict[str, Any], list[tuple[str, str, Any]]],
) -> None:
    body, calls = case
    messages = parse(body)["messages"]
    upstream_calls = [c for m in messages for c in m.get("tool_calls", ())]
    assert [
        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in upstream_calls
    ] == calls
    results = [m for m in messages if m["role"] == "tool"]
    assert {m["tool_call_id"] for m in results} == {c[0] for c in calls}
    # Every tool message answers a call made earlier, and comes before the user's text.
    seen: set[str] = set()
    for position, message in enumerate(messages):
        seen |= {c["id"] for c in message.get("tool_calls", ())}
        if message["role"] == "tool":
            assert message["tool_call_id"] in seen
            assert messages[position - 1]["role"] in ("assistant", "tool")
    every_text = [t for m in messages for t in _texts(m["content"])]
    urls = [
        p["image_url"]["url"]
        for m in messages
        if isinstance(m["content"], list)
        for p in m["content"]
        if p["type"] == "image_url"
    ]
    joined = "\n".join(every_text)
    for turn in body["messages"]:
        blocks = (
            turn["content"]
            if isinstance(turn["content"], list)
            else [{"type": "text", "text": turn["content"]}]
        )
        for block in blocks:
            if block["type"] == "text":
                assert block["text"] in joined
            elif block["type"] == "image":
                source = block["source"]
                url = source.get("url") or f"data:image/png;base64,{source['data']}"
                assert url in urls
            elif block["type"] == "tool_result":
                content = block["content"]
                for text in _texts(content):
                    assert text in joined
    system = body.get("system")
    for text in _texts(system) if system is not None else []:
        assert text in str(messages[0]["content"])


# -- events ------------------------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **choice: Any) -> Any:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish, **choice}],
    }


def run(chunks: list[Any], origin: MessagesOrigin | None = None) -> list[tuple[str, Any]]:
    events = MessageEvents(origin or MessagesOrigin(model="claude-x"))
    out = [events.start()]
    for c in chunks:
        out += events.feed(c)
    return out + events.finish({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})


def whole(events: list[tuple[str, Any]]) -> dict[str, Any]:
    assembler = MessageAssembler()
    assembler.apply(events)
    return assembler.result()


def test_thinking_text_and_tools_in_order_with_usage() -> None:
    events = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning_content": "Let me "}),
            chunk({"reasoning_content": "think."}),
            chunk({"content": "Sure."}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "functions.Bash:0",
                            "type": "function",
                            "function": {"name": "Bash", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"command":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "ls"}'}}]}),
            chunk(finish="tool_calls"),
        ]
    )
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    message = whole(events)
    assert message["model"] == "claude-x"
    assert message["content"] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": ""},
        {"type": "text", "text": "Sure."},
        {
            "type": "tool_use",
            "id": client_tool_id("functions.Bash:0"),
            "name": "Bash",
            "input": {"command": "ls"},
        },
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"] == {"input_tokens": 7, "output_tokens": 3}


def test_parallel_calls_at_index_0_are_told_apart_by_id() -> None:
    def call(call_id: str, name: str, arguments: str) -> Any:
        return chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                ]
            }
        )

    message = whole(
        run([call("a", "Read", '{"p": 1}'), call("b", "Read", '{"p": 2}'), chunk(finish="stop")])
    )
    assert [(b["id"], b["input"]) for b in message["content"]] == [("a", {"p": 1}), ("b", {"p": 2})]
    assert message["stop_reason"] == "tool_use"  # Ollama says "stop" after tool calls


@pytest.mark.parametrize(
    ("finish", "choice", "stop_reason", "stop_sequence"),
    [
        ("stop", {}, "end_turn", None),
        ("stop", {"stop_reason": "END"}, "stop_sequence", "END"),
        ("stop", {"stop_reason": 128009}, "end_turn", None),  # vLLM: the EOS token id
        ("stop", {"stop_reason": "OTHER"}, "end_turn", None),
        ("length", {}, "max_tokens", None),
        ("content_filter", {}, "refusal", None),
        (None, {}, "end_turn", None),
    ],
)
def test_stop_reasons(
    finish: str | None, choice: dict[str, Any], stop_reason: str, stop_sequence: str | None
) -> None:
    origin = MessagesOrigin(model="m", stop_sequences=("END",))
    message = whole(run([chunk({"content": "x"}), chunk(finish=finish, **choice)], origin))
    assert (message["stop_reason"], message["stop_sequence"]) == (stop_reason, stop_sequence)


def test_broken_tool_arguments_become_an_empty_input() -> None:
    message = whole(
        run(
            [
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "x",
                                "function": {"name": "Bash", "arguments": '{"command": "l'},
                            }
                        ]
                    }
                ),
                chunk(finish="tool_calls"),
            ]
        )
    )
    assert message["content"][0]["input"] == {}


def test_a_failure_closes_the_open_block_then_errs_once() -> None:
    events = MessageEvents(MessagesOrigin(model="m"))
    out = [events.start(), *events.feed(chunk({"content": "Hel"}))]
    out += events.fail("api_error", "backend died")
    assert [n for n, _ in out][-2:] == ["content_block_stop", "error"]
    assert out[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "backend died"},
    }
    assert events.finish({}) == []
    assert events.fail("x", "y") == []


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, (400, "invalid_request_error")),
        (401, (401, "authentication_error")),
        (403, (403, "permission_error")),
        (404, (404, "not_found_error")),
        (409, (409, "invalid_request_error")),
        (413, (413, "request_too_large")),
        (429, (429, "rate_limit_error")),
        (500, (500, "api_error")),
        (502, (502, "api_error")),
        (503, (529, "overloaded_error")),
        (504, (504, "timeout_error")),
    ],
)
def test_error_statuses(status: int, expected: tuple[int, str]) -> None:
    assert anthropic_error(status) == expected


def test_refusal_messages_of_every_shape() -> None:
    assert refusal_message(b'{"error": {"message": "bad", "type": "x"}}', 400) == "bad"
    assert refusal_message(b'{"error": "model not found"}', 404) == "model not found"
    assert refusal_message(b"plain text", 500) == "plain text"
    assert refusal_message(b"", 500) == "The backend answered HTTP 500."


# Any upstream chunk sequence gives a well-formed event sequence.

tool_deltas = st.builds(
    lambda index, call_id, name, arguments: {
        "tool_calls": [
            {k: v for k, v in (("index", index), ("id", call_id)) if v is not None}
            | {
                "function": {
                    k: v for k, v in (("name", name), ("arguments", arguments)) if v is not None
                }
            }
        ]
    },
    st.sampled_from([0, 0, 1, 2]),
    st.one_of(st.none(), st.sampled_from(["a", "b", "functions.X:0", ""])),
    st.one_of(st.none(), st.sampled_from(["Read", "Bash"])),
    st.one_of(st.none(), st.text(max_size=6)),
)
deltas = st.one_of(
    st.builds(lambda t: {"content": t}, st.text(max_size=6)),
    st.builds(lambda t: {"reasoning_content": t}, st.text(max_size=6)),
    st.builds(lambda t: {"reasoning": t}, st.text(max_size=6)),
    st.just({"role": "assistant", "content": None}),
    tool_deltas,
)
upstream_chunks = st.lists(
    st.one_of(
        st.builds(chunk, deltas),
        st.builds(
            lambda f: chunk(finish=f),
            st.sampled_from(["stop", "length", "tool_calls", "content_filter", "weird"]),
        ),
        st.just({"id": "c", "choices": [], "usage": {"prompt_tokens": 1}}),
    ),
    max_size=25,
)


def check_well_formed(events: list[tuple[str, Any]]) -> None:
    assert events[0][0] == "message_start"
    assert events[0][1]["message"]["usage"] == {"input_tokens": 0, "output_tokens": 0}
    started: list[int] = []
    open_index: int | None = None
    terminals = 0
    for position, (name, data) in enumerate(events[1:], start=1):
        assert data["type"] == name
        assert terminals == 0, "nothing after the terminal event"
        if name == "content_block_start":
            assert open_index is None, "one block open at a time"
            assert data["index"] == len(started), "numbered from 0 in start order"
            started.append(data["index"])
            open_index = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_index
            kind = {
                "text_delta": "text",
                "thinking_delta": "thinking",
                "input_json_delta": "tool_use",
            }[data["delta"]["type"]]
            assert (
                events[[e[1].get("index") for e in events].index(data["index"])][1][
                    "content_block"
                ]["type"]
                == kind
            )
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        elif name == "message_delta":
            assert open_index is None
            assert events[position + 1][0] == "message_stop"
            assert isinstance(data["usage"]["output_tokens"], int)
        elif name in ("message_stop", "error"):
            assert open_index is None
            terminals += 1
        else:
            raise AssertionError(f"unexpected event {name}")
    assert terminals == 1
    assert events[-1][0] in ("message_stop", "error")


@given(upstream_chunks, st.booleans())
def test_any_chunk_sequence_gives_well_formed_events(chunks: list[Any], cut: bool) -> None:
    events = MessageEvents(MessagesOrigin(model="m"))
    out = [events.start()]
    for c in chunks:
        out += events.feed(c)
    out += events.fail("api_error", "cut") if cut else events.finish({"completion_tokens": 2})
    check_well_formed(out)
    # The text and the arguments are all there, in order.
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    sent = "".join(d["delta"].get("text", "") for n, d in out if n == "content_block_delta")
    assert sent == text
    arguments = "".join(
        call.get("function", {}).get("arguments") or ""
        for c in chunks
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls", ())
    )
    sent = "".join(d["delta"].get("partial_json", "") for n, d in out if n == "content_block_delta")
    assert sent == arguments
    if not cut:
        whole(out)  # the whole message assembles from any of them
