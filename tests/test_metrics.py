"""``/metrics``, ``/v1/stats`` and ``/v1/history`` after a scripted mix of requests:
every counter has exactly the value the mix implies, streams included."""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from typing import Any

import openai
import trio
from prometheus_client.parser import text_string_to_metric_families

from nexus_trio.registry import EngineReport
from nexus_trio.testing import Flavor

from helpers import sim, wait_for_ejection_end

CHAT = "/v1/chat/completions"
HELLO: dict[str, Any] = {"model": "llama3:8b", "messages": [{"role": "user", "content": "Hi"}]}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus exposition, keyed by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(all_samples: dict[Any, float], name: str, **labels: str) -> float:
    return all_samples.get((name, frozenset(labels.items())), 0.0)


def label_sets(all_samples: dict[Any, float], name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in all_samples if n == name]


async def test_counters_after_a_scripted_mix(start_nexus: Any) -> None:
    a, b = sim("a"), sim("b", tokens_per_second=200)
    nexus = await start_nexus(
        [a, b],
        routing={"strategy": "priority"},
        backend_options={"b": {"priority": 2}},
        health_check={"ejection_base_seconds": 0.05},  # a failed request keeps "a" out briefly
    )
    sdk = openai.AsyncOpenAI(base_url=nexus.gateway.url + "/v1", api_key="x", max_retries=0)
    registry = nexus.gateway.registry
    events = registry.subscribe()

    # 1. non-stream, served by a
    plain = await sdk.chat.completions.create(**HELLO)
    # 2. stream with usage asked, served by a
    streamed_usage = None
    async for chunk in await sdk.chat.completions.create(
        **HELLO, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.usage is not None:
            streamed_usage = chunk.usage
    assert plain.usage is not None
    assert streamed_usage is not None
    # 3. failover before the first byte: a answers 500, b serves (non-stream)
    a.faults.status = 500
    await sdk.chat.completions.create(**HELLO)
    a.faults.clear()
    await wait_for_ejection_end(events, "a")  # back in rotation, so a serves first again
    # 4. failover mid-stream: a dies after 3 chunks, b continues (no usage asked)
    a.faults.die_after_chunks = 3
    text = ""
    async for chunk in await sdk.chat.completions.create(**HELLO, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    a.faults.clear()
    await wait_for_ejection_end(events, "a")
    # 5. an unknown model
    response = await nexus.http.post(CHAT, json={**HELLO, "model": "no-such-model"})
    assert response.status_code == 404
    # 6. a client that leaves mid-stream (b is slow enough to leave in the middle)
    registry.mark_unhealthy(registry.get("a"), "kept out for the last request")
    async with nexus.http.stream("POST", CHAT, json={**HELLO, "stream": True}) as stream:
        async for line in stream.aiter_lines():
            if '"content":"' in line.replace(" ", "") and '"content":""' not in line:
                break
    await sdk.close()
    await nexus.settled()

    metrics = samples((await nexus.http.get("/metrics")).text)
    requests = "nexus_requests_total"
    assert value(metrics, requests, api="chat", model="llama3:8b", backend="a", status="200",
                 stream="false") == 1  # fmt: skip
    assert value(metrics, requests, api="chat", model="llama3:8b", backend="a", status="200",
                 stream="true") == 2  # fmt: skip  # 2 and 4 (a committed, b continued)
    assert value(metrics, requests, api="chat", model="llama3:8b", backend="b", status="200",
                 stream="false") == 1  # fmt: skip
    assert value(metrics, requests, api="chat", model="unknown", backend="none", status="404",
                 stream="false") == 1  # fmt: skip
    assert value(metrics, requests, api="chat", model="llama3:8b", backend="b", status="200",
                 stream="true") == 1  # fmt: skip  # the client that left had its headers
    assert sum(v for (n, _), v in metrics.items() if n == requests) == 6

    failovers = "nexus_failovers_total"
    assert value(metrics, failovers, from_backend="a", to_backend="b",
                 phase="before_first_byte") == 1  # fmt: skip
    assert value(metrics, failovers, from_backend="a", to_backend="b", phase="mid_stream") == 1
    assert len(label_sets(metrics, failovers)) == 2

    assert value(metrics, "nexus_backend_failures_total", backend="a") == 2
    assert label_sets(metrics, "nexus_backend_failures_total") == [{"backend": "a"}]

    errors = "nexus_errors_total"
    assert value(metrics, errors, type="model_not_found") == 1
    assert value(metrics, errors, type="client_disconnected") == 1
    assert len(label_sets(metrics, errors)) == 2

    # Tokens: what the backends reported, streams included (4 did not ask for usage).
    completion = value(metrics, "nexus_tokens_total", model="llama3:8b", backend="a",
                       type="completion")  # fmt: skip
    assert completion >= plain.usage.completion_tokens + streamed_usage.completion_tokens
    assert value(metrics, "nexus_tokens_total", model="llama3:8b", backend="b",
                 type="prompt") >= plain.usage.prompt_tokens  # fmt: skip

    durations = value(metrics, "nexus_request_duration_seconds_count", api="chat",
                      model="llama3:8b", backend="a")  # fmt: skip
    assert durations == 3
    ttfts = value(metrics, "nexus_time_to_first_token_seconds_count", model="llama3:8b",
                  backend="a")  # fmt: skip
    assert ttfts == 3  # every request a served (a non-streaming one is streamed upstream too)
    assert value(metrics, "nexus_backend_up", backend="a") == 0
    assert value(metrics, "nexus_backend_up", backend="b") == 1
    assert value(metrics, "nexus_backend_in_flight", backend="b") == 0
    assert value(metrics, "nexus_models_available") == 1
    assert len(text) > 0

    stats = (await nexus.http.get("/v1/stats")).json()
    assert (stats["requests"], stats["ok"], stats["failed"], stats["client_gone"]) == (6, 4, 1, 1)
    assert stats["streamed"] == 3
    assert stats["failovers"] == {"before_first_byte": 1, "mid_stream": 1}
    assert stats["errors"] == {"client_disconnected": 1, "model_not_found": 1}
    assert stats["backends"]["a"]["requests"] == 3
    assert stats["backends"]["a"]["failed_attempts"] == 2
    assert stats["backends"]["b"]["requests"] == 2
    assert set(stats["models"]) == {"llama3:8b", "unknown"}
    assert stats["apis"]["chat"]["requests"] == 6
    assert stats["tokens"]["completion"] == sum(
        value(metrics, "nexus_tokens_total", **dict(labels))
        for (n, labels) in metrics
        if n == "nexus_tokens_total" and dict(labels)["type"] == "completion"
    )

    history = (await nexus.http.get("/v1/history")).json()["data"]
    assert len(history) == 6
    assert [r["stream"] for r in history] == [False, True, False, True, False, True]
    assert {r["api"] for r in history} == {"chat"}
    assert history[3]["failovers"] == [{"from": "a", "to": "b", "phase": "mid_stream"}]
    assert history[2]["failovers"] == [{"from": "a", "to": "b", "phase": "before_first_byte"}]
    assert (history[5]["status"], history[5]["error"]) == (200, "client_disconnected")
    assert (await nexus.http.get("/v1/history?limit=2")).json()["data"] == history[-2:]


async def test_made_up_model_names_do_not_grow_the_label_set(start_nexus: Any) -> None:
    nexus = await start_nexus([sim("a")])
    rng = random.Random(7)
    for _ in range(40):
        name = "".join(rng.choices(string.ascii_letters + string.digits + '{}"\\\n', k=24))
        response = await nexus.http.post(CHAT, json={**HELLO, "model": name})
        assert response.status_code == 404
    await nexus.settled()
    metrics = samples((await nexus.http.get("/metrics")).text)
    models = {
        dict(labels)["model"]
        for (name, labels) in metrics
        if name.startswith("nexus_") and "model" in dict(labels)
    }
    assert models == {"unknown"}
    assert value(metrics, "nexus_requests_total", api="chat", model="unknown", backend="none",
                 status="404", stream="false") == 40  # fmt: skip
    stats = (await nexus.http.get("/v1/stats")).json()
    assert list(stats["models"]) == ["unknown"]


async def test_hedges_and_fallbacks_are_counted(start_nexus: Any) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus(
        [a, b],
        routing={
            "strategy": "priority",
            "hedge_after_ms": 50,
            "fallbacks": {"big:70b": ["llama3:8b"]},
        },
        backend_options={"b": {"priority": 2}},
    )
    a.faults.delay_before_headers_seconds = 30  # slow to start: b is hedged in, and wins
    response = await nexus.http.post(CHAT, json={**HELLO, "stream": True})
    assert response.headers["x-nexus-backend"] == "b"
    a.faults.clear()
    response = await nexus.http.post(CHAT, json={**HELLO, "model": "big:70b"})
    assert response.headers["x-nexus-fallback-model"] == "llama3:8b"
    await nexus.settled()
    metrics = samples((await nexus.http.get("/metrics")).text)
    assert value(metrics, "nexus_hedges_total", outcome="won") == 1
    assert value(metrics, "nexus_hedges_total", outcome="lost") == 0
    assert label_sets(metrics, "nexus_failovers_total") == []  # the loser was cancelled
    assert value(metrics, "nexus_fallbacks_total", from_model="big:70b",
                 to_model="llama3:8b") == 1  # fmt: skip
    stats = (await nexus.http.get("/v1/stats")).json()
    assert stats["hedges"] == {"started": 1, "won": 1}
    assert stats["fallbacks"] == 1


async def test_a_request_every_backend_failed_counts_failures_and_its_error(
    start_nexus: Any,
) -> None:
    a, b = sim("a"), sim("b")
    nexus = await start_nexus(
        [a, b], routing={"strategy": "priority"}, backend_options={"b": {"priority": 2}}
    )
    a.faults.status = b.faults.status = 500
    response = await nexus.http.post(CHAT, json={**HELLO, "stream": True})
    assert response.status_code == 502
    await nexus.settled()
    metrics = samples((await nexus.http.get("/metrics")).text)
    # a -> b is a failover; b failing last is a failure nothing took over.
    assert label_sets(metrics, "nexus_failovers_total") == [
        {"from_backend": "a", "to_backend": "b", "phase": "before_first_byte"}
    ]
    assert value(metrics, "nexus_backend_failures_total", backend="a") == 1
    assert value(metrics, "nexus_backend_failures_total", backend="b") == 1
    assert value(metrics, "nexus_errors_total", type="all_backends_failed") == 1
    assert value(metrics, "nexus_requests_total", api="chat", model="llama3:8b", backend="none",
                 status="502", stream="true") == 1  # fmt: skip
    stats = (await nexus.http.get("/v1/stats")).json()
    assert (stats["failed"], stats["failovers"]["before_first_byte"]) == (1, 1)
    assert stats["backends"]["b"]["failed_attempts"] == 1


async def test_names_a_pattern_alias_serves_are_counted_under_the_pattern(
    start_nexus: Any,
) -> None:
    nexus = await start_nexus([sim("a")], routing={"aliases": {"claude-*": "llama3:8b"}})
    names = [f"claude-{i}" for i in range(5)]
    for name in names:
        response = await nexus.http.post(CHAT, json={**HELLO, "model": name})
        assert response.status_code == 200
        assert response.json()["model"] == "llama3:8b"
    await nexus.settled()
    metrics = samples((await nexus.http.get("/metrics")).text)
    assert value(metrics, "nexus_requests_total", api="chat", model="claude-*", backend="a",
                 status="200", stream="false") == len(names)  # fmt: skip
    assert {dict(labels)["model"] for (n, labels) in metrics if n == "nexus_requests_total"} == {
        "claude-*"
    }
    # The pattern is no model of its own: /v1/models does not list it; a name it matches
    # is found, as an alias of its target.
    listed = (await nexus.http.get("/v1/models")).json()["data"]
    assert [m["id"] for m in listed] == ["llama3:8b"]
    entry = (await nexus.http.get("/v1/models/claude-opus-5")).json()
    assert (entry["id"], entry["alias_for"]) == ("claude-opus-5", "llama3:8b")
    history = (await nexus.http.get("/v1/history")).json()["data"]
    assert [r["model"] for r in history] == names  # the history keeps what each client sent


async def test_engine_load_and_loaded_models_as_the_servers_report_them(
    start_nexus: Any,
) -> None:
    # A vLLM running its 256 sequences for other clients, 44 more waiting; an Ollama
    # holding one of its two models in memory from before Nexus started.
    busy = sim("busy", busy_elsewhere=300, parallel=256)
    warm = sim("warm", Flavor.OLLAMA, "llama3:8b", "qwen2.5:7b")
    warm.mark_loaded("llama3:8b")
    nexus = await start_nexus([busy, warm])
    registry = nexus.gateway.registry

    async def read_until(condition: Callable[[], bool]) -> None:
        with trio.fail_after(10):
            while not condition():
                await registry.wait_engine_read()

    def reported(name: str) -> EngineReport:
        return registry.get(name).engine or EngineReport()

    await read_until(lambda: reported("busy").running == 256 and bool(reported("warm").loaded))
    metrics = samples((await nexus.http.get("/metrics")).text)
    engine = "nexus_backend_engine_requests"
    assert value(metrics, engine, backend="busy", state="running") == 256
    assert value(metrics, engine, backend="busy", state="waiting") == 44
    assert sorted(label_sets(metrics, engine), key=lambda s: s["state"]) == [
        {"backend": "busy", "state": "running"},
        {"backend": "busy", "state": "waiting"},
    ]  # Ollama says nothing of its requests: no series rather than a made-up 0
    kv = "nexus_backend_kv_cache_usage_ratio"
    assert value(metrics, kv, backend="busy") == 1.0
    assert label_sets(metrics, kv) == [{"backend": "busy"}]
    loaded = "nexus_backend_model_loaded"
    assert label_sets(metrics, loaded) == [{"backend": "warm", "model": "llama3:8b"}]
    assert value(metrics, loaded, backend="warm", model="llama3:8b") == 1

    # The series follow the servers: the other clients leave, the model is unloaded.
    busy.busy_elsewhere = 0
    warm.unload("llama3:8b")
    await read_until(lambda: reported("busy").running == 0 and reported("warm").loaded == ())
    metrics = samples((await nexus.http.get("/metrics")).text)
    assert value(metrics, engine, backend="busy", state="running") == 0
    assert value(metrics, engine, backend="busy", state="waiting") == 0
    assert label_sets(metrics, loaded) == []
