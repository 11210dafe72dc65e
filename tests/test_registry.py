"""The registry: the fleet's one owner. Changes reach subscribers, health follows probes by
the configured thresholds, a failed request takes a backend out at once (the breaker's
timing is in test_breaker.py), and a slow subscriber never holds the registry up."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_trio.config import BackendType, RoutingSettings, settings_from_mapping
from nexus_trio.errors import BackendStatus, NexusError, NoHealthyBackend
from nexus_trio.registry import (
    Backend,
    Capability,
    EngineReport,
    Health,
    LoadedModel,
    ModelInfo,
    Registry,
    RegistryEvent,
    Secret,
    api_root,
)
from nexus_trio.routing.requirements import Requirements
from nexus_trio.routing.router import plan_route


def backend(name: str, *models: str, **fields: Any) -> Backend:
    return Backend(
        name=name,
        url=f"http://{name}.test",
        type=BackendType.VLLM,
        models={m: ModelInfo(m) for m in models or ("llama3:8b",)},
        **fields,
    )


def drain(channel: trio.MemoryReceiveChannel[RegistryEvent]) -> list[RegistryEvent]:
    events = []
    while True:
        try:
            events.append(channel.receive_nowait())
        except trio.WouldBlock:
            return events


# -- membership and events ----------------------------------------------------------------------


async def test_add_and_remove_reach_every_subscriber() -> None:
    registry = Registry([backend("a")])
    first, second = registry.subscribe(), registry.subscribe()
    before = registry.backends
    registry.add(backend("b"))
    registry.remove("a")
    assert [b.name for b in before] == ["a"]  # readers keep the snapshot they took
    assert [b.name for b in registry] == ["b"]
    assert "a" not in registry
    assert "b" in registry
    assert len(registry) == 1
    for channel in (first, second):
        assert [(e.kind, e.backend) for e in drain(channel)] == [
            ("backend_added", "b"),
            ("backend_removed", "a"),
        ]


async def test_a_name_is_registered_once() -> None:
    registry = Registry([backend("a")])
    events = registry.subscribe()
    with pytest.raises(ValueError, match="already registered"):
        registry.add(backend("a"))
    assert drain(events) == []
    assert len(registry) == 1


async def test_a_subscriber_that_falls_behind_is_dropped_without_blocking() -> None:
    registry = Registry()
    slow = registry.subscribe(buffer=2)
    live = registry.subscribe(buffer=100)
    for name in "abc":  # synchronous: the registry never waits for a reader
        registry.add(backend(name))
    # The slow reader gets what fitted, then its channel ends: it knows it missed events.
    assert [slow.receive_nowait().backend for _ in range(2)] == ["a", "b"]
    with pytest.raises(trio.EndOfChannel):
        slow.receive_nowait()
    registry.add(backend("d"))
    assert [e.backend for e in drain(live)] == ["a", "b", "c", "d"]


async def test_a_subscriber_that_went_away_is_dropped() -> None:
    registry = Registry()
    gone = registry.subscribe()
    live = registry.subscribe()
    await gone.aclose()
    registry.add(backend("a"))
    registry.add(backend("b"))
    assert [e.backend for e in drain(live)] == ["a", "b"]


async def test_a_waiting_subscriber_wakes_on_a_change(nursery: trio.Nursery) -> None:
    registry = Registry()
    events = registry.subscribe()
    got: list[RegistryEvent] = []

    async def follow() -> None:
        got.append(await events.receive())

    nursery.start_soon(follow)
    await trio.testing.wait_all_tasks_blocked()
    registry.add(backend("a"))
    await trio.testing.wait_all_tasks_blocked()
    assert got == [RegistryEvent("backend_added", "a")]


# -- health ------------------------------------------------------------------------------------


Step = Literal["ok", "fail", "mark_unhealthy"]


@dataclass
class ReferenceHealth:
    """The documented rules, kept as the history of what happened."""

    failure_threshold: int
    recovery_threshold: int
    health: Health = Health.UNKNOWN
    history: str = ""  # one letter per step: o(k), f(ail), m(ark unhealthy)

    def run_of(self, letter: str) -> int:
        """How many of the latest steps in a row were ``letter``."""
        return len(self.history) - len(self.history.rstrip(letter))

    def step(self, step: Step) -> None:
        self.history += step[0]
        if step == "mark_unhealthy":
            self.health = Health.UNHEALTHY
        elif self.health is Health.UNKNOWN:  # the first probe decides
            self.health = Health.HEALTHY if step == "ok" else Health.UNHEALTHY
        elif self.health is Health.HEALTHY and self.run_of("f") >= self.failure_threshold:
            self.health = Health.UNHEALTHY
        elif self.health is Health.UNHEALTHY and self.run_of("o") >= self.recovery_threshold:
            self.health = Health.HEALTHY


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.sampled_from(["ok", "fail", "mark_unhealthy"]), max_size=30),
    failure_threshold=st.integers(1, 4),
    recovery_threshold=st.integers(1, 4),
)
def test_health_follows_probes_by_the_thresholds(
    steps: list[Step], failure_threshold: int, recovery_threshold: int
) -> None:
    b = backend("a")
    registry = Registry([b])
    events = registry.subscribe(buffer=len(steps) + 1)
    reference = ReferenceHealth(failure_threshold, recovery_threshold)
    for i, step in enumerate(steps):
        before = reference.health
        detail = f"step {i}"
        if step == "mark_unhealthy":
            registry.mark_unhealthy(b, detail)
        else:
            registry.record_probe(
                b,
                step == "ok",
                detail,
                failure_threshold=failure_threshold,
                recovery_threshold=recovery_threshold,
            )
        reference.step(step)
        assert b.health is reference.health, reference.history
        assert b.routable is (reference.health is not Health.UNHEALTHY)
        changed = [(e.kind, e.backend, e.detail) for e in drain(events)]
        if reference.health is before:
            assert changed == []
        else:
            assert changed == [("health", "a", reference.health.value)]
            assert b.health_detail == detail  # what /health shows: why it changed
    assert b.recovery_wanted.is_set() is ("mark_unhealthy" in steps)
    assert (b.last_checked is not None) is any(s != "mark_unhealthy" for s in steps)


async def test_eject_makes_a_backend_unroutable_at_once() -> None:
    flaky, steady = backend("flaky"), backend("steady", max_concurrency=1)
    registry = Registry([flaky, steady])
    for b in registry:
        registry.record_probe(b, True)
    needs = Requirements("llama3:8b")
    routing = settings_from_mapping({"routing": {"strategy": "priority"}}).routing
    assert [c.backend.name for c in plan_route(needs, registry.backends, routing).candidates] == [
        "flaky",
        "steady",
    ]

    registry.eject(flaky, "connection reset mid-stream")
    assert flaky.health is Health.HEALTHY  # the probes' verdict is their own
    assert (flaky.status, flaky.status_detail) == ("ejected", "connection reset mid-stream")
    assert flaky.recovery_wanted.is_set()  # the health task probes it now, not in 10 s
    decision = plan_route(needs, registry.backends, routing)
    assert [c.backend.name for c in decision.candidates] == ["steady"]

    steady.in_flight = 1
    with pytest.raises(NoHealthyBackend):
        plan_route(needs, registry.backends, routing)


def test_a_backend_marked_unhealthy_needs_the_full_run_of_good_probes() -> None:
    b = backend("a")
    registry = Registry([b])
    registry.record_probe(b, True, recovery_threshold=2)
    registry.record_probe(b, True, recovery_threshold=2)
    registry.mark_unhealthy(b, "said goodbye (mdns)")
    registry.record_probe(b, True, recovery_threshold=2)
    assert not b.routable  # the good probes before it was marked do not count
    registry.record_probe(b, True, recovery_threshold=2)
    assert b.health is Health.HEALTHY


def test_ttft_is_a_smoothed_average_of_sane_samples() -> None:
    b = backend("a")
    registry = Registry([b])
    for bad in (-1.0, math.nan, math.inf):
        registry.record_ttft(b, bad)
    assert b.ttft_ewma_seconds is None
    registry.record_ttft(b, 1.0)
    assert b.ttft_ewma_seconds == 1.0
    registry.record_ttft(b, 6.0)  # one slow answer moves it a fifth of the way
    assert b.ttft_ewma_seconds == pytest.approx(2.0)


# -- models, URLs and keys ---------------------------------------------------------------------


def configured(**entry: object) -> Backend:
    settings = settings_from_mapping(
        {"backends": [{"name": "gpu", "url": "http://gpu.lan:8000/v1/", "type": "vllm", **entry}]},
        environ={"GPU_KEY": "sk-gpu-0123456789abcdef"},
    )
    return Backend.from_settings(settings.backends[0], {"GPU_KEY": "sk-gpu-0123456789abcdef"})


def test_set_models_applies_the_configured_overrides() -> None:
    b = configured(
        models={
            "llama3:8b": {"context_length": 4096, "capabilities": ["vision"]},
            "qwen2:7b": {"capabilities": []},
        }
    )
    registry = Registry([b])
    events = registry.subscribe()
    reported = [
        ModelInfo("llama3:8b", "vllm", 8192, frozenset({Capability.TOOLS, Capability.JSON})),
        ModelInfo("qwen2:7b", "vllm", 32768, None),
        ModelInfo("mistral:7b", "vllm", 32768, frozenset({Capability.TOOLS})),
    ]
    registry.set_models(b, reported)
    assert b.models == {
        # context and capabilities as configured: they replace what the backend said
        "llama3:8b": ModelInfo("llama3:8b", "vllm", 4096, frozenset({Capability.VISION})),
        # capabilities only: the backend's context length stays
        "qwen2:7b": ModelInfo("qwen2:7b", "vllm", 32768, frozenset()),
        # not configured: as reported
        "mistral:7b": reported[2],
    }
    assert [(e.kind, e.detail) for e in drain(events)] == [("models", "3 models")]
    registry.set_models(b, reported)  # the same list again is no change
    assert drain(events) == []
    registry.forget_model(b, "qwen2:7b")
    assert set(b.models) == {"llama3:8b", "mistral:7b"}
    assert [(e.kind, e.detail) for e in drain(events)] == [("models", "lost qwen2:7b")]
    assert registry.model_ids() == ["llama3:8b", "mistral:7b"]


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("http://gpu.lan:8000/v1", "http://gpu.lan:8000"),
        ("http://gpu.lan:8000/v1/", "http://gpu.lan:8000"),
        ("http://gpu.lan:8000/", "http://gpu.lan:8000"),
        ("http://gpu.lan:8000", "http://gpu.lan:8000"),
        ("https://proxy.lan/llm/v1", "https://proxy.lan/llm"),
        ("http://gpu.lan:8000/v10", "http://gpu.lan:8000/v10"),
        ("http://gpu.lan:8000/apiv1", "http://gpu.lan:8000/apiv1"),
    ],
)
def test_api_root_strips_a_trailing_v1_and_slash(url: str, root: str) -> None:
    assert api_root(url) == root
    assert api_root(root) == root  # idempotent


def test_a_configured_backend_keeps_its_key_out_of_reprs() -> None:
    b = configured(api_key_env="GPU_KEY", priority=2, max_concurrency=4)
    assert b.url == "http://gpu.lan:8000"
    assert (b.priority, b.max_concurrency, b.type) == (2, 4, BackendType.VLLM)
    assert str(b.api_key) == "sk-gpu-0123456789abcdef"  # what the Authorization header needs
    assert isinstance(b.api_key, Secret)
    for text in (repr(b.api_key), repr(b), str(b), f"{[b.api_key]}"):
        assert "sk-gpu" not in text, text
    assert configured().api_key is None


def test_secret_is_still_the_string() -> None:
    key = Secret("sk-live-abc")
    assert repr(key) == "Secret('********')"
    assert key == "sk-live-abc"
    assert f"Bearer {key}" == "Bearer sk-live-abc"


# -- rosters: kept between changes, never stale -------------------------------------------------

ROSTER_MODELS = ("llama3:8b", "mistral:7b")
roster_steps = st.lists(
    st.tuples(
        st.sampled_from(
            ["probe_ok", "probe_fail", "mark_unhealthy", "eject", "served", "wait", "revive",
             "models", "forget", "checkup", "engine", "sources", "add", "remove", "start", "finish",
             "ttft"]
        ),
        st.integers(0, 3),  # which backend
        st.integers(0, 3),  # a number the step uses
    ),
    max_size=30,
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(steps=roster_steps, strategy=st.sampled_from(["smart", "least_busy", "priority"]))
def test_routing_on_kept_rosters_is_routing_on_the_fleet_as_it_is(
    steps: list[tuple[str, int, int]], strategy: str
) -> None:
    """Every change that matters to routing reaches the registry's rosters: after any run
    of changes, a decision on them is the decision on the fleet read afresh. Ejections end
    by themselves (`Registry.run_ejections`), on a virtual clock that "wait" moves on."""
    routing = settings_from_mapping({"routing": {"strategy": strategy}}).routing

    async def run() -> None:
        registry = Registry(
            [backend(f"b{i}", *ROSTER_MODELS, priority=i % 2, max_concurrency=2) for i in range(3)]
        )
        async with trio.open_nursery() as nursery:
            for b in registry:
                nursery.start_soon(registry.run_ejections, b)
            for added, (kind, which, number) in enumerate(steps):
                if kind == "add":
                    registry.add(new := backend(f"n{added}", *ROSTER_MODELS[: 1 + number % 2]))
                    nursery.start_soon(registry.run_ejections, new)
                elif kind == "wait":
                    await trio.sleep(number * 2.5)  # ejections last 5 s, then 10 s, ...
                elif registry.backends:
                    change(
                        registry, kind, registry.backends[which % len(registry.backends)], number
                    )
                for model in ROSTER_MODELS:
                    needs = Requirements(model, context_tokens=1500)
                    for turn in range(3):
                        kept = outcome(needs, registry, routing, turn, rosters=registry.roster)
                        assert kept == outcome(needs, registry, routing, turn), (kind, model, turn)
            nursery.cancel_scope.cancel()

    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))


def change(registry: Registry, kind: str, b: Backend, number: int) -> None:
    """One change to the fleet, as the tasks that own it make them."""
    from nexus_trio.backends.checkup import Checkup

    if kind == "probe_ok":
        registry.record_probe(b, True)
    elif kind == "probe_fail":
        registry.record_probe(b, False, "refused")
    elif kind == "mark_unhealthy":
        registry.mark_unhealthy(b, "said goodbye")
    elif kind == "eject":
        registry.eject(b, "reset")
    elif kind == "served":
        registry.request_succeeded(b)
    elif kind == "revive":
        registry.revive(b)
    elif kind == "models":
        registry.set_models(b, [ModelInfo(m, context_length=1000 * number or None)
                                for m in ROSTER_MODELS[: 1 + number % 2]])  # fmt: skip
    elif kind == "forget":
        registry.forget_model(b, ROSTER_MODELS[number % 2])
    elif kind == "checkup":
        loaded = tuple(LoadedModel(m, size_bytes=number) for m in ROSTER_MODELS[: number % 3])
        engine = EngineReport(loaded=loaded) if number else None
        registry.record_checkup(
            b, Checkup([ModelInfo(m) for m in b.models], number or None, engine)
        )
    elif kind == "engine":  # what the server reports of its load (None: the read failed)
        report = EngineReport(running=number, waiting=number % 2) if number else None
        registry.record_engine_report(b, report)
    elif kind == "sources":
        registry.set_sources(b, set() if number == 0 else {"config"})
    elif kind == "remove":
        registry.remove(b.name)
    elif kind == "start":
        b.in_flight += 1  # what the proxy does; rosters read the load live
    elif kind == "finish":
        b.in_flight = max(0, b.in_flight - 1)
    else:
        registry.record_ttft(b, number / 10)


def outcome(
    needs: Requirements, registry: Registry, routing: RoutingSettings, turn: int, **kw: Any
) -> object:
    """The decision, or the class of the error that says why there is none."""
    try:
        return plan_route(needs, registry.backends, routing, turn=turn, **kw)
    except NexusError as exc:
        return type(exc)


# -- slots: the one writer of in_flight ----------------------------------------------------


async def test_a_slot_counts_once_whatever_happens() -> None:
    registry = Registry([backend("a", "m")])
    a = registry.get("a")
    first = registry.occupy(a)
    with registry.occupy(a):
        assert a.in_flight == 2
    assert a.in_flight == 1
    first.release()
    first.release()  # a second release (a finally after an early one) changes nothing
    assert a.in_flight == 0
    with pytest.raises(RuntimeError), registry.occupy(a):
        raise RuntimeError("the attempt failed")
    assert a.in_flight == 0


async def test_a_released_slot_wakes_whoever_waits_for_one(nursery: trio.Nursery) -> None:
    registry = Registry([backend("a", "m"), backend("b", "m")])
    held = registry.occupy(registry.get("b"))
    woken = trio.Event()

    async def wait() -> None:
        await registry.wait_slot_freed()
        woken.set()

    nursery.start_soon(wait)
    await trio.testing.wait_all_tasks_blocked()
    with registry.occupy(registry.get("a")):
        pass
    await trio.testing.wait_all_tasks_blocked()
    assert woken.is_set()
    held.release()


async def test_what_a_request_teaches_reaches_the_registry_through_its_methods() -> None:
    registry = Registry([backend("a", "m", "n")])
    a = registry.get("a")
    registry.record_ttft(a, 0.5)
    assert a.ttft_ewma_seconds == 0.5
    registry.request_failed(a, "n", BackendStatus("a", 404, "model 'n' not found"))
    assert set(a.models) == {"m"}  # it lost that model, and stays in rotation
    assert a.routable
    registry.request_failed(a, "m", BackendStatus("a", 500))
    assert not a.routable
