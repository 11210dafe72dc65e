"""The official ollama client against Nexus's Ollama API, in front of simulated Ollama, vLLM
and llama.cpp backends."""

from __future__ import annotations

import json
from typing import Any

import ollama
import pytest

from nexus_trio.testing import Flavor, SimModel, SimulatedBackend
from nexus_trio.testing._text import expected_answer, expected_completion, tool_arguments

from helpers import sim

ASKED: list[Any] = [{"role": "user", "content": "Tell me a long story, please."}]
LOOKUP: Any = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look something up",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["q", "n"],
        },
    },
}
PRIORITIES = {"a": {"priority": 1}, "b": {"priority": 2}}
# One model per kind of backend: Ollama lists names with a tag, the others without.
CODER = "qwen2.5-coder:7b"  # tagged: Ollama lists a name without a tag as name:latest
FLEET = {Flavor.OLLAMA: "llama3:8b", Flavor.VLLM: "qwen3-8b", Flavor.LLAMACPP: "phi4"}


def fleet() -> list[SimulatedBackend]:
    return [
        SimulatedBackend(
            flavor=flavor,
            models=[SimModel(model, tools=True, context_length=8192)],
            name=flavor.value,
        )
        for flavor, model in FLEET.items()
    ]


def client(nexus: Any) -> ollama.AsyncClient:
    made = ollama.AsyncClient(host=nexus.url)
    nexus.sdk_clients.append(made)  # closed with the rest when the test ends
    return made


async def test_list_names_every_model_with_a_tag(start_nexus: Any) -> None:
    nexus = await start_nexus(fleet())
    listed = await client(nexus).list()
    names = sorted(m.model or "" for m in listed.models)
    assert names == ["llama3:8b", "phi4:latest", "qwen3-8b:latest"]
    by_name = {m.model: m for m in listed.models}
    own = by_name["llama3:8b"]  # from the Ollama backend's own listing
    assert own.size
    assert own.size > 0
    assert own.details is not None
    assert own.details.family
    assert own.details.format == "gguf"
    other = by_name["qwen3-8b:latest"]
    assert other.size == 0
    assert other.digest
    assert len(other.digest) == 64


@pytest.mark.parametrize("name", ["llama3:8b", "qwen3-8b", "qwen3-8b:latest", "phi4:latest"])
async def test_show_tells_capabilities_and_context(start_nexus: Any, name: str) -> None:
    nexus = await start_nexus(fleet())
    shown = await client(nexus).show(name)
    assert shown.capabilities is not None
    assert "completion" in shown.capabilities
    assert "tools" in shown.capabilities
    info = shown.modelinfo
    assert info is not None
    arch = info["general.architecture"]
    assert info[f"{arch}.context_length"] == 8192


async def test_ps_lists_loaded_models(start_nexus: Any) -> None:
    nexus = await start_nexus(fleet())
    running = await client(nexus).ps()
    # vLLM and llama.cpp hold their model loaded; the simulated Ollama has loaded nothing.
    assert sorted(m.model or "" for m in running.models) == ["phi4:latest", "qwen3-8b:latest"]
    for model in running.models:
        assert model.expires_at is not None
        assert model.context_length == 8192


@pytest.mark.parametrize("flavor", list(FLEET))
async def test_chat_gives_the_backends_text(start_nexus: Any, flavor: Flavor) -> None:
    backends = fleet()
    nexus = await start_nexus(backends)
    model = FLEET[flavor]
    asked = model if ":" in model else model + ":latest"
    expected = expected_answer(model, ASKED)
    whole = await client(nexus).chat(model=asked, messages=ASKED, stream=False)
    assert whole.message.content == expected
    assert whole.model == asked
    assert whole.done is True
    assert whole.done_reason == "stop"
    assert whole.eval_count
    assert whole.prompt_eval_count
    assert whole.total_duration is not None
    parts = [p async for p in await client(nexus).chat(model=asked, messages=ASKED, stream=True)]
    assert "".join(p.message.content or "" for p in parts) == expected
    assert [p.done for p in parts].count(True) == 1
    assert parts[-1].done
    assert parts[-1].eval_count == whole.eval_count
    served = next(b for b in backends if b.flavor is flavor)
    assert served.stats.last_chat_body is not None
    assert served.stats.last_chat_body["model"] == model


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_with_tools_gives_calls_with_object_arguments(
    start_nexus: Any, stream: bool
) -> None:
    nexus = await start_nexus(fleet())
    arguments = json.loads(tool_arguments("qwen3-8b", ASKED, LOOKUP))
    if stream:
        parts = [
            p
            async for p in await client(nexus).chat(
                model="qwen3-8b", messages=ASKED, tools=[LOOKUP], stream=True
            )
        ]
        calls = [c for p in parts for c in p.message.tool_calls or []]
    else:
        answer = await client(nexus).chat(model="qwen3-8b", messages=ASKED, tools=[LOOKUP])
        calls = list(answer.message.tool_calls or [])
    assert len(calls) == 1
    assert calls[0].function.name == "lookup"
    assert dict(calls[0].function.arguments) == arguments
    # The round trip: the call and its result go back, the backend sees one call id.
    follow = [
        *ASKED,
        {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "tool_name": "lookup", "content": "found it"},
    ]
    answer = await client(nexus).chat(model="qwen3-8b", messages=follow, tools=[LOOKUP])
    assert answer.message.content


async def test_generate_with_system(start_nexus: Any) -> None:
    backends = fleet()
    nexus = await start_nexus(backends)
    upstream = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue?"},
    ]
    answer = await client(nexus).generate(
        model="phi4", prompt="Why is the sky blue?", system="Be brief.", stream=False
    )
    assert answer.response == expected_answer("phi4", upstream)
    assert answer.done
    assert answer.done_reason == "stop"
    parts = [
        p
        async for p in await client(nexus).generate(
            model="phi4:latest", prompt="Why is the sky blue?", system="Be brief.", stream=True
        )
    ]
    assert "".join(p.response or "" for p in parts) == answer.response
    assert parts[-1].done
    assert parts[-1].model == "phi4:latest"
    assert backends[2].stats.last_chat_body is not None
    assert backends[2].stats.last_chat_body["messages"] == upstream


async def test_generate_with_an_empty_prompt_loads(start_nexus: Any) -> None:
    nexus = await start_nexus(fleet())
    answer = await client(nexus).generate(model="phi4")
    assert answer.done
    assert answer.done_reason == "load"
    with pytest.raises(ollama.ResponseError) as caught:
        await client(nexus).generate(model="nope")
    assert caught.value.status_code == 404


@pytest.mark.parametrize("flavor", [Flavor.OLLAMA, Flavor.LLAMACPP])
@pytest.mark.parametrize("stream", [False, True])
async def test_generate_with_a_suffix_fills_in_the_middle(
    start_nexus: Any, flavor: Flavor, stream: bool
) -> None:
    # vLLM comes first by priority and cannot fill in: the request goes to the backend that
    # can, in its own way (Ollama: suffix on /v1/completions; llama.cpp: /infill).
    vllm = SimulatedBackend(Flavor.VLLM, [SimModel(CODER)], name="a")
    fim = SimulatedBackend(flavor, [SimModel(CODER, insert=True)], name="b")
    nexus = await start_nexus(
        [vllm, fim], backend_options=PRIORITIES, routing={"strategy": "priority"}
    )
    prompt, suffix = "def add(a, b):\n    ", "\n    return total"
    asked = client(nexus).generate(
        model=CODER, prompt=prompt, suffix=suffix, stream=stream, options={"num_predict": 200}
    )
    if stream:
        parts = [part async for part in await asked]  # type: ignore[union-attr]
        text, last = "".join(p.response for p in parts), parts[-1]
    else:
        last = await asked  # type: ignore[assignment]
        text = last.response
    assert text == expected_completion(CODER, prompt, suffix)
    assert last.done
    assert last.done_reason == "stop"
    assert last.eval_count
    assert vllm.stats.chat_requests == 0
    sent = fim.stats.last_chat_body
    assert sent is not None
    assert (sent["input_suffix"] if flavor is Flavor.LLAMACPP else sent["suffix"]) == suffix


async def test_generate_raw_is_a_completion_of_the_prompt(start_nexus: Any) -> None:
    backend = SimulatedBackend(Flavor.VLLM, [SimModel("base")], name="a")
    nexus = await start_nexus([backend])
    answer = await client(nexus).generate(model="base", prompt="Once upon a time", raw=True)
    assert answer.response == expected_completion("base", "Once upon a time")
    assert backend.stats.last_chat_body is not None
    assert backend.stats.last_chat_body["prompt"] == "Once upon a time"  # no chat template


async def test_generate_with_a_suffix_and_nobody_to_fill_in_is_refused(start_nexus: Any) -> None:
    nexus = await start_nexus([SimulatedBackend(Flavor.VLLM, [SimModel(CODER)], name="a")])
    with pytest.raises(ollama.ResponseError) as caught:
        await client(nexus).generate(model=CODER, prompt="def f(", suffix="return 1")
    assert caught.value.status_code == 400
    assert "fill in the middle" in caught.value.error


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_model_is_ollamas_404(start_nexus: Any, stream: bool) -> None:
    nexus = await start_nexus(fleet())

    async def ask() -> None:
        result = await client(nexus).chat(model="nope", messages=ASKED, stream=stream)
        if stream:
            [_ async for _ in result]  # type: ignore[union-attr]

    with pytest.raises(ollama.ResponseError) as caught:
        await ask()
    assert caught.value.status_code == 404
    assert caught.value.error == "model 'nope' not found"
    with pytest.raises(ollama.ResponseError) as shown:
        await client(nexus).show("nope")
    assert shown.value.status_code == 404


@pytest.mark.parametrize("cut", [1, 7])
async def test_a_backend_dying_mid_stream_is_continued_exactly(start_nexus: Any, cut: int) -> None:
    a, b = sim("a", Flavor.VLLM), sim("b", Flavor.LLAMACPP)
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.die_after_chunks = cut
    parts = [
        p
        async for p in await client(nexus).chat(
            model="llama3:8b", messages=ASKED, stream=True, options={"temperature": 0}
        )
    ]
    assert "".join(p.message.content or "" for p in parts) == expected_answer("llama3:8b", ASKED)
    assert [p.done for p in parts].count(True) == 1
    assert parts[-1].done
    assert b.stats.last_chat_body is not None  # b continued
    assert await nexus.in_flight() == {"a": 0, "b": 0}


async def test_a_backend_answering_500_costs_nothing(start_nexus: Any) -> None:
    a, b = sim("a", Flavor.OLLAMA), sim("b", Flavor.VLLM)
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.status = 500
    answer = await client(nexus).chat(model="llama3:8b", messages=ASKED, stream=False)
    assert answer.message.content == expected_answer("llama3:8b", ASKED)


async def test_model_management_is_the_backends_business(start_nexus: Any) -> None:
    nexus = await start_nexus(fleet())
    with pytest.raises(ollama.ResponseError) as caught:
        await client(nexus).pull("phi4", stream=False)
    assert caught.value.status_code == 501
    assert "backend" in caught.value.error
    with pytest.raises(ollama.ResponseError) as deleted:
        await client(nexus).delete("phi4")
    assert deleted.value.status_code == 501
    unknown = await nexus.http.get("/api/nothing-here")
    assert unknown.status_code == 404
    assert "error" in unknown.json()


async def test_open_webui_like_calls(start_nexus: Any) -> None:
    nexus = await start_nexus(fleet())
    version = (await nexus.http.get("/api/version")).json()["version"]
    numbers = [int(part) for part in version.split("-")[0].lstrip("v").split(".")]
    assert numbers >= [0, 13, 4]
    tags = (await nexus.http.get("/api/tags")).json()["models"]
    assert tags
    assert all(":" in m["model"] and m["name"] == m["model"] for m in tags)
    # Open WebUI adds :latest to a name without a tag, and chats in NDJSON.
    async with nexus.http.stream(
        "POST", "/api/chat", json={"model": "phi4:latest", "messages": ASKED}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) async for line in response.aiter_lines() if line]
    assert all(line["model"] == "phi4:latest" for line in lines)
    assert lines[-1]["done"] is True
    assert "eval_count" in lines[-1]
    assert all(line["created_at"].endswith("Z") for line in lines)
    wrong = await nexus.http.post("/api/chat", content=b"{not json")
    assert wrong.status_code == 400
    assert "error" in wrong.json()


async def test_a_stream_that_cannot_be_continued_ends_with_an_error_line(
    start_nexus: Any,
) -> None:
    a = sim("a", Flavor.VLLM)
    nexus = await start_nexus([a])
    a.faults.die_after_chunks = 3
    async with nexus.http.stream(
        "POST", "/api/chat", json={"model": "llama3:8b", "messages": ASKED}
    ) as response:
        assert response.status_code == 200
        lines = [json.loads(line) async for line in response.aiter_lines() if line]
    text = "".join(line["message"]["content"] for line in lines[:-1])
    assert text
    assert expected_answer("llama3:8b", ASKED).startswith(text)
    assert set(lines[-1]) == {"error"}
    assert not any(line.get("done") for line in lines)
    received: list[str] = []
    with pytest.raises(ollama.ResponseError):  # the client raises on the error line
        await _collect(client(nexus), received)
    assert received  # after some text


async def _collect(ollama_client: ollama.AsyncClient, received: list[str]) -> None:
    async for part in await ollama_client.chat(model="llama3:8b", messages=ASKED, stream=True):
        received.append(part.message.content or "")
