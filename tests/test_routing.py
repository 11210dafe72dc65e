"""Routing: which backends may serve a request, in which order, and why not when none can.

The properties compare `plan_route` with a small reference written here from the rules a
user relies on (routable, not saturated, serves the model, has what the request needs),
over random fleets, requests and routing settings.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_trio.config import (
    MAX_ALIAS_HOPS,
    BackendType,
    RoutingSettings,
    Strategy,
    settings_from_mapping,
)
from nexus_trio.errors import (
    ContextLengthExceeded,
    ModelCannotServe,
    ModelNotFound,
    NexusError,
    NoHealthyBackend,
    RequestError,
)
from nexus_trio.registry import Backend, Capability, Health, ModelInfo
from nexus_trio.routing.requirements import Requirements
from nexus_trio.routing.router import RouteDecision, nearest_models, plan_route, rank

MODELS = ("llama3:8b", "llama3:70b", "mistral:7b", "qwen2.5-coder:7b")
UNKNOWN = ("llama3:7b", "gpt-4o", "nope")
ALIASES = ("fast", "house", "coder")  # never model names
CONTEXTS = (2048, 8192, 32768, 131072)

PROPERTY = settings(max_examples=75, deadline=None)


# -- building fleets, requests and settings -----------------------------------------------------


def backend(
    name: str,
    models: dict[str, ModelInfo] | Sequence[str] = ("llama3:8b",),
    **fields: Any,
) -> Backend:
    if not isinstance(models, dict):
        models = {m: ModelInfo(m) for m in models}
    return Backend(
        name=name, url=f"http://{name}.test", type=BackendType.GENERIC, models=models, **fields
    )


def routing_settings(**routing: Any) -> RoutingSettings:
    return settings_from_mapping({"routing": routing}).routing


# Strategies built once: building them inside a composite costs more than drawing from them.
context_lengths = st.none() | st.sampled_from(CONTEXTS) | st.integers(1, 10**6)
capability_sets = st.none() | st.frozensets(st.sampled_from(Capability))
served_models = st.lists(st.sampled_from(MODELS), unique=True, min_size=1)
priorities = st.integers(0, 5)
max_concurrencies = st.none() | st.integers(1, 4)
healths = st.sampled_from((*Health, Health.HEALTHY))
in_flights = st.integers(0, 4)
ttfts = st.none() | st.floats(0, 10)


@st.composite
def backends(
    draw: st.DrawFn, name: str, served: st.SearchStrategy[list[str]] = served_models
) -> Backend:
    models = {
        m: ModelInfo(m, context_length=draw(context_lengths), capabilities=draw(capability_sets))
        for m in draw(served)
    }
    return backend(
        name,
        models,
        priority=draw(priorities),
        max_concurrency=draw(max_concurrencies),
        health=draw(healths),
        in_flight=draw(in_flights),
        ttft_ewma_seconds=draw(ttfts),
    )


rarely = st.sampled_from([False, False, False, True])  # most requests need no capability
fleets = st.integers(0, 8).flatmap(lambda n: st.tuples(*(backends(f"b{i}") for i in range(n))))
# For the order of candidates: every backend serves the requested model, so most are eligible.
CROWD_MODEL = MODELS[0]
crowds = st.integers(2, 8).flatmap(
    lambda n: st.tuples(*(backends(f"b{i}", st.just([CROWD_MODEL])) for i in range(n)))
)
crowd_requirements = st.builds(Requirements, model=st.just(CROWD_MODEL), vision=rarely)

requirements = st.builds(
    Requirements,
    model=st.sampled_from(MODELS * 3 + UNKNOWN + ALIASES),
    stream=st.booleans(),
    vision=rarely,
    tools=rarely,
    json=rarely,
    context_tokens=st.sampled_from((0, 50, *CONTEXTS)) | st.integers(0, 10**6),
)


any_strategy = st.sampled_from(Strategy)


@st.composite
def routings(
    draw: st.DrawFn, strategies: st.SearchStrategy[Strategy] = any_strategy
) -> RoutingSettings:
    # An alias points at a model or at a later alias: acyclic, at most MAX_ALIAS_HOPS hops.
    aliases = {
        alias: draw(st.sampled_from(MODELS + ALIASES[i + 1 :]))
        for i, alias in enumerate(ALIASES)
        if draw(st.booleans())
    }
    # Fallbacks may name aliases, repeat a name, or come back to the model through an alias.
    fallbacks = {
        model: draw(st.lists(st.sampled_from([m for m in MODELS + ALIASES if m != model]),
                             min_size=1, max_size=3))
        for model in MODELS
        if draw(st.booleans())
    }  # fmt: skip
    strategy = draw(strategies)
    return routing_settings(strategy=strategy.value, aliases=aliases, fallbacks=fallbacks)


# -- the reference ------------------------------------------------------------------------------


def resolve(routing: RoutingSettings, name: str) -> str:
    for _ in range(MAX_ALIAS_HOPS):
        if name not in routing.aliases:
            break
        name = routing.aliases[name]
    return name


def chain(routing: RoutingSettings, needs: Requirements) -> list[str]:
    """The requested model after aliases, then its fallbacks in the configured order."""
    model = resolve(routing, needs.model)
    names = [model, *(resolve(routing, f) for f in routing.fallbacks.get(model, ()))]
    return list(dict.fromkeys(names))  # each model once: never retry a backend that failed


def shortfalls(info: ModelInfo, needs: Requirements) -> set[str]:
    """What the model on this backend is known to lack for the request (unknown = has it)."""
    caps = info.capabilities
    missing = {
        want
        for want in ("vision", "tools", "json")
        if getattr(needs, want) and caps is not None and Capability(want) not in caps
    }
    if info.context_length is not None and needs.context_tokens > info.context_length:
        missing.add("context")
    # The kind of work: an embeddings request needs a model that embeds; any other one a
    # model not known to be embedding-only (it embeds and does not complete).
    if needs.embedding and caps is not None and Capability.EMBEDDING not in caps:
        missing.add("embedding")
    embeds_only = caps is not None and Capability.COMPLETION not in caps
    if not needs.embedding and embeds_only and Capability.EMBEDDING in caps:
        missing.add("embedding-only")
    return missing


def up(b: Backend) -> bool:
    return b.health in (Health.HEALTHY, Health.UNKNOWN)


def busy(b: Backend) -> bool:
    return b.max_concurrency is not None and b.in_flight >= b.max_concurrency


def eligible(b: Backend, model: str, needs: Requirements) -> bool:
    return model in b.models and up(b) and not busy(b) and not shortfalls(b.models[model], needs)


def expected_refusal(
    needs: Requirements, fleet: Sequence[Backend], names: Sequence[str]
) -> type[NexusError] | tuple[type[NexusError], ...]:
    """The error class a client should get when no model in ``names`` has an eligible
    backend: the first model that some backend serves decides it."""
    for name in names:
        serving = [b for b in fleet if name in b.models]
        if serving:
            break
    else:
        return ModelNotFound
    alive = [b for b in serving if up(b)]
    if not alive:
        return NoHealthyBackend
    capable = [b for b in alive if not shortfalls(b.models[name], needs)]
    if capable:  # at max_concurrency, or they would be eligible: retrying will do
        return NoHealthyBackend
    lacks = [shortfalls(b.models[name], needs) for b in alive]
    if all(s == {"context"} for s in lacks):
        return ContextLengthExceeded
    if not any("context" in s for s in lacks):
        return ModelCannotServe
    return (ContextLengthExceeded, ModelCannotServe)


def route(
    needs: Requirements, fleet: Sequence[Backend], routing: RoutingSettings, turn: int = 0
) -> RouteDecision | NexusError:
    try:
        return plan_route(needs, fleet, routing, turn=turn)
    except NexusError as exc:
        return exc


# -- properties ---------------------------------------------------------------------------------


@PROPERTY
@given(needs=requirements, fleet=fleets, routing=routings(), turn=st.integers(0, 20))
def test_never_routes_where_the_request_cannot_be_served(
    needs: Requirements, fleet: tuple[Backend, ...], routing: RoutingSettings, turn: int
) -> None:
    decision = route(needs, fleet, routing, turn)
    if isinstance(decision, NexusError):
        return
    names = chain(routing, needs)
    for candidate in decision.candidates:
        b = candidate.backend
        assert candidate.model in names
        assert candidate.model in b.models, "does not serve the model"
        assert b.health is not Health.UNHEALTHY
        assert not busy(b), f"{b.in_flight} in flight, max {b.max_concurrency}"
        assert not shortfalls(b.models[candidate.model], needs)
        assert candidate.reason
        assert candidate.reason.isascii()


@PROPERTY
@given(needs=requirements, fleet=fleets, routing=routings(), turn=st.integers(0, 20))
def test_every_eligible_backend_is_a_candidate_once_in_chain_order(
    needs: Requirements, fleet: tuple[Backend, ...], routing: RoutingSettings, turn: int
) -> None:
    names = chain(routing, needs)
    groups = [[b.name for b in fleet if eligible(b, name, needs)] for name in names]
    decision = route(needs, fleet, routing, turn)
    if not any(groups):
        assert isinstance(decision, NexusError)
        return
    assert isinstance(decision, RouteDecision)
    assert decision.requested == needs.model
    assert decision.model == names[0]
    got = [(c.model, c.backend.name) for c in decision.candidates]
    # Each model's candidates form one run, in chain order, holding each eligible backend once.
    start = 0
    for name, group in zip(names, groups, strict=True):
        run = got[start : start + len(group)]
        assert {m for m, _ in run} <= {name}
        assert Counter(n for _, n in run) == Counter(group)
        start += len(group)
    assert start == len(got)


@PROPERTY
@given(needs=requirements, fleet=fleets, routing=routings(), turn=st.integers(0, 20))
def test_fallbacks_come_after_the_model_and_say_so(
    needs: Requirements, fleet: tuple[Backend, ...], routing: RoutingSettings, turn: int
) -> None:
    decision = route(needs, fleet, routing, turn)
    if isinstance(decision, NexusError):
        return
    primary = chain(routing, needs)[0]
    kinds = [c.fallback_from is not None for c in decision.candidates]
    assert kinds == sorted(kinds), "a fallback came before a candidate of the model"
    for candidate in decision.candidates:
        if candidate.fallback_from is None:
            assert candidate.model == primary
        else:
            assert candidate.fallback_from == needs.model
            assert candidate.model != primary
            assert candidate.reason.startswith("fallback:")


@PROPERTY
@given(needs=requirements, fleet=fleets, routing=routings(), turn=st.integers(0, 20))
def test_refusals_say_why(
    needs: Requirements, fleet: tuple[Backend, ...], routing: RoutingSettings, turn: int
) -> None:
    names = chain(routing, needs)
    decision = route(needs, fleet, routing, turn)
    servable = any(eligible(b, name, needs) for b in fleet for name in names)
    if servable:
        assert isinstance(decision, RouteDecision)
        return
    assert isinstance(decision, NexusError)
    assert decision.message
    expected = expected_refusal(needs, fleet, names)
    assert isinstance(decision, expected), (type(decision), expected)
    if isinstance(decision, NoHealthyBackend):
        assert decision.status == 503
        (name, value), *_ = decision.headers()
        assert name == "retry-after"
        assert int(value) > 0
    elif isinstance(decision, ModelNotFound):
        assert decision.status == 404
        assert repr(needs.model) in decision.message
    else:
        assert isinstance(decision, ModelCannotServe | ContextLengthExceeded)
        assert decision.status == 400


def primary_candidates(decision: RouteDecision) -> list[Backend]:
    return [c.backend for c in decision.candidates if c.fallback_from is None]


@PROPERTY
@given(
    needs=crowd_requirements,
    fleet=crowds,
    routing=routings(st.just(Strategy.PRIORITY)),
    turn=st.integers(0, 20),
)
def test_priority_prefers_the_lowest_priority_number(
    needs: Requirements, fleet: tuple[Backend, ...], routing: RoutingSettings, turn: int
) -> None:
    decision = route(needs, fleet, routing, turn)
    if isinstance(decision, RouteDecision):
        priorities = [b.priority for b in primary_candidates(decision)]
        assert priorities == sorted(priorities)


@PROPERTY
@given(
    needs=crowd_requirements,
    fleet=crowds,
    routing=routings(st.just(Strategy.LEAST_BUSY)),
    turn=st.integers(0, 20),
)
def test_least_busy_starts_with_the_least_loaded(
    needs: Requirements, fleet: tuple[Backend, ...], routing: RoutingSettings, turn: int
) -> None:
    decision = route(needs, fleet, routing, turn)
    if isinstance(decision, RouteDecision) and (ranked := primary_candidates(decision)):
        loads = [b.in_flight / (b.max_concurrency or 1) for b in ranked]
        assert loads[0] == min(loads)


@PROPERTY
@given(
    needs=crowd_requirements,
    fleet=crowds,
    routing=routings(st.just(Strategy.SMART)),
    turn=st.integers(0, 20),
)
def test_smart_keeps_priority_tiers_then_load(
    needs: Requirements, fleet: tuple[Backend, ...], routing: RoutingSettings, turn: int
) -> None:
    decision = route(needs, fleet, routing, turn)
    if isinstance(decision, RouteDecision):
        keys = [(b.priority, b.load) for b in primary_candidates(decision)]
        assert keys == sorted(keys)


@PROPERTY
@given(needs=crowd_requirements, fleet=crowds, routing=routings(st.just(Strategy.ROUND_ROBIN)))
def test_round_robin_puts_each_eligible_backend_first_once_per_round(
    needs: Requirements, fleet: tuple[Backend, ...], routing: RoutingSettings
) -> None:
    model = chain(routing, needs)[0]
    expected = sorted(b.name for b in fleet if eligible(b, model, needs))
    firsts = []
    for turn in range(len(expected)):
        decision = route(needs, fleet, routing, turn)
        assert isinstance(decision, RouteDecision)
        firsts.append(decision.candidates[0].backend.name)
    assert sorted(firsts) == expected


def snapshot(fleet: Sequence[Backend]) -> list[dict[str, object]]:
    out = []
    for b in fleet:
        fields = {f.name: getattr(b, f.name) for f in dataclasses.fields(b)}
        fields["models"] = (id(b.models), dict(b.models))
        fields["recovery_wanted"] = b.recovery_wanted.is_set()
        out.append(fields)
    return out


@PROPERTY
@given(needs=requirements, fleet=fleets, routing=routings(), turn=st.integers(0, 20))
def test_plan_route_is_pure(
    needs: Requirements, fleet: tuple[Backend, ...], routing: RoutingSettings, turn: int
) -> None:
    before = snapshot(fleet)
    global_random = random.getstate()
    first = route(needs, fleet, routing, turn)
    assert snapshot(fleet) == before
    assert random.getstate() == global_random
    again = route(needs, fleet, routing, turn)  # same inputs, same answer (even "random")
    if isinstance(first, RouteDecision):
        assert again == first
    else:
        assert type(again) is type(first)
        assert str(again) == str(first)


# -- examples a user would recognise --------------------------------------------------------------


def test_unknown_model_suggests_the_nearest() -> None:
    fleet = [backend("a", ["llama3:8b", "mistral:7b"])]
    with pytest.raises(ModelNotFound) as caught:
        plan_route(Requirements("llama3:7b"), fleet, RoutingSettings())
    assert caught.value.status == 404
    assert caught.value.param == "model"
    assert "Did you mean 'llama3:8b'" in caught.value.message  # the closest first
    assert nearest_models("llama3:7b", ["llama3:8b", "qwen2:0.5b"]) == ["llama3:8b"]


def test_unknown_model_far_from_everything_points_at_the_model_list() -> None:
    with pytest.raises(ModelNotFound, match=r"GET /v1/models"):
        plan_route(Requirements("gpt-4o"), [backend("a", ["llama3:8b"])], RoutingSettings())


def test_all_unhealthy_is_503_with_retry_after() -> None:
    fleet = [backend("a", health=Health.UNHEALTHY, health_detail="connection refused")]
    with pytest.raises(NoHealthyBackend) as caught:
        plan_route(Requirements("llama3:8b"), fleet, RoutingSettings())
    assert caught.value.status == 503
    assert ("retry-after", "5") in caught.value.headers()
    assert "connection refused" in caught.value.message
    down = backend("a", health=Health.UNHEALTHY, ejected_until=12.0, ejection_reason="HTTP 500")
    with pytest.raises(NoHealthyBackend) as caught:
        plan_route(Requirements("llama3:8b"), [down], RoutingSettings())
    assert "a: ejected after a failed request (HTTP 500)" in caught.value.message


def test_the_breaker_yields_when_it_has_ejected_every_backend_of_the_model() -> None:
    """Ejected but well by their probes: served by those rather than by nobody."""
    a = backend("a", health=Health.HEALTHY, ejected_until=12.0, ejection_reason="HTTP 500")
    b = backend("b", health=Health.HEALTHY, ejected_until=15.0, ejection_reason="HTTP 500")
    gone = backend("c", health=Health.UNHEALTHY, ejected_until=15.0)
    decision = plan_route(Requirements("llama3:8b"), [a, b, gone], RoutingSettings())
    assert {c.backend.name for c in decision.candidates} == {"a", "b"}
    well = backend("d")
    decision = plan_route(Requirements("llama3:8b"), [a, well], RoutingSettings())
    assert [c.backend.name for c in decision.candidates] == ["d"]  # in rotation: only it


def test_all_saturated_is_503_with_a_short_retry_after() -> None:
    fleet = [backend("a", max_concurrency=2, in_flight=2)]
    with pytest.raises(NoHealthyBackend) as caught:
        plan_route(Requirements("llama3:8b"), fleet, RoutingSettings())
    assert ("retry-after", "1") in caught.value.headers()
    assert "max_concurrency" in caught.value.message


def test_images_for_a_text_only_model_are_refused() -> None:
    text_only = {"llama3:8b": ModelInfo("llama3:8b", capabilities=frozenset({Capability.TOOLS}))}
    with pytest.raises(ModelCannotServe) as caught:
        plan_route(Requirements("llama3:8b", vision=True), [backend("a", text_only)],
                   RoutingSettings())  # fmt: skip
    assert caught.value.status == 400
    assert "images" in caught.value.message


def test_unknown_capabilities_are_assumed() -> None:
    decision = plan_route(
        Requirements("llama3:8b", vision=True, tools=True, json=True, context_tokens=10**6),
        [backend("a")],
        RoutingSettings(),
    )
    assert [c.backend.name for c in decision.candidates] == ["a"]


def test_too_long_a_request_is_refused_with_the_limit() -> None:
    small = {"llama3:8b": ModelInfo("llama3:8b", context_length=8192)}
    with pytest.raises(ContextLengthExceeded) as caught:
        plan_route(Requirements("llama3:8b", context_tokens=8193), [backend("a", small)],
                   RoutingSettings())  # fmt: skip
    assert caught.value.status == 400
    assert caught.value.code == "context_length_exceeded"
    assert "8192" in caught.value.message
    exact = plan_route(Requirements("llama3:8b", context_tokens=8192), [backend("a", small)],
                       RoutingSettings())  # fmt: skip
    assert exact.candidates


def test_aliases_resolve_up_to_three_hops() -> None:
    routing = routing_settings(aliases={"gpt-4": "big", "big": "bigger", "bigger": "llama3:70b"})
    decision = plan_route(Requirements("gpt-4"), [backend("a", ["llama3:70b"])], routing)
    assert decision.requested == "gpt-4"
    assert decision.model == "llama3:70b"
    (candidate,) = decision.candidates
    assert candidate.model == "llama3:70b"
    assert candidate.fallback_from is None
    assert candidate.reason.startswith("alias:gpt-4->llama3:70b;")


def test_a_pattern_alias_serves_names_nobody_serves_and_leaves_served_names_alone() -> None:
    routing = routing_settings(aliases={"*": "llama3:70b", "claude-*": "qwen3-coder:30b"})
    fleet = [backend("a", ["llama3:70b", "llama3:8b"]), backend("b", ["qwen3-coder:30b"])]
    claude = plan_route(Requirements("claude-sonnet-4-5-20250929"), fleet, routing)
    assert claude.model == "qwen3-coder:30b"
    assert claude.candidates[0].reason.startswith(
        "alias:claude-sonnet-4-5-20250929->qwen3-coder:30b;"
    )
    assert plan_route(Requirements("gpt-4o"), fleet, routing).model == "llama3:70b"
    # A model some backend serves is never redirected by a pattern, even the catch-all.
    assert plan_route(Requirements("llama3:8b"), fleet, routing).model == "llama3:8b"
    assert plan_route(Requirements("qwen3-coder:30b"), fleet, routing).model == "qwen3-coder:30b"


def test_unknown_model_suggestions_never_offer_a_pattern() -> None:
    routing = routing_settings(aliases={"claude-*": "nobody-serves-this"})
    with pytest.raises(ModelNotFound) as info:
        plan_route(Requirements("claude-x"), [backend("a", ["claude-y"])], routing)
    assert "*" not in info.value.message


def test_fallback_serves_when_the_model_has_no_eligible_backend() -> None:
    routing = routing_settings(fallbacks={"llama3:70b": ["llama3:8b"]})
    fleet = [
        backend("big", ["llama3:70b"], health=Health.UNHEALTHY),
        backend("small", ["llama3:8b"]),
    ]
    decision = plan_route(Requirements("llama3:70b"), fleet, routing)
    (candidate,) = decision.candidates
    assert candidate.backend.name == "small"
    assert candidate.model == "llama3:8b"
    assert candidate.fallback_from == "llama3:70b"
    assert candidate.reason.startswith("fallback:llama3:70b->llama3:8b;")


def test_fallback_of_an_alias_names_the_alias_the_client_used() -> None:
    routing = routing_settings(
        aliases={"house": "llama3:70b"}, fallbacks={"llama3:70b": ["llama3:8b"]}
    )
    fleet = [backend("big", ["llama3:70b"]), backend("small", ["llama3:8b"])]
    decision = plan_route(Requirements("house"), fleet, routing)
    assert [(c.backend.name, c.fallback_from) for c in decision.candidates] == [
        ("big", None),
        ("small", "house"),
    ]


def test_higher_priority_healthy_backend_wins_over_rotation() -> None:
    fleet = [backend("spare", priority=2), backend("main", priority=0), backend("down",
             priority=0, health=Health.UNHEALTHY)]  # fmt: skip
    routing = routing_settings(strategy="priority")
    for turn in range(5):
        decision = plan_route(Requirements("llama3:8b"), fleet, routing, turn=turn)
        assert [c.backend.name for c in decision.candidates] == ["main", "spare"]


def test_rank_of_nothing_is_nothing() -> None:
    for strategy in Strategy:
        assert rank([], strategy, turn=3) is None


# -- regressions: these failed before router fixes made while this file was written ----------


def test_busy_capable_backend_is_not_reported_as_incapable() -> None:
    vision = {"llava:7b": ModelInfo("llava:7b", capabilities=frozenset({Capability.VISION}))}
    text = {"llava:7b": ModelInfo("llava:7b", capabilities=frozenset())}
    fleet = [
        backend("gpu", vision, max_concurrency=1, in_flight=1),
        backend("cpu", text),
    ]
    # The request is fine; the one backend that can take it is busy: retry, not 400.
    with pytest.raises(NoHealthyBackend) as caught:
        plan_route(Requirements("llava:7b", vision=True), fleet, RoutingSettings())
    assert ("retry-after", "1") in caught.value.headers()


def test_context_refusal_never_states_a_limit_the_request_fits() -> None:
    fleet = [
        backend("wide", {"m": ModelInfo("m", context_length=100_000, capabilities=frozenset())}),
        backend("seeing", {"m": ModelInfo("m", context_length=1000,
                                          capabilities=frozenset({Capability.VISION}))}),
    ]  # fmt: skip
    with pytest.raises(RequestError) as caught:
        plan_route(Requirements("m", vision=True, context_tokens=5000), fleet, RoutingSettings())
    assert "100000" not in caught.value.message


@pytest.mark.parametrize(
    "routing",
    [
        {"aliases": {"house": "llama3:8b"}, "fallbacks": {"llama3:8b": ["house"]}},
        {"fallbacks": {"llama3:8b": ["mistral:7b", "mistral:7b"]}},
    ],
)
def test_no_backend_model_pair_is_a_candidate_twice(routing: dict[str, Any]) -> None:
    fleet = [backend("a", ["llama3:8b", "mistral:7b"])]
    decision = plan_route(Requirements("llama3:8b"), fleet, routing_settings(**routing))
    pairs = [(c.backend.name, c.model) for c in decision.candidates]
    assert len(pairs) == len(set(pairs)), pairs


def test_candidates_read_in_any_order_are_the_same_candidates() -> None:
    fleet = [backend(f"b{i}", priority=i % 3, in_flight=i % 2) for i in range(7)]
    routing = routing_settings(fallbacks={"llama3:8b": ["mistral:7b"]})
    fleet.append(backend("m", ["mistral:7b"]))
    whole = tuple(plan_route(Requirements("llama3:8b"), fleet, routing, turn=3).candidates)
    assert len(whole) == 8
    partly = plan_route(Requirements("llama3:8b"), fleet, routing, turn=3).candidates
    assert partly[1] == whole[1]  # the first two made, the rest not yet
    assert list(partly) == list(whole)
    assert partly[-1].backend.name == "m"
    assert partly[-1].fallback_from == "llama3:8b"
    assert tuple(partly[2:4]) == whole[2:4]
    assert len(partly) == 8
    assert partly == whole
