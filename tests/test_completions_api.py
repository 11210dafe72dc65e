"""``POST /v1/completions`` through the official openai SDK: the backend's own text,
streamed and not, fill-in-the-middle where a backend can do it, failover before the
first byte, and a stream that dies mid-answer continued exactly."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from nexus_trio.testing import Flavor, SimModel, SimulatedBackend
from nexus_trio.testing._text import completion_tokens, expected_completion

MODEL = "qwen2.5-coder:7b"
PROMPT = "def fibonacci(n):\n    "
SUFFIX = "\n    return result\n"
FULL = expected_completion(MODEL, PROMPT)
FILLED = expected_completion(MODEL, PROMPT, SUFFIX)
TOKENS = len(completion_tokens(MODEL, PROMPT))
PRIORITIES = {"a": {"priority": 1}, "b": {"priority": 2}, "c": {"priority": 3}}


def backend(name: str, flavor: Flavor, *, insert: bool = False) -> SimulatedBackend:
    return SimulatedBackend(flavor, [SimModel(MODEL, insert=insert)], name=name)


async def streamed(client: openai.AsyncOpenAI, **kwargs: Any) -> tuple[str, list[Any]]:
    """The text of a streamed completion, and every chunk."""
    chunks = [c async for c in await client.completions.create(model=MODEL, stream=True, **kwargs)]
    text = "".join(choice.text for c in chunks for choice in c.choices)
    return text, chunks


@pytest.mark.parametrize("flavor", [Flavor.OLLAMA, Flavor.VLLM, Flavor.LLAMACPP])
async def test_a_completion_is_the_backends_own_text(start_nexus: Any, flavor: Flavor) -> None:
    a = backend("a", flavor)
    nexus = await start_nexus([a])
    client = nexus.openai()
    whole = await client.completions.create(model=MODEL, prompt=PROMPT, temperature=0)
    assert whole.object == "text_completion"
    assert whole.choices[0].text == FULL
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None
    assert whole.usage.completion_tokens == TOKENS
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + TOKENS
    text, chunks = await streamed(client, prompt=PROMPT, stream_options={"include_usage": True})
    assert text == FULL
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "text_completion" for c in chunks)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == TOKENS
    # Upstream it was a stream with usage, at the backend's own /v1/completions.
    assert a.stats.last_chat_body is not None
    assert a.stats.last_chat_body["stream"] is True
    assert a.stats.last_chat_body["prompt"] == PROMPT
    assert "suffix" not in a.stats.last_chat_body


async def test_a_stream_without_include_usage_gets_no_usage_chunk(start_nexus: Any) -> None:
    nexus = await start_nexus([backend("a", Flavor.VLLM)])
    text, chunks = await streamed(nexus.openai(), prompt=[PROMPT], max_tokens=5)
    assert text == "".join(completion_tokens(MODEL, PROMPT)[:5])
    assert all(c.usage is None for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


async def test_echo_puts_the_prompt_first(start_nexus: Any) -> None:
    """llama.cpp refuses ``echo``: Nexus echoes the prompt itself."""
    nexus = await start_nexus([backend("a", Flavor.LLAMACPP)])
    client = nexus.openai()
    whole = await client.completions.create(model=MODEL, prompt=PROMPT, echo=True)
    assert whole.choices[0].text == PROMPT + FULL
    text, _ = await streamed(client, prompt=PROMPT, echo=True)
    assert text == PROMPT + FULL


@pytest.mark.parametrize("flavor", [Flavor.OLLAMA, Flavor.LLAMACPP])
async def test_fill_in_the_middle_goes_where_it_can_be_done(
    start_nexus: Any, flavor: Flavor
) -> None:
    """vLLM (first by priority) refuses a suffix: the request goes to the backend that
    fills in, in its own way (Ollama: suffix; llama.cpp: /infill)."""
    v, fim = backend("a", Flavor.VLLM), backend("b", flavor, insert=True)
    nexus = await start_nexus(
        [v, fim], backend_options=PRIORITIES, routing={"strategy": "priority"}
    )
    client = nexus.openai()
    whole = await client.completions.create(model=MODEL, prompt=PROMPT, suffix=SUFFIX)
    assert whole.choices[0].text == FILLED != FULL
    assert whole.usage is not None
    assert whole.usage.completion_tokens > 0
    text, chunks = await streamed(
        client, prompt=PROMPT, suffix=SUFFIX, stream_options={"include_usage": True}
    )
    assert text == FILLED
    assert chunks[-1].usage is not None
    assert v.stats.chat_requests == 0
    sent = fim.stats.last_chat_body
    assert sent is not None
    if flavor is Flavor.LLAMACPP:
        assert sent["input_prefix"] == PROMPT
        assert sent["input_suffix"] == SUFFIX
        assert "suffix" not in sent
    else:
        assert sent["suffix"] == SUFFIX


async def test_an_ollama_model_without_insert_cannot_fill_in(start_nexus: Any) -> None:
    nexus = await start_nexus([backend("a", Flavor.VLLM), backend("b", Flavor.OLLAMA)])
    with pytest.raises(openai.BadRequestError) as caught:
        await nexus.openai().completions.create(model=MODEL, prompt=PROMPT, suffix=SUFFIX)
    assert "can fill in the middle (suffix)" in caught.value.message
    assert caught.value.body is not None
    assert caught.value.body["param"] == "suffix"  # type: ignore[index]


@pytest.mark.parametrize(
    ("prompt", "says"),
    [([1, 2, 3], "token ids"), ([[1, 2]], "token ids"), (["a", "b"], "one per request")],
)
async def test_unsupported_prompts_are_refused(start_nexus: Any, prompt: Any, says: str) -> None:
    a = backend("a", Flavor.VLLM)
    nexus = await start_nexus([a])
    with pytest.raises(openai.BadRequestError) as caught:
        await nexus.openai().completions.create(model=MODEL, prompt=prompt)
    assert says in caught.value.message
    assert a.stats.chat_requests == 0


@pytest.mark.parametrize("flavor", [Flavor.OLLAMA, Flavor.LLAMACPP])
async def test_failover_before_the_first_byte_costs_nothing(
    start_nexus: Any, flavor: Flavor
) -> None:
    a, b = backend("a", flavor, insert=True), backend("b", flavor, insert=True)
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.status = 500
    whole = await nexus.openai().completions.create(model=MODEL, prompt=PROMPT)
    assert whole.choices[0].text == FULL
    a.faults.status = None
    a.faults.die_after_chunks = 0
    text, _ = await streamed(nexus.openai(), prompt=PROMPT, suffix=SUFFIX)
    assert text == FILLED
    assert b.stats.completed == 2


async def test_infill_on_a_model_without_fim_tokens_fails_over(start_nexus: Any) -> None:
    """llama.cpp answers 501 for a model without FIM tokens: the next backend serves."""
    a, b = backend("a", Flavor.LLAMACPP), backend("b", Flavor.OLLAMA, insert=True)
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    whole = await nexus.openai().completions.create(model=MODEL, prompt=PROMPT, suffix=SUFFIX)
    assert whole.choices[0].text == FILLED
    assert a.stats.chat_requests == 1
    assert b.stats.completed == 1


async def read_raw(nexus: Any, body: dict[str, Any]) -> tuple[str, list[str], int, set[str]]:
    """(text, finishes, [DONE]s, ids) of a streamed completion as it is on the wire."""
    text, finishes, dones, ids = "", [], 0, set()
    async with nexus.http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                dones += 1
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                assert chunk["object"] == "text_completion"
                ids.add(chunk["id"])
                for choice in chunk["choices"]:
                    text += choice["text"]
                    if choice["finish_reason"]:
                        finishes.append(choice["finish_reason"])
    return text, finishes, dones, ids


@pytest.mark.parametrize(
    ("flavor", "suffix"),
    [(Flavor.OLLAMA, ""), (Flavor.VLLM, ""), (Flavor.LLAMACPP, ""), (Flavor.OLLAMA, SUFFIX),
     (Flavor.LLAMACPP, SUFFIX)],
)  # fmt: skip
@pytest.mark.parametrize("cut", [1, 7, TOKENS])
async def test_a_stream_that_dies_mid_answer_is_continued_exactly(
    start_nexus: Any, flavor: Flavor, suffix: str, cut: int
) -> None:
    a, b = backend("a", flavor, insert=True), backend("b", flavor, insert=True)
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.die_after_chunks = cut
    body = {"model": MODEL, "prompt": PROMPT, "stream": True, "temperature": 0, "max_tokens": 200}
    if suffix:
        body["suffix"] = suffix
    text, finishes, dones, ids = await read_raw(nexus, body)
    assert text == (FILLED if suffix else FULL)
    assert finishes == ["stop"]
    assert dones == 1
    assert len(ids) == 1
    sent = b.stats.last_chat_body
    assert sent is not None
    written = "".join(completion_tokens(MODEL, PROMPT, suffix)[:cut])
    if suffix and flavor is Flavor.LLAMACPP:
        assert (sent["input_prefix"], sent["prompt"]) == (PROMPT, written)
        assert sent["n_predict"] == 200 - cut
    else:
        assert sent["prompt"] == PROMPT + written
        assert sent.get("suffix") == (suffix or None)
        assert sent["max_tokens"] == 200 - cut
    assert await nexus.in_flight() == {"a": 0, "b": 0}


async def test_a_whole_answer_survives_a_mid_stream_death(start_nexus: Any) -> None:
    a, b = backend("a", Flavor.VLLM), backend("b", Flavor.VLLM)
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.die_after_chunks = 5
    whole = await nexus.openai().completions.create(model=MODEL, prompt=PROMPT)
    assert whole.choices[0].text == FULL
    # Usage is what the backends reported: "a" died before it could.
    assert whole.usage is not None
    assert whole.usage.completion_tokens == TOKENS - 5
