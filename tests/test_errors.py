"""Every failure is an OpenAI-shaped error with the right status; never a 500 or HTML."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
import trio
import trio.testing

from nexus_trio.registry import Health
from nexus_trio.testing import Flavor, SimModel, SimulatedBackend

from helpers import sim, wait_for_health

CHAT = "/v1/chat/completions"
HELLO: dict[str, Any] = {"model": "llama3:8b", "messages": [{"role": "user", "content": "Hi"}]}
FAST = {"timeouts": {"first_token_seconds": 0.3, "request_seconds": 0.3}}


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The error object, after checking the whole body has the OpenAI shape."""
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"\xff\xfe\x00garbage", None),
        (b"[" * 100_000, None),
        (b'"just a string"', None),
        (b"{}", "model"),
        (json.dumps({"model": 7, "messages": []}).encode(), "model"),
        (json.dumps({"model": "llama3:8b"}).encode(), "messages"),
        (json.dumps({"model": "llama3:8b", "messages": "hi"}).encode(), "messages"),
        (json.dumps({**HELLO, "stream": "yes"}).encode(), "stream"),
        (json.dumps({**HELLO, "max_tokens": -1}).encode(), "max_tokens"),
        (json.dumps({**HELLO, "stop": [1, 2]}).encode(), "stop"),
        (json.dumps({**HELLO, "tools": {"a": 1}}).encode(), "tools"),
        (
            json.dumps({"model": "llama3:8b", "messages": [{"content": "no role"}]}).encode(),
            "messages[0].role",
        ),
        (
            json.dumps(
                {"model": "llama3:8b", "messages": [{"role": "user", "content": 5}]}
            ).encode(),
            "messages[0].content",
        ),
    ],
)
async def test_bad_requests_name_the_problem(start_nexus: Any, body: bytes, param: str) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend])
    response = await nexus.http.post(
        CHAT, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert backend.stats.chat_requests == 0  # never forwarded


async def test_body_over_the_limit_is_413(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")], server={"max_body_bytes": 1000})
    big = {**HELLO, "messages": [{"role": "user", "content": "x" * 2000}]}
    response = await nexus.http.post(CHAT, json=big)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


async def test_wrong_method_and_unknown_path(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    response = await nexus.http.get(CHAT)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert error_of(response)["code"] == "method_not_allowed"
    response = await nexus.http.get("/v2/nothing")
    assert response.status_code == 404
    assert "/v1/chat/completions" in error_of(response)["message"]


async def test_no_healthy_backend_is_503_with_retry_after(start_nexus: Any) -> None:
    a = sim("a")
    nexus = await start_nexus([a])
    await a.refuse_connections()
    with nexus.gateway.registry.subscribe() as events:
        await nexus.http.post(CHAT, json=HELLO)  # fails over to nobody, ejects "a"
        await wait_for_health(events, "a", Health.UNHEALTHY)  # its probe finds it down
    response = await nexus.http.post(CHAT, json=HELLO)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert error_of(response)["code"] == "no_healthy_backend"
    health = await nexus.http.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy"


@pytest.mark.parametrize("stream", [False, True])
async def test_every_candidate_failing_is_502_saying_what_each_did(
    start_nexus: Any, stream: bool
) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus([a, b])
    a.faults.status = 500
    b.faults.status = 503
    response = await nexus.http.post(CHAT, json={**HELLO, "stream": stream})
    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == "all_backends_failed"
    for said in ("'a'", "'b'", "500", "503"):
        assert said in error["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_every_candidate_timing_out_is_504(
    start_nexus: Any, stream: bool, loopback_clock: trio.testing.MockClock
) -> None:
    # Virtual time: the deadlines pass exactly, and the delays past them cost nothing.
    a, b = sim("a"), sim("b")
    nexus = await start_nexus([a, b], routing=FAST)
    a.faults.delay_before_headers_seconds = b.faults.delay_before_headers_seconds = 5
    response = await nexus.http.post(CHAT, json={**HELLO, "stream": stream})
    assert response.status_code == 504
    assert error_of(response)["type"] == "timeout_error"


async def test_max_attempts_bounds_the_failover(start_nexus: Any) -> None:
    backends = [sim(name) for name in "abcd"]
    nexus = await start_nexus(backends, routing={"max_attempts": 2})
    for backend in backends:
        backend.faults.status = 500
    response = await nexus.http.post(CHAT, json=HELLO)
    assert response.status_code == 502
    assert sum(b.stats.chat_requests for b in backends) == 2


@pytest.mark.parametrize("status", [400, 401, 422])
async def test_a_backends_client_error_is_passed_through_not_retried(
    start_nexus: Any, status: int
) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus([a, b], routing={"strategy": "round_robin"})
    a.faults.status = b.faults.status = status
    response = await nexus.http.post(CHAT, json=HELLO)
    assert response.status_code == status
    assert error_of(response)["message"]
    assert a.stats.chat_requests + b.stats.chat_requests == 1
    assert (await nexus.health())["status"] == "healthy"


async def test_a_backend_that_lost_the_model_is_skipped_and_forgets_it(start_nexus: Any) -> None:
    a = sim("a")
    b = sim("b")
    nexus = await start_nexus(
        [a, b], routing={"strategy": "priority"}, backend_options={"b": {"priority": 2}}
    )
    a.set_models([SimModel("other:1b")])  # "a" no longer has llama3:8b
    response = await nexus.http.post(CHAT, json=HELLO)
    assert response.status_code == 200
    assert response.headers["x-nexus-backend"] == "b"
    assert "llama3:8b" not in nexus.gateway.registry.get("a").models
    assert (await nexus.health())["backends"]["a"]["status"] == "healthy"


async def test_context_length_and_capabilities_are_checked_before_sending(
    start_nexus: Any,
) -> None:
    backend = SimulatedBackend(
        flavor=Flavor.OLLAMA, models=[SimModel("tiny:1b", context_length=256)], name="a"
    )
    nexus = await start_nexus([backend])
    long = {"model": "tiny:1b", "messages": [{"role": "user", "content": "word " * 2000}]}
    response = await nexus.http.post(CHAT, json=long)
    assert response.status_code == 400
    assert error_of(response)["code"] == "context_length_exceeded"

    image = {
        "model": "tiny:1b",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                ],
            }
        ],
    }
    response = await nexus.http.post(CHAT, json=image)
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "model_not_capable"
    assert "images" in error["message"]
    assert backend.stats.chat_requests == 0


async def test_vision_request_goes_to_the_backend_that_has_vision(start_nexus: Any) -> None:
    plain = SimulatedBackend(flavor=Flavor.OLLAMA, models=[SimModel("llava:7b")], name="plain")
    seeing = SimulatedBackend(
        flavor=Flavor.OLLAMA, models=[SimModel("llava:7b", vision=True)], name="seeing"
    )
    nexus = await start_nexus([plain, seeing])
    image = {
        "model": "llava:7b",
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                ],
            }
        ],
    }
    for _ in range(3):
        response = await nexus.http.post(CHAT, json=image)
        assert response.status_code == 200
        assert response.headers["x-nexus-backend"] == "seeing"


async def test_fallback_model_serves_when_the_model_cannot(start_nexus: Any) -> None:
    big = sim("big", Flavor.VLLM, "llama3:70b")
    small = sim("small", Flavor.VLLM, "llama3:8b")
    nexus = await start_nexus([big, small], routing={"fallbacks": {"llama3:70b": ["llama3:8b"]}})
    await big.refuse_connections()
    client = nexus.openai()
    raw = await client.chat.completions.with_raw_response.create(
        model="llama3:70b", messages=HELLO["messages"]
    )
    assert raw.headers["x-nexus-backend"] == "small"
    assert raw.headers["x-nexus-fallback-model"] == "llama3:8b"
    assert raw.headers["x-nexus-route-reason"].startswith("fallback:llama3:70b->llama3:8b")
    assert small.stats.last_chat_body is not None
    assert small.stats.last_chat_body["model"] == "llama3:8b"


async def test_alias_rewrites_only_the_model(start_nexus: Any) -> None:
    backend = sim("a")
    nexus = await start_nexus([backend], routing={"aliases": {"gpt-4": "llama3:8b"}})
    request = {**HELLO, "model": "gpt-4", "temperature": 0.25, "n": 1}
    response = await nexus.http.post(CHAT, json=request)
    assert response.status_code == 200
    assert backend.stats.last_chat_body == {
        **request,
        "model": "llama3:8b",
        "stream": True,  # every request is streamed from its backend
        "stream_options": {"include_usage": True},
    }


async def test_request_id_is_made_when_absent(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    first = await nexus.http.post(CHAT, json=HELLO)
    second = await nexus.http.post(CHAT, json=HELLO)
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    error = await nexus.http.post(CHAT, content=b"{", headers={"x-request-id": "mine"})
    assert error.headers["x-request-id"] == "mine"


async def test_sdk_sees_typed_errors(start_nexus: Any) -> None:
    a = sim("a")
    nexus = await start_nexus([a])
    client = nexus.openai()
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="llama3:8b", messages=[])
    a.faults.status = 500
    with pytest.raises(openai.APIStatusError) as raised:
        await client.chat.completions.create(model="llama3:8b", messages=HELLO["messages"])
    assert raised.value.status_code == 502
    # Ejected, yet the only backend its probes call well: tried again rather than refused.
    with pytest.raises(openai.APIStatusError) as raised:
        await client.chat.completions.create(model="llama3:8b", messages=HELLO["messages"])
    assert raised.value.status_code == 502
    assert a.stats.chat_requests == 2


async def test_failure_after_the_stream_committed_is_one_error_event(start_nexus: Any) -> None:
    a = sim("a")
    nexus = await start_nexus([a])
    a.faults.die_after_chunks = 3
    client = nexus.openai()
    stream = await client.chat.completions.create(
        model="llama3:8b", messages=HELLO["messages"], stream=True
    )
    text = ""

    async def read_all() -> None:
        nonlocal text
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""

    with pytest.raises(openai.APIError) as raised:
        await read_all()
    assert "mid-stream" in raised.value.message
    assert len(text.split()) == 3  # the three tokens before the cut, nothing dressed up as text
    assert await nexus.in_flight() == {"a": 0}


async def test_fallbacks_keyed_by_an_alias_apply(start_nexus: Any) -> None:
    big = sim("big", Flavor.VLLM, "llama3:70b")
    small = sim("small", Flavor.VLLM, "llama3:8b")
    nexus = await start_nexus(
        [big, small],
        routing={"aliases": {"gpt-4": "llama3:70b"}, "fallbacks": {"gpt-4": ["llama3:8b"]}},
    )
    await big.refuse_connections()
    response = await nexus.http.post(CHAT, json={**HELLO, "model": "gpt-4"})
    assert response.status_code == 200
    assert response.headers["x-nexus-backend"] == "small"
    assert response.headers["x-nexus-fallback-model"] == "llama3:8b"
