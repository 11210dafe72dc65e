"""The official openai SDK against Nexus on loopback, in front of simulated backends."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from nexus_trio.testing import Flavor, SimModel, SimulatedBackend
from nexus_trio.testing._text import expected_answer

from helpers import sim

MESSAGES: list[Any] = [{"role": "user", "content": "Hello!"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


async def test_non_stream_answer_and_headers(start_nexus: Any) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend])
    client = nexus.openai()
    raw = await client.chat.completions.with_raw_response.create(
        model="llama3:8b", messages=MESSAGES, extra_headers={"X-Request-Id": "req-123"}
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == expected_answer("llama3:8b", MESSAGES)
    assert completion.choices[0].finish_reason == "stop"
    assert raw.headers["x-nexus-backend"] == "a"
    assert raw.headers["x-nexus-backend-type"] == "vllm"
    assert raw.headers["x-nexus-route-reason"].startswith("smart:")
    assert raw.headers["x-request-id"] == "req-123"
    assert "x-nexus-fallback-model" not in raw.headers


async def test_stream_relays_every_chunk_once(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a", Flavor.OLLAMA)])
    client = nexus.openai()
    stream = await client.chat.completions.create(
        model="llama3:8b",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finishes, usage, ids = "", [], None, set()
    async for chunk in stream:
        ids.add(chunk.id)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
        usage = chunk.usage or usage
    assert text == expected_answer("llama3:8b", MESSAGES)
    assert finishes == ["stop"]
    assert len(ids) == 1
    assert usage is not None
    assert usage.completion_tokens > 0


async def test_unknown_fields_survive_and_stop_may_be_a_string(start_nexus: Any) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend])
    await nexus.openai().chat.completions.create(
        model="llama3:8b",
        messages=MESSAGES,
        stop="\n\n",
        seed=7,
        logprobs=False,
        response_format={"type": "json_object"},
        extra_body={"top_k": 20, "nexus_test_field": {"nested": [1, 2]}},
    )
    seen = backend.stats.last_chat_body
    assert seen is not None
    assert seen["stop"] == "\n\n"
    assert seen["seed"] == 7
    assert seen["top_k"] == 20
    assert seen["nexus_test_field"] == {"nested": [1, 2]}
    assert seen["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_round_trip(start_nexus: Any, stream: bool) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend])
    client = nexus.openai()
    asked: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    if stream:
        calls: dict[int, dict[str, str]] = {}
        finish = None
        async for chunk in await client.chat.completions.create(
            model="llama3:8b", messages=asked, tools=[WEATHER_TOOL], stream=True
        ):
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or ():
                    entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                    entry["id"] += call.id or ""
                    if call.function is not None:
                        entry["name"] += call.function.name or ""
                        entry["arguments"] += call.function.arguments or ""
                finish = choice.finish_reason or finish
        assert finish == "tool_calls"
        call_id, name, arguments = calls[0]["id"], calls[0]["name"], calls[0]["arguments"]
    else:
        completion = await client.chat.completions.create(
            model="llama3:8b", messages=asked, tools=[WEATHER_TOOL]
        )
        assert completion.choices[0].finish_reason == "tool_calls"
        tool_calls = completion.choices[0].message.tool_calls
        assert tool_calls is not None
        call = tool_calls[0]
        assert call.type == "function"
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
    assert name == "get_weather"
    assert set(json.loads(arguments)) == {"city", "days"}
    assert backend.stats.last_chat_body is not None
    assert backend.stats.last_chat_body["tools"] == [WEATHER_TOOL]

    # Send the tool's result back: the assistant's tool_calls and the tool message survive.
    follow_up: list[Any] = [
        *asked,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": '{"temp_c": 21}'},
    ]
    answer = await client.chat.completions.create(
        model="llama3:8b", messages=follow_up, tools=[WEATHER_TOOL]
    )
    assert answer.choices[0].message.content
    assert backend.stats.last_chat_body["messages"] == follow_up


async def test_unknown_model_is_not_found_with_suggestions(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    with pytest.raises(openai.NotFoundError) as raised:
        await nexus.openai().chat.completions.create(model="llama3:7b", messages=MESSAGES)
    error = raised.value
    assert error.code == "model_not_found"
    assert "llama3:8b" in error.message  # the nearest model is suggested


async def test_models_list_and_retrieve(start_nexus: Any) -> None:
    a = SimulatedBackend(
        flavor=Flavor.VLLM,
        models=[SimModel("meta-llama/Llama-3.1-8B-Instruct", context_length=16384)],
        name="a",
    )
    b = SimulatedBackend(
        flavor=Flavor.OLLAMA,
        models=[SimModel("llama3:8b", tools=True), SimModel("llava:7b", vision=True)],
        name="b",
    )
    c = SimulatedBackend(flavor=Flavor.LLAMACPP, models=[SimModel("llama3:8b")], name="c")
    nexus = await start_nexus([a, b, c], routing={"aliases": {"fast": "llama3:8b"}})
    client = nexus.openai()
    listed = {m.id: m for m in (await client.models.list()).data}
    assert set(listed) == {"meta-llama/Llama-3.1-8B-Instruct", "llama3:8b", "llava:7b", "fast"}
    merged = listed["llama3:8b"].model_dump()
    assert sorted(merged["backends"]) == ["b", "c"]
    assert listed["fast"].model_dump()["alias_for"] == "llama3:8b"

    model = await client.models.retrieve("meta-llama/Llama-3.1-8B-Instruct")
    assert model.id == "meta-llama/Llama-3.1-8B-Instruct"
    assert model.model_dump()["context_length"] == 16384
    llava = (await client.models.retrieve("llava:7b")).model_dump()
    assert "vision" in llava["capabilities"]
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no/such:model")
