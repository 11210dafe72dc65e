"""One upstream path: every request is read from its backend as a stream, and what the
client receives is written for it — except where a whole answer could not be assembled
from a stream, or the setting says not to."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from nexus_trio.testing import Flavor

from helpers import sim

MESSAGES: list[Any] = [{"role": "user", "content": "Say something."}]
ASK_STREAM = {"stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("flavor", [Flavor.OLLAMA, Flavor.VLLM, Flavor.LLAMACPP])
async def test_a_whole_answer_is_assembled_from_a_stream(start_nexus: Any, flavor: Flavor) -> None:
    a = sim("a", flavor)
    nexus = await start_nexus([a])
    raw = await nexus.openai().chat.completions.with_raw_response.create(
        model="llama3:8b", messages=MESSAGES, temperature=0
    )
    completion = raw.parse()
    assert a.stats.last_chat_body == {
        "model": "llama3:8b", "messages": MESSAGES, "temperature": 0, **ASK_STREAM
    }  # fmt: skip
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["x-nexus-backend"] == "a"
    assert int(raw.headers["content-length"]) == len(raw.http_response.content)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


@pytest.mark.parametrize(
    "fields", [{"n": 2}, {"logprobs": True, "top_logprobs": 2}], ids=["n", "logprobs"]
)
async def test_what_cannot_be_assembled_goes_as_it_came(
    start_nexus: Any, fields: dict[str, Any]
) -> None:
    a = sim("a")
    nexus = await start_nexus([a])
    request = {"model": "llama3:8b", "messages": MESSAGES, **fields}
    response = await nexus.http.post("/v1/chat/completions", json=request)
    assert response.status_code == 200
    assert a.stats.last_chat_body == request
    assert response.json()["object"] == "chat.completion"


async def test_streaming_upstream_can_be_turned_off(start_nexus: Any) -> None:
    """Off, a non-streaming request goes as it came, and only ``request_seconds`` bounds a
    backend that never answers."""
    a, b = sim("a"), sim("b")
    nexus = await start_nexus(
        [a, b],
        backend_options={"a": {"priority": 1}, "b": {"priority": 2}},
        routing={
            "strategy": "priority",
            "stream_upstream": False,
            "timeouts": {"first_token_seconds": 0.2, "request_seconds": 1},
        },
    )
    request = {"model": "llama3:8b", "messages": MESSAGES}
    first = await nexus.http.post("/v1/chat/completions", json=request)
    assert first.status_code == 200
    assert a.stats.last_chat_body == request
    a.faults.delay_before_headers_seconds = 0.5  # past the first-token deadline, not the whole
    with trio.fail_after(10):
        second = await nexus.http.post("/v1/chat/completions", json=request)
    assert second.headers["x-nexus-backend"] == "a"  # waited for it: no first-token deadline
    assert (
        second.json()["choices"][0]["message"]["content"]
        == (first.json()["choices"][0]["message"]["content"])
    )


async def test_a_whole_answer_is_bound_by_request_seconds(start_nexus: Any) -> None:
    """Streamed upstream, a whole answer keeps its bound on the whole request: a backend
    that trickles tokens (never stalling) past it is given up on with a 504."""
    a = sim("a", tokens_per_second=4)
    nexus = await start_nexus([a], routing={"timeouts": {"request_seconds": 0.5}})
    request = {"model": "llama3:8b", "messages": MESSAGES}
    with trio.fail_after(10):
        response = await nexus.http.post("/v1/chat/completions", json=request)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "request_timeout"
    assert "request_seconds" in response.json()["error"]["message"]
    assert await nexus.in_flight() == {"a": 0}
