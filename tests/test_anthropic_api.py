"""The official anthropic SDK against Nexus's /v1/messages, in front of simulated backends."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
import trio

from nexus_trio.backends.tokenize import estimate_input_tokens
from nexus_trio.dialects import parse_count_tokens_request
from nexus_trio.testing import Flavor, SimModel, SimulatedBackend
from nexus_trio.testing._text import (
    answer_tokens,
    estimate_prompt_tokens,
    expected_answer,
    tool_arguments,
)
from nexus_trio.testing._tokenize import chat_prompt

from helpers import sim

MODEL = "llama3:8b"
ASKED: list[Any] = [{"role": "user", "content": "Tell me a long story, please."}]
UPSTREAM: list[Any] = [{"role": "user", "content": "Tell me a long story, please."}]
FULL = expected_answer(MODEL, UPSTREAM)
WEATHER: Any = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}
WEATHER_FUNCTION = {
    "type": "function",
    "function": {
        "name": WEATHER["name"],
        "description": WEATHER["description"],
        "parameters": WEATHER["input_schema"],
    },
}
PRIORITIES = {"a": {"priority": 1}, "b": {"priority": 2}}


async def raw_events(nexus: Any, body: dict[str, Any], path: str = "/v1/messages") -> Any:
    """POST a streamed Messages request; the (event, data) pairs as they came."""
    events: list[tuple[str, Any]] = []
    async with nexus.http.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        name = None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                assert name == data["type"], "every event is named by an event: line"
                events.append((name, data))
                name = None
    return events


async def streamed(client: anthropic.AsyncAnthropic, **request: Any) -> Any:
    """messages.stream to its end, every event read: the final message."""
    async with client.messages.stream(**request) as stream:
        async for _ in stream:
            pass
        return await stream.get_final_message()


@pytest.mark.parametrize("flavor", [Flavor.VLLM, Flavor.OLLAMA, Flavor.LLAMACPP])
async def test_create_answers_with_the_backends_text(start_nexus: Any, flavor: Flavor) -> None:
    backend = sim("a", flavor)
    nexus = await start_nexus([backend])
    raw = await nexus.anthropic().messages.with_raw_response.create(
        model=MODEL, max_tokens=512, messages=ASKED
    )
    message = await raw.parse()
    assert message.id.startswith("msg_")
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == FULL  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.usage.input_tokens == estimate_prompt_tokens(UPSTREAM)
    assert message.usage.output_tokens == len(answer_tokens(MODEL, UPSTREAM))
    assert raw.headers["x-nexus-backend"] == "a"
    assert raw.request_id == raw.headers["x-request-id"]
    assert backend.stats.last_chat_body is not None
    assert backend.stats.last_chat_body["messages"] == UPSTREAM
    assert backend.stats.last_chat_body["max_tokens"] == 512


@pytest.mark.parametrize("flavor", [Flavor.VLLM, Flavor.OLLAMA, Flavor.LLAMACPP])
async def test_stream_gives_the_same_text_and_usage(start_nexus: Any, flavor: Flavor) -> None:
    nexus = await start_nexus([sim("a", flavor)])
    kinds: list[str] = []
    async with nexus.anthropic().messages.stream(
        model=MODEL, max_tokens=512, messages=ASKED
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        message = await stream.get_final_message()
    assert text == FULL
    assert message.content[0].text == FULL  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == estimate_prompt_tokens(UPSTREAM)
    assert message.usage.output_tokens == len(answer_tokens(MODEL, UPSTREAM))
    events = await raw_events(nexus, {"model": MODEL, "max_tokens": 512, "messages": ASKED})
    kinds = [name for name, _ in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[0][1]["message"]["usage"] == {"input_tokens": 0, "output_tokens": 0}


async def test_max_tokens_stops_the_answer(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    client = nexus.anthropic()
    message = await client.messages.create(model=MODEL, max_tokens=3, messages=ASKED)
    assert message.stop_reason == "max_tokens"
    assert message.content[0].text == "".join(answer_tokens(MODEL, UPSTREAM)[:3])  # type: ignore[union-attr]
    async with client.messages.stream(model=MODEL, max_tokens=3, messages=ASKED) as stream:
        streamed = await stream.get_final_message()
    assert streamed.stop_reason == "max_tokens"
    assert streamed.usage.output_tokens == 3


@pytest.mark.parametrize(("context", "sent"), [(8192, None), (100_000, 32_000)])
async def test_a_limit_the_context_cannot_hold_is_not_sent(
    start_nexus: Any, context: int, sent: int | None
) -> None:
    # Claude Code asks for 32,000 tokens whatever the model; a vLLM whose context is
    # smaller refuses such a request (prompt + max_tokens > max_model_len).
    backend = SimulatedBackend(Flavor.VLLM, [SimModel(MODEL, context_length=context)], name="a")
    nexus = await start_nexus([backend])
    message = await streamed(nexus.anthropic(), model=MODEL, max_tokens=32_000, messages=ASKED)
    assert "".join(b.text for b in message.content if b.type == "text") == FULL
    assert backend.stats.last_chat_body is not None
    assert backend.stats.last_chat_body.get("max_tokens") == sent


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_round_trip_keeps_one_id(start_nexus: Any, stream: bool) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend])
    client = nexus.anthropic()
    asked: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    if stream:
        async with client.messages.stream(
            model=MODEL, max_tokens=256, messages=asked, tools=[WEATHER]
        ) as events:
            first = await events.get_final_message()
    else:
        first = await client.messages.create(
            model=MODEL, max_tokens=256, messages=asked, tools=[WEATHER]
        )
    assert first.stop_reason == "tool_use"
    call = first.content[-1]
    assert call.type == "tool_use"
    assert call.name == "get_weather"
    upstream_asked = [{"role": "user", "content": "Weather in Paris?"}]
    assert call.input == json.loads(tool_arguments(MODEL, upstream_asked, WEATHER_FUNCTION))
    seen = backend.stats.last_chat_body
    assert seen is not None
    assert seen["tools"] == [WEATHER_FUNCTION]
    assert seen["parallel_tool_calls"] is True

    follow_up: list[Any] = [
        *asked,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "18 C, sunny"},
            ],
        },
    ]
    answer = await client.messages.create(
        model=MODEL, max_tokens=256, messages=follow_up, tools=[WEATHER]
    )
    seen = backend.stats.last_chat_body
    assert seen is not None
    messages = seen["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == call.id == messages[2]["tool_call_id"]
    assert messages[2]["content"] == "18 C, sunny"
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text == expected_answer(MODEL, messages)  # type: ignore[union-attr]


async def test_streamed_tool_arguments_arrive_as_the_backend_sent_them(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    asked = [{"role": "user", "content": "Weather in Paris?"}]
    events = await raw_events(
        nexus, {"model": MODEL, "max_tokens": 256, "messages": asked, "tools": [WEATHER]}
    )
    starts = [data for name, data in events if name == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["tool_use"]
    assert starts[0]["content_block"]["input"] == {}
    pieces = [
        data["delta"]["partial_json"]
        for name, data in events
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta"
    ]
    assert len(pieces) > 1  # streamed, not in one piece
    assert "".join(pieces) == tool_arguments(MODEL, asked, WEATHER_FUNCTION)
    delta = next(data for name, data in events if name == "message_delta")
    assert delta["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_mid_stream_failure_is_continued_exactly(start_nexus: Any, stream: bool) -> None:
    a, b = sim("a"), sim("b")
    a.faults.die_after_chunks = 5
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    client = nexus.anthropic()
    if stream:
        async with client.messages.stream(model=MODEL, max_tokens=512, messages=ASKED) as events:
            text = "".join([piece async for piece in events.text_stream])
            message = await events.get_final_message()
        assert text == FULL
    else:
        message = await client.messages.create(model=MODEL, max_tokens=512, messages=ASKED)
    assert message.content[0].text == FULL  # type: ignore[union-attr]
    assert len(message.content) == 1
    assert message.stop_reason == "end_turn"
    assert a.stats.disconnects + a.stats.chat_requests >= 1
    assert b.stats.completed == 1


async def test_a_stream_that_cannot_be_continued_ends_with_an_error_event(
    start_nexus: Any,
) -> None:
    a = sim("a")
    a.faults.die_after_chunks = 5
    nexus = await start_nexus([a])
    events = await raw_events(nexus, {"model": MODEL, "max_tokens": 512, "messages": ASKED})
    names = [name for name, _ in events]
    assert names[-2:] == ["content_block_stop", "error"]
    assert "message_stop" not in names
    error = events[-1][1]
    assert error["type"] == "error"
    assert error["error"]["type"] == "api_error"
    assert "incomplete" in error["error"]["message"]
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert FULL.startswith(text)
    assert text
    with pytest.raises(anthropic.APIStatusError, match="incomplete"):
        await streamed(nexus.anthropic(), model=MODEL, max_tokens=512, messages=ASKED)


async def test_pings_while_the_first_token_is_late(start_nexus: Any, loopback_clock: Any) -> None:
    a = sim("a")
    a.faults.delay_before_headers_seconds = 12
    nexus = await start_nexus([a])
    with trio.fail_after(60):
        events = await raw_events(nexus, {"model": MODEL, "max_tokens": 512, "messages": ASKED})
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "ping", "ping"]  # at 5 s and 10 s
    assert names.count("message_start") == 1
    assert names.count("ping") == 2
    assert names[-1] == "message_stop"
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == FULL
    # The SDK takes the pings in its stride.
    with trio.fail_after(60):
        async with nexus.anthropic().messages.stream(
            model=MODEL, max_tokens=512, messages=ASKED
        ) as stream:
            assert "".join([piece async for piece in stream.text_stream]) == FULL


async def test_a_failure_after_the_pings_is_an_error_event(
    start_nexus: Any, loopback_clock: Any
) -> None:
    a = sim("a")
    a.faults.delay_before_headers_seconds = 6
    a.faults.status = 500
    nexus = await start_nexus([a])
    with trio.fail_after(60):
        events = await raw_events(nexus, {"model": MODEL, "max_tokens": 512, "messages": ASKED})
    assert [name for name, _ in events] == ["message_start", "ping", "error"]
    assert events[-1][1]["error"]["type"] == "api_error"


async def test_a_whole_answer_sends_no_pings(start_nexus: Any, loopback_clock: Any) -> None:
    a = sim("a")
    a.faults.delay_before_headers_seconds = 12
    nexus = await start_nexus([a])
    with trio.fail_after(60):
        message = await nexus.anthropic().messages.create(
            model=MODEL, max_tokens=512, messages=ASKED
        )
    assert message.content[0].text == FULL  # type: ignore[union-attr]


async def test_unknown_model_is_not_found(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    client = nexus.anthropic()
    with pytest.raises(anthropic.NotFoundError) as caught:
        await client.messages.create(model="claude-nope", max_tokens=10, messages=ASKED)
    body: Any = caught.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "claude-nope" in body["error"]["message"]
    assert body["request_id"] == caught.value.request_id
    with pytest.raises(anthropic.NotFoundError):
        async with client.messages.stream(
            model="claude-nope", max_tokens=10, messages=ASKED
        ) as stream:
            await stream.get_final_message()


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "image"),
        ({"tool_choice": {"type": "sometimes"}, "tools": [WEATHER]}, "tool_choice"),
    ],
)
async def test_a_bad_request_is_a_bad_request(
    start_nexus: Any, extra: dict[str, Any], param: str
) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend])
    with pytest.raises(anthropic.BadRequestError) as caught:
        await nexus.anthropic().messages.create(
            model=MODEL, max_tokens=10, messages=ASKED, extra_body=extra
        )
    body: Any = caught.value.body
    assert body["error"]["type"] == "invalid_request_error"
    assert param.split(".")[0] in body["error"]["message"] or param == "image"
    assert backend.stats.chat_requests == 0
    response = await nexus.http.post("/v1/messages", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_every_backend_rate_limiting_is_a_rate_limit(start_nexus: Any) -> None:
    a, b = sim("a"), sim("b")
    a.faults.status = b.faults.status = 429
    nexus = await start_nexus([a, b])
    with pytest.raises(anthropic.RateLimitError) as caught:
        await nexus.anthropic().messages.create(model=MODEL, max_tokens=10, messages=ASKED)
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


async def test_every_backend_failing_is_a_server_error(start_nexus: Any) -> None:
    a = sim("a")
    a.faults.status = 500
    nexus = await start_nexus([a])
    with pytest.raises(anthropic.InternalServerError) as caught:
        await nexus.anthropic().messages.create(model=MODEL, max_tokens=10, messages=ASKED)
    assert caught.value.status_code == 502
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]


async def test_a_backends_refusal_is_rendered_in_anthropics_shape(start_nexus: Any) -> None:
    a = sim("a", Flavor.OLLAMA)
    a.faults.status = 400
    nexus = await start_nexus([a])
    for stream in (False, True):
        client = nexus.anthropic()
        request: Any = {"model": MODEL, "max_tokens": 10, "messages": ASKED}
        asking = streamed(client, **request) if stream else client.messages.create(**request)
        with pytest.raises(anthropic.BadRequestError) as caught:
            await asking
        body: Any = caught.value.body
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"].startswith("Simulated failure")


async def test_no_backend_free_is_overloaded(start_nexus: Any) -> None:
    a = sim("a")
    a.faults.stall_after_chunks = 1
    nexus = await start_nexus(
        [a], backend_options={"a": {"max_concurrency": 1}}, queue={"max_size": 0}
    )  # no queue: busy is refused at once
    client = nexus.anthropic()
    async with trio.open_nursery() as nursery:
        started = trio.Event()

        async def hold() -> None:
            async with client.messages.stream(model=MODEL, max_tokens=10, messages=ASKED) as s:
                async for _ in s:
                    started.set()

        nursery.start_soon(hold)
        await started.wait()
        with pytest.raises(anthropic.OverloadedError) as caught:
            await client.messages.create(model=MODEL, max_tokens=10, messages=ASKED)
        nursery.cancel_scope.cancel()
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert "retry-after" in caught.value.response.headers


async def test_too_large_a_body(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")], server={"max_body_bytes": 1000})
    with pytest.raises(anthropic.RequestTooLargeError) as caught:
        await nexus.anthropic().messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x" * 2000}]
        )
    assert caught.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]


async def test_get_is_not_allowed(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    response = await nexus.http.get("/v1/messages")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["type"] == "error"  # in Anthropic's shape, on its route
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_keys_never_reach_the_backend_and_the_query_is_ignored(start_nexus: Any) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend])
    keyed = anthropic.AsyncAnthropic(base_url=nexus.url, api_key="sk-ant-secret", max_retries=0)
    nexus.sdk_clients.append(keyed)
    await keyed.messages.create(
        model=MODEL, max_tokens=10, messages=ASKED, extra_query={"beta": "true"}
    )
    bearer = anthropic.AsyncAnthropic(base_url=nexus.url, auth_token="secret-token", max_retries=0)
    nexus.sdk_clients.append(bearer)
    await bearer.messages.create(
        model=MODEL, max_tokens=10, messages=ASKED, extra_query={"beta": "true"}
    )
    assert backend.stats.chat_requests == 2
    headers = backend.stats.last_headers
    assert "x-api-key" not in headers
    assert "authorization" not in headers
    assert not any("secret" in value for value in headers.values())


async def test_a_claude_code_like_request(start_nexus: Any) -> None:
    # Ollama: it stops where the context ends, whatever max_tokens says.
    backend = sim("a", Flavor.OLLAMA)
    nexus = await start_nexus([backend])
    client = nexus.anthropic()

    def system(cch: str) -> list[Any]:
        return [
            {
                "type": "text",
                "text": "x-anthropic-billing-header: cc_version=2.1.90.e3f; "
                f"cc_entrypoint=cli; cch={cch};",
            },
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": {"type": "ephemeral"},
            },
        ]

    messages: list[Any] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>context</system-reminder>"},
                {"type": "text", "text": "Fix the bug", "cache_control": {"type": "ephemeral"}},
            ],
        },
        {"role": "system", "content": "The user is on Linux."},
    ]
    seen = []
    for cch in ("a1b2c", "9f8e7"):
        async with client.messages.stream(
            model=MODEL,
            max_tokens=32000,
            system=system(cch),
            messages=messages,
            tools=[WEATHER],
            metadata={"user_id": '{"device_id": "d", "session_id": "s"}'},
            extra_body={
                "thinking": {"type": "adaptive"},
                "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
                "output_config": {"effort": "high"},
            },
            extra_headers={
                "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
                "context-management-2025-06-27,some-future-beta",
                "x-claude-code-session-id": "s",
            },
            extra_query={"beta": "true"},
        ) as stream:
            message = await stream.get_final_message()
        seen.append(backend.stats.last_chat_body)
        assert message.stop_reason == "end_turn"  # the last message is not the user's
    assert seen[0] == seen[1]  # the billing hash is fixed: the backend's prefix cache hits
    upstream = seen[0]
    assert upstream is not None
    assert [m["role"] for m in upstream["messages"]] == ["system", "user", "system"]
    assert "cch=fffff;" in upstream["messages"][0]["content"]
    assert upstream["messages"][2]["content"] == "The user is on Linux."
    for key in ("thinking", "context_management", "output_config", "metadata"):
        assert key not in upstream
    text = message.content[0].text  # type: ignore[union-attr]
    assert text == expected_answer(MODEL, upstream["messages"])


COUNTED: list[Any] = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "Let me look."},
    {"role": "user", "content": "And in Rome, tomorrow?"},
]


async def test_count_tokens_from_llamacpps_tokenizer(start_nexus: Any) -> None:
    backend = sim("a", Flavor.LLAMACPP)
    nexus = await start_nexus([backend])
    client = nexus.anthropic()
    raw = await client.messages.with_raw_response.count_tokens(
        model=MODEL, system="Be brief.", messages=COUNTED, extra_query={"beta": "true"}
    )
    counted = await raw.parse()
    upstream = [{"role": "system", "content": "Be brief."}, *COUNTED]
    assert counted.input_tokens == len(chat_prompt(upstream).split())
    assert counted.input_tokens != estimate_input_tokens({"messages": upstream})
    assert raw.headers["x-nexus-token-count"] == "backend"
    assert raw.headers["x-nexus-backend"] == "a"
    assert backend.stats.chat_requests == 0


async def test_count_tokens_from_vllms_tokenizer(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a", Flavor.VLLM)])
    counted = await nexus.anthropic().messages.count_tokens(model=MODEL, messages=COUNTED)
    assert counted.input_tokens == estimate_prompt_tokens(COUNTED)


async def test_count_tokens_is_estimated_where_there_is_no_tokenizer(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a", Flavor.OLLAMA)])
    raw = await nexus.anthropic().messages.with_raw_response.count_tokens(
        model=MODEL, messages=COUNTED, tools=[WEATHER]
    )
    counted = await raw.parse()
    chat = parse_count_tokens_request(
        json.dumps({"model": MODEL, "messages": COUNTED, "tools": [WEATHER]}).encode()
    )
    assert counted.input_tokens == estimate_input_tokens(chat.payload)
    assert counted.input_tokens > estimate_input_tokens({"messages": COUNTED})  # the tools
    assert raw.headers["x-nexus-token-count"] == "estimate"


async def test_count_tokens_errors_are_anthropics(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a", Flavor.LLAMACPP)])
    client = nexus.anthropic()
    with pytest.raises(anthropic.NotFoundError) as caught:
        await client.messages.count_tokens(model="claude-nope", messages=COUNTED)
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.count_tokens(model=MODEL, messages=[])
