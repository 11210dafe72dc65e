"""With every backend of a model out of rotation, a request waits briefly for one to return."""

from __future__ import annotations

from typing import Any

import trio

from helpers import sim

HELLO: dict[str, Any] = {"model": "llama3:8b", "messages": [{"role": "user", "content": "Hi"}]}


async def test_a_request_waits_for_a_backend_coming_back(start_nexus: Any) -> None:
    a = sim("a")
    nexus = await start_nexus(
        [a], routing={"wait_for_backend_seconds": 5}, health_check={"recovery_threshold": 1}
    )
    registry = nexus.gateway.registry
    registry.demote(registry.get("a"), "a request just failed")  # its half-open probe: in 0.5 s
    with trio.fail_after(4):
        response = await nexus.http.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 200
    assert response.headers["x-nexus-backend"] == "a"


async def test_a_backend_that_stays_down_gets_the_503_after_the_wait(start_nexus: Any) -> None:
    a = sim("a")
    nexus = await start_nexus([a], routing={"wait_for_backend_seconds": 0.3})
    await a.refuse_connections()
    registry = nexus.gateway.registry
    registry.demote(registry.get("a"), "refused")
    with trio.fail_after(3):
        response = await nexus.http.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_healthy_backend"
    assert response.headers["retry-after"]


async def test_busy_is_answered_at_once(start_nexus: Any, nursery: trio.Nursery) -> None:
    a = sim("a", tokens_per_second=5)
    nexus = await start_nexus(
        [a], routing={"wait_for_backend_seconds": 30}, backend_options={"a": {"max_concurrency": 1}}
    )
    started = trio.Event()

    async def occupy() -> None:
        body = {**HELLO, "stream": True}
        async with nexus.http.stream("POST", "/v1/chat/completions", json=body) as response:
            started.set()
            async for _ in response.aiter_bytes():
                pass

    nursery.start_soon(occupy)
    await started.wait()
    with trio.fail_after(2):  # not the 30 s wait: busy is not down
        response = await nexus.http.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "backends_busy"
    assert response.headers["retry-after"] == "1"


async def test_when_the_last_candidate_fails_one_coming_back_serves(start_nexus: Any) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus(
        [a, b],
        routing={"wait_for_backend_seconds": 5, "strategy": "priority"},
        backend_options={"a": {"priority": 1}, "b": {"priority": 2}},
        health_check={"recovery_threshold": 1},
    )
    registry = nexus.gateway.registry
    registry.demote(registry.get("b"), "failed a moment ago")  # back after its probe, in 0.5 s
    a.faults.status = 500  # the only candidate in rotation fails at once
    with trio.fail_after(4):
        response = await nexus.http.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 200
    assert response.headers["x-nexus-backend"] == "b"
