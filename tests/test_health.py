"""Health checks on trio's autojump clock: thresholds, passive ejection, half-open probes.

The backends here are answered by an `httpx.MockTransport` (the adapter seam):
the clock is virtual, so a probe that hangs must not be a real socket.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from nexus_trio.backends.checkup import parse_llamacpp_props
from nexus_trio.backends.engine import parse_ollama_ps
from nexus_trio.config import BackendType, HealthCheckSettings
from nexus_trio.health import run_health
from nexus_trio.registry import Backend, Health, Registry

SETTINGS = HealthCheckSettings(
    interval_seconds=10, timeout_seconds=5, failure_threshold=3, recovery_threshold=2
)
MODELS = {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "x"}]}


class Fleet:
    """Scripted backends: each host answers, fails or hangs, and every probe is recorded."""

    def __init__(self) -> None:
        self.mode: dict[str, str] = defaultdict(lambda: "ok")
        self.probes: dict[str, list[float]] = defaultdict(list)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host.removesuffix(".test")
        self.probes[host].append(trio.current_time())
        mode = self.mode[host]
        if mode == "hang":
            await trio.sleep_forever()
        if mode == "fail":
            return httpx.Response(500, json={"error": {"message": "down"}})
        return httpx.Response(200, json=MODELS)


async def start(
    nursery: trio.Nursery, fleet: Fleet, *names: str, settings: HealthCheckSettings = SETTINGS
) -> Registry:
    registry = Registry(
        (Backend(n, f"http://{n}.test", BackendType.GENERIC) for n in names), settings
    )
    client = httpx.AsyncClient(transport=httpx.MockTransport(fleet.handle))
    await nursery.start(run_health, registry, client, settings)
    return registry


async def test_first_round_decides_then_thresholds_hold(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fleet = Fleet()
    fleet.mode["down"] = "fail"
    registry = await start(nursery, fleet, "up", "down")
    assert registry.get("up").health is Health.HEALTHY
    assert registry.get("down").health is Health.UNHEALTHY
    assert list(registry.get("up").models) == ["m"]

    fleet.mode["up"] = "fail"
    for failures in (1, 2):
        await trio.sleep(SETTINGS.interval_seconds * 1.1)
        assert len(fleet.probes["up"]) == 1 + failures
        assert registry.get("up").health is Health.HEALTHY  # below the threshold
    await trio.sleep(SETTINGS.interval_seconds * 1.1)
    assert registry.get("up").health is Health.UNHEALTHY  # the third failure in a row


async def test_failed_request_ejects_at_once_then_half_open_probes_bring_it_back(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fleet = Fleet()
    registry = await start(nursery, fleet, "a")
    backend = registry.get("a")
    fleet.mode["a"] = "fail"
    ejected_at = trio.current_time()
    registry.eject(backend, "HTTP 500 on a request")  # what the proxy does
    assert not backend.routable  # one failed request is enough: no waiting for probes

    await trio.sleep(4)
    gaps = [t - ejected_at for t in fleet.probes["a"][1:]]
    # Half-open probes back off from half a second: 0.5, then 1, then 2 s later.
    assert gaps[:3] == pytest.approx([0.5, 1.5, 3.5])
    assert backend.health is Health.UNHEALTHY  # the first failed probe, during the ejection
    assert not backend.routable

    fleet.mode["a"] = "ok"
    await trio.sleep(SETTINGS.interval_seconds * 2)
    assert backend.health is Health.HEALTHY  # after recovery_threshold good probes
    assert backend.routable  # and its ejection is long over


async def test_a_hanging_probe_delays_nobody_else(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fleet = Fleet()
    registry = await start(nursery, fleet, "hangs", "fine")
    fleet.mode["hangs"] = "hang"
    await trio.sleep(SETTINGS.interval_seconds * 6)
    # "fine" kept its rhythm (one probe per ~interval) while "hangs" timed out each time.
    assert len(fleet.probes["fine"]) >= 6
    assert registry.get("fine").health is Health.HEALTHY
    assert registry.get("hangs").health is Health.UNHEALTHY
    assert registry.get("hangs").health_detail.startswith("no answer within 5")


async def test_checks_off_still_recovers_an_ejected_backend(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fleet = Fleet()
    off = HealthCheckSettings(enabled=False, recovery_threshold=1)
    registry = await start(nursery, fleet, "a", settings=off)
    await trio.sleep(100)
    assert len(fleet.probes["a"]) == 1  # the first round only: no periodic checks
    registry.eject(registry.get("a"), "HTTP 502 on a request")
    await trio.sleep(1)
    assert len(fleet.probes["a"]) == 2  # probed during the ejection all the same
    assert not registry.get("a").routable
    await trio.sleep(off.ejection_base_seconds)
    assert registry.get("a").routable


async def test_backends_added_later_are_watched_and_removed_ones_are_not(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    fleet = Fleet()
    registry = await start(nursery, fleet, "a")
    registry.add(Backend("late", "http://late.test", BackendType.GENERIC))
    await trio.testing.wait_all_tasks_blocked()
    assert registry.get("late").health is Health.HEALTHY  # checked as soon as it arrived
    registry.remove("a")
    probes = len(fleet.probes["a"])
    await trio.sleep(SETTINGS.interval_seconds * 3)
    assert len(fleet.probes["a"]) == probes
    assert len(fleet.probes["late"]) >= 3


def test_native_answers_are_read() -> None:
    ps = {"models": [{"name": "llama3:8b", "size_vram": 5}, {"name": "qwen:7b"}, {"x": 1}]}
    assert parse_ollama_ps(ps).warm_models == {"llama3:8b", "qwen:7b"}
    props: dict[str, Any] = {"default_generation_settings": {"n_ctx": 2048}, "total_slots": 2}
    assert parse_llamacpp_props(props) == (2048, 2)
    assert parse_llamacpp_props({"total_slots": True}) == (None, None)
    with pytest.raises(ValueError, match="models"):
        parse_ollama_ps({"nope": []})
