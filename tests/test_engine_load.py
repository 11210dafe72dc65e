"""Engine load: what each server reports of its own load and of the models it holds is read
on a cycle of its own, and `smart` routing weighs it: not queueing, then warm, then the
conversation's prefix, then the least loaded (other clients' requests counted), then TTFT.
Cold starts go where the model was loaded last, or where the least memory is in use, and
get `timeouts.cold_start_seconds` for their first token."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nexus_trio.backends.engine import (
    parse_llamacpp_metrics,
    parse_llamacpp_slots,
    parse_lmstudio_models,
    parse_ollama_ps,
    parse_vllm_metrics,
)
from nexus_trio.config import BackendType, EngineLoadSettings, settings_from_mapping
from nexus_trio.load_watch import KEEP_READS, watch_engine_load
from nexus_trio.registry import (
    Backend,
    EngineReport,
    Health,
    LoadedModel,
    ModelInfo,
    Registry,
)
from nexus_trio.routing.affinity import Preference
from nexus_trio.routing.requirements import Requirements
from nexus_trio.routing.router import HIT, YIELDED, plan_route
from nexus_trio.testing import Flavor

from helpers import Running, sim

MODEL = "llama3:8b"
SMART = settings_from_mapping({"routing": {"strategy": "smart"}}).routing
FAST_READS = {"engine_load": {"interval_seconds": 0.05}}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}

# -- what the servers say, parsed ---------------------------------------------------------

# vLLM 0.11's page, trimmed: two engines (data parallel), histograms around the gauges.
VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-8B"} 12.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen3-8B"} 9.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen3-8B"} 3.0
vllm:num_requests_waiting{engine="1",model_name="Qwen/Qwen3-8B"} 0.0
# HELP vllm:num_requests_waiting_by_reason Requests waiting, by reason.
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 99.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-8B"} 0.81
vllm:kv_cache_usage_perc{engine="1",model_name="Qwen/Qwen3-8B"} 0.42
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="Qwen/Qwen3-8B"} 0.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="Qwen/Qwen3-8B"} 4410.0
"""


def test_vllm_metrics_sum_the_engines_and_keep_the_fullest_cache() -> None:
    report = parse_vllm_metrics(VLLM_METRICS)
    assert (report.running, report.waiting, report.kv_cache_usage) == (21, 3, 0.81)
    older = "vllm:num_requests_running 2\nvllm:gpu_cache_usage_perc 0.5\n"
    assert parse_vllm_metrics(older) == EngineReport(running=2, waiting=0, kv_cache_usage=0.5)
    with pytest.raises(ValueError, match="gauge"):
        parse_vllm_metrics("# nothing of vLLM's\nprocess_cpu_seconds_total 3\n")


def test_llamacpp_metrics_and_slots() -> None:
    page = (
        "# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 2\n"
        "llamacpp:requests_deferred 5\nllamacpp:kv_cache_usage_ratio 0.25\n"
        "llamacpp:prompt_tokens_total 1234\n"
    )
    assert parse_llamacpp_metrics(page) == EngineReport(running=2, waiting=5, kv_cache_usage=0.25)
    slots = [{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}]
    assert parse_llamacpp_slots(slots) == EngineReport(running=1, slots=2)
    older = [{"id": 0, "state": 1}, {"id": 1, "state": 1}, {"id": 2, "state": 0}]
    assert parse_llamacpp_slots(older) == EngineReport(running=2, slots=3)
    with pytest.raises(ValueError, match="list of slot"):
        parse_llamacpp_slots({"slots": []})


def test_ollama_ps_tells_what_is_loaded_until_when() -> None:
    # Go writes nanoseconds and the server's own zone; keep_alive -1 gives a far year.
    ps = {
        "models": [
            {"name": "llama3:8b", "size": 6_654_289_920, "size_vram": 6_654_289_920,
             "expires_at": "2026-12-02T15:38:31.837530123+01:00"},
            {"name": "nomic-embed-text:latest", "size": 580_000_000,
             "expires_at": "2318-05-01T00:00:00Z"},
            {"name": "broken", "size": "big", "expires_at": "soon"},
            {"nope": 1},
        ]
    }  # fmt: skip
    report = parse_ollama_ps(ps)
    assert report.warm_models == {"llama3:8b", "nomic-embed-text:latest", "broken"}
    first, second, broken = report.loaded or ()
    assert first.expires_at == datetime(2026, 12, 2, 14, 38, 31, 837530, UTC).timestamp()
    assert first.size_bytes == 6_654_289_920
    assert second.expires_at is not None
    assert second.expires_at > 1e10
    assert (broken.expires_at, broken.size_bytes) == (None, None)
    assert parse_ollama_ps({"models": []}).warm_models == frozenset()


def test_lmstudio_states() -> None:
    payload = {
        "data": [{"id": "qwen3-8b", "state": "loaded"}, {"id": "phi4", "state": "not-loaded"}]
    }
    assert parse_lmstudio_models(payload).warm_models == {"qwen3-8b"}


# -- the registry's view of a report --------------------------------------------------------


def backend(name: str, kind: BackendType = BackendType.VLLM, **fields: Any) -> Backend:
    return Backend(
        name=name,
        url=f"http://{name}.test",
        type=kind,
        models={MODEL: ModelInfo(MODEL), "big:70b": ModelInfo("big:70b")},
        health=Health.HEALTHY,
        **fields,
    )


async def test_a_report_counts_other_clients_and_where_the_server_queues() -> None:
    b = backend("b", in_flight=3)
    registry = Registry([b])
    events = registry.subscribe()
    registry.record_engine_report(b, EngineReport(running=10, waiting=0))
    assert (b.engine_others, b.engine_capacity, b.queueing) == (7, math.inf, False)
    # vLLM runs what it can; those beyond wait: it queues at what it was running.
    registry.record_engine_report(b, EngineReport(running=10, waiting=4))
    assert (b.engine_others, b.engine_capacity, b.queueing) == (11, 10, True)
    # llama.cpp's slots are its capacity, known from /props or /slots.
    registry.record_engine_report(b, EngineReport(running=1, slots=2))
    assert (b.engine_others, b.engine_capacity, b.queueing) == (0, 2, True)
    registry.record_engine_report(b, None)  # the read failed: its load no longer holds
    assert (b.engine, b.engine_others, b.engine_capacity) == (None, 0, 2)  # its slots do
    kinds = [events.receive_nowait().kind for _ in range(4)]
    assert kinds == ["engine"] * 4
    registry.record_engine_report(b, None)  # the same again: no event
    with pytest.raises(trio.WouldBlock):
        events.receive_nowait()


async def test_cold_starts_go_where_the_model_was_loaded_last_then_where_memory_is_free() -> None:
    a, b, c = backend("a", BackendType.OLLAMA), backend("b", BackendType.OLLAMA), backend("c")
    registry = Registry([a, b, c])
    big = LoadedModel("big:70b", size_bytes=40_000_000_000)
    registry.record_engine_report(a, EngineReport(loaded=(big,)))
    registry.record_engine_report(b, EngineReport(loaded=()))
    order = [entry[0].name for entry in sorted(registry.roster(MODEL).ready, key=lambda e: e[3])]
    # c says nothing of what it holds (warm, as far as anyone knows); b has room; a has not.
    assert order == ["c", "b", "a"]
    registry.record_engine_report(a, EngineReport(loaded=(big, LoadedModel(MODEL))))
    registry.record_engine_report(a, EngineReport(loaded=(big,)))  # evicted since
    coldness = {e[0].name: e[3] for e in registry.roster(MODEL).ready}
    assert coldness == {"c": 0, "a": 1, "b": 2}


# -- routing on reports (pure) ---------------------------------------------------------------


def reported(*reports: EngineReport | None, **fields: Any) -> list[Backend]:
    fleet = [backend(name, **fields) for name in "abc"[: len(reports)]]
    registry = Registry(fleet)
    for b, report in zip(fleet, reports, strict=True):
        registry.record_engine_report(b, report)
    return fleet


def first(backends: list[Backend], **kw: Any) -> tuple[str, str]:
    decision = plan_route(Requirements(MODEL), backends, SMART, **kw)
    return decision.candidates[0].backend.name, decision.candidates[0].reason


def test_a_queueing_vllm_gets_nothing_while_a_replica_has_room() -> None:
    fleet = reported(EngineReport(running=256, waiting=40), EngineReport(running=30, waiting=0))
    fleet[1].in_flight = 8  # busier by Nexus's own count, yet it does not queue
    assert first(fleet) == ("b", "smart:priority=1,load=38.00,ttft=n/a")
    # With the other full by its max_concurrency, queueing beats refusing.
    fleet[1].max_concurrency = 8
    name, reason = first(fleet)
    assert name == "a"
    assert ",queueing," in reason


def test_other_clients_requests_count_in_the_load() -> None:
    fleet = reported(EngineReport(running=6, waiting=0), EngineReport(running=0, waiting=0))
    fleet[1].in_flight = 2
    assert first(fleet)[0] == "b"
    least_busy = settings_from_mapping({"routing": {"strategy": "least_busy"}}).routing
    decision = plan_route(Requirements(MODEL), fleet, least_busy)
    assert decision.candidates[0].backend.name == "b"


def test_warm_beats_load_and_a_cold_start_says_so() -> None:
    warm = EngineReport(loaded=(LoadedModel(MODEL),))
    fleet = reported(EngineReport(loaded=()), warm)
    fleet[1].in_flight = 5
    assert first(fleet) == ("b", "smart:priority=1,warm,load=5.00,ttft=n/a")
    fleet[1].max_concurrency = 5
    assert first(fleet) == ("a", "smart:priority=1,cold_start,load=0.00,ttft=n/a")


def test_affinity_yields_to_an_engine_queue_and_to_other_clients_load() -> None:
    prefer_a = {"conversation": True, "affinity": Preference("a", "prefix", 2)}
    fleet = reported(EngineReport(running=1, slots=2), EngineReport(running=1, slots=2))
    decision = plan_route(Requirements(MODEL), fleet, SMART, **prefer_a)
    assert (decision.affinity, decision.candidates[0].backend.name) == (HIT, "a")
    Registry(fleet).record_engine_report(fleet[0], EngineReport(running=2, slots=2))
    decision = plan_route(Requirements(MODEL), fleet, SMART, **prefer_a)
    assert (decision.affinity, decision.candidates[0].backend.name) == (YIELDED, "b")
    # Not queueing, but loaded far above the mean by other clients' requests.
    fleet = reported(EngineReport(running=9, waiting=0), EngineReport(running=1, waiting=0))
    decision = plan_route(Requirements(MODEL), fleet, SMART, **prefer_a)
    assert (decision.affinity, decision.candidates[0].backend.name) == (YIELDED, "b")


a_backend = st.tuples(
    st.integers(1, 2),  # priority
    st.integers(0, 4),  # requests in flight from Nexus
    st.one_of(st.none(), st.integers(0, 6)),  # requests the engine reports running
    st.integers(0, 3),  # waiting
    st.one_of(st.none(), st.integers(1, 3)),  # slots
    st.one_of(st.none(), st.booleans()),  # the model loaded (None: not told)
    st.one_of(st.none(), st.integers(2, 5)),  # max_concurrency
)


@settings(max_examples=300, deadline=None)
@given(st.lists(a_backend, min_size=1, max_size=5), st.integers(0, 5), st.integers(0, 9))
@example([(1, 0, 2, 0, 2, None, None), (1, 0, 0, 0, None, None, None)], 0, 0)
def test_smart_never_picks_a_worse_class_than_one_with_room(
    rows: list[tuple[Any, ...]], preferred: int, turn: int
) -> None:
    """Whatever the reports, the first candidate is of the best (priority, not queueing,
    warm) class among the backends with room, with or without affinity."""
    fleet = []
    registry = Registry()
    for i, (priority, in_flight, running, waiting, slots, loaded, limit) in enumerate(rows):
        b = backend(f"b{i}", priority=priority, in_flight=in_flight, max_concurrency=limit)
        registry.add(b)
        fleet.append(b)
        warm = None if loaded is None else (LoadedModel(MODEL),) if loaded else ()
        running_now = None if running is None else running
        registry.record_engine_report(
            b, EngineReport(running=running_now, waiting=waiting, slots=slots, loaded=warm)
        )
    roomy = [b for b in fleet if b.max_concurrency is None or b.in_flight < b.max_concurrency]
    affinity = Preference(f"b{preferred}", "prefix", 1) if preferred < len(fleet) else None
    if not roomy:
        return
    best = min((b.priority, b.queueing, not b.is_warm(MODEL)) for b in roomy)
    decision = plan_route(
        Requirements(MODEL), fleet, SMART, turn=turn, rosters=registry.roster,
        conversation=True, affinity=affinity,
    )  # fmt: skip
    chosen = decision.candidates[0].backend
    assert (chosen.priority, chosen.queueing, not chosen.is_warm(MODEL)) == best
    if decision.affinity == HIT:
        assert affinity is not None
        assert chosen.name == affinity.backend


# -- the watcher, against a transport that records each read ------------------------------


Answers = dict[str, httpx.Response | Exception]


def recording(answers: Answers) -> tuple[httpx.AsyncClient, list[str]]:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        found = answers[request.url.path]
        if isinstance(found, Exception):
            raise found
        return found

    return httpx.AsyncClient(transport=httpx.MockTransport(answer)), asked


async def test_a_path_the_server_lacks_is_not_asked_again(autojump_clock: Any) -> None:
    slots = [{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}]
    client, asked = recording(
        {"/metrics": httpx.Response(501, json={"error": {"code": 501}}),
         "/slots": httpx.Response(200, json=slots)}
    )  # fmt: skip
    b = backend("llama", BackendType.LLAMACPP)
    registry = Registry([b])
    settings = EngineLoadSettings(interval_seconds=1.0)
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(watch_engine_load, registry, client, b, settings)
        await trio.sleep(3.5)
        nursery.cancel_scope.cancel()
    assert asked[0] == "/metrics"
    assert set(asked[1:]) == {"/slots"}
    assert 3 <= len(asked) - 1 <= 5  # about one read a second
    assert b.engine == EngineReport(running=1, slots=2)


async def test_types_that_tell_nothing_are_never_asked(autojump_clock: Any) -> None:
    client, asked = recording({})
    registry = Registry([b := backend("cloud", BackendType.OPENAI)])
    async with client:
        with trio.fail_after(1):  # it returns at once
            await watch_engine_load(registry, client, b, EngineLoadSettings())
    assert asked == []


async def test_a_report_outlives_a_few_failed_reads_then_goes(autojump_clock: Any) -> None:
    answers: Answers = {"/metrics": httpx.Response(200, text="vllm:num_requests_running 4\n")}
    client, _ = recording(answers)
    registry = Registry([b := backend("v")])
    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(watch_engine_load, registry, client, b, EngineLoadSettings())
        await registry.wait_engine_read()
        assert b.engine_others == 4
        read_at = trio.current_time()
        answers["/metrics"] = httpx.ConnectError("refused")
        await registry.wait_engine_read()  # the next one recorded: when it is given up
        assert (b.engine, b.engine_others) == (None, 0)
        # Kept while a busy server missed a read or two: about KEEP_READS intervals.
        assert KEEP_READS * 0.9 <= trio.current_time() - read_at <= (KEEP_READS + 1) * 1.1
        answers["/metrics"] = httpx.Response(200, text="vllm:num_requests_running 2\n")
        await registry.wait_engine_read()
        assert b.engine_others == 2
        answers["/metrics"] = httpx.Response(200, text="<html>a login page</html>")
        await registry.wait_engine_read()
        assert b.engine is None  # what cannot be read never counts as a report
        nursery.cancel_scope.cancel()


# -- end to end, on simulated servers --------------------------------------------------------


async def read_until(nexus: Running, done: Callable[[Registry], object]) -> None:
    """Wait for engine reads until ``done`` holds of the registry."""
    registry = nexus.gateway.registry
    with trio.fail_after(10):
        while not done(registry):
            await registry.wait_engine_read()


async def served_by(nexus: Running, count: int = 1) -> list[str]:
    backends: list[str] = []
    async with trio.open_nursery() as nursery:

        async def one() -> None:
            response = await nexus.http.post("/v1/chat/completions", json=CHAT)
            assert response.status_code == 200, response.text
            backends.append(response.headers["x-nexus-backend"])

        for _ in range(count):
            nursery.start_soon(one)
    return backends


async def test_a_vllm_with_a_waiting_queue_receives_nothing(start_nexus: Any) -> None:
    swamped = sim("swamped", Flavor.VLLM, busy_elsewhere=300)  # 256 running, 44 waiting
    spare = sim("spare", Flavor.VLLM, busy_elsewhere=20)  # busier than Nexus knows, no queue
    nexus = await start_nexus([swamped, spare], routing=FAST_READS)
    await read_until(nexus, lambda r: r.get("swamped").queueing and r.get("spare").engine_others)
    assert set(await served_by(nexus, 12)) == {"spare"}
    assert swamped.stats.chat_requests == 0
    swamped.busy_elsewhere = 0  # its queue drains: now it is the least loaded
    await read_until(nexus, lambda r: not r.get("swamped").engine_others)
    assert await served_by(nexus) == ["swamped"]


async def test_llamacpp_slots_busy_with_others_send_requests_elsewhere(start_nexus: Any) -> None:
    full = sim("full", Flavor.LLAMACPP, busy_elsewhere=2)  # both slots taken (/slots)
    free = sim("free", Flavor.LLAMACPP, llamacpp_metrics=True, busy_elsewhere=1)
    nexus = await start_nexus([full, free], routing=FAST_READS)
    await read_until(nexus, lambda r: r.get("full").queueing and r.get("free").engine is not None)
    assert nexus.gateway.registry.get("full").engine == EngineReport(running=2, slots=2)
    assert nexus.gateway.registry.get("free").engine == EngineReport(
        running=1, waiting=0, kv_cache_usage=0.5
    )
    for _ in range(3):  # one at a time: "free" has a slot for each
        assert await served_by(nexus) == ["free"]
    assert full.stats.chat_requests == 0


async def test_a_model_another_client_loaded_is_preferred_within_a_read(start_nexus: Any) -> None:
    one, other = sim("one", Flavor.OLLAMA), sim("other", Flavor.OLLAMA)
    one.mark_loaded(MODEL)
    nexus = await start_nexus([one, other], routing=FAST_READS)
    response = await nexus.http.post("/v1/chat/completions", json=CHAT)
    assert response.headers["x-nexus-backend"] == "one"
    assert ",warm," in response.headers["x-nexus-route-reason"]
    one.unload(MODEL)  # its keep-alive ended; meanwhile another client used it on "other"
    other.mark_loaded(MODEL)
    await read_until(
        nexus,
        lambda r: (
            (r.get("one").warm_models, r.get("other").warm_models)
            == (frozenset(), frozenset({MODEL}))
        ),
    )
    assert await served_by(nexus, 3) == ["other"] * 3


async def test_a_cold_start_goes_where_the_model_was_loaded_last(start_nexus: Any) -> None:
    a = sim("a", Flavor.OLLAMA, MODEL, "big:70b")
    b = sim("b", Flavor.OLLAMA, MODEL, "big:70b")
    a.mark_loaded(MODEL)
    nexus = await start_nexus([a, b], routing=FAST_READS)
    a.unload(MODEL)
    a.mark_loaded("big:70b")  # it made room for another model
    await read_until(
        nexus,
        lambda r: (
            (r.get("a").warm_models, r.get("b").warm_models)
            == (frozenset({"big:70b"}), frozenset())
        ),
    )
    response = await nexus.http.post("/v1/chat/completions", json=CHAT)
    assert response.headers["x-nexus-backend"] == "a"  # the page cache may still hold it
    assert ",cold_start," in response.headers["x-nexus-route-reason"]


async def test_a_cold_start_with_no_history_goes_where_memory_is_free(start_nexus: Any) -> None:
    a = sim("a", Flavor.OLLAMA, MODEL, "big:70b")
    b = sim("b", Flavor.OLLAMA, MODEL, "big:70b")
    a.mark_loaded("big:70b")
    nexus = await start_nexus([a, b], routing=FAST_READS)
    await read_until(nexus, lambda r: r.get("a").memory_in_use and r.get("b").engine)
    assert await served_by(nexus) == ["b"]


@pytest.mark.parametrize(("cold_start", "status"), [(30, 200), (0, 504)])
async def test_a_cold_start_gets_its_own_time_for_the_first_token(
    start_nexus: Any, loopback_clock: trio.testing.MockClock, cold_start: float, status: int
) -> None:
    slow = sim("slow", Flavor.OLLAMA, load_seconds=20)  # a big model from disk
    nexus = await start_nexus(
        [slow],
        routing={
            "timeouts": {"first_token_seconds": 5, "cold_start_seconds": cold_start},
            "engine_load": {"enabled": False},  # the health check's /api/ps says it is cold
        },
    )
    client = nexus.openai()
    if status == 200:
        answer = await client.chat.completions.create(model=MODEL, messages=CHAT["messages"])
        assert answer.choices[0].finish_reason == "stop"
    else:
        with pytest.raises(openai.APIStatusError) as raised:
            await client.chat.completions.create(model=MODEL, messages=CHAT["messages"])
        assert raised.value.status_code == status


async def test_a_request_waits_in_nexus_queue_while_every_server_queues_its_own(
    start_nexus: Any,
) -> None:
    full = sim("full", Flavor.LLAMACPP, busy_elsewhere=2)  # both slots another client's
    nexus = await start_nexus([full], routing=FAST_READS)
    await read_until(nexus, lambda r: r.get("full").queueing)
    served: list[int] = []
    async with trio.open_nursery() as nursery:

        async def one() -> None:
            response = await nexus.http.post("/v1/chat/completions", json=CHAT)
            served.append(response.status_code)

        nursery.start_soon(one)
        with trio.fail_after(10):
            while len(nexus.gateway.queue) < 1:  # it waits in Nexus's fair queue...
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        assert full.stats.chat_requests == 0  # ...not in the server's
        full.busy_elsewhere = 0  # the other client's requests end: the next read wakes it
    assert served == [200]
    assert full.stats.chat_requests == 1


async def test_without_a_queue_the_server_queues_it(start_nexus: Any) -> None:
    full = sim("full", Flavor.LLAMACPP, busy_elsewhere=2)
    nexus = await start_nexus([full], routing=FAST_READS, queue={"max_size": 0})
    await read_until(nexus, lambda r: r.get("full").queueing)
    response = await nexus.http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200  # the simulated server answers at once anyway
    assert full.stats.chat_requests == 1
