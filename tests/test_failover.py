"""Failover before the first byte: the client never notices a backend that failed."""

from __future__ import annotations

from typing import Any

import openai
import pytest
import trio
import trio.testing

from nexus_trio.testing._text import expected_answer

from helpers import sim, wait_for_ejection_end

MESSAGES: list[Any] = [{"role": "user", "content": "Tell me a story."}]
CHAT = "/v1/chat/completions"
FAST_TIMEOUTS = {"first_token_seconds": 0.5, "request_seconds": 30, "stream_idle_seconds": 0.5}


async def ask(client: openai.AsyncOpenAI, stream: bool) -> tuple[str, str]:
    """(answer text, serving backend) for one request, streamed or not."""
    if not stream:
        raw = await client.chat.completions.with_raw_response.create(
            model="llama3:8b", messages=MESSAGES
        )
        return raw.parse().choices[0].message.content or "", raw.headers["x-nexus-backend"]
    async with client.chat.completions.with_streaming_response.create(
        model="llama3:8b", messages=MESSAGES, stream=True
    ) as raw:
        text = ""
        async for chunk in await raw.parse():
            for choice in chunk.choices:
                text += choice.delta.content or ""
        return text, raw.headers["x-nexus-backend"]


async def break_refuse(backend: Any) -> None:
    await backend.refuse_connections()


async def break_500(backend: Any) -> None:
    backend.faults.status = 500


async def break_503(backend: Any) -> None:
    backend.faults.status = 503


async def break_429(backend: Any) -> None:
    backend.faults.status = 429


async def break_delay(backend: Any) -> None:
    backend.faults.delay_before_headers_seconds = 5


async def break_malformed(backend: Any) -> None:
    backend.faults.malformed = True


async def break_die_before_first_token(backend: Any) -> None:
    backend.faults.die_after_chunks = 0


async def break_stall_before_first_token(backend: Any) -> None:
    backend.faults.stall_after_chunks = 0


BREAKS = [break_refuse, break_500, break_503, break_429, break_delay, break_malformed]


PRIORITIES = {"a": {"priority": 1}, "b": {"priority": 2}}


async def start_a_then_b(start_nexus: Any, **sections: Any) -> tuple[Any, Any, Any]:
    """Nexus in front of "a" (preferred by priority) and "b": every run fails over from a."""
    a, b = sim("a"), sim("b")
    nexus = await start_nexus(
        [a, b],
        backend_options=PRIORITIES,
        routing={"strategy": "priority", "timeouts": FAST_TIMEOUTS},
        **sections,
    )
    return nexus, a, b


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("breaker", BREAKS, ids=lambda f: f.__name__.removeprefix("break_"))
async def test_failed_backend_is_invisible_and_ejected(
    start_nexus: Any, stream: bool, breaker: Any
) -> None:
    nexus, a, _ = await start_a_then_b(start_nexus)
    await breaker(a)
    client = nexus.openai()

    text, served_by = await ask(client, stream)
    assert (text, served_by) == (expected_answer("llama3:8b", MESSAGES), "b")

    # "a" is ejected at once: the next request does not try it again.
    tried_before = a.stats.chat_requests
    text, served_by = await ask(client, stream)
    assert served_by == "b"
    assert a.stats.chat_requests == tried_before
    health = await nexus.health()
    assert health["backends"]["a"]["status"] == "ejected"
    assert health["status"] == "degraded"
    assert await nexus.in_flight() == {"a": 0, "b": 0}


@pytest.mark.parametrize(
    "breaker",
    [break_die_before_first_token, break_stall_before_first_token],
    ids=["dies", "stalls"],
)
async def test_stream_that_fails_before_its_first_token_fails_over(
    start_nexus: Any, breaker: Any
) -> None:
    nexus, a, _ = await start_a_then_b(start_nexus)
    await breaker(a)
    text, served_by = await ask(nexus.openai(), stream=True)
    assert (text, served_by) == (expected_answer("llama3:8b", MESSAGES), "b")


async def test_an_ejected_backend_returns_when_its_ejection_ends(
    autojump_clock: trio.testing.MockClock, start_nexus: Any
) -> None:
    nexus, a, _ = await start_a_then_b(start_nexus)
    events = nexus.gateway.registry.subscribe()
    body = {"model": "llama3:8b", "messages": MESSAGES}
    a.faults.status = 500
    assert (await nexus.http.post(CHAT, json=body)).headers["x-nexus-backend"] == "b"
    assert (await nexus.health())["backends"]["a"]["status"] == "ejected"
    a.faults.clear()
    await wait_for_ejection_end(events, "a")  # its probes passed meanwhile: only time tells
    assert (await nexus.http.post(CHAT, json=body)).headers["x-nexus-backend"] == "a"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_backend_back_in_rotation_mid_request_is_tried(
    start_nexus: Any, nursery: trio.Nursery, stream: bool
) -> None:
    nexus, a, _ = await start_a_then_b(start_nexus, health_check={"enabled": False})
    registry = nexus.gateway.registry
    registry.mark_unhealthy(registry.get("b"), "down when the request arrives")
    a.faults.delay_before_headers_seconds = 0.2
    a.faults.status = 500
    result: list[tuple[str, str]] = []
    answered = trio.Event()

    async def request() -> None:
        result.append(await ask(nexus.openai(), stream))
        answered.set()

    nursery.start_soon(request)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # planned: only "a" was eligible
    registry.revive(registry.get("b"))  # "b" answered its half-open probe meanwhile
    with trio.fail_after(5):
        await answered.wait()
    assert result == [(expected_answer("llama3:8b", MESSAGES), "b")]
