"""The Ollama codec, pure: requests into chat requests, chat chunks into Ollama's lines."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_trio.dialects.ollama import (
    generate_is_completion,
    parse_ollama_chat,
    parse_ollama_generate,
    resolve_model_name,
)
from nexus_trio.dialects.ollama_lines import Durations, OllamaLines, created_at, merge_lines
from nexus_trio.errors import RequestError

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
    "AAAABJRU5ErkJggg=="
)


def chat(**request: Any) -> Any:
    return parse_ollama_chat(json.dumps({"model": "m", **request}).encode())


# -- names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "known", "meant"),
    [
        ("qwen3", ["qwen3"], "qwen3"),
        ("qwen3:latest", ["qwen3"], "qwen3"),
        ("llama3", ["llama3:latest"], "llama3:latest"),
        ("llama3:latest", ["llama3:latest", "llama3"], "llama3:latest"),
        ("llama3", ["llama3:latest", "llama3"], "llama3"),
        ("llama3:8b", ["llama3"], "llama3:8b"),  # another tag is another model
        ("nope", ["qwen3"], "nope"),
        (":latest", ["", "x"], ":latest"),
    ],
)
def test_names_with_or_without_latest(name: str, known: list[str], meant: str) -> None:
    assert resolve_model_name(name, known) == meant


def test_the_upstream_model_is_the_resolved_name_and_the_client_keeps_its_own() -> None:
    request = parse_ollama_chat(
        b'{"model": "qwen3:latest", "messages": [{"role": "user", "content": "Hi"}]}', ["qwen3"]
    )
    assert request.payload["model"] == "qwen3"
    assert request.needs.model == "qwen3"
    assert request.origin.model == "qwen3:latest"


# -- requests ------------------------------------------------------------------------


def test_defaults_stream_and_asks_upstream_for_usage() -> None:
    request = chat(messages=[{"role": "user", "content": "Hi"}])
    assert request.needs.stream is True
    assert request.payload["stream"] is True
    assert request.payload["stream_options"] == {"include_usage": True}
    assert chat(messages=[{"role": "user", "content": "Hi"}], stream=False).needs.stream is False


def test_options_format_and_think_translate() -> None:
    request = chat(
        messages=[{"role": "user", "content": "Hi"}],
        options={"temperature": 0.2, "top_p": 0.9, "top_k": 40, "seed": 7, "num_predict": 64,
                 "stop": ["\n\n"], "num_ctx": 8192, "mirostat": 1},
        format="json",
        think="high",
        keep_alive="5m",
    )  # fmt: skip
    payload = request.payload
    assert payload["temperature"] == 0.2
    assert payload["top_p"] == 0.9
    assert payload["top_k"] == 40
    assert payload["seed"] == 7
    assert payload["max_tokens"] == 64
    assert payload["stop"] == ["\n\n"]
    assert payload["response_format"] == {"type": "json_object"}
    assert payload["reasoning_effort"] == "high"
    assert "num_ctx" not in payload
    assert "keep_alive" not in payload
    assert request.needs.json is True
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    formatted = chat(messages=[{"role": "user", "content": "Hi"}], format=schema).payload
    assert formatted["response_format"]["json_schema"]["schema"] == schema
    endless = chat(messages=[{"role": "user", "content": "Hi"}], options={"num_predict": -1})
    assert "max_tokens" not in endless.payload
    quiet = chat(messages=[{"role": "user", "content": "Hi"}], think=False)
    assert quiet.origin.think is False
    assert "reasoning_effort" not in quiet.payload


def test_images_become_data_url_parts() -> None:
    request = chat(messages=[{"role": "user", "content": "What is it?", "images": [PNG]}])
    parts = request.payload["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "What is it?"}
    assert parts[1]["image_url"]["url"] == "data:image/png;base64," + PNG
    assert request.needs.vision is True


def test_tool_calls_and_results_round_trip() -> None:
    request = chat(
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Oslo"}}},
                    {"function": {"name": "time", "arguments": {}}},
                ],
            },
            {"role": "tool", "tool_name": "time", "content": "noon"},
            {"role": "tool", "tool_name": "weather", "content": "rain"},
        ],
        tools=[{"type": "function", "function": {"name": "weather", "parameters": {}}}],
    )
    messages = request.payload["messages"]
    calls = messages[1]["tool_calls"]
    assert messages[1]["content"] is None
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Oslo"}, {}]
    assert messages[2] == {"role": "tool", "tool_call_id": calls[1]["id"], "content": "noon"}
    assert messages[3] == {"role": "tool", "tool_call_id": calls[0]["id"], "content": "rain"}
    assert request.needs.tools is True
    # The same conversation gives the same ids (a backend's prefix cache keeps hitting).
    call = {"function": {"name": "weather", "arguments": {"city": "Oslo"}}}
    turn = {"role": "assistant", "content": "", "tool_calls": [call]}
    again = chat(messages=[{"role": "user", "content": "Weather?"}, turn])
    assert again.payload["messages"][1]["tool_calls"][0]["id"] == calls[0]["id"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "m"}',
        b'{"model": "m", "messages": "hi"}',
        b'{"model": "m", "messages": []}',
        b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": 3}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x", "images": [1]}]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "format": "xml"}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "think": "lots"}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "options": [1]}',
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
        b'"options": {"temperature": "hot"}}',
        b'{"model": "m", "messages": [{"role": "assistant", "content": "", '
        b'"tool_calls": [{"function": {"name": "f", "arguments": [1]}}]}]}',
    ],
)
def test_bad_bodies_are_400s_that_say_why(body: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        parse_ollama_chat(body)
    assert caught.value.status == 400
    assert caught.value.message


def test_generate_is_a_chat_turn_with_the_system_first() -> None:
    request = parse_ollama_generate(
        b'{"model": "m", "prompt": "Why?", "system": "Be brief.", "images": ["/9j/abc"]}'
    )
    messages = request.payload["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["content"][1]["image_url"]["url"] == "data:image/jpeg;base64,/9j/abc"
    assert request.origin.shape == "generate"
    assert generate_is_completion({"suffix": "x"})
    assert generate_is_completion({"raw": True})
    assert not generate_is_completion({"suffix": "", "raw": False})


_text = st.text(max_size=30)
_args = st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=3)


@st.composite
def _conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(_text)})
    for _ in range(draw(st.integers(1, 4))):
        messages.append({"role": "user", "content": draw(_text)})
        calls = draw(st.lists(st.tuples(st.sampled_from(["f", "g", "h"]), _args), max_size=3))
        turn: dict[str, Any] = {"role": "assistant", "content": draw(_text)}
        if calls:
            turn["tool_calls"] = [{"function": {"name": n, "arguments": a}} for n, a in calls]
        messages.append(turn)
        for name, _ in calls:
            messages.append({"role": "tool", "tool_name": name, "content": draw(_text)})
    return messages


@settings(max_examples=200, deadline=None)
@given(_conversations())
def test_any_conversation_reaches_the_backend_whole(messages: list[dict[str, Any]]) -> None:
    upstream = chat(messages=messages).payload["messages"]
    assert [m["role"] for m in upstream] == [m["role"] for m in messages]
    answered: set[str] = set()
    calls_by_id: dict[str, str] = {}
    for sent, got in zip(messages, upstream, strict=True):
        if sent.get("tool_calls"):
            calls = got["tool_calls"]
            assert [json.loads(c["function"]["arguments"]) for c in calls] == [
                c["function"]["arguments"] for c in sent["tool_calls"]
            ]
            assert len({c["id"] for c in calls}) == len(calls)
            calls_by_id = {c["id"]: c["function"]["name"] for c in calls}
            assert (got["content"] or "") == sent["content"]
        elif sent["role"] == "tool":
            # Each result answers a call of its name, and no call twice.
            assert calls_by_id[got["tool_call_id"]] == sent["tool_name"]
            assert got["tool_call_id"] not in answered
            answered.add(got["tool_call_id"])
            assert got["content"] == sent["content"]
        else:
            assert got["content"] == sent["content"]


@given(st.binary(max_size=200))
def test_no_body_crashes_the_parser(body: bytes) -> None:
    try:
        parse_ollama_chat(body)
        parse_ollama_generate(body)
    except RequestError:
        pass


# -- responses -----------------------------------------------------------------------


def test_created_at_is_rfc3339_with_nanoseconds() -> None:
    assert created_at(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert created_at(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"
    assert created_at(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_ollamas_every_call_at_index_0_stays_apart() -> None:
    lines = OllamaLines("m")
    out = lines.feed(_chunk({"tool_calls": [{"index": 0, "id": "a", "function": {
        "name": "f", "arguments": '{"x": 1}'}}]}))  # fmt: skip
    out += lines.feed(_chunk({"tool_calls": [{"index": 0, "id": "b", "function": {
        "name": "g", "arguments": "{}"}}]}))  # fmt: skip
    out += lines.feed(_chunk({}, "tool_calls"))
    calls = [c for line in out for c in line["message"].get("tool_calls", [])]
    assert calls == [
        {"id": "a", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}},
        {"id": "b", "function": {"index": 1, "name": "g", "arguments": {}}},
    ]
    final = lines.finish({"prompt_tokens": 3, "completion_tokens": 5}, Durations(9, 4, 5))[-1]
    assert final["done"] is True
    assert final["done_reason"] == "stop"
    assert (final["prompt_eval_count"], final["eval_count"]) == (3, 5)
    assert (final["total_duration"], final["prompt_eval_duration"], final["eval_duration"]) == (
        9, 4, 5,
    )  # fmt: skip


_pieces = st.lists(st.text(max_size=6), max_size=6)


@st.composite
def _streams(draw: st.DrawFn) -> tuple[list[dict[str, Any]], str, str, list[dict[str, Any]]]:
    """A chat stream: (chunks, its text, its reasoning, its calls' arguments)."""
    chunks: list[dict[str, Any]] = []
    text, thought = "", ""
    for piece in draw(_pieces):
        if draw(st.booleans()):
            chunks.append(_chunk({"content": piece}))
            text += piece
        else:
            chunks.append(_chunk({"reasoning_content": piece}))
            thought += piece
    calls = draw(st.lists(_args, max_size=3))
    for index, arguments in enumerate(calls):
        encoded = json.dumps(arguments)
        cuts = sorted(draw(st.lists(st.integers(0, len(encoded)), max_size=3)))
        bounds = [0, *cuts, len(encoded)]
        first = {"index": index, "id": f"call_{index}", "type": "function",
                 "function": {"name": f"f{index}", "arguments": ""}}  # fmt: skip
        chunks.append(_chunk({"tool_calls": [first]}))
        for start, end in itertools.pairwise(bounds):
            fragment = {"index": index, "function": {"arguments": encoded[start:end]}}
            chunks.append(_chunk({"tool_calls": [fragment]}))
    finish = draw(st.sampled_from([None, "stop", "length", "tool_calls"]))
    if finish is not None:
        chunks.append(_chunk({}, finish))
    if draw(st.booleans()):
        chunks.append({"choices": [], "usage": {"prompt_tokens": 1}})  # a usage chunk
    return chunks, text, thought, calls


@settings(max_examples=300, deadline=None)
@given(_streams(), st.sampled_from(["chat", "generate"]), st.booleans())
def test_any_chunk_sequence_makes_well_formed_ndjson(stream: Any, shape: str, failed: bool) -> None:
    chunks, text, thought, calls = stream
    lines = OllamaLines("asked:latest", shape, clock=lambda: 1_700_000_000_000_000_001)
    out = [line for chunk in chunks for line in lines.feed(chunk)]
    if failed:
        out.append(lines.fail("the backend went away"))
    else:
        out += lines.finish({"prompt_tokens": 2, "completion_tokens": 3}, Durations(3, 1, 2))
    wire = b"".join(json.dumps(line).encode() + b"\n" for line in out)
    parsed = [json.loads(line) for line in wire.splitlines()]
    assert all(isinstance(line, dict) for line in parsed)
    if failed:
        assert parsed[-1] == {"error": "the backend went away"}
        assert not any(line.get("done") for line in parsed)
        return
    assert [line["done"] for line in parsed].count(True) == 1
    assert parsed[-1]["done"] is True
    assert parsed[-1]["done_reason"] in ("stop", "length")
    assert all(line["model"] == "asked:latest" for line in parsed)
    key = "content" if shape == "chat" else "response"
    bodies = [line["message"] if shape == "chat" else line for line in parsed]
    assert "".join(b[key] for b in bodies) == text
    assert "".join(b.get("thinking", "") for b in bodies) == thought
    if shape == "chat":
        got = [c for b in bodies for c in b.get("tool_calls", [])]
        assert [c["function"]["arguments"] for c in got] == calls
        assert [c["id"] for c in got] == [f"call_{i}" for i in range(len(calls))]
        merged = merge_lines(parsed, shape)
        assert merged["message"]["content"] == text
        assert [c["function"]["arguments"] for c in merged["message"].get("tool_calls", [])] == (
            calls
        )
        assert merged["done"] is True
        assert merged["eval_count"] == 3


def test_think_false_drops_reasoning() -> None:
    lines = OllamaLines("m", think=False)
    assert lines.feed(_chunk({"reasoning_content": "hmm"})) == []
    assert lines.feed(_chunk({"content": "Hi"}))[0]["message"] == {
        "role": "assistant",
        "content": "Hi",
    }


def test_arguments_that_are_not_an_object_come_back_as_text() -> None:
    lines = OllamaLines("m")
    lines.feed(_chunk({"tool_calls": [{"index": 0, "id": "a", "function": {
        "name": "f", "arguments": "not json"}}]}))  # fmt: skip
    out = lines.finish({}, Durations())
    assert out[0]["message"]["content"] == "not json"
    assert "tool_calls" not in out[0]["message"]
