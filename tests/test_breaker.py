"""The passive breaker: a request that fails ejects its backend for a time that doubles with
each ejection in a row, up to a cap, whatever its probes say; a run of served requests
starts the doubling over. On trio's autojump clock, through Nexus where it matters."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from nexus_trio.config import BackendType, HealthCheckSettings
from nexus_trio.health import run_health
from nexus_trio.observe.views import backend_view
from nexus_trio.registry import RESET_AFTER_SERVED, Backend, Health, Registry, RegistryEvent
from nexus_trio.routing.patience import wait_for_rotation

from helpers import sim

CHAT = "/v1/chat/completions"
HELLO: dict[str, Any] = {"model": "llama3:8b", "messages": [{"role": "user", "content": "Hi"}]}
BREAKER = HealthCheckSettings(ejection_base_seconds=5, ejection_max_seconds=60)
ENDED = ("ejection", "a", "ended")


def backend(name: str = "a") -> Backend:
    return Backend(name, f"http://{name}.test", BackendType.GENERIC, health=Health.HEALTHY)


async def start(
    nursery: trio.Nursery, *backends: Backend, settings: HealthCheckSettings = BREAKER
) -> Registry:
    """A registry whose ejections end on time, as each backend's health watcher has it."""
    registry = Registry(backends, settings)
    for b in backends:
        nursery.start_soon(registry.run_ejections, b)
    return registry


async def sleep_then_settle(seconds: float) -> None:
    """Sleep, then let every task due at that moment (the ejections' ender) run too."""
    await trio.sleep(seconds)
    await trio.testing.wait_all_tasks_blocked()


async def next_event(events: trio.MemoryReceiveChannel[RegistryEvent]) -> tuple[str, str, str]:
    event = await events.receive()
    return event.kind, event.backend, event.detail


async def ejection_lasts(registry: Registry, b: Backend) -> float:
    """Eject ``b`` and wait until it is back; how long that took (virtual seconds)."""
    with registry.subscribe() as events:
        began = trio.current_time()
        registry.eject(b, "HTTP 500 from upstream")
        assert await next_event(events) == ("ejection", b.name, "ejected")
        assert not b.routable
        assert await next_event(events) == ("ejection", b.name, "ended")
        assert b.routable
        return trio.current_time() - began


# -- the registry's rules ----------------------------------------------------------------------


async def test_each_ejection_in_a_row_lasts_twice_the_last_up_to_the_cap(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    a = backend()
    registry = await start(nursery, a)
    lasted = [await ejection_lasts(registry, a) for _ in range(6)]
    assert lasted == [5, 10, 20, 40, 60, 60]
    assert a.returns == 6  # each end is a comeback: a request that failed on it may retry it
    assert a.ejections == 6
    assert registry.ejection_seconds(10_000) == 60  # no overflow, however many


async def test_a_run_of_served_requests_starts_the_doubling_over(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    a = backend()
    registry = await start(nursery, a)
    assert [await ejection_lasts(registry, a) for _ in range(2)] == [5, 10]
    for _ in range(RESET_AFTER_SERVED - 1):
        registry.request_succeeded(a)
    assert await ejection_lasts(registry, a) == 20  # one short of the run: still doubling
    for _ in range(RESET_AFTER_SERVED - 1):
        registry.request_succeeded(a)
    assert a.ejections == 3
    registry.request_succeeded(a)  # the run is complete
    assert a.ejections == 0
    assert await ejection_lasts(registry, a) == 5


async def test_failures_while_ejected_are_one_ejection(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    a = backend()
    registry = await start(nursery, a)
    with registry.subscribe() as events:
        registry.eject(a, "HTTP 500 from upstream")
        for _ in range(RESET_AFTER_SERVED - 1):
            registry.request_succeeded(a)  # requests that began before it, served meanwhile
        registry.eject(a, "connection reset")  # several requests failed together
        assert a.ejection_reason == "HTTP 500 from upstream"
        assert await next_event(events) == ("ejection", "a", "ejected")
        assert await next_event(events) == ENDED  # one ejection, of the base time
        assert trio.current_time() == 5
    registry.request_succeeded(a)
    assert a.ejections == 1  # the later failure broke the run of successes
    assert await ejection_lasts(registry, a) == 10


async def test_an_ejected_backend_stays_out_whatever_its_probes_say(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    a = backend()
    registry = await start(nursery, a)
    registry.eject(a, "HTTP 500 from upstream")
    for _ in range(5):
        registry.record_probe(a, True, recovery_threshold=1)
    assert (a.health, a.status, a.status_detail) == (
        Health.HEALTHY, "ejected", "HTTP 500 from upstream",
    )  # fmt: skip
    assert not a.routable
    await sleep_then_settle(5)
    assert (a.status, a.routable) == ("healthy", True)


async def test_a_failed_probe_during_an_ejection_keeps_it_out_until_probes_pass(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    a = backend()
    registry = await start(nursery, a)
    registry.eject(a, "connection refused")
    registry.record_probe(a, False, "connection refused", failure_threshold=3)
    assert a.health is Health.UNHEALTHY  # one is enough: a request failed a moment ago
    await sleep_then_settle(5)
    assert a.ejected_until is None
    assert (a.status, a.routable) == ("unhealthy", False)  # the ejection alone ended
    registry.record_probe(a, True, recovery_threshold=2)
    assert not a.routable
    registry.record_probe(a, True, recovery_threshold=2)
    assert a.routable

    # Outside an ejection the threshold holds as before.
    registry.record_probe(a, False, "timeout", failure_threshold=3)
    assert a.health is Health.HEALTHY


async def test_a_request_waiting_for_rotation_wakes_when_an_ejection_ends(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    a = backend()
    registry = await start(nursery, a)
    registry.eject(a, "HTTP 500 from upstream")
    found = await wait_for_rotation(registry, lambda: a if a.routable else None, 30)
    assert found is a
    assert trio.current_time() == 5


async def test_the_health_watcher_ends_ejections_and_probes_meanwhile(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    probes: list[float] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        probes.append(trio.current_time())
        return httpx.Response(200, json={"object": "list", "data": [{"id": "m"}]})

    registry = Registry([Backend("a", "http://a.test", BackendType.GENERIC)], BREAKER)
    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    await nursery.start(run_health, registry, client, BREAKER)
    a = registry.get("a")
    ejected_at = trio.current_time()
    registry.eject(a, "HTTP 500 from upstream")
    await trio.sleep(4.9)
    # Probed on the half-open schedule, every probe passed, and still it is out.
    assert [t - ejected_at for t in probes[1:]] == pytest.approx([0.5, 1.5, 3.5])
    assert (a.health, a.routable) == (Health.HEALTHY, False)
    await sleep_then_settle(0.1)
    assert a.routable
    registry.remove("a")  # its watcher, and the task ending its ejections, go with it
    registry.add(b := Backend("a", "http://a.test", BackendType.GENERIC))
    await trio.testing.wait_all_tasks_blocked()
    registry.eject(b, "HTTP 500 from upstream")
    await sleep_then_settle(5)
    assert b.routable  # its successor's watcher ends its own


def test_the_dashboard_view_counts_down_from_now() -> None:
    a = backend()
    a.ejected_until, a.ejection_reason, a.ejections = 107.5, "HTTP 500 from upstream", 2
    view = backend_view(a, now=100.0)
    assert {k: view[k] for k in ("status", "health", "routable", "detail")} == {
        "status": "ejected",
        "health": "healthy",
        "routable": False,
        "detail": "HTTP 500 from upstream",
    }
    assert (view["ejected_seconds"], view["ejections"]) == (7.5, 2)
    a.ejected_until = None
    assert backend_view(a, now=100.0)["ejected_seconds"] is None


# -- through Nexus -----------------------------------------------------------------------------


async def test_a_backend_whose_probes_pass_while_its_chat_fails_gets_one_request_in_ten(
    autojump_clock: trio.testing.MockClock, start_nexus: Any
) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus(
        [a, b],
        routing={"strategy": "priority"},
        backend_options={"a": {"priority": 1}, "b": {"priority": 2}},  # "a" first
    )
    a.faults.status = 500  # its chat fails; its health endpoint and model list still answer
    began = trio.current_time()
    served_by = []
    for i in range(10):
        await trio.sleep_until(began + i * 0.4)  # ten requests in four (virtual) seconds
        response = await nexus.http.post(CHAT, json=HELLO)
        assert response.status_code == 200
        served_by.append(response.headers["x-nexus-backend"])
    assert trio.current_time() - began < 4
    assert served_by == ["b"] * 10  # the first failed over to "b"; the others never tried "a"
    assert a.stats.chat_requests == 1
    registry = nexus.gateway.registry
    assert registry.get("a").health is Health.HEALTHY  # its probes passed all along
    assert a.stats.requests > a.stats.chat_requests

    # The next time it is let back in, it fails again and stays out twice as long.
    with registry.subscribe() as events:
        async for event in events:
            if (event.kind, event.backend, event.detail) == ENDED:
                break
        assert trio.current_time() - began == pytest.approx(5, abs=0.5)
        assert (await nexus.http.post(CHAT, json=HELLO)).headers["x-nexus-backend"] == "b"
        assert a.stats.chat_requests == 2
        assert registry.get("a").ejected_seconds_left(trio.current_time()) == pytest.approx(10)


async def test_the_breaker_never_leaves_a_model_with_nobody(
    autojump_clock: trio.testing.MockClock, start_nexus: Any
) -> None:
    """Every backend of the model ejected, yet healthy by its probes: a request is served
    by one of them rather than refused (Envoy's panic threshold, at its strictest)."""
    a, b = sim("a"), sim("b")
    nexus = await start_nexus([a, b], routing={"wait_for_backend_seconds": 0})
    a.faults.status = b.faults.status = 500
    assert (await nexus.http.post(CHAT, json=HELLO)).status_code == 502
    registry = nexus.gateway.registry
    assert not registry.get("a").routable
    assert not registry.get("b").routable  # both ejected for 5 s
    a.faults.clear()
    b.faults.clear()
    response = await nexus.http.post(CHAT, json=HELLO)
    assert response.status_code == 200
    assert registry.get(response.headers["x-nexus-backend"]).ejected_until is not None
    models = (await nexus.http.get("/v1/models")).json()["data"]
    assert models[0]["available"] is True


async def test_the_admin_api_shows_an_ejected_backend_and_its_return(
    autojump_clock: trio.testing.MockClock, start_nexus: Any
) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus(
        [a, b],
        routing={"strategy": "priority"},
        backend_options={"a": {"priority": 1}, "b": {"priority": 2}},
        health_check={"ejection_base_seconds": 30},
    )
    a.faults.status = 500
    assert (await nexus.http.post(CHAT, json=HELLO)).headers["x-nexus-backend"] == "b"
    listed = {v["name"]: v for v in (await nexus.http.get("/admin/backends")).json()["backends"]}
    shown = listed["a"]
    assert (shown["status"], shown["health"], shown["ejections"]) == ("ejected", "healthy", 1)
    assert "500" in shown["detail"]
    assert 0 < shown["ejected_seconds"] <= 30
    assert shown["ejected_until"].endswith("+00:00")  # ISO 8601, UTC
    assert listed["b"]["status"] == "healthy"
    assert (listed["b"]["ejected_until"], listed["b"]["ejected_seconds"]) == (None, None)
    health = (await nexus.http.get("/health")).json()
    assert (health["status"], health["backends"]["a"]["status"]) == ("degraded", "ejected")

    await sleep_then_settle(30)
    shown = (await nexus.http.get("/admin/backends")).json()["backends"][0]
    assert (shown["name"], shown["status"], shown["ejected_until"]) == ("a", "healthy", None)
    assert shown["ejections"] == 1  # not forgiven until it serves a run of requests
    a.faults.clear()
    for _ in range(RESET_AFTER_SERVED):
        assert (await nexus.http.post(CHAT, json=HELLO)).headers["x-nexus-backend"] == "a"
    assert (await nexus.http.get("/admin/backends")).json()["backends"][0]["ejections"] == 0


def test_the_cap_may_be_below_the_base() -> None:
    # Both are only checked to be positive; the cap wins.
    registry = Registry((), HealthCheckSettings(ejection_base_seconds=10, ejection_max_seconds=3))
    assert [registry.ejection_seconds(n) for n in range(3)] == [3, 3, 3]
    assert math.isfinite(registry.ejection_seconds(10**6))
