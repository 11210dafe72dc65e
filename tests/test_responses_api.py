"""The official openai SDK's Responses API (``client.responses``) against Nexus on
loopback, in front of simulated backends."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from nexus_trio.testing import Flavor, SimulatedBackend
from nexus_trio.testing._text import (
    estimate_prompt_tokens,
    expected_answer,
    tool_arguments,
    tool_call_id,
)

from helpers import sim

MODEL = "llama3:8b"
HELLO: list[Any] = [{"role": "user", "content": "Hello!"}]
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}
# The same tool as the backend receives it.
WEATHER_CHAT: Any = {
    "type": "function",
    "function": {k: v for k, v in WEATHER.items() if k != "type"},
}
PRIORITIES = {"a": {"priority": 1}, "b": {"priority": 2}}


def sent(backend: SimulatedBackend) -> dict[str, Any]:
    body = backend.stats.last_chat_body
    assert body is not None
    return body


def usage_of(messages: list[Any], answer: str) -> tuple[int, int, int]:
    """The three counts the simulators report for ``answer`` to ``messages``."""
    prompt = estimate_prompt_tokens(messages)
    completion = len(answer.split(" "))
    return prompt, completion, prompt + completion


async def read_events(stream: Any) -> list[Any]:
    return [event async for event in stream]


# -- text ------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", [Flavor.VLLM, Flavor.OLLAMA, Flavor.LLAMACPP])
async def test_create_answers_the_backends_text_with_exact_usage(
    start_nexus: Any, flavor: Flavor
) -> None:
    backend = sim("a", flavor)
    nexus = await start_nexus([backend])
    raw = await nexus.openai().responses.with_raw_response.create(
        model=MODEL, input="Hello!", extra_headers={"X-Request-Id": "req-7"}
    )
    response = raw.parse()
    answer = expected_answer(MODEL, HELLO)
    assert response.output_text == answer
    assert response.id.startswith("resp_")
    assert (response.object, response.status, response.model) == ("response", "completed", MODEL)
    assert response.error is None
    assert response.incomplete_details is None
    [message] = response.output
    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert message.status == "completed"
    assert message.role == "assistant"
    assert [part.type for part in message.content] == ["output_text"]
    assert response.usage is not None
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == usage_of(HELLO, answer)
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert raw.headers["x-nexus-backend"] == "a"
    assert raw.headers["x-request-id"] == "req-7"
    body = sent(backend)
    assert body["messages"] == HELLO
    assert (body["stream"], body["stream_options"]) == (True, {"include_usage": True})


async def test_create_streamed_reads_as_the_sdk_expects(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a", Flavor.OLLAMA)])
    stream = await nexus.openai().responses.create(
        model=MODEL, input=[{"role": "user", "content": "Hello!"}], stream=True
    )
    events = await read_events(stream)
    answer = expected_answer(MODEL, HELLO)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added",
    ]  # fmt: skip
    assert kinds[-4:] == [
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed",
    ]  # fmt: skip
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == answer
    final = events[-1].response
    assert final.output_text == answer
    assert final.id == events[0].response.id
    assert final.usage is not None
    assert final.usage.total_tokens == sum(usage_of(HELLO, answer)[:2])


async def test_stream_helper_and_instructions(start_nexus: Any) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend])
    async with nexus.openai().responses.stream(
        model=MODEL, input="Hello!", instructions="You are terse.", temperature=0.2,
        max_output_tokens=500, top_p=0.9, metadata={"k": "v"}, store=False,
        user="u1", prompt_cache_key="abc", include=["reasoning.encrypted_content"],
        reasoning={"effort": "low"}, truncation="disabled", service_tier="auto",
        extra_body={"client_metadata": {"x": 1}, "some_future_field": True},
    ) as stream:  # fmt: skip
        text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
        final = await stream.get_final_response()
    conversation = [{"role": "system", "content": "You are terse."}, *HELLO]
    assert text == final.output_text == expected_answer(MODEL, conversation)
    assert (final.instructions, final.temperature, final.top_p) == ("You are terse.", 0.2, 0.9)
    assert (final.max_output_tokens, final.metadata, final.store) == (500, {"k": "v"}, False)
    body = sent(backend)
    assert body["messages"] == conversation
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 0.9, 500)
    for ignored in ("reasoning_effort", "metadata", "user", "store", "include", "instructions"):
        assert ignored not in body


async def test_max_output_tokens_reached_is_incomplete(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    client = nexus.openai()
    response = await client.responses.create(model=MODEL, input="Hello!", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    words = expected_answer(MODEL, HELLO).split(" ")
    assert response.output_text == " ".join(words[:3])
    assert response.usage is not None
    assert response.usage.output_tokens == 3
    events = await read_events(
        await client.responses.create(model=MODEL, input="Hello!", max_output_tokens=3, stream=True)
    )
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


async def test_json_schema_format_becomes_response_format(start_nexus: Any) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend])
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    await nexus.openai().responses.create(
        model=MODEL, input="Hello!",
        text={"format": {"type": "json_schema", "name": "thing", "schema": schema,
                         "strict": True}},
    )  # fmt: skip
    assert sent(backend)["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}
    }  # fmt: skip


# -- function calls --------------------------------------------------------------------


async def test_function_call_round_trip_keeps_one_id(start_nexus: Any) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend])
    client = nexus.openai()
    question = {"role": "user", "content": "Weather in Oslo?"}
    first = await client.responses.create(model=MODEL, input=[question], tools=[WEATHER])
    [call] = first.output
    assert call.type == "function_call"
    assert call.call_id == tool_call_id(MODEL, [question])
    assert call.name == "get_weather"
    assert call.arguments == tool_arguments(MODEL, [question], WEATHER_CHAT)
    assert call.id is not None
    assert call.id.startswith("fc_")
    assert sent(backend)["tools"] == [WEATHER_CHAT]
    assert sent(backend)["parallel_tool_calls"] is True

    output = {"type": "function_call_output", "call_id": call.call_id, "output": "12 C, rain"}
    second = await client.responses.create(
        model=MODEL, input=[question, call.model_dump(exclude_none=True), output], tools=[WEATHER]
    )
    conversation = sent(backend)["messages"]
    assert conversation == [
        question,
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": call.call_id, "type": "function",
            "function": {"name": "get_weather", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "12 C, rain"},
    ]  # fmt: skip
    assert second.output_text == expected_answer(MODEL, conversation)


async def test_streamed_function_arguments(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a", Flavor.LLAMACPP)])
    question = {"role": "user", "content": "Weather in Oslo?"}
    stream = await nexus.openai().responses.create(
        model=MODEL, input=[question], tools=[WEATHER], stream=True, parallel_tool_calls=False
    )
    events = await read_events(stream)
    arguments = tool_arguments(MODEL, [question], WEATHER_CHAT)
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 1
    assert "".join(e.delta for e in deltas) == arguments
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert (done.arguments, done.name) == (arguments, "get_weather")
    [item] = [e.item for e in events if e.type == "response.output_item.done"]
    assert (item.type, item.call_id, item.arguments, item.status) == (
        "function_call",
        tool_call_id(MODEL, [question]),
        arguments,
        "completed",
    )
    assert events[-1].type == "response.completed"
    assert events[-1].response.output == [item]
    assert events[-1].response.parallel_tool_calls is False


# -- previous_response_id ----------------------------------------------------------------


async def test_previous_response_id_rebuilds_the_conversation(start_nexus: Any) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend])
    client = nexus.openai()
    first = await client.responses.create(model=MODEL, input="Hello!", instructions="Old rules.")
    second = await client.responses.create(
        model=MODEL, input="And then?", previous_response_id=first.id, instructions="New rules."
    )
    # The first response's instructions are not carried over (as OpenAI documents).
    conversation = [
        {"role": "system", "content": "New rules."},
        *HELLO,
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "And then?"},
    ]
    assert sent(backend)["messages"] == conversation
    assert second.output_text == expected_answer(MODEL, conversation)
    assert second.previous_response_id == first.id
    # And on: the third turn sees both answers, streamed this time.
    stream = await client.responses.create(
        model=MODEL, input="Thanks.", previous_response_id=second.id, stream=True
    )
    await read_events(stream)
    assert sent(backend)["messages"] == [
        *conversation[1:],
        {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": "Thanks."},
    ]


async def test_previous_response_id_continues_a_function_call(start_nexus: Any) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend])
    client = nexus.openai()
    stream = await client.responses.create(
        model=MODEL, input="Weather in Oslo?", tools=[WEATHER], stream=True
    )
    events = await read_events(stream)
    first = events[-1].response
    [call] = first.output
    answer = await client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )  # fmt: skip
    conversation = sent(backend)["messages"]
    assert [m["role"] for m in conversation] == ["user", "assistant", "tool"]
    assert conversation[1]["tool_calls"][0]["id"] == call.call_id
    assert conversation[2]["tool_call_id"] == call.call_id
    assert answer.output_text == expected_answer(MODEL, conversation)


async def test_unknown_previous_response_id_is_404(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    with pytest.raises(openai.NotFoundError) as caught:
        await nexus.openai().responses.create(
            model=MODEL, input="Hi", previous_response_id="resp_nope"
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "previous_response_id"
    assert error["code"] == "previous_response_not_found"
    assert "resp_nope" in error["message"]
    assert "server.responses_kept" in error["message"]


async def test_only_the_last_n_are_kept_and_store_false_keeps_nothing(
    start_nexus: Any,
) -> None:
    nexus = await start_nexus([sim("a")], server={"responses_kept": 2})
    client = nexus.openai()
    made = [await client.responses.create(model=MODEL, input=f"Turn {i}") for i in range(3)]
    unkept = await client.responses.create(model=MODEL, input="Secret", store=False)
    for response in [made[0], unkept]:
        with pytest.raises(openai.NotFoundError, match="last 2 responses"):
            await client.responses.create(model=MODEL, input="?", previous_response_id=response.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(response.id)
    kept = await client.responses.retrieve(made[2].id)
    assert kept.output_text == made[2].output_text
    assert kept.model_dump() == made[2].model_dump()
    await client.responses.delete(made[2].id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(made[2].id)


# -- refusals and failures -----------------------------------------------------------------


@pytest.mark.parametrize("tool", ["web_search", "file_search", "code_interpreter", "mcp"])
async def test_a_built_in_tool_is_refused_by_name(start_nexus: Any, tool: str) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend])
    with pytest.raises(openai.BadRequestError, match=tool) as caught:
        await nexus.openai().responses.create(
            model=MODEL, input="Hi", tools=[WEATHER, {"type": tool}]
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "tools[1].type"
    assert backend.stats.chat_requests == 0


async def test_an_unknown_item_type_is_refused_by_name(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    with pytest.raises(openai.BadRequestError, match="web_search_call"):
        await nexus.openai().responses.create(
            model=MODEL,
            input=[{"type": "web_search_call", "id": "ws_1", "status": "completed"}],
        )


async def test_no_backend_for_the_model_is_an_error_before_the_stream(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    client = nexus.openai()
    with pytest.raises(openai.NotFoundError, match="not served"):
        await client.responses.create(model="nope:1b", input="Hi", stream=True)


async def test_every_backend_failing_is_an_openai_error(start_nexus: Any) -> None:
    a = sim("a")
    nexus = await start_nexus([a])
    a.faults.status = 500
    with pytest.raises(openai.APIStatusError) as caught:
        await nexus.openai().responses.create(model=MODEL, input="Hi", stream=True)
    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "all_backends_failed"


@pytest.mark.parametrize("stream", [True, False])
async def test_a_mid_stream_failure_is_continued_exactly(start_nexus: Any, stream: bool) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.die_after_chunks = 7
    messages: list[Any] = [{"role": "user", "content": "Tell me a long story, please."}]
    client = nexus.openai()
    if stream:
        events = await read_events(
            await client.responses.create(model=MODEL, input=messages, stream=True)
        )
        assert [e.sequence_number for e in events] == list(range(len(events)))
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert [e.type for e in events].count("response.output_item.added") == 1
        final = events[-1].response
        assert events[-1].type == "response.completed"
    else:
        final = await client.responses.create(model=MODEL, input=messages)
        text = final.output_text
    assert text == final.output_text == expected_answer(MODEL, messages)
    assert b.stats.chat_requests == 1
    assert final.usage is not None
    assert final.usage.output_tokens > 0
    assert final.usage.input_tokens > 0


async def test_a_failure_that_cannot_be_continued_ends_in_response_failed(
    start_nexus: Any,
) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus(
        [a, b], backend_options=PRIORITIES, routing={"strategy": "priority", "mid_stream": "error"}
    )
    a.faults.die_after_chunks = 5
    client = nexus.openai()
    events = await read_events(await client.responses.create(model=MODEL, input="Hello!",
                                                             stream=True))  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.failed"
    assert "completed" not in {e.type.rsplit(".", 1)[-1] for e in events}
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.code == "server_error"
    assert "routing.mid_stream" in failed.error.message
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert expected_answer(MODEL, HELLO).startswith(text)
    assert text
    [partial] = failed.output
    assert partial.status == "incomplete"
    assert partial.content[0].text == text
    # A failed response is not kept: nothing to continue from.
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(failed.id)


async def test_a_tool_call_cut_short_is_never_done(start_nexus: Any) -> None:
    """The arguments of a call cut mid-stream are incomplete: the client (Codex takes calls
    from output_item.done) must never see it as a finished item."""
    a, b = sim("a"), sim("b")
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.die_after_chunks = 2
    events = await read_events(await nexus.openai().responses.create(
        model=MODEL, input="Weather?", tools=[WEATHER], stream=True))  # fmt: skip
    kinds = [e.type for e in events]
    assert kinds[-1] == "response.failed"
    assert "response.output_item.done" not in kinds
    assert "response.function_call_arguments.done" not in kinds
    assert "tool call" in events[-1].response.error.message
