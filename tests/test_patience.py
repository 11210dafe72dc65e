"""With every backend of a model out of rotation, a request waits briefly for one to return.

Every test runs on virtual time (`loopback_clock`): the waits, probes and deadlines here are
instant and exact, and a deadline in a test says what Nexus does, not how fast this machine is.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from helpers import sim

HELLO: dict[str, Any] = {"model": "llama3:8b", "messages": [{"role": "user", "content": "Hi"}]}
SHORT_EJECTIONS = {"ejection_base_seconds": 0.5}


async def test_a_request_waits_for_a_backend_coming_back(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    a = sim("a")
    nexus = await start_nexus(
        [a], routing={"wait_for_backend_seconds": 5}, health_check=SHORT_EJECTIONS
    )
    registry = nexus.gateway.registry
    registry.eject(registry.get("a"), "a request just failed")  # back in 0.5 s
    with trio.fail_after(4):
        response = await nexus.http.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 200
    assert response.headers["x-nexus-backend"] == "a"


async def test_a_backend_that_stays_down_gets_the_503_after_the_wait(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    a = sim("a")
    nexus = await start_nexus([a], routing={"wait_for_backend_seconds": 5})
    await a.refuse_connections()
    registry = nexus.gateway.registry
    registry.mark_unhealthy(registry.get("a"), "refused")  # its probes keep finding it down
    began = trio.current_time()
    with trio.fail_after(10):  # virtual: a guard against a hang
        response = await nexus.http.post("/v1/chat/completions", json=HELLO)
    assert trio.current_time() - began >= 5  # the whole wait, then the answer
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_healthy_backend"
    assert response.headers["retry-after"]


async def test_busy_is_answered_at_once(
    start_nexus: Any, nursery: trio.Nursery, loopback_clock: trio.testing.MockClock
) -> None:
    a = sim("a", tokens_per_second=5)
    nexus = await start_nexus(
        [a],
        routing={"wait_for_backend_seconds": 30},
        backend_options={"a": {"max_concurrency": 1}},
        queue={"max_size": 0},  # no queue (tests/test_queue.py covers it)
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
    with trio.fail_after(2):  # virtual: not the 30 s wait, busy is not down
        response = await nexus.http.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "backends_busy"
    assert response.headers["retry-after"] == "1"


async def test_when_the_last_candidate_fails_one_coming_back_serves(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus(
        [a, b],
        routing={"wait_for_backend_seconds": 5, "strategy": "priority"},
        backend_options={"a": {"priority": 1}, "b": {"priority": 2}},
        health_check=SHORT_EJECTIONS,
    )
    registry = nexus.gateway.registry
    registry.eject(registry.get("b"), "failed a moment ago")  # back in 0.5 s
    a.faults.status = 500  # the only candidate in rotation fails at once
    with trio.fail_after(4):
        response = await nexus.http.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 200
    assert response.headers["x-nexus-backend"] == "b"


async def test_a_backend_that_failed_is_tried_again_once_it_is_back(
    start_nexus: Any, nursery: trio.Nursery, loopback_clock: trio.testing.MockClock
) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus(
        [a, b],
        routing={"wait_for_backend_seconds": 5, "strategy": "priority", "max_attempts": 3},
        backend_options={"a": {"priority": 1}, "b": {"priority": 2}},
        health_check=SHORT_EJECTIONS,
    )
    a.faults.status = b.faults.status = 500
    registry = nexus.gateway.registry

    changes = registry.subscribe()

    async def mend_a_once_it_is_out() -> None:
        with changes:
            async for event in changes:
                if (event.kind, event.backend, event.detail) == ("ejection", "a", "ejected"):
                    a.faults.clear()  # it is well when its ejection ends
                    return

    nursery.start_soon(mend_a_once_it_is_out)
    with trio.fail_after(4):
        response = await nexus.http.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 200
    assert response.headers["x-nexus-backend"] == "a"
    assert (a.stats.chat_requests, b.stats.chat_requests) == (2, 1)


async def test_a_backend_is_not_tried_twice_while_it_is_out(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus([a, b], routing={"wait_for_backend_seconds": 0.5, "max_attempts": 5})
    await a.refuse_connections()
    await b.refuse_connections()  # probes fail too: neither comes back
    with trio.fail_after(4):
        response = await nexus.http.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 502
    await nexus.settled()
    history = (await nexus.http.get("/v1/history")).json()["data"]
    assert history[-1]["attempts"] == 2  # one each, not five


async def test_no_new_attempt_after_the_failover_timeout(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus(
        [a, b],
        routing={
            "strategy": "priority",
            "failover_timeout_seconds": 0.2,
            "timeouts": {"first_token_seconds": 0.4, "request_seconds": 0.4},
        },
        backend_options={"a": {"priority": 1}, "b": {"priority": 2}},
    )
    a.faults.delay_before_headers_seconds = 5  # outlives the failover timeout
    with trio.fail_after(4):
        response = await nexus.http.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 504
    assert b.stats.chat_requests == 0
