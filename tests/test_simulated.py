"""The simulated backends speak the documented wire protocols and fail exactly as asked."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import openai
import pytest
import trio
import trio.testing

import nexus_trio.testing as testing
from nexus_trio.testing import (
    Faults,
    Flavor,
    SimModel,
    SimulatedBackend,
    continuation,
    demo_fleet,
    expected_answer,
    serve_fleet,
)
from nexus_trio.testing._native import node_id
from nexus_trio.testing._text import answer_tokens

# The openai SDK (and httpx under it) leave their own async generators to the garbage
# collector when a stream ends at `data: [DONE]`; trio warns. Not ours to fix, and
# ignored here as well as in pyproject.toml so that `pytest -W error` runs this file.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Async generator '(httpx|httpcore|httpx2|httpcore2|openai)[._]:ResourceWarning"
)

MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "Tell me about rivers."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "metric": {"type": "boolean"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "note": {"type": "string"},
            },
            "required": ["city", "days", "metric", "unit"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


async def start(
    nursery: trio.Nursery,
    flavor: Flavor = Flavor.VLLM,
    models: list[SimModel] | None = None,
    **kwargs: Any,
) -> SimulatedBackend:
    sim = SimulatedBackend(flavor, models or [SimModel("llama3:8b", tools=True)], **kwargs)
    await nursery.start(sim.serve)
    return sim


def sdk(sim: SimulatedBackend, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0, **kwargs)


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3:8b", "messages": MESSAGES, **extra}


async def sse_events(response: httpx.Response) -> AsyncGenerator[str, None]:
    """The ``data:`` payloads of an SSE response, one at a time."""
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


async def stream_texts(client: openai.AsyncOpenAI, **kwargs: Any) -> list[Any]:
    """Every chunk of a streamed SDK answer."""
    stream = await client.chat.completions.create(**kwargs, stream=True)
    async with stream:
        return [chunk async for chunk in stream]


# -- the public surface -------------------------------------------------------------------


def test_all_is_honest() -> None:
    for name in testing.__all__:
        assert hasattr(testing, name), name
    public = {n for n in dir(testing) if not n.startswith("_")} - {"annotations"}
    assert public == set(testing.__all__)


def test_echo_prefill_defaults_by_flavour() -> None:
    models = [SimModel("m")]
    assert SimulatedBackend(Flavor.LLAMACPP, models).echo_prefill is True
    assert SimulatedBackend(Flavor.VLLM, models).echo_prefill is False
    assert SimulatedBackend(Flavor.OLLAMA, models, echo_prefill=True).echo_prefill is True
    with pytest.raises(RuntimeError):
        _ = SimulatedBackend(Flavor.GENERIC, models).url
    with pytest.raises(ValueError, match="twice"):
        SimulatedBackend(Flavor.GENERIC, [SimModel("m"), SimModel("m")])


def test_demo_fleet() -> None:
    fleet = demo_fleet()
    assert [(b.name, b.flavor) for b in fleet] == [
        ("demo-ollama", Flavor.OLLAMA),
        ("demo-vllm", Flavor.VLLM),
        ("demo-llamacpp", Flavor.LLAMACPP),
    ]
    assert all(b.tokens_per_second == 50 for b in fleet)
    assert fleet[0].models_by_id["llava:7b"] == SimModel("llava:7b", 4096, vision=True)
    assert fleet[1].models_by_id["qwen2.5-coder:7b"].context_length == 32768
    assert [m.id for m in fleet[2].models] == ["smollm2:135m"]


# -- deterministic text (pure) -----------------------------------------------------------------


def test_answer_is_a_pure_function_of_model_and_messages() -> None:
    tokens = answer_tokens("llama3:8b", MESSAGES)
    assert 24 <= len(tokens) <= 48
    assert all(t.startswith(" ") for t in tokens[1:])
    assert expected_answer("llama3:8b", MESSAGES) == "".join(tokens)
    assert expected_answer("llama3:8b", [*MESSAGES]) == "".join(tokens)
    assert expected_answer("qwen2.5-coder:7b", MESSAGES) != "".join(tokens)
    other = [{"role": "user", "content": "Tell me about stones."}]
    assert expected_answer("llama3:8b", other) != "".join(tokens)


def test_continuation_of_every_prefix_joins_up() -> None:
    full = expected_answer("llama3:8b", MESSAGES)
    for cut in range(len(full) + 1):
        rest = continuation("llama3:8b", MESSAGES, full[:cut])
        assert full[:cut] + "".join(rest) == full
    assert continuation("llama3:8b", MESSAGES, full) == []
    stranger = continuation("llama3:8b", MESSAGES, "Something else entirely")
    assert stranger
    assert stranger[0].startswith(" ")


# -- listing endpoints, per flavour ---------------------------------------------------------------


async def test_ollama_native_endpoints(nursery: trio.Nursery) -> None:
    models = [SimModel("llama3:8b", tools=True), SimModel("llava:7b", 4096, vision=True)]
    sim = await start(nursery, Flavor.OLLAMA, models)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        root = await http.get("/")
        assert (root.status_code, root.text) == (200, "Ollama is running")
        assert root.headers["content-type"].startswith("text/plain")
        assert (await http.get("/api/version")).json() == {"version": "0.12.6"}

        tags = (await http.get("/api/tags")).json()["models"]
        assert [t["name"] for t in tags] == ["llama3:8b", "llava:7b"]
        for tag in tags:
            assert set(tag) == {"name", "model", "modified_at", "size", "digest", "details"}
            assert set(tag["details"]) == {
                "parent_model", "format", "family", "families", "parameter_size",
                "quantization_level",
            }  # fmt: skip
            assert tag["details"]["format"] == "gguf"
        assert tags[0]["details"]["parameter_size"] == "8.0B"

        show = (await http.post("/api/show", json={"model": "llava:7b"})).json()
        assert show["capabilities"] == ["completion", "vision"]
        arch = show["model_info"]["general.architecture"]
        assert (arch, show["model_info"][f"{arch}.context_length"]) == ("llama", 4096)
        assert {"modelfile", "parameters", "template", "details", "modified_at"} <= set(show)
        show = (await http.post("/api/show", json={"name": "llama3:8b"})).json()
        assert show["capabilities"] == ["completion", "tools"]
        missing = await http.post("/api/show", json={"model": "nope:1b"})
        assert (missing.status_code, missing.json()) == (
            404,
            {"error": "model 'nope:1b' not found"},
        )

        assert (await http.get("/api/ps")).json() == {"models": []}
        assert (await http.post("/v1/chat/completions", json=chat_body())).status_code == 200
        running = (await http.get("/api/ps")).json()["models"]
        assert [(m["name"], m["context_length"]) for m in running] == [("llama3:8b", 8192)]
        assert {"expires_at", "size_vram", "digest", "details"} <= set(running[0])

        listing = (await http.get("/v1/models")).json()
        assert listing["object"] == "list"
        assert listing["data"][0] == {
            "id": "llama3:8b", "object": "model", "created": listing["data"][0]["created"],
            "owned_by": "library",
        }  # fmt: skip


async def test_vllm_endpoints(nursery: trio.Nursery) -> None:
    sim = await start(nursery, Flavor.VLLM, [SimModel("Qwen/Qwen2.5-7B", context_length=32768)])
    async with httpx.AsyncClient(base_url=sim.url) as http:
        health = await http.get("/health")
        assert (health.status_code, health.content) == (200, b"")
        assert (await http.get("/version")).json() == {"version": "0.11.0"}
        (entry,) = (await http.get("/v1/models")).json()["data"]
        assert entry["id"] == entry["root"] == "Qwen/Qwen2.5-7B"
        assert (entry["object"], entry["owned_by"], entry["parent"]) == ("model", "vllm", None)
        assert entry["max_model_len"] == 32768
        assert entry["permission"][0]["object"] == "model_permission"
        metrics = (await http.get("/metrics")).text
        assert 'vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-7B"} 0' in metrics
        assert (await http.get("/api/tags")).status_code == 404


async def test_llamacpp_endpoints(nursery: trio.Nursery) -> None:
    sim = await start(nursery, Flavor.LLAMACPP, [SimModel("smollm2:135m", context_length=4096)])
    async with httpx.AsyncClient(base_url=sim.url) as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        props = (await http.get("/props")).json()
        assert props["default_generation_settings"]["n_ctx"] == 4096
        assert isinstance(props["default_generation_settings"]["params"], dict)
        assert props["total_slots"] == 2
        assert props["model_path"].endswith(".gguf")
        assert {"chat_template", "build_info"} <= set(props)
        slots = (await http.get("/slots")).json()
        assert [(s["id"], s["n_ctx"], s["is_processing"]) for s in slots] == [
            (0, 4096, False),
            (1, 4096, False),
        ]
        (entry,) = (await http.get("/v1/models")).json()["data"]
        assert (entry["id"], entry["owned_by"]) == ("smollm2:135m", "llamacpp")
        meta = entry["meta"]
        assert meta["n_ctx_train"] == 4096
        assert meta["n_params"] == 135_000_000
        assert {"n_vocab", "size"} <= set(meta)


async def test_generic_endpoints_and_http_errors(nursery: trio.Nursery) -> None:
    sim = await start(nursery, Flavor.GENERIC)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        (entry,) = (await http.get("/v1/models")).json()["data"]
        assert (entry["id"], entry["owned_by"]) == ("llama3:8b", "system")
        unknown = await http.get("/health")
        assert unknown.status_code == 404
        assert "error" in unknown.json()
        wrong = await http.get("/v1/chat/completions")
        assert wrong.status_code == 405
        assert wrong.headers["allow"] == "POST"
    assert sim.stats.requests == 3
    assert sim.stats.chat_requests == 0


# -- answers through the official SDK --------------------------------------------------------


@pytest.mark.parametrize("flavor", list(Flavor))
async def test_sdk_reads_plain_answers(nursery: trio.Nursery, flavor: Flavor) -> None:
    sim = await start(nursery, flavor)
    async with sdk(sim) as client:
        first = await client.chat.completions.create(model="llama3:8b", messages=MESSAGES)
        again = await client.chat.completions.create(
            model="llama3:8b", messages=MESSAGES, temperature=1.5, seed=7
        )
    assert first.object == "chat.completion"
    assert first.id.startswith("chatcmpl-")
    assert first.model == "llama3:8b"
    (choice,) = first.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == again.choices[0].message.content
    assert choice.message.content == expected_answer("llama3:8b", MESSAGES)
    assert choice.finish_reason == "stop"
    assert first.usage is not None
    assert first.usage.completion_tokens == len(answer_tokens("llama3:8b", MESSAGES))
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    assert sim.stats.completed == 2
    assert sim.stats.last_chat_body == {
        "model": "llama3:8b", "messages": MESSAGES, "temperature": 1.5, "seed": 7,
    }  # fmt: skip


async def test_sdk_reads_streams_with_usage(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with sdk(sim) as client:
        chunks = await stream_texts(
            client, model="llama3:8b", messages=MESSAGES, stream_options={"include_usage": True}
        )
    assert len({c.id for c in chunks}) == 1
    assert len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    *body, finish, usage = chunks
    assert finish.choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in [*body, finish])
    assert usage.choices == []
    assert usage.usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert text == expected_answer("llama3:8b", MESSAGES)
    assert usage.usage.completion_tokens == len(body) - 1
    assert sim.stats.completed == 1


async def test_stream_wire_format(nursery: trio.Nursery) -> None:
    sim = await start(nursery, Flavor.OLLAMA)
    async with (
        httpx.AsyncClient(base_url=sim.url) as http,
        http.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response,
    ):
        raw = b"".join([part async for part in response.aiter_raw()])
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["transfer-encoding"] == "chunked"
    events = raw.decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all("usage" not in c for c in chunks)  # only with include_usage
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop",
    }  # fmt: skip
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["system_fingerprint"] for c in chunks} == {"fp_ollama"}


@pytest.mark.parametrize("stream", [False, True])
async def test_max_tokens_cuts_with_length(nursery: trio.Nursery, stream: bool) -> None:
    sim = await start(nursery)
    tokens = answer_tokens("llama3:8b", MESSAGES)
    async with sdk(sim) as client:
        if stream:
            chunks = await stream_texts(
                client, model="llama3:8b", messages=MESSAGES, max_completion_tokens=5
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            answer = await client.chat.completions.create(
                model="llama3:8b", messages=MESSAGES, max_tokens=5
            )
            text, reason = answer.choices[0].message.content or "", answer.choices[0].finish_reason
    assert (text, reason) == ("".join(tokens[:5]), "length")


# -- tool calls ---------------------------------------------------------------------------------


async def test_tool_call_answer(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    async with sdk(sim) as client:
        answer = await client.chat.completions.create(
            model="llama3:8b", messages=MESSAGES, tools=[WEATHER, CLOCK]
        )
        again = await client.chat.completions.create(
            model="llama3:8b", messages=MESSAGES, tools=[WEATHER, CLOCK]
        )
    (choice,) = answer.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id.startswith("call_")
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"city", "days", "metric", "unit"}
    assert isinstance(arguments["city"], str)
    assert (arguments["days"], arguments["metric"], arguments["unit"]) == (42, True, "celsius")
    assert again.choices[0].message.tool_calls == choice.message.tool_calls


async def test_tool_call_streamed(nursery: trio.Nursery) -> None:
    sim = await start(nursery, Flavor.OLLAMA)
    named = {"type": "function", "function": {"name": "get_weather"}}
    async with sdk(sim) as client:
        chunks = await stream_texts(
            client, model="llama3:8b", messages=MESSAGES, tools=[CLOCK, WEATHER], tool_choice=named
        )
        whole = await client.chat.completions.create(
            model="llama3:8b", messages=MESSAGES, tools=[CLOCK, WEATHER], tool_choice=named
        )
    head = chunks[0].choices[0].delta
    assert (head.role, head.content) == ("assistant", None)
    (call,) = head.tool_calls or []
    assert (call.index, call.type, call.function and call.function.name) == (
        0, "function", "get_weather",
    )  # fmt: skip
    pieces = [c.choices[0].delta.tool_calls for c in chunks[1:-1]]
    assert len(pieces) > 1
    arguments = "".join(p[0].function.arguments for p in pieces if p and p[0].function)
    expected = (whole.choices[0].message.tool_calls or [])[0]
    assert arguments == expected.function.arguments
    assert call.id == expected.id
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_fixed_tool_arguments_pick_their_tool_and_fill_its_call(
    nursery: trio.Nursery,
) -> None:
    fixed = {"city": "Lyon", "days": 3, "nested": {"deep": [1, "two"]}}
    sim = await start(nursery, tool_arguments={"get_weather": fixed})
    named = {"type": "function", "function": {"name": "get_time"}}
    async with sdk(sim) as client:
        chunks = await stream_texts(
            client, model="llama3:8b", messages=MESSAGES, tools=[CLOCK, WEATHER]
        )
        chosen = await client.chat.completions.create(
            model="llama3:8b", messages=MESSAGES, tools=[CLOCK, WEATHER], tool_choice=named
        )
        other = await client.chat.completions.create(
            model="llama3:8b", messages=MESSAGES, tools=[CLOCK]
        )
    (head,) = chunks[0].choices[0].delta.tool_calls or []
    assert head.function is not None
    assert head.function.name == "get_weather"
    streamed = "".join(
        p[0].function.arguments or ""
        for c in chunks[1:-1]
        if (p := c.choices[0].delta.tool_calls) and p[0].function
    )
    assert json.loads(streamed) == fixed
    # tool_choice still decides; a tool without fixed arguments gets generated ones
    (call,) = chosen.choices[0].message.tool_calls or []
    assert (call.function.name, call.function.arguments) == ("get_time", "{}")
    assert (other.choices[0].message.tool_calls or [])[0].function.name == "get_time"


async def test_a_trailing_system_message_ends_the_users_turn_unless_told_otherwise(
    nursery: trio.Nursery,
) -> None:
    notes = [*MESSAGES, {"role": "system", "content": "The user is on Linux."}]
    strict = await start(nursery)
    lenient = await start(nursery, system_keeps_user_turn=True)
    async with sdk(strict) as first, sdk(lenient) as second:
        text = await first.chat.completions.create(model="llama3:8b", messages=notes, tools=[CLOCK])
        call = await second.chat.completions.create(
            model="llama3:8b", messages=notes, tools=[CLOCK]
        )
        only_system = await second.chat.completions.create(
            model="llama3:8b", messages=notes[-1:], tools=[CLOCK]
        )
    assert text.choices[0].message.content == expected_answer("llama3:8b", notes)
    assert call.choices[0].finish_reason == "tool_calls"
    assert only_system.choices[0].finish_reason == "stop"


async def test_tool_choice_none_and_tool_results_get_text(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    after_tool = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
    ]
    async with sdk(sim) as client:
        plain = await client.chat.completions.create(
            model="llama3:8b", messages=MESSAGES, tools=[CLOCK], tool_choice="none"
        )
        follow_up = await client.chat.completions.create(
            model="llama3:8b", messages=after_tool, tools=[CLOCK]
        )
    assert plain.choices[0].message.content == expected_answer("llama3:8b", MESSAGES)
    assert follow_up.choices[0].finish_reason == "stop"
    assert follow_up.choices[0].message.content == expected_answer("llama3:8b", after_tool)


# -- refusals ------------------------------------------------------------------------------------


IMAGE = {
    "role": "user",
    "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ],
}


async def test_capabilities_are_enforced(nursery: trio.Nursery) -> None:
    models = [SimModel("llama3:8b"), SimModel("llava:7b", vision=True)]
    sim = await start(nursery, Flavor.OLLAMA, models)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        image = await http.post("/v1/chat/completions", json=chat_body(messages=[IMAGE]))
        assert image.status_code == 400
        assert "does not support images" in image.json()["error"]["message"]
        seen = await http.post(
            "/v1/chat/completions", json=chat_body(model="llava:7b", messages=[IMAGE])
        )
        assert seen.status_code == 200
        tools = await http.post("/v1/chat/completions", json=chat_body(tools=[CLOCK]))
        assert tools.status_code == 400
        message = tools.json()["error"]["message"]
        assert message == "registry.ollama.ai/library/llama3:8b does not support tools"


@pytest.mark.parametrize(
    ("flavor", "message", "type_"),
    [
        (Flavor.VLLM, "The model `nope` does not exist.", "invalid_request_error"),
        (Flavor.OLLAMA, 'model "nope" not found, try pulling it first', "not_found_error"),
    ],
)
async def test_unknown_model_is_404(
    nursery: trio.Nursery, flavor: Flavor, message: str, type_: str
) -> None:
    sim = await start(nursery, flavor)
    async with sdk(sim) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model="nope", messages=MESSAGES)
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["message"], error["type"]) == (message, type_)
    if flavor is Flavor.VLLM:
        assert (error["param"], error["code"]) == ("model", "model_not_found")


async def test_bad_requests_are_400(nursery: trio.Nursery) -> None:
    sim = await start(nursery, models=[SimModel("llama3:8b", context_length=50)])
    async with httpx.AsyncClient(base_url=sim.url) as http:
        bad_json = await http.post("/v1/chat/completions", content=b"{not json")
        no_messages = await http.post("/v1/chat/completions", json={"model": "llama3:8b"})
        bad_messages = await http.post("/v1/chat/completions", json=chat_body(messages="hi"))
        no_model = await http.post("/v1/chat/completions", json={"messages": MESSAGES})
        too_long = await http.post("/v1/chat/completions", json=chat_body(max_tokens=100))
    assert [r.status_code for r in (bad_json, no_messages, bad_messages, no_model, too_long)] == [
        400, 400, 400, 404, 400,
    ]  # fmt: skip
    assert bad_json.json()["error"]["type"] == "invalid_request_error"
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    assert sim.stats.chat_requests == 5
    assert sim.stats.completed == 0


async def test_api_key_guards_v1_only(nursery: trio.Nursery) -> None:
    sim = await start(nursery, api_key="sekrit")
    async with httpx.AsyncClient(base_url=sim.url) as http:
        denied = await http.get("/v1/models")
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "invalid_api_key"
        assert (await http.get("/health")).status_code == 200
        allowed = await http.get("/v1/models", headers={"Authorization": "Bearer sekrit"})
        assert allowed.status_code == 200
    assert sim.stats.last_headers["authorization"] == "Bearer sekrit"


# -- continuation (assistant prefill) --------------------------------------------------------------


@pytest.mark.parametrize("echo", [False, True], ids=["vllm-like", "llamacpp-like"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_prefill_continues_exactly(nursery: trio.Nursery, echo: bool, stream: bool) -> None:
    sim = await start(nursery, echo_prefill=echo)
    full = expected_answer("llama3:8b", MESSAGES)
    first_token = answer_tokens("llama3:8b", MESSAGES)[0]
    cuts = [0, 2, len(first_token), len(first_token) + 3, len(full) // 2, len(full)]
    async with sdk(sim) as client:
        for cut in cuts:
            prefix = full[:cut]
            messages: list[Any] = [*MESSAGES, {"role": "assistant", "content": prefix}]
            if stream:
                chunks = await stream_texts(client, model="llama3:8b", messages=messages)
                text = "".join(c.choices[0].delta.content or "" for c in chunks)
            else:
                answer = await client.chat.completions.create(model="llama3:8b", messages=messages)
                text = answer.choices[0].message.content or ""
            rest = full[cut:]
            assert text == (prefix + rest if echo else rest), cut


# -- faults, as a raw client sees them -------------------------------------------------------------


async def test_fault_status(nursery: trio.Nursery) -> None:
    sim = await start(nursery, faults=Faults(status=503))
    async with httpx.AsyncClient(base_url=sim.url) as http:
        failed = await http.post("/v1/chat/completions", json=chat_body())
        assert failed.status_code == 503
        assert failed.headers["retry-after"] == "1"
        assert set(failed.json()["error"]) == {"message", "type", "param", "code"}
        sim.faults.clear()
        assert (await http.post("/v1/chat/completions", json=chat_body())).status_code == 200


async def test_fault_delay_before_headers(
    nursery: trio.Nursery, loopback_clock: trio.testing.MockClock
) -> None:
    sim = await start(nursery)
    sim.faults.delay_before_headers_seconds = 7.5
    async with httpx.AsyncClient(base_url=sim.url, timeout=60) as http:
        began = trio.current_time()
        response = await http.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200
    assert trio.current_time() - began >= 7.5


@pytest.mark.parametrize("after", [0, 3])
async def test_fault_die_mid_stream(nursery: trio.Nursery, after: int) -> None:
    sim = await start(nursery, faults=Faults(die_after_chunks=after))
    received: list[str] = []

    async def read_all() -> None:
        async with http.stream(
            "POST", "/v1/chat/completions", json=chat_body(stream=True)
        ) as response:
            async for data in sse_events(response):
                received.append(data)

    async with httpx.AsyncClient(base_url=sim.url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await read_all()
    assert "[DONE]" not in received
    text = "".join(json.loads(d)["choices"][0]["delta"]["content"] for d in received)
    assert text == "".join(answer_tokens("llama3:8b", MESSAGES)[:after])
    await trio.testing.wait_all_tasks_blocked()  # the server's bookkeeping is done
    assert (sim.stats.completed, sim.stats.disconnects, sim.stats.chat_in_flight) == (0, 0, 0)


async def test_fault_die_without_answer(nursery: trio.Nursery) -> None:
    sim = await start(nursery, faults=Faults(die_after_chunks=0))
    async with httpx.AsyncClient(base_url=sim.url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post("/v1/chat/completions", json=chat_body())


async def test_fault_stall_then_client_leaves(
    nursery: trio.Nursery, loopback_clock: trio.testing.MockClock
) -> None:
    sim = await start(nursery, faults=Faults(stall_after_chunks=2))
    received: list[str] = []
    async with (
        httpx.AsyncClient(base_url=sim.url, timeout=None) as http,
        http.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response,
    ):
        events = sse_events(response)
        with trio.move_on_after(3600) as waited:
            async for data in events:
                received.append(data)
        await events.aclose()
        assert waited.cancelled_caught
        assert len(received) == 3  # the role chunk and two tokens, then nothing
        assert sim.stats.chat_in_flight == 1
    # the client hung up on the stalled stream: the server sees it at once
    with trio.fail_after(1):
        await sim.stats.disconnected.wait()
    assert (sim.stats.disconnects, sim.stats.chat_in_flight, sim.stats.completed) == (1, 0, 0)


async def test_fault_malformed(nursery: trio.Nursery) -> None:
    sim = await start(nursery, faults=Faults(malformed=True))
    async with httpx.AsyncClient(base_url=sim.url) as http:
        whole = await http.post("/v1/chat/completions", json=chat_body())
        assert whole.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            whole.json()
        async with http.stream(
            "POST", "/v1/chat/completions", json=chat_body(stream=True)
        ) as response:
            events = [data async for data in sse_events(response)]
    first, broken = events
    assert json.loads(first)["choices"][0]["delta"]["role"] == "assistant"
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken)


async def test_fault_error_event_raises_in_the_sdk(nursery: trio.Nursery) -> None:
    sim = await start(nursery, faults=Faults(error_event_after_chunks=4))
    seen: list[str] = []

    async def read_all(client: openai.AsyncOpenAI) -> None:
        stream = await client.chat.completions.create(
            model="llama3:8b", messages=MESSAGES, stream=True
        )
        async with stream:
            async for chunk in stream:
                seen.append(chunk.choices[0].delta.content or "")

    async with sdk(sim) as client:
        with pytest.raises(openai.APIError, match="in-band error"):
            await read_all(client)
    assert "".join(seen) == "".join(answer_tokens("llama3:8b", MESSAGES)[:4])
    assert sim.stats.completed == 0


async def test_refuse_then_accept_on_the_same_port(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    port = sim.port
    async with httpx.AsyncClient(base_url=sim.url) as http:
        assert (await http.get("/v1/models")).status_code == 200  # a kept-alive connection
        await sim.refuse_connections()
        assert not sim.accepting
        with pytest.raises(httpx.ConnectError):
            await http.get("/v1/models")
        await sim.accept_connections()
        assert (sim.accepting, sim.port) == (True, port)
        assert (await http.get("/v1/models")).status_code == 200


async def test_refusing_closes_open_streams(
    nursery: trio.Nursery, loopback_clock: trio.testing.MockClock
) -> None:
    sim = await start(nursery, faults=Faults(stall_after_chunks=1))
    async with (
        httpx.AsyncClient(base_url=sim.url) as http,
        http.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response,
    ):
        await trio.testing.wait_all_tasks_blocked()
        assert sim.stats.chat_in_flight == 1
        await sim.refuse_connections()
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()
    assert (sim.stats.chat_in_flight, sim.stats.disconnects) == (0, 1)


# -- clients that go away, and garbage -----------------------------------------------------------


async def test_client_disconnect_mid_stream_is_counted(
    nursery: trio.Nursery, loopback_clock: trio.testing.MockClock
) -> None:
    sim = await start(nursery, tokens_per_second=20)
    async with (
        httpx.AsyncClient(base_url=sim.url) as http,
        http.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response,
    ):
        events = sse_events(response)
        for _ in range(3):
            await anext(events)
        await events.aclose()
    with trio.fail_after(1):
        await sim.stats.disconnected.wait()
    assert (sim.stats.disconnects, sim.stats.chat_in_flight, sim.stats.completed) == (1, 0, 0)
    sim.stats.reset()
    assert not sim.stats.disconnected.is_set()


async def test_garbage_gets_400_and_the_server_lives_on(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    with trio.fail_after(5):
        for garbage in (b"\x00\xff\xfe NOT HTTP\r\n\r\n", b"GET / HTTP/1.1\r\nbad header\r\n\r\n"):
            stream = await trio.open_tcp_stream("127.0.0.1", sim.port)
            async with stream:
                await stream.send_all(garbage)
                reply = b""
                while chunk := await stream.receive_some(4096):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 400 ")
        # A client that connects, sends half a request and leaves.
        stream = await trio.open_tcp_stream("127.0.0.1", sim.port)
        async with stream:
            await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Le")
    async with httpx.AsyncClient(base_url=sim.url) as http:
        assert (await http.post("/v1/chat/completions", json=chat_body())).status_code == 200


async def test_keep_alive_serves_requests_in_turn(nursery: trio.Nursery) -> None:
    sim = await start(nursery)
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream("127.0.0.1", sim.port)
        async with stream:
            await stream.send_all(request + request)  # pipelined
            reply = b""
            while reply.count(b"HTTP/1.1 200 OK") < 2:
                reply += await stream.receive_some(65536)
    assert sim.stats.requests == 2


async def test_cancelling_serve_closes_everything(
    loopback_clock: trio.testing.MockClock,
) -> None:
    sim = SimulatedBackend(
        Flavor.VLLM, [SimModel("llama3:8b")], faults=Faults(stall_after_chunks=0)
    )
    async with trio.open_nursery() as outer:
        url = await outer.start(sim.serve)
        async with (
            httpx.AsyncClient(base_url=url) as http,
            http.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as response,
        ):
            await trio.testing.wait_all_tasks_blocked()
            outer.cancel_scope.cancel()
            with pytest.raises(httpx.RemoteProtocolError):
                await response.aread()
    assert (sim.stats.chat_in_flight, sim.stats.disconnects) == (0, 1)
    with pytest.raises(OSError, match="failed"):
        await trio.open_tcp_stream("127.0.0.1", sim.port)


async def test_serve_fleet_reports_every_url(nursery: trio.Nursery) -> None:
    fleet = demo_fleet()
    for backend in fleet:
        backend.tokens_per_second = 0
    urls = await nursery.start(serve_fleet, fleet)
    assert urls == [b.url for b in fleet]
    async with httpx.AsyncClient() as http:
        assert (await http.get(urls[0] + "/api/version")).status_code == 200
        assert (await http.get(urls[1] + "/version")).status_code == 200
        assert (await http.get(urls[2] + "/props")).status_code == 200


async def test_set_models_changes_what_is_served(nursery: trio.Nursery) -> None:
    sim = await start(nursery, Flavor.OLLAMA)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        assert (await http.post("/v1/chat/completions", json=chat_body())).status_code == 200
        sim.set_models([SimModel("other:1b")])
        assert (await http.post("/v1/chat/completions", json=chat_body())).status_code == 404
        assert [m["name"] for m in (await http.get("/api/tags")).json()["models"]] == ["other:1b"]
        assert (await http.get("/api/ps")).json() == {"models": []}


# -- LM Studio, exo and LocalAI -----------------------------------------------------------------


async def test_lmstudio_endpoints(nursery: trio.Nursery) -> None:
    models = [SimModel("qwen2.5-7b-instruct", 32768), SimModel("qwen2-vl-7b", 4096, vision=True)]
    sim = await start(nursery, Flavor.LMSTUDIO, models)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        listing = (await http.get("/api/v0/models")).json()
        assert listing["object"] == "list"
        text, vision = listing["data"]
        assert set(text) == {
            "id", "object", "type", "publisher", "arch", "compatibility_type", "quantization",
            "state", "max_context_length",
        }  # fmt: skip
        assert (text["id"], text["type"], text["arch"]) == ("qwen2.5-7b-instruct", "llm", "qwen2")
        assert (text["state"], text["max_context_length"]) == ("not-loaded", 32768)
        assert (text["compatibility_type"], text["quantization"]) == ("gguf", "Q4_K_M")
        assert vision["type"] == "vlm"
        openai_listing = (await http.get("/v1/models")).json()
        assert openai_listing["data"][0] == {
            "id": "qwen2.5-7b-instruct", "object": "model", "owned_by": "organization_owner",
        }  # fmt: skip
        chat = chat_body(model="qwen2.5-7b-instruct")
        assert (await http.post("/v1/chat/completions", json=chat)).status_code == 200
        states = [m["state"] for m in (await http.get("/api/v0/models")).json()["data"]]
        assert states == ["loaded", "not-loaded"]
        # LM Studio says 200 to what it does not serve, with an error body
        for method, path in [("GET", "/props"), ("GET", "/v1/chat/completions")]:
            unknown = await http.request(method, path)
            assert unknown.status_code == 200
            assert unknown.json() == {"error": f"Unexpected endpoint or method. ({method} {path})"}


async def test_exo_endpoints(nursery: trio.Nursery) -> None:
    sim = await start(nursery, Flavor.EXO, [SimModel("llama-3.2-1b", 131072)], name="exo-a")
    async with httpx.AsyncClient(base_url=sim.url) as http:
        node = (await http.get("/node_id")).json()
        assert isinstance(node, str)
        assert node.startswith("12D3KooW")
        assert (await http.get("/node_id")).json() == node  # stable
        assert node == node_id("exo-a") != node_id("exo-b")  # one per node name
        state = (await http.get("/state")).json()
        assert {"instances", "runners", "topology", "lastEventAppliedIdx"} <= set(state)
        (instance,) = state["instances"].values()
        assignments = instance["MlxRingInstance"]["shardAssignments"]
        assert assignments["modelId"] == "llama-3.2-1b"
        assert node in assignments["nodeToRunner"]
        assert state["topology"]["nodes"] == [node]
        (entry,) = (await http.get("/v1/models")).json()["data"]
        assert (entry["id"], entry["owned_by"], entry["context_length"]) == (
            "llama-3.2-1b", "exo", 131072,
        )  # fmt: skip
        assert {"hugging_face_id", "storage_size_megabytes", "tags", "tasks"} <= set(entry)
        root = await http.get("/")
        assert root.headers["content-type"].startswith("text/html")
        assert root.headers["server"] == "hypercorn-h11"
        assert (await http.get("/readyz")).status_code == 404


async def test_localai_endpoints(nursery: trio.Nursery) -> None:
    sim = await start(nursery, Flavor.LOCALAI)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        for path in ("/readyz", "/healthz"):
            answer = await http.get(path)
            assert (answer.status_code, answer.text) == (200, "OK")
        assert (await http.get("/version")).json() == {"version": "v3.6.0"}
        listing = (await http.get("/v1/models")).json()
        assert listing == {"object": "list", "data": [{"id": "llama3:8b", "object": "model"}]}
        assert (await http.get("/models")).json() == listing
        assert (await http.get("/props")).status_code == 404
