"""The fault matrix: every fault, streamed or not, on every kind of backend.

{stream, non-stream} × {connection refused, reset before headers, 500, 503 with
Retry-After, 429, hang before headers, die after K chunks, stall after K chunks,
malformed SSE, in-band error event} × {Ollama-, vLLM-, llama.cpp-style backends}:

- while a healthy candidate remains, the official SDK receives one complete
  answer, exactly the deterministic text, nothing doubled or lost at any seam;
- when none remains, it gets the documented error — never a hang.

Non-streaming requests are streamed from their backends too, so they are bound by
the same short first-token and stall deadlines; ``request_seconds`` stays at ten
minutes here, and a test that waited for it would hit its own guard first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest
import trio

from nexus_trio.testing import Flavor, SimulatedBackend
from nexus_trio.testing._text import expected_answer

from helpers import sim

MESSAGES: list[Any] = [{"role": "user", "content": "Describe the fault matrix."}]
FULL = expected_answer("llama3:8b", MESSAGES)
K = 5
# A simulated Ollama starts with no model loaded: no time for a cold start here, so that a
# hang is a hang (tests/test_engine_load.py gives cold starts theirs).
TIMEOUTS = {
    "first_token_seconds": 0.5,
    "stream_idle_seconds": 0.3,
    "request_seconds": 600,
    "cold_start_seconds": 0,
}

Fault = Callable[[SimulatedBackend], Awaitable[None]]


async def refused(b: SimulatedBackend) -> None:
    await b.refuse_connections()


def knob(name: str, value: Any) -> Fault:
    async def apply(b: SimulatedBackend) -> None:
        setattr(b.faults, name, value)

    apply.__name__ = name
    return apply


FAULTS: dict[str, Fault] = {
    "refused": refused,
    "reset_before_headers": knob("reset_before_headers", True),
    "500": knob("status", 500),
    "503_retry_after": knob("status", 503),
    "429": knob("status", 429),
    "hang_before_headers": knob("delay_before_headers_seconds", 30),
    "die_after_k": knob("die_after_chunks", K),
    "stall_after_k": knob("stall_after_chunks", K),
    "malformed": knob("malformed", True),
    "in_band_error": knob("error_event_after_chunks", K),
}
# Faults that strike after a stream's first token: with no one to continue, the client
# has had a 200 and gets one SSE error event.
AFTER_FIRST_TOKEN = {"die_after_k", "stall_after_k", "in_band_error"}


async def ask(client: openai.AsyncOpenAI, stream: bool) -> str:
    if not stream:
        completion = await client.chat.completions.create(
            model="llama3:8b", messages=MESSAGES, temperature=0
        )
        assert completion.choices[0].finish_reason == "stop"
        return completion.choices[0].message.content or ""
    text, finishes = "", []
    async for chunk in await client.chat.completions.create(
        model="llama3:8b", messages=MESSAGES, temperature=0, stream=True
    ):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert finishes == ["stop"]
    return text


@pytest.mark.parametrize("flavor", [Flavor.OLLAMA, Flavor.VLLM, Flavor.LLAMACPP])
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_a_healthy_candidate_always_answers_in_full(
    start_nexus: Any, flavor: Flavor, fault: str, stream: bool
) -> None:
    a, b = sim("a", flavor), sim("b", flavor)
    nexus = await start_nexus(
        [a, b],
        backend_options={"a": {"priority": 1}, "b": {"priority": 2}},
        routing={"strategy": "priority", "timeouts": TIMEOUTS},
    )
    await FAULTS[fault](a)  # the backend every request goes to first
    with trio.fail_after(10):
        assert await ask(nexus.openai(), stream) == FULL
        assert await ask(nexus.openai(), stream) == FULL  # and again, "a" out or not
    assert await nexus.in_flight() == {"a": 0, "b": 0}


@pytest.mark.parametrize("flavor", [Flavor.OLLAMA, Flavor.VLLM, Flavor.LLAMACPP])
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_with_no_healthy_candidate_the_error_is_the_documented_one(
    start_nexus: Any, flavor: Flavor, fault: str, stream: bool
) -> None:
    a = sim("a", flavor)
    nexus = await start_nexus([a], routing={"timeouts": TIMEOUTS})
    await FAULTS[fault](a)
    with trio.fail_after(10), pytest.raises(openai.APIError) as raised:
        await ask(nexus.openai(), stream)
    error = raised.value
    if stream and fault in AFTER_FIRST_TOKEN:
        # Committed: one SSE error event, which the SDK raises as a plain APIError.
        assert not isinstance(error, openai.APIStatusError)
        assert "failed mid-stream" in error.message
    else:
        assert isinstance(error, openai.APIStatusError)
        expected = {"429": 429, "hang_before_headers": 504, "stall_after_k": 504}.get(fault, 502)
        assert error.status_code == expected
        body = error.body
        assert isinstance(body, dict)
        assert {"message", "type", "code"} <= set(body)
        if expected == 429:
            assert error.response.headers["retry-after"] == "1"
    assert await nexus.in_flight() == {"a": 0}
