"""The Responses codec without a network: requests into chat requests, chat chunks into
Responses events, the kept-response store, and the writer's pass-through cases."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from nexus_trio.config import RoutingSettings
from nexus_trio.dialects.response_store import KeptResponse, ResponseStore
from nexus_trio.dialects.responses import parse_responses_request
from nexus_trio.dialects.responses_output import ResponseBuilder
from nexus_trio.dialects.responses_writer import responses_dialect
from nexus_trio.errors import RequestError, ResponseNotKept
from nexus_trio.proxy.writer import WholeAnswer

ROUTING = RoutingSettings()


def parse(request: dict[str, Any], store: ResponseStore | None = None) -> Any:
    return parse_responses_request(json.dumps(request).encode(), ROUTING, store or ResponseStore(8))


# -- requests ----------------------------------------------------------------------------

texts = st.text(max_size=12)
urls = st.sampled_from(["https://example.com/cat.png", "data:image/png;base64,iVBORw0KGgo="])
text_parts = st.builds(lambda t: {"type": "input_text", "text": t}, texts)
image_parts = st.builds(lambda u: {"type": "input_image", "image_url": u, "detail": "auto"}, urls)
output_parts = st.one_of(
    st.builds(lambda t: {"type": "output_text", "text": t, "annotations": []}, texts),
    st.builds(lambda t: {"type": "refusal", "refusal": t}, texts),
)


@st.composite
def message_items(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(["user", "assistant", "system", "developer"]))
    if draw(st.booleans()):
        content: Any = draw(texts)
    elif role == "user":
        content = draw(st.lists(st.one_of(text_parts, image_parts), max_size=3))
    elif role == "assistant":
        content = draw(st.lists(output_parts, max_size=3))
    else:
        content = draw(st.lists(text_parts, max_size=3))
    item = {"role": role, "content": content}
    if draw(st.booleans()):
        item["type"] = "message"
    return item


ids = st.text(min_size=1, max_size=8)
function_calls = st.builds(
    lambda call_id, name, arguments: {"type": "function_call", "call_id": call_id,
                                      "name": name, "arguments": arguments},
    ids, st.text(min_size=1, max_size=8), texts,
)  # fmt: skip
function_outputs = st.builds(
    lambda call_id, output: {"type": "function_call_output", "call_id": call_id,
                             "output": output},
    ids, st.one_of(texts, st.lists(st.one_of(text_parts, image_parts), max_size=3)),
)  # fmt: skip
reasoning_items = st.just({"type": "reasoning", "summary": [{"type": "summary_text",
                                                             "text": "hmm"}]})  # fmt: skip
items = st.lists(
    st.one_of(message_items(), function_calls, function_outputs, reasoning_items),
    min_size=1, max_size=8,
)  # fmt: skip

ROLES = {"developer": "system"}


def _content_atoms(content: Any) -> list[tuple[str, Any]]:
    if isinstance(content, str):
        return [("text", content)]
    atoms: list[tuple[str, Any]] = []
    for part in content or []:
        if part["type"] in ("input_text", "output_text", "text"):
            atoms.append(("text", part["text"]))
        elif part["type"] == "refusal":
            atoms.append(("text", part["refusal"]))
        elif part["type"] == "input_image":
            atoms.append(("image", part["image_url"]))
        else:
            atoms.append(("image", part["image_url"]["url"]))
    return atoms


def _merged(atoms: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Consecutive texts joined and empty ones dropped: what may be cut differently."""
    out: list[tuple[str, Any]] = []
    for kind, value in atoms:
        if kind == "text":
            if not value:
                continue
            if out and out[-1][0] == "text":
                out[-1] = ("text", out[-1][1] + value)
                continue
        out.append((kind, value))
    return out


def input_atoms(input_items: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    atoms: list[tuple[str, Any]] = []
    for item in input_items:
        kind = item.get("type", "message")
        if kind == "message":
            atoms.append(("role", ROLES.get(item["role"], item["role"])))
            atoms += _content_atoms(item["content"])
        elif kind == "function_call":
            atoms.append(("call", (item["call_id"], item["name"], item["arguments"])))
        elif kind == "function_call_output":
            atoms.append(("output", item["call_id"]))
            atoms += _content_atoms(item["output"])
    return _merged(atoms)


def upstream_atoms(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    atoms: list[tuple[str, Any]] = []
    for message in messages:
        if message["role"] == "tool":
            atoms.append(("output", message["tool_call_id"]))
            atoms += _content_atoms(message["content"])
            continue
        if message["content"] is not None:
            atoms.append(("role", message["role"]))
            atoms += _content_atoms(message["content"])
        for call in message.get("tool_calls", []):
            function = call["function"]
            atoms.append(("call", (call["id"], function["name"], function["arguments"])))
    return _merged(atoms)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(items, st.one_of(st.none(), st.text(min_size=1, max_size=12)), st.booleans())
def test_any_valid_request_survives_translation(
    input_items: list[dict[str, Any]], instructions: str | None, stream: bool
) -> None:
    request: dict[str, Any] = {"model": "m", "input": input_items, "stream": stream}
    if instructions is not None:
        request["instructions"] = instructions
    if not any(item.get("type") != "reasoning" for item in input_items):
        with pytest.raises(RequestError, match="at least one item"):
            parse(request)
        return
    chat = parse(request)
    messages = chat.payload["messages"]
    if instructions is not None:
        assert messages[0] == {"role": "system", "content": instructions}
        messages = messages[1:]
    # Every text, image, call and output with its call_id arrives, in order.
    assert upstream_atoms(messages) == input_atoms(input_items)
    # Consecutive calls are one assistant turn: never two call-only turns in a row.
    for before, after in itertools.pairwise(messages):
        assert not ("tool_calls" in before and after["role"] == "assistant"
                    and after["content"] is None)  # fmt: skip
    assert json.loads(chat.body) == chat.payload
    assert chat.payload["stream"] is True
    assert chat.needs.stream is stream
    assert chat.origin.conversation == tuple(messages)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20,
)  # fmt: skip
fields = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just("m"), json_values),
        "input": st.one_of(items, json_values, st.lists(json_values, max_size=3)),
        "instructions": json_values, "tools": st.one_of(json_values, st.lists(json_values)),
        "tool_choice": json_values, "text": json_values, "stream": json_values,
        "max_output_tokens": json_values, "temperature": json_values,
        "previous_response_id": json_values, "parallel_tool_calls": json_values,
    },
)  # fmt: skip


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(fields, json_values))
def test_no_body_is_a_crash(body: Any) -> None:
    """Whatever the body, a chat request or a RequestError naming what to fix."""
    try:
        parse(body)
    except RequestError as exc:
        error = exc
    else:
        return
    assert error.status in (400, 404)
    assert error.message


def test_function_calls_fold_into_the_assistant_turn_before_them() -> None:
    chat = parse({"model": "m", "input": [
        {"role": "user", "content": "Go"},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "Looking.", "annotations": []}]},
        {"type": "reasoning", "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"a\":1}"},
        {"type": "function_call_output", "call_id": "c1", "output": [
            {"type": "input_text", "text": "one"}, {"type": "input_text", "text": "two"}]},
        {"type": "function_call_output", "call_id": "c2", "output": [
            {"type": "input_image", "image_url": "https://x/y.png"}]},
        {"type": "compaction", "encrypted_content": "..."},
    ]})  # fmt: skip
    assert chat.payload["messages"] == [
        {"role": "user", "content": "Go"},
        {"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{\"a\":1}"}},
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "onetwo"},
        {"role": "tool", "tool_call_id": "c2", "content": [
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
    ]  # fmt: skip
    assert chat.needs.vision


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
        ({"input": [{"type": "local_shell_call", "call_id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
         "input[0].content[0]"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
         "input[0].content[0].image_url"),
        ({"input": [{"role": "system", "content": [{"type": "input_image",
                                                    "image_url": "https://x"}]}]},
         "input[0].content[0]"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
         "input[0].call_id"),
        ({"tools": [{"type": "custom", "name": "apply_patch"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].name"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": []}, "input"),
        ({"model": ""}, "model"),
    ],
)  # fmt: skip
def test_what_cannot_be_served_is_named(change: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse({"model": "m", "input": "hi", **change})
    assert caught.value.status == 400
    assert caught.value.param == param


def test_tools_and_choices() -> None:
    tools = [
        {"type": "function", "name": "a", "parameters": {"type": "object"}, "strict": True},
        {"type": "function", "name": "b", "description": "B", "parameters": None},
    ]
    chat = parse({"model": "m", "input": "hi", "tools": tools, "parallel_tool_calls": False,
                  "tool_choice": {"type": "function", "name": "b"}})  # fmt: skip
    assert chat.payload["tools"] == [
        {"type": "function", "function": {"name": "a", "parameters": {"type": "object"},
                                          "strict": True}},
        {"type": "function", "function": {"name": "b", "description": "B"}},
    ]  # fmt: skip
    assert chat.payload["tool_choice"] == {"type": "function", "function": {"name": "b"}}
    assert chat.payload["parallel_tool_calls"] is False
    allowed = parse({"model": "m", "input": "hi", "tools": tools, "tool_choice": {
        "type": "allowed_tools", "mode": "required", "tools": [{"type": "function",
                                                                "name": "a"}]}})  # fmt: skip
    assert [t["function"]["name"] for t in allowed.payload["tools"]] == ["a"]
    assert allowed.payload["tool_choice"] == "required"
    none = parse({"model": "m", "input": "hi", "tools": tools, "tool_choice": "none"})
    assert not none.needs.tools
    assert (
        "response_format"
        not in parse({"model": "m", "input": "hi", "text": {"format": {"type": "text"}}}).payload
    )
    assert parse({"model": "m", "input": "hi", "text": {"format": {"type": "json_object"}}}
                 ).payload["response_format"] == {"type": "json_object"}  # fmt: skip


def test_previous_response_id_comes_from_the_store() -> None:
    store = ResponseStore(2)
    earlier = ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"})
    store.keep("resp_1", KeptResponse({"id": "resp_1"}, earlier))
    chat = parse({"model": "m", "input": "c", "previous_response_id": "resp_1"}, store)
    assert chat.payload["messages"] == [*earlier, {"role": "user", "content": "c"}]
    with pytest.raises(ResponseNotKept) as caught:
        parse({"model": "m", "input": "c", "previous_response_id": "resp_2"}, store)
    assert (caught.value.status, caught.value.param) == (404, "previous_response_id")


def test_the_store_evicts_the_least_recently_used() -> None:
    store = ResponseStore(2)
    for name in ("a", "b"):
        store.keep(name, KeptResponse({}, ()))
    assert store.get("a") is not None  # now "b" is the least recently used
    store.keep("c", KeptResponse({}, ()))
    assert (store.get("a"), store.get("b")) == (KeptResponse({}, ()), None)
    assert len(store) == 2
    nothing = ResponseStore(0)
    nothing.keep("a", KeptResponse({}, ()))
    assert len(nothing) == 0
    with pytest.raises(ResponseNotKept, match="only the last 0"):
        nothing.require("a")


# -- events ------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip


@st.composite
def call_chunks(draw: st.DrawFn, number: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One tool call as a server streams it: OpenAI-like (head, then argument pieces at one
    index) or Ollama-like (whole, every call at index 0, told apart by its id)."""
    call_id = f"call_{number}"  # as servers do: an id of its own per call
    name = draw(st.sampled_from(["f", "get_weather", "read"]))
    pieces = draw(st.lists(st.text(min_size=1, max_size=6), max_size=4))
    if draw(st.booleans()):
        whole = {"index": 0, "id": call_id, "type": "function",
                 "function": {"name": name, "arguments": "".join(pieces)}}  # fmt: skip
        return [chunk({"tool_calls": [whole]})], {"call_id": call_id, "pieces": pieces,
                                                   "name": name, "ollama": True}  # fmt: skip
    index = draw(st.integers(0, 3))
    head = {"index": index, "id": call_id, "type": "function",
            "function": {"name": name, "arguments": ""}}  # fmt: skip
    chunks = [chunk({"tool_calls": [head]})]
    chunks += [chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]})
               for p in pieces]  # fmt: skip
    return chunks, {"call_id": call_id, "pieces": pieces, "name": name, "index": index}


@st.composite
def answers(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[tuple[str, Any]]]:
    """Upstream chunks, and what they say in order: ("output_text" | "reasoning_text" |
    "refusal", text) or ("call", spec)."""
    chunks: list[dict[str, Any]] = []
    said: list[tuple[str, Any]] = []
    if draw(st.booleans()):
        chunks.append(chunk({"role": "assistant", "content": ""}))
    for number in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["content", "reasoning_content", "refusal", "call",
                                     "usage"]))  # fmt: skip
        if kind == "call":
            more, spec = draw(call_chunks(number))
            chunks += more
            said.append(("call", spec))
        elif kind == "usage":
            chunks.append({"id": "c", "choices": [], "usage": {"prompt_tokens": 1}})
        else:
            text = draw(st.text(min_size=1, max_size=6))
            chunks.append(chunk({kind: text}))
            part = {"content": "output_text", "reasoning_content": "reasoning_text"}.get(kind, kind)
            said.append((part, text))
    finish = draw(st.sampled_from([None, "stop", "length", "tool_calls", "content_filter"]))
    if finish is not None:
        chunks.append(chunk({}, finish))
    return chunks, said


def sdk_accepts(events: list[dict[str, Any]]) -> Any:
    """Feed the events to the openai SDK's own stream accumulator; its final response."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=[], text_format=omit)
    for event in events:
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=event))
    return state._completed_response


def _joined_deltas(events: list[dict[str, Any]]) -> dict[tuple[int, int], str]:
    built: dict[tuple[int, int], str] = {}
    for event in events:
        if event["type"].endswith(".delta"):
            key = (event["output_index"], event.get("content_index", -1))
            built[key] = built.get(key, "") + event["delta"]
    return built


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200, deadline=None)
@given(answers(), st.sampled_from(["finish", "fail"]),
       st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens"]),
                       st.integers(0, 10**6)))  # fmt: skip
def test_any_chunk_sequence_makes_a_well_formed_stream(
    answer: tuple[list[dict[str, Any]], list[tuple[str, Any]]],
    ending: str,
    usage: dict[str, int],
) -> None:
    chunks, said = answer
    builder = ResponseBuilder({"id": "resp_x", "model": "m", "tools": [], "tool_choice": "auto",
                               "parallel_tool_calls": True})  # fmt: skip
    events = builder.start()
    for one in chunks:
        events += builder.add(one)
    events += builder.finish(usage) if ending == "finish" else builder.fail("server_error", "x")

    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    terminal = [e for e in events if e["type"] in
                ("response.completed", "response.incomplete", "response.failed")]  # fmt: skip
    assert terminal == [events[-1]]
    final = events[-1]["response"]
    assert final["id"] == events[0]["response"]["id"] == "resp_x"

    # Items: added in output_index order, each done once after its added, one open at a
    # time, and every other event inside its item's added..done.
    added = [e for e in events if e["type"] == "response.output_item.added"]
    done = {e["output_index"]: e for e in events if e["type"] == "response.output_item.done"}
    assert [e["output_index"] for e in added] == list(range(len(added)))
    assert len(final["output"]) == len(added)
    open_index: int | None = None
    for event in events[2:-1]:
        kind = event["type"]
        if kind == "response.output_item.added":
            assert open_index is None
            open_index = event["output_index"]
        elif kind == "response.output_item.done":
            assert event["output_index"] == open_index
            open_index = None
        else:
            assert event["output_index"] == open_index
            assert event["item_id"] == final["output"][open_index]["id"]
    if ending == "finish":
        assert open_index is None
        assert set(done) == set(range(len(added)))
        assert [done[i]["item"] for i in range(len(added))] == final["output"]
        assert all(item["status"] != "in_progress" for item in final["output"])
        usage_out = final["usage"]
        assert {"input_tokens", "output_tokens", "total_tokens"} <= set(usage_out)
        reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(
            builder.finish_reason or ""
        )
        assert final["status"] == ("incomplete" if reason else "completed")
        assert final["incomplete_details"] == ({"reason": reason} if reason else None)
        response = sdk_accepts(events)  # it raises on what it cannot follow
        if final["status"] == "completed":
            assert response.output_text == "".join(t for k, t in said if k == "output_text")
    else:
        assert final["status"] == "failed"
        assert final["error"] == {"code": "server_error", "message": "x"}
        assert len(done) >= len(added) - 1  # at most the item in progress is not done
        if open_index is not None:
            assert final["output"][open_index]["status"] == "incomplete"

    # The terminal output is what the deltas built, and the deltas are what was said.
    built = _joined_deltas(events)
    texts: dict[str, list[str]] = {}
    calls = []
    for index, item in enumerate(final["output"]):
        if item["type"] == "function_call":
            assert item["arguments"] == built.get((index, -1), "")
            calls.append(item)
            continue
        for content_index, part in enumerate(item["content"]):
            text = part.get("text", part.get("refusal"))
            assert text == built.get((index, content_index), "")
            texts.setdefault(part["type"], []).append(text)
    for part in ("output_text", "reasoning_text", "refusal"):
        assert "".join(texts.get(part, [])) == "".join(t for k, t in said if k == part)
    specs = [spec for kind, spec in said if kind == "call"]
    assert [(c["call_id"], c["name"], c["arguments"]) for c in calls] == [
        (s["call_id"], s["name"], "".join(s["pieces"])) for s in specs
    ]


def test_parallel_calls_at_index_zero_are_told_apart_by_id() -> None:
    """Ollama streams every call whole at index 0; each is an item of its own."""
    builder = ResponseBuilder({"id": "resp_x", "model": "m"})
    events = builder.start()
    for call_id, city in (("call_a", "Oslo"), ("call_b", "Rome")):
        whole = {"index": 0, "id": call_id, "type": "function",
                 "function": {"name": "w", "arguments": json.dumps({"city": city})}}  # fmt: skip
        events += builder.add(chunk({"tool_calls": [whole]}))
    events += builder.add(chunk({}, "tool_calls"))
    events += builder.finish({"prompt_tokens": 3, "completion_tokens": 4})
    output = events[-1]["response"]["output"]
    assert [(i["call_id"], json.loads(i["arguments"])["city"]) for i in output] == [
        ("call_a", "Oslo"), ("call_b", "Rome")]  # fmt: skip
    assert events[-1]["response"]["usage"]["total_tokens"] == 7
    assert builder.chat_message()["tool_calls"][1]["id"] == "call_b"


def test_calls_without_ids_are_told_apart_by_index() -> None:
    builder = ResponseBuilder({"id": "resp_x", "model": "m"})
    builder.start()
    for index in range(2):
        head = {"index": index, "function": {"name": f"f{index}", "arguments": ""}}
        builder.add(chunk({"tool_calls": [head]}))
        builder.add(chunk({"tool_calls": [{"index": index, "function": {"arguments": "{}"}}]}))
    builder.finish({})
    calls = [(i["name"], i["arguments"]) for i in builder.output]
    assert calls == [("f0", "{}"), ("f1", "{}")]
    assert all(i["call_id"].startswith("call_") for i in builder.output)


def test_an_id_given_twice_is_made_unique() -> None:
    builder = ResponseBuilder({"id": "resp_x", "model": "m"})
    builder.start()
    for _ in range(2):
        whole = {"index": 0, "id": "call_0", "function": {"name": "f", "arguments": "{}"}}
        builder.add(chunk({"content": "x"}))
        builder.add(chunk({"tool_calls": [whole]}))
    builder.finish({})
    ids = [item["call_id"] for item in builder.output if item["type"] == "function_call"]
    assert ids == ["call_0", "call_0_3"]


def test_reasoning_then_text() -> None:
    builder = ResponseBuilder({"id": "resp_x", "model": "m"})
    builder.start()
    builder.add(chunk({"reasoning_content": "Think"}))
    builder.add(chunk({"content": "Answer"}))
    builder.finish({})
    reasoning, message = builder.response()["output"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Think"}]
    assert reasoning["summary"] == []
    assert message["content"][0]["text"] == "Answer"
    assert builder.chat_message() == {"role": "assistant", "content": "Answer"}
    assert builder.response()["usage"] == {
        "input_tokens": 0, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0,
    }  # fmt: skip


# -- writers: a backend's own answer ------------------------------------------------------


class Recorded:
    """A Downstream that keeps what was written."""

    def __init__(self) -> None:
        self.started = False
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.started, self.status, self.headers = True, status, headers

    async def send(self, data: bytes) -> None:
        self.body += data

    async def end(self) -> None:
        pass

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        await self.start(status, headers)
        self.body = body


CANDIDATE: Any = SimpleNamespace(
    backend=SimpleNamespace(name="a", type=SimpleNamespace(value="ollama")),
    model="m", reason="test", fallback_from=None,
)  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": "model \\"m\\" not found"}', 'model "m" not found'),
        (b'{"error": {"message": "bad", "type": "invalid_request_error"}}', "bad"),
        (b"plain words", "plain words"),
    ],
)
async def test_a_refusal_is_openai_error_json(body: bytes, message: str) -> None:
    store = ResponseStore(4)
    dialect = responses_dialect(store)
    chat = dialect.parse(b'{"model": "m", "input": "hi", "stream": true}', ROUTING)
    downstream = Recorded()
    await dialect.writer(chat, downstream, "r1").pass_through(
        WholeAnswer(CANDIDATE, 400, "application/json", body)
    )
    assert downstream.status == 400
    assert json.loads(downstream.body)["error"]["message"] == message


@pytest.mark.parametrize("stream", [True, False])
async def test_a_whole_completion_is_written_as_if_streamed(stream: bool) -> None:
    store = ResponseStore(4)
    dialect = responses_dialect(store)
    body = json.dumps({"model": "m", "input": "hi", "stream": stream}).encode()
    chat = dialect.parse(body, ROUTING)
    downstream = Recorded()
    completion = {
        "id": "x", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Whole."}}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }  # fmt: skip
    await dialect.writer(chat, downstream, "r1").pass_through(
        WholeAnswer(CANDIDATE, 200, "application/json", json.dumps(completion).encode())
    )
    assert downstream.status == 200
    if stream:
        blocks = downstream.body.decode().strip().split("\n\n")
        names = [block.split("\n")[0].removeprefix("event: ") for block in blocks]
        events = [json.loads(block.split("\n")[1].removeprefix("data: ")) for block in blocks]
        assert names == [event["type"] for event in events]
        response = events[-1]["response"]
    else:
        response = json.loads(downstream.body)
    assert response["status"] == "completed"
    assert response["output"][0]["content"][0]["text"] == "Whole."
    assert response["usage"]["total_tokens"] == 3
    kept = store.get(response["id"])
    assert kept is not None
    assert kept.conversation[-1] == {"role": "assistant", "content": "Whole."}
