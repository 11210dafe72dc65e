"""Mid-stream failover: a stream whose backend dies continues, exactly, on another one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
import trio

from nexus_trio.testing import Flavor, SimModel, SimulatedBackend
from nexus_trio.testing._text import answer_tokens, expected_answer

from helpers import sim

MESSAGES: list[Any] = [{"role": "user", "content": "Tell me a long story, please."}]
FULL = expected_answer("llama3:8b", MESSAGES)
TOKENS = len(answer_tokens("llama3:8b", MESSAGES))  # content chunks of the whole answer
FLAVORS = [Flavor.OLLAMA, Flavor.VLLM, Flavor.LLAMACPP]
PRIORITIES = {"a": {"priority": 1}, "b": {"priority": 2}, "c": {"priority": 3}}
LOOKUP: Any = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string"}},
            "required": ["q"],
        },
    },
}


@dataclass
class Received:
    """A stream as the client saw it on the wire."""

    text: str = ""
    ids: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    created: set[int] = field(default_factory=set)
    finishes: list[str] = field(default_factory=list)
    roles: int = 0
    dones: int = 0
    comments: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    usage: list[dict[str, Any]] = field(default_factory=list)
    backend: str = ""


async def stream_raw(nexus: Any, body: dict[str, Any]) -> Received:
    """POST a streaming request and read every SSE line as it arrives."""
    got = Received()
    async with nexus.http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        got.backend = response.headers["x-nexus-backend"]
        async for line in response.aiter_lines():
            if line.startswith(":"):
                got.comments.append(line[1:].strip())
            elif line == "data: [DONE]":
                got.dones += 1
            elif line.startswith("data: "):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    got.errors.append(chunk["error"])
                    continue
                got.ids.add(chunk["id"])
                got.models.add(chunk["model"])
                got.created.add(chunk["created"])
                if chunk.get("usage"):
                    got.usage.append(chunk["usage"])
                for choice in chunk["choices"]:
                    delta = choice.get("delta") or {}
                    got.roles += "role" in delta
                    got.text += delta.get("content") or ""
                    if choice.get("finish_reason"):
                        got.finishes.append(choice["finish_reason"])
    return got


def replicas(flavor: Flavor, n: int = 2, **kwargs: Any) -> list[SimulatedBackend]:
    return [sim(name, flavor, **kwargs) for name in "abc"[:n]]


def assert_seamless(got: Received) -> None:
    """Exactly the uninterrupted text, under one id, one finish, one [DONE]."""
    assert got.errors == []
    assert got.text == FULL
    assert len(got.ids) == len(got.models) == len(got.created) == 1
    assert got.finishes == ["stop"]
    assert got.dones == 1
    assert got.roles == 1


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("cut", [0, 1, 7, 15, 22])
async def test_dies_mid_stream_and_continues_exactly(
    start_nexus: Any, flavor: Flavor, cut: int
) -> None:
    a, b = replicas(flavor)
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.die_after_chunks = cut
    got = await stream_raw(nexus, {"model": "llama3:8b", "messages": MESSAGES, "stream": True,
                                   "temperature": 0})  # fmt: skip
    # Cut before the first token, "a" fails over invisibly; after, the client was committed
    # to "a", and never noticed it died.
    assert got.backend == ("a" if cut else "b")
    assert_seamless(got)
    if cut:
        assert got.comments == ["nexus failover from a to b"]
        assert b.stats.last_chat_body is not None
        prefill = b.stats.last_chat_body["messages"][-1]
        assert prefill["role"] == "assistant"
        assert FULL.startswith(prefill["content"])
        if flavor is Flavor.VLLM:
            assert b.stats.last_chat_body["continue_final_message"] is True
            assert b.stats.last_chat_body["add_generation_prompt"] is False
    assert await nexus.in_flight() == {"a": 0, "b": 0}


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_a_continuation_that_adds_nothing_ends_the_answer(
    start_nexus: Any, flavor: Flavor
) -> None:
    """The backend died after its last token, before its finish: the continuation has
    nothing to add, and its empty finish ends the answer — one finish, one [DONE]."""
    a, b = replicas(flavor)
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.die_after_chunks = TOKENS
    got = await stream_raw(nexus, {"model": "llama3:8b", "messages": MESSAGES, "stream": True,
                                   "temperature": 0})  # fmt: skip
    assert_seamless(got)
    assert got.comments == ["nexus failover from a to b"]
    prefill = b.stats.last_chat_body["messages"][-1] if b.stats.last_chat_body else None
    assert prefill == {"role": "assistant", "content": FULL}
    assert await nexus.in_flight() == {"a": 0, "b": 0}


async def test_an_answer_cut_at_its_length_limit_ends_without_a_continuation(
    start_nexus: Any,
) -> None:
    """Died after the last token ``max_tokens`` allowed: nothing more may come, so the
    answer ends with ``length`` instead of asking another backend for one token more."""
    a, b = replicas(Flavor.VLLM)
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.die_after_chunks = 6
    got = await stream_raw(nexus, {"model": "llama3:8b", "messages": MESSAGES, "stream": True,
                                   "max_tokens": 6})  # fmt: skip
    assert got.errors == []
    assert got.text == "".join(answer_tokens("llama3:8b", MESSAGES)[:6])
    assert got.finishes == ["length"]
    assert got.dones == 1
    assert b.stats.chat_requests == 0


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("cut", [1, 9, TOKENS])
async def test_a_whole_answer_continues_exactly_too(
    start_nexus: Any, flavor: Flavor, cut: int
) -> None:
    """A client that asked for no stream gets the same guarantee: its backend was asked for
    a stream, and the answer continued on a replica when that died part-way."""
    a, b = replicas(flavor)
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.die_after_chunks = cut
    raw = await nexus.openai().chat.completions.with_raw_response.create(
        model="llama3:8b", messages=MESSAGES, temperature=0
    )
    completion = raw.parse()
    assert raw.headers["x-nexus-backend"] == "a"  # committed to "a"; "b" finished it
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == FULL
    assert completion.choices[0].finish_reason == "stop"
    # The usage each backend reported: "a" died before it could; "b" reports what it added.
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert (completion.usage.completion_tokens > 0) is (cut < TOKENS)
    assert a.stats.last_chat_body is not None
    assert a.stats.last_chat_body["stream"] is True
    assert await nexus.in_flight() == {"a": 0, "b": 0}


async def test_a_whole_answer_whose_tool_call_broke_starts_over(start_nexus: Any) -> None:
    """A tool call cannot be continued; a client waiting for a whole answer has received
    nothing yet, so it is asked again of another backend instead of failing."""
    a, b = replicas(Flavor.VLLM)
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.die_after_chunks = 2
    completion = await nexus.openai().chat.completions.create(
        model="llama3:8b", messages=MESSAGES, tools=[LOOKUP]
    )
    call = completion.choices[0].message.tool_calls
    assert call is not None
    assert call[0].function.name == "lookup"
    assert json.loads(call[0].function.arguments)["q"]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert b.stats.chat_requests == 1
    assert await nexus.in_flight() == {"a": 0, "b": 0}


@pytest.mark.parametrize("fault", ["stall_after_chunks", "error_event_after_chunks"])
async def test_stalls_and_in_band_errors_continue_too(start_nexus: Any, fault: str) -> None:
    a, b = replicas(Flavor.VLLM)
    nexus = await start_nexus(
        [a, b], backend_options=PRIORITIES,
        routing={"strategy": "priority", "timeouts": {"stream_idle_seconds": 0.3}},
    )  # fmt: skip
    setattr(a.faults, fault, 9)
    got = await stream_raw(nexus, {"model": "llama3:8b", "messages": MESSAGES, "stream": True})
    assert_seamless(got)
    health = await nexus.health()
    assert health["backends"]["a"]["status"] == "ejected"  # a stall is a failure like any


async def test_the_official_sdk_sees_one_seamless_answer(start_nexus: Any) -> None:
    a, b = replicas(Flavor.LLAMACPP)  # llama.cpp echoes the prefill: it must be stripped
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.die_after_chunks = 11
    text, finishes, usage = "", [], None
    async for chunk in await nexus.openai().chat.completions.create(
        model="llama3:8b", messages=MESSAGES, stream=True, temperature=0,
        stream_options={"include_usage": True},
    ):  # fmt: skip
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
        usage = chunk.usage or usage
    assert text == FULL
    assert finishes == ["stop"]
    assert usage is not None
    assert usage.completion_tokens > 0


async def test_usage_adds_up_what_every_backend_reported(start_nexus: Any) -> None:
    a, b = replicas(Flavor.VLLM)
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    body = {"model": "llama3:8b", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    whole = await stream_raw(nexus, body)
    a.faults.die_after_chunks = 10
    cut = await stream_raw(nexus, body)
    assert_seamless(cut)
    assert len(whole.usage) == len(cut.usage) == 1
    # "a" died before reporting; "b" reported the continuation only.
    assert 0 < cut.usage[0]["completion_tokens"] < whole.usage[0]["completion_tokens"]


async def test_a_tool_call_in_flight_is_never_continued(start_nexus: Any) -> None:
    a, b = replicas(Flavor.VLLM)
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.die_after_chunks = 2
    got = await stream_raw(nexus, {"model": "llama3:8b", "messages": MESSAGES, "stream": True,
                                   "tools": [LOOKUP]})  # fmt: skip
    assert len(got.errors) == 1
    assert "tool call" in got.errors[0]["message"]
    assert got.dones == 0
    assert b.stats.chat_requests == 0


async def test_continuation_can_be_turned_off(start_nexus: Any) -> None:
    a, b = replicas(Flavor.VLLM)
    nexus = await start_nexus(
        [a, b], backend_options=PRIORITIES, routing={"strategy": "priority", "mid_stream": "error"}
    )
    a.faults.die_after_chunks = 5
    got = await stream_raw(nexus, {"model": "llama3:8b", "messages": MESSAGES, "stream": True})
    assert len(got.errors) == 1
    assert "routing.mid_stream" in got.errors[0]["message"]
    assert b.stats.chat_requests == 0
    # The SDK raises on the error event: an incomplete answer is never passed off as whole.
    a.faults.die_after_chunks = 5
    b.faults.die_after_chunks = 5
    with pytest.raises(openai.APIError, match="could not be continued"):
        async for _ in await nexus.openai().chat.completions.create(
            model="llama3:8b", messages=MESSAGES, stream=True
        ):
            pass


@pytest.mark.parametrize("mode", ["continue_same_model", "continue_any"])
async def test_another_model_continues_only_when_allowed(start_nexus: Any, mode: str) -> None:
    a = sim("a", Flavor.VLLM, "llama3:8b")
    b = sim("b", Flavor.VLLM, "mistral:7b")
    nexus = await start_nexus(
        [a, b], routing={"mid_stream": mode, "fallbacks": {"llama3:8b": ["mistral:7b"]}}
    )
    a.faults.die_after_chunks = 6
    got = await stream_raw(nexus, {"model": "llama3:8b", "messages": MESSAGES, "stream": True})
    if mode == "continue_same_model":
        assert len(got.errors) == 1
        assert b.stats.chat_requests == 0
    else:
        assert got.errors == []
        assert got.comments == ["nexus failover from a to b (model llama3:8b -> mistral:7b)"]
        relayed_by_a = " ".join(FULL.split()[:6])
        assert got.text.startswith(relayed_by_a)
        assert len(got.text) > len(relayed_by_a)  # and mistral's continuation after it
        assert got.finishes == ["stop"]
        assert got.dones == 1


async def test_at_most_max_mid_stream_failovers(start_nexus: Any) -> None:
    a, b, c = replicas(Flavor.VLLM, 3)
    nexus = await start_nexus(
        [a, b, c], backend_options=PRIORITIES,
        routing={"strategy": "priority", "max_mid_stream_failovers": 1},
    )  # fmt: skip
    a.faults.die_after_chunks = 3
    b.faults.die_after_chunks = 3
    got = await stream_raw(nexus, {"model": "llama3:8b", "messages": MESSAGES, "stream": True})
    assert got.comments == ["nexus failover from a to b"]
    assert len(got.errors) == 1
    assert "switched backends 1 times" in got.errors[0]["message"]
    assert c.stats.chat_requests == 0


async def test_two_failures_two_continuations(start_nexus: Any) -> None:
    a, b, c = replicas(Flavor.LLAMACPP, 3)
    nexus = await start_nexus(
        [a, b, c], backend_options=PRIORITIES, routing={"strategy": "priority"}
    )
    a.faults.die_after_chunks = 4
    b.faults.die_after_chunks = 3  # counted in b's own (continuation) chunks
    got = await stream_raw(nexus, {"model": "llama3:8b", "messages": MESSAGES, "stream": True})
    assert_seamless(got)
    assert got.comments == ["nexus failover from a to b", "nexus failover from b to c"]
    await nexus.settled()
    totals = (await nexus.health())["totals"]
    assert (totals["requests"], totals["mid_stream_failovers"], totals["failovers"]) == (1, 2, 2)


async def test_client_leaving_during_a_continuation_cancels_it(start_nexus: Any) -> None:
    a = sim("a", Flavor.VLLM)
    b = sim("b", Flavor.VLLM, tokens_per_second=20)
    nexus = await start_nexus([a, b], backend_options=PRIORITIES, routing={"strategy": "priority"})
    a.faults.die_after_chunks = 3
    body = {"model": "llama3:8b", "messages": MESSAGES, "stream": True}
    async with nexus.http.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith(": nexus failover"):
                break  # the continuation has begun: leave
    with trio.fail_after(2):
        await b.stats.disconnected.wait()
    assert await nexus.in_flight() == {"a": 0, "b": 0}


# -- hedging -----------------------------------------------------------------------------------


async def test_a_hedge_wins_against_a_slow_first_token(start_nexus: Any) -> None:
    a, b = replicas(Flavor.VLLM)
    nexus = await start_nexus(
        [a, b], backend_options=PRIORITIES, routing={"strategy": "priority", "hedge_after_ms": 100}
    )
    a.faults.delay_before_headers_seconds = 30
    got = await stream_raw(nexus, {"model": "llama3:8b", "messages": MESSAGES, "stream": True})
    assert got.backend == "b"
    assert_seamless(got)
    with trio.fail_after(2):
        await a.stats.disconnected.wait()  # the loser was cancelled at once
    assert await nexus.in_flight() == {"a": 0, "b": 0}
    health = await nexus.health()
    assert health["backends"]["a"]["status"] == "healthy"  # slow is not down
    assert health["totals"]["hedges_started"] == health["totals"]["hedges_won"] == 1


async def test_no_hedge_when_the_first_answers_in_time(start_nexus: Any) -> None:
    a, b = replicas(Flavor.VLLM)
    nexus = await start_nexus(
        [a, b], backend_options=PRIORITIES,
        routing={"strategy": "priority", "hedge_after_ms": 5000},
    )  # fmt: skip
    got = await stream_raw(nexus, {"model": "llama3:8b", "messages": MESSAGES, "stream": True})
    assert got.backend == "a"
    assert b.stats.chat_requests == 0


async def test_a_failed_first_is_replaced_without_waiting_for_the_hedge(start_nexus: Any) -> None:
    a, b = replicas(Flavor.VLLM)
    nexus = await start_nexus(
        [a, b], backend_options=PRIORITIES,
        routing={"strategy": "priority", "hedge_after_ms": 60_000},
    )  # fmt: skip
    a.faults.status = 500
    with trio.fail_after(5):  # not the hedge delay: failover is immediate
        got = await stream_raw(nexus, {"model": "llama3:8b", "messages": MESSAGES, "stream": True})
    assert got.backend == "b"
    assert_seamless(got)


def test_models_share_one_text() -> None:
    # The premise of these tests: every replica of a model says the same thing.
    assert SimModel("llama3:8b").id == "llama3:8b"
    assert expected_answer("llama3:8b", MESSAGES) == FULL
    assert len(FULL.split()) > 22


async def test_a_client_that_gives_up_cancels_every_hedge(start_nexus: Any) -> None:
    a, b = replicas(Flavor.VLLM)
    nexus = await start_nexus(
        [a, b], backend_options=PRIORITIES, routing={"strategy": "priority", "hedge_after_ms": 50}
    )
    a.faults.delay_before_headers_seconds = b.faults.delay_before_headers_seconds = 30
    body = {"model": "llama3:8b", "messages": MESSAGES, "stream": True}
    with trio.move_on_after(0.5):  # the client's own timeout: long after the hedge started
        await nexus.http.post("/v1/chat/completions", json=body)
    with trio.fail_after(2):
        await a.stats.disconnected.wait()
        await b.stats.disconnected.wait()
    assert await nexus.in_flight() == {"a": 0, "b": 0}


async def test_closing_the_sdk_stream_cancels_the_upstream(start_nexus: Any) -> None:
    a = sim("a", Flavor.OLLAMA, tokens_per_second=20)
    nexus = await start_nexus([a])
    stream = await nexus.openai().chat.completions.create(
        model="llama3:8b", messages=MESSAGES, stream=True
    )
    seen = 0
    async for chunk in stream:
        seen += sum(1 for c in chunk.choices if c.delta.content)
        if seen == 2:
            break
    await stream.close()
    with trio.fail_after(2):
        await a.stats.disconnected.wait()
    assert a.stats.completed == 0
    assert await nexus.in_flight() == {"a": 0}
