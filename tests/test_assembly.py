"""A whole completion assembled from a stream is the completion the backend would have
sent unstreamed: the same text, reasoning, tool calls (arguments joined), finish and usage."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_trio.dialects.assembly import ChatAssembler
from nexus_trio.proxy.sse import SSEParser
from nexus_trio.proxy.tracker import StreamTracker, carries_answer
from nexus_trio.testing import Flavor, SimModel
from nexus_trio.testing._completions import (
    FINGERPRINTS,
    StreamEncoder,
    completion_body,
    plan_chat,
)

PROPERTY = settings(max_examples=150, deadline=None)
BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {**BASE, "choices": [choice], **extra}


pieces = st.lists(st.text(max_size=8), max_size=6)
calls = st.lists(st.tuples(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), pieces), max_size=3)


@PROPERTY
@given(
    content=pieces,
    reasoning=pieces,
    tool_calls=calls,
    finish=st.sampled_from(["stop", "length", "tool_calls"]),
    fingerprint=st.none() | st.just("fp_1"),
)
def test_any_stream_assembles_into_its_completion(
    content: list[str],
    reasoning: list[str],
    tool_calls: list[tuple[str, list[str]]],
    finish: str,
    fingerprint: str | None,
) -> None:
    extra = {"system_fingerprint": fingerprint}
    stream = [chunk({"role": "assistant", "content": ""}, **extra)]
    stream += [chunk({"reasoning_content": piece}, **extra) for piece in reasoning]
    stream += [chunk({"content": piece}, **extra) for piece in content]
    for index, (name, arguments) in enumerate(tool_calls):
        head = {"index": index, "id": f"call_{index}", "type": "function",
                "function": {"name": name, "arguments": ""}}  # fmt: skip
        stream.append(chunk({"tool_calls": [head]}, **extra))
        stream += [
            chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}, **extra)
            for piece in arguments
        ]
    stream.append(chunk({}, finish, **extra))
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}

    assembler = ChatAssembler()
    for each in stream:
        assembler.add(each)
    completion = assembler.completion(usage)

    text = "".join(content)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not tool_calls else None,
    }
    if "".join(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": name, "arguments": "".join(arguments)}}
            for i, (name, arguments) in enumerate(tool_calls)
        ]  # fmt: skip
    assert completion == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 7,
        "model": "m",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "system_fingerprint": fingerprint,
        "usage": usage,
    }


def test_a_name_repeated_in_every_chunk_is_not_doubled() -> None:
    assembler = ChatAssembler()
    for arguments in ('{"city"', ': "Paris"}'):
        call = {"index": 0, "id": "c", "type": "function",
                "function": {"name": "get_weather", "arguments": arguments}}  # fmt: skip
        assembler.add(chunk({"tool_calls": [call]}))
    assembler.add(chunk({}, "tool_calls"))
    message = assembler.completion({})["choices"][0]["message"]
    assert message["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    assert "usage" not in assembler.completion({})


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


@pytest.mark.parametrize("flavor", list(Flavor))
@pytest.mark.parametrize("tools", [False, True], ids=["text", "tool_call"])
@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(1, 40), max_size=30))
def test_the_simulated_servers_stream_assembles_into_their_own_completion(
    flavor: Flavor, tools: bool, cuts: list[int]
) -> None:
    """What each simulated server sends unstreamed is what Nexus assembles from its stream,
    however TCP splits it."""
    body: dict[str, Any] = {
        "model": "llama3:8b",
        "messages": [{"role": "user", "content": "What is the weather like?"}],
    }
    if tools:
        body["tools"] = TOOLS
    models = {"llama3:8b": SimModel("llama3:8b", tools=True)}
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    answer = plan_chat(streamed, flavor=flavor, models=models, echo_prefill=False)
    whole = plan_chat(body, flavor=flavor, models=models, echo_prefill=False)
    ids = {"completion_id": "chatcmpl-9", "created": 5, "fingerprint": FINGERPRINTS[flavor]}
    encoder = StreamEncoder(answer, **ids)
    wire = encoder.first() + b"".join(encoder.piece(p) for p in answer.pieces) + encoder.last()

    parser, tracker, assembler = SSEParser(), StreamTracker(forward_usage=False), ChatAssembler()
    offset = 0
    for size in [*cuts, len(wire)]:
        for event in parser.feed(wire[offset : offset + size]):
            admitted = tracker.admit(event, "sim")
            assert carries_answer(event, "sim") is admitted.says  # the first-token check
            for parsed in admitted.chunks:
                assembler.add(parsed)
        offset += size
    assert tracker.finished
    assert assembler.completion(tracker.usage) == json.loads(
        json.dumps(completion_body(whole, **ids))
    )
