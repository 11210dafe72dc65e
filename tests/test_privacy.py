"""Privacy zones: work that must stay local never reaches a cloud backend.

A request is local-only with ``X-Nexus-Privacy: local`` (or a local-only key). Every
path that picks a backend — the plan, a fallback model, a hedge, a mid-stream
continuation, a failover's re-plan — leaves the cloud out for it; when only cloud
backends could serve it, it fails closed with 503 ``no_local_backend``.

In each test the cloud backend is the one routing likes best (priority 1), so a
request that could reach it would.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_trio.config import BackendType, Zone, settings_from_mapping
from nexus_trio.errors import NoHealthyBackend, NoLocalBackend
from nexus_trio.observe.views import backend_view
from nexus_trio.registry import Backend, Health, ModelInfo
from nexus_trio.routing.requirements import Requirements
from nexus_trio.routing.router import RouteDecision, plan_route
from nexus_trio.testing import Flavor
from nexus_trio.testing._text import expected_answer

from helpers import sim

LOCAL = {"X-Nexus-Privacy": "local"}
MESSAGES: list[Any] = [{"role": "user", "content": "Summarise our private notes, please."}]
ANSWER = expected_answer("llama3:8b", MESSAGES)
CLOUD = {"zone": "cloud", "priority": 1}  # the backend routing would choose first
# Local backends rank after the cloud one; "a" before "b".
OPTIONS: dict[str, dict[str, Any]] = {"cloud": CLOUD, "a": {"priority": 2}, "b": {"priority": 3}}
PRIORITY = {"strategy": "priority"}


@dataclass
class Received:
    """A stream as the client saw it."""

    status: int = 0
    text: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)
    backend: str | None = None
    body: dict[str, Any] | None = None


async def stream(nexus: Any, headers: dict[str, str], model: str = "llama3:8b") -> Received:
    """POST a streaming chat request with ``headers``; read every event."""
    got = Received()
    body = {"model": model, "messages": MESSAGES, "stream": True, "temperature": 0}
    async with nexus.http.stream(
        "POST", "/v1/chat/completions", json=body, headers=headers
    ) as response:
        got.status = response.status_code
        got.backend = response.headers.get("x-nexus-backend")
        if response.status_code != 200:
            got.body = json.loads(await response.aread())
            return got
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    got.errors.append(chunk["error"])
                for choice in chunk.get("choices", ()):
                    got.text += (choice.get("delta") or {}).get("content") or ""
    return got


# -- every path stays local --------------------------------------------------------------


async def test_local_backends_failing_mid_stream_end_in_an_error_not_the_cloud(
    start_nexus: Any,
) -> None:
    a, b, cloud = sim("a"), sim("b"), sim("cloud")
    nexus = await start_nexus([a, b, cloud], backend_options=OPTIONS, routing=PRIORITY)
    a.faults.die_after_chunks = 3
    b.faults.die_after_chunks = 2  # the continuation dies too
    got = await stream(nexus, LOCAL)
    assert got.status == 200
    assert got.backend == "a"
    assert got.errors  # the answer ends with an error event
    assert ANSWER.startswith(got.text)
    assert got.text != ANSWER
    assert b.stats.chat_requests == 1  # the local replica was asked to continue it
    assert cloud.stats.chat_requests == 0
    assert await nexus.in_flight() == {"a": 0, "b": 0, "cloud": 0}


async def test_without_the_header_the_same_request_may_use_the_cloud(start_nexus: Any) -> None:
    a, cloud = sim("a"), sim("cloud")
    nexus = await start_nexus([a, cloud], backend_options=OPTIONS, routing=PRIORITY)
    got = await stream(nexus, {})
    assert (got.backend, got.text) == ("cloud", ANSWER)


async def test_without_the_header_the_cloud_may_continue_a_local_answer(
    start_nexus: Any,
) -> None:
    a, cloud = sim("a"), sim("cloud")
    options = {"a": {"priority": 1}, "cloud": {"zone": "cloud", "priority": 2}}
    nexus = await start_nexus([a, cloud], backend_options=options, routing=PRIORITY)
    a.faults.die_after_chunks = 3
    got = await stream(nexus, {})
    assert (got.backend, got.text, got.errors) == ("a", ANSWER, [])
    assert cloud.stats.chat_requests == 1


@pytest.mark.parametrize("value", ["any", "ANY", "", "cloud"])
async def test_a_privacy_header_other_than_local_changes_nothing(
    start_nexus: Any, value: str
) -> None:
    a, cloud = sim("a"), sim("cloud")
    nexus = await start_nexus([a, cloud], backend_options=OPTIONS, routing=PRIORITY)
    got = await stream(nexus, {"X-Nexus-Privacy": value})
    assert (got.backend, got.text) == ("cloud", ANSWER)


async def test_the_header_is_read_whatever_its_case(start_nexus: Any) -> None:
    a, cloud = sim("a"), sim("cloud")
    nexus = await start_nexus([a, cloud], backend_options=OPTIONS, routing=PRIORITY)
    got = await stream(nexus, {"x-nexus-privacy": "LOCAL"})
    assert (got.backend, got.text) == ("a", ANSWER)
    assert cloud.stats.chat_requests == 0


async def test_a_fallback_model_served_only_by_the_cloud_is_not_used(start_nexus: Any) -> None:
    a = sim("a")
    cloud = sim("cloud", Flavor.VLLM, "gpt-4o")
    fallbacks = {"fallbacks": {"llama3:8b": ["gpt-4o"]}}
    nexus = await start_nexus(
        [a, cloud],
        backend_options={"cloud": {"type": "openai"}},
        routing={**PRIORITY, **fallbacks},
    )
    a.faults.status = 500  # fails before its first token: the fallback would be next
    got = await stream(nexus, LOCAL)
    assert got.status == 502
    assert cloud.stats.chat_requests == 0
    # Without the header the fallback serves it: the cloud was there to be reached.
    got = await stream(nexus, {})
    assert (got.status, got.backend) == (200, "cloud")


async def test_continue_any_does_not_continue_on_a_cloud_fallback(start_nexus: Any) -> None:
    a = sim("a")
    cloud = sim("cloud", Flavor.VLLM, "gpt-4o")
    nexus = await start_nexus(
        [a, cloud],
        backend_options={"cloud": {"zone": "cloud"}},
        routing={**PRIORITY, "mid_stream": "continue_any",
                 "fallbacks": {"llama3:8b": ["gpt-4o"]}},
    )  # fmt: skip
    a.faults.die_after_chunks = 3
    got = await stream(nexus, LOCAL)
    assert (got.status, got.backend) == (200, "a")
    assert got.errors
    assert cloud.stats.chat_requests == 0
    got = await stream(nexus, {})  # without the header it continues on the cloud's model
    assert (got.backend, got.errors) == ("a", [])
    assert cloud.stats.chat_by_model["gpt-4o"] == 1


async def test_a_hedge_never_starts_on_the_cloud(start_nexus: Any, loopback_clock: Any) -> None:
    a, cloud = sim("a"), sim("cloud")
    nexus = await start_nexus(
        [a, cloud],
        backend_options={"cloud": {"zone": "cloud", "priority": 2}, "a": {"priority": 1}},
        routing={**PRIORITY, "hedge_after_ms": 100},
    )
    a.faults.delay_before_headers_seconds = 5  # slow: a hedge would start after 100 ms
    got = await stream(nexus, LOCAL)
    assert (got.backend, got.text) == ("a", ANSWER)
    assert cloud.stats.chat_requests == 0
    got = await stream(nexus, {})  # without the header, the hedge on the cloud wins
    assert got.backend == "cloud"


async def test_with_hedging_on_local_backends_failing_mid_stream_end_in_an_error(
    start_nexus: Any, loopback_clock: Any
) -> None:
    a, b, cloud = sim("a"), sim("b"), sim("cloud")
    nexus = await start_nexus(
        [a, b, cloud], backend_options=OPTIONS, routing={**PRIORITY, "hedge_after_ms": 100}
    )
    a.faults.die_after_chunks = 3
    b.faults.die_after_chunks = 1
    b.faults.delay_before_headers_seconds = 1  # the continuation is slow, then dies
    got = await stream(nexus, LOCAL)
    assert (got.status, got.backend) == (200, "a")
    assert got.errors
    assert cloud.stats.chat_requests == 0
    assert await nexus.in_flight() == {"a": 0, "b": 0, "cloud": 0}


async def test_a_local_backend_that_is_busy_keeps_its_own_error(
    start_nexus: Any, loopback_clock: Any
) -> None:
    """Busy is not "no local backend": the request is refused (or waits in the queue, and
    then is) as any busy request is, and the cloud, with room, is not asked."""
    a, cloud = sim("a"), sim("cloud")
    nexus = await start_nexus(
        [a, cloud],
        backend_options={**OPTIONS, "a": {"max_concurrency": 1}},
        routing=PRIORITY,
        queue={"max_wait_seconds": 5},
    )
    registry = nexus.gateway.registry
    with registry.occupy(registry.get("a")):
        got = await stream(nexus, LOCAL)
    assert got.status == 503
    assert got.body is not None
    assert got.body["error"]["code"] in ("backends_busy", "queue_timeout")
    assert cloud.stats.chat_requests == 0


# -- no local backend at all: 503 no_local_backend -------------------------------------------


async def test_no_local_backend_of_the_model_is_a_503_through_the_openai_sdk(
    start_nexus: Any,
) -> None:
    a = sim("a", Flavor.VLLM, "mistral:7b")  # local, but of another model
    cloud = sim("cloud")
    nexus = await start_nexus([a, cloud], backend_options=OPTIONS)
    client = nexus.openai().with_options(default_headers=LOCAL)
    with pytest.raises(openai.APIStatusError) as raised:
        await client.chat.completions.create(model="llama3:8b", messages=MESSAGES)
    assert raised.value.status_code == 503
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["code"] == "no_local_backend"
    assert "X-Nexus-Privacy: local" in error["message"]
    assert "add a local backend" in error["message"]
    with pytest.raises(openai.APIStatusError) as raised:  # streamed, by extra_headers
        await nexus.openai().chat.completions.create(
            model="llama3:8b", messages=MESSAGES, stream=True, extra_headers=LOCAL
        )
    assert raised.value.status_code == 503
    assert cloud.stats.chat_requests == 0
    # The model itself is fine for a request that may use the cloud.
    completion = await nexus.openai().chat.completions.create(model="llama3:8b", messages=MESSAGES)
    assert completion.choices[0].message.content == ANSWER


async def test_no_local_backend_in_the_anthropic_shape(start_nexus: Any) -> None:
    cloud = sim("cloud")
    nexus = await start_nexus([cloud], backend_options={"cloud": {"type": "openai"}})
    client = nexus.anthropic(default_headers=LOCAL)
    with pytest.raises(anthropic.APIStatusError) as raised:
        await client.messages.create(model="llama3:8b", max_tokens=64, messages=MESSAGES)
    # Nexus's 503, in Anthropic's words (`anthropic_error`): 529 overloaded_error.
    assert raised.value.status_code == 529
    body = raised.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "overloaded_error"
    assert "X-Nexus-Privacy: local" in body["error"]["message"]
    assert cloud.stats.chat_requests == 0


async def test_the_zone_is_shown_with_the_backends(start_nexus: Any) -> None:
    a, cloud = sim("a"), sim("cloud")
    nexus = await start_nexus([a, cloud], backend_options={"cloud": {"type": "openai"}})
    listed = (await nexus.http.get("/admin/backends")).json()["backends"]
    assert {v["name"]: v["zone"] for v in listed} == {"a": "local", "cloud": "cloud"}
    shown = {b.name: backend_view(b, 0.0)["zone"] for b in nexus.gateway.registry}
    assert shown == {"a": "local", "cloud": "cloud"}


# -- the router, pure ------------------------------------------------------------------------

MODEL = "llama3:8b"
ROUTING = settings_from_mapping({"routing": {"fallbacks": {MODEL: ["other"]}}}).routing


def backend(name: str, zone: Zone, model: str, **fields: Any) -> Backend:
    return Backend(
        name=name, url=f"http://{name}.test", type=BackendType.GENERIC,
        models={model: ModelInfo(model)}, zone=zone, **fields,
    )  # fmt: skip


fleet_members = st.tuples(
    st.sampled_from(Zone),
    st.sampled_from((MODEL, "other")),
    st.sampled_from((Health.HEALTHY, Health.HEALTHY, Health.UNHEALTHY)),
    st.sampled_from((None, None, 1)),  # max_concurrency
    st.integers(0, 1),  # in_flight
)


@settings(max_examples=200, deadline=None)
@given(st.lists(fleet_members, max_size=6))
def test_a_local_only_plan_never_holds_a_cloud_backend(members: list[Any]) -> None:
    fleet = [
        backend(f"b{i}", zone, model, health=health, max_concurrency=limit, in_flight=busy)
        for i, (zone, model, health, limit, busy) in enumerate(members)
    ]
    needs = Requirements(MODEL, local_only=True)
    local = [b for b in fleet if b.zone is Zone.LOCAL]
    decision = planned(needs, fleet)
    if isinstance(decision, NoLocalBackend):
        # The model has no local backend; only cloud ones (of it or of its fallback).
        assert not any(MODEL in b.models for b in local)
        assert any(MODEL in b.models or "other" in b.models for b in fleet)
    elif isinstance(decision, NoHealthyBackend):
        # A local backend exists but is down or busy: the usual error, never the cloud.
        assert any(MODEL in b.models or "other" in b.models for b in local)
    elif isinstance(decision, Exception):
        assert not any(MODEL in b.models or "other" in b.models for b in fleet)
    else:
        assert all(c.backend.zone is Zone.LOCAL for c in decision.candidates)
        # It is the plan of the fleet without its cloud: nothing local was lost.
        without = plan_route(Requirements(MODEL), local, ROUTING)
        assert [c.backend.name for c in decision.candidates] == [
            c.backend.name for c in without.candidates
        ]


def planned(needs: Requirements, fleet: list[Backend]) -> RouteDecision | Exception:
    try:
        return plan_route(needs, fleet, ROUTING)
    except Exception as exc:  # the property says which error, and when
        return exc
