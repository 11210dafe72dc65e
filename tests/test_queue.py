"""When every backend that could serve a request is full, it waits in a fair queue.

The order (`FairOrder`) is pure and property-tested: priorities first, round robin
between the keys of a priority, first come first served within a key. The waiting is
proved on a real `Registry` and real slots under trio's virtual clock, calling
`plan_route_patiently` as each key's caller (keys are not yet carried by requests);
the end-to-end tests go through Nexus on loopback as anonymous callers.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import openai
import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nexus_trio.config import RoutingSettings
from nexus_trio.config.schema import BackendType, Priority
from nexus_trio.errors import BackendsBusy, QueueFull, QueueTimeout
from nexus_trio.policy.keys import Caller, KeyRecord
from nexus_trio.policy.queue import PRIORITIES, FairOrder, FairQueue
from nexus_trio.registry import Backend, Health, ModelInfo, Registry
from nexus_trio.routing.patience import plan_route_patiently
from nexus_trio.routing.requirements import Requirements

from helpers import sim

MODEL = "llama3:8b"
HELLO: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
NO_WAIT = RoutingSettings(wait_for_backend_seconds=0)


def caller(name: str, priority: Priority = Priority.NORMAL) -> Caller:
    return Caller(name, KeyRecord(name, "hash", "nx-abc", 0.0, priority=priority))


def fleet(*specs: tuple[str, tuple[str, ...], int]) -> Registry:
    """A registry of healthy backends: (name, models, max_concurrency) each."""
    registry = Registry()
    for name, models, limit in specs:
        registry.add(
            Backend(
                name=name, url=f"http://{name}.test", type=BackendType.GENERIC,
                models={m: ModelInfo(m) for m in models}, max_concurrency=limit,
                health=Health.HEALTHY,
            )
        )  # fmt: skip
    return registry


def queue_for(registry: Registry, max_size: int = 1000, max_wait: float = 30.0) -> FairQueue:
    queue = FairQueue(max_size, max_wait)
    registry.slot_freed_hook = queue.slot_freed
    return queue


# -- the order, pure ---------------------------------------------------------------------------


def test_the_fair_order_interleaves_keys_and_puts_priorities_first() -> None:
    order = FairOrder[str]()
    for item, key, priority in [
        ("a1", "a", Priority.LOW), ("a2", "a", Priority.NORMAL), ("a3", "a", Priority.NORMAL),
        ("a4", "a", Priority.NORMAL), ("b1", "b", Priority.NORMAL), ("c1", "c", Priority.HIGH),
    ]:  # fmt: skip
        order.push(item, key, priority)
    assert list(order) == ["c1", "a2", "b1", "a3", "a4", "a1"]
    assert order.first(lambda item: item.startswith("b")) == "b1"
    order.turn_taken("a", Priority.NORMAL)  # a had its turn: b goes first now
    assert list(order)[:3] == ["c1", "b1", "a2"]
    order.turn_given_back("a", Priority.NORMAL)
    assert list(order)[:3] == ["c1", "a2", "b1"]
    order.remove("a2", "a", Priority.NORMAL)
    order.remove("a2", "a", Priority.NORMAL)  # gone already: nothing happens
    assert (len(order), order.depth(Priority.NORMAL)) == (5, 3)


# Each key has one priority (its record's), two keys at each.
KEY_PRIORITY = {
    "h1": Priority.HIGH, "h2": Priority.HIGH, "n1": Priority.NORMAL, "n2": Priority.NORMAL,
    "n3": Priority.NORMAL, "l1": Priority.LOW, "l2": Priority.LOW,
}  # fmt: skip
# A run of operations on the order: ("push", key) or ("serve",).
operations = st.lists(
    st.one_of(st.tuples(st.just("push"), st.sampled_from(sorted(KEY_PRIORITY))),
              st.just(("serve",))),
    max_size=80,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(operations)
@example([("push", "n1")] * 5 + [("push", "n2"), ("serve",)] * 3)
@example([("push", "l1"), ("push", "h1"), ("serve",), ("serve",)])
def test_serving_in_fair_order_is_fifo_per_key_and_never_starves_a_key(
    ops: list[tuple[Any, ...]],
) -> None:
    order = FairOrder[tuple[str, int]]()
    pushed = Counter[str]()
    served: list[tuple[str, int]] = []
    # For each key with items waiting: how often each other key of its priority was
    # served since its own last turn (or since it began waiting).
    passed: dict[str, Counter[str]] = {}
    for op in ops:
        if op[0] == "push":
            key = op[1]
            order.push((key, pushed[key]), key, KEY_PRIORITY[key])
            pushed[key] += 1
            passed.setdefault(key, Counter())
            continue
        item = order.first(lambda _: True)
        if item is None:
            assert len(order) == 0
            continue
        key = item[0]
        priority = KEY_PRIORITY[key]
        # Nothing of a higher priority waits.
        assert all(PRIORITIES.index(KEY_PRIORITY[k]) >= PRIORITIES.index(priority) for k in passed)
        order.turn_taken(key, priority)
        order.remove(item, key, priority)
        served.append(item)
        passed[key] = Counter()
        if not any(k == key for k, _ in order):
            del passed[key]
        for other, counts in passed.items():
            if other != key and KEY_PRIORITY[other] is priority:
                counts[key] += 1
                # Round robin: a waiting key is passed at most once by each other key of
                # its priority before its own turn comes.
                assert counts[key] <= 1, (other, key)
    for key in pushed:
        numbers = [n for k, n in served if k == key]
        assert numbers == sorted(numbers)  # first come, first served within a key
    assert len(order) == sum(pushed.values()) - len(served)


# -- waiting on real slots, virtual time -------------------------------------------------------


class Served:
    """Requests that each hold a slot for ``seconds`` once routed, in the order they got one."""

    def __init__(self, registry: Registry, queue: FairQueue, seconds: float = 1.0) -> None:
        self.registry, self.queue, self.seconds = registry, queue, seconds
        self.order: list[str] = []
        self.at: dict[str, float] = {}  # when each got its slot
        self.errors: list[Exception] = []

    async def request(self, who: Caller, label: str, model: str = MODEL) -> None:
        try:
            decision = await plan_route_patiently(
                Requirements(model), self.registry, NO_WAIT, caller=who, queue=self.queue
            )
        except (QueueFull, QueueTimeout, BackendsBusy) as exc:
            self.errors.append(exc)
            self.at[label] = trio.current_time()
            return
        # No checkpoint between the plan and the slot, as in forward_chat's first attempt.
        with self.registry.occupy(decision.candidates[0].backend):
            self.order.append(label)
            self.at[label] = trio.current_time()
            await trio.sleep(self.seconds)


async def test_a_burst_of_one_key_does_not_starve_another_keys_few(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = fleet(("a", (MODEL,), 2))
    served = Served(registry, queue_for(registry))
    burst, few = caller("burst"), caller("few")
    async with trio.open_nursery() as nursery:
        # One at a time, so each arrives (and queues) in its order: trio runs tasks
        # started together in any order.
        for who, label in [(burst, f"burst{i}") for i in range(50)] + [
            (few, f"few{i}") for i in range(5)
        ]:
            nursery.start_soon(served.request, who, label)
            await trio.testing.wait_all_tasks_blocked()
    assert not served.errors
    assert len(served.order) == 55
    # Two slots free at each second: one for each key in turn, so the few are done by
    # the fifth second, when the burst has had 7 (slots freed together wake their
    # requests together, in any order: compare times, not the order of the list).
    at = served.at
    assert max(at[f"few{i}"] for i in range(5)) < at["burst19"]
    assert max(at[f"few{i}"] for i in range(5)) == 5
    # First come, first served within each key.
    for key, count in (("few", 5), ("burst", 50)):
        times = [at[f"{key}{i}"] for i in range(count)]
        assert times == sorted(times)


async def test_a_higher_priority_overtakes_the_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = fleet(("a", (MODEL,), 1))
    queue = queue_for(registry)
    served = Served(registry, queue)
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(served.request, caller("low", Priority.LOW), f"low{i}")
            await trio.testing.wait_all_tasks_blocked()
        assert (queue.depth(Priority.LOW), len(queue)) == (4, 4)
        nursery.start_soon(served.request, caller("normal"), "normal")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(served.request, caller("vip", Priority.HIGH), "vip")
    assert served.order == ["low0", "vip", "normal", "low1", "low2", "low3", "low4"]


async def test_a_freed_slot_wakes_only_a_request_that_backend_can_serve(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = fleet(("a", ("m1",), 1), ("b", ("m2",), 1))
    served = Served(registry, queue_for(registry))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(served.request, caller("x"), "m1-first", "m1")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(served.request, caller("y"), "m2-first", "m2")
        await trio.testing.wait_all_tasks_blocked()
        # Both backends are full; the m2 request waits ahead of the m1 one.
        nursery.start_soon(served.request, caller("y"), "m2-second", "m2")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(served.request, caller("x"), "m1-second", "m1")
    # Each backend's freed slot went to the request it could serve, at once: the m2
    # request ahead in the queue did not take (and lose) the slot of a, which serves m1.
    assert served.at == {"m1-first": 0, "m2-first": 0, "m1-second": 1, "m2-second": 1}


async def test_a_request_that_leaves_frees_its_place_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = fleet(("a", (MODEL,), 1))
    queue = queue_for(registry)
    served = Served(registry, queue)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(served.request, caller("k"), "first")
        await trio.testing.wait_all_tasks_blocked()
        leaving = trio.CancelScope()
        nursery.start_soon(_in, leaving, served.request(caller("k"), "gone"))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(served.request, caller("k"), "next")
        await trio.testing.wait_all_tasks_blocked()
        assert len(queue) == 2
        leaving.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert len(queue) == 1  # gone before any slot freed
    assert served.order == ["first", "next"]
    assert len(queue) == 0


async def _in(scope: trio.CancelScope, request: Any) -> None:
    with scope:
        await request


async def test_a_full_queue_refuses_and_a_long_wait_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = fleet(("a", (MODEL,), 1))
    queue = queue_for(registry, max_size=1, max_wait=5)
    served = Served(registry, queue, seconds=60)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(served.request, caller("k"), "holder")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(served.request, caller("k"), "waits")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(served.request, caller("k"), "refused")
        await trio.testing.wait_all_tasks_blocked()
        assert [type(e) for e in served.errors] == [QueueFull]
    full, timeout = served.errors
    assert isinstance(full, QueueFull)
    assert full.status == 429
    assert ("retry-after", "1") in full.headers()
    assert isinstance(timeout, QueueTimeout)
    assert (timeout.status, timeout.code) == (503, "queue_timeout")
    assert timeout.headers()[0][0] == "retry-after"
    assert served.at["waits"] == 5  # it queued at 0, and waited max_wait_seconds
    assert served.order == ["holder"]


async def test_no_queue_is_busy_at_once(autojump_clock: trio.testing.MockClock) -> None:
    registry = fleet(("a", (MODEL,), 1))
    served = Served(registry, queue_for(registry, max_size=0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(served.request, caller("k"), "holder")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(served.request, caller("k"), "busy")
    assert [type(e) for e in served.errors] == [BackendsBusy]


# Steps of a run against the queue: a request arrives (key, model), the oldest request
# holding a slot finishes, or the oldest waiting one leaves.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("arrive"), st.sampled_from("xyz"), st.sampled_from(("m1", "m2"))),
        st.just(("finish",)),
        st.just(("leave",)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(steps)
@example([("arrive", "x", "m2")] * 4 + [("finish",), ("leave",), ("finish",)])
@example([("arrive", "x", "m1"), ("arrive", "y", "m2"), ("arrive", "z", "m2"),
          ("arrive", "x", "m2"), ("leave",), ("finish",), ("finish",)])  # fmt: skip
def test_no_freed_slot_is_lost_while_a_request_waits(ops: list[tuple[str, ...]]) -> None:
    """At every rest, a waiting request has no backend of its model with room: every
    freed slot reached someone who could use it (no lost wake-up)."""

    async def main() -> None:
        # a serves m1 and m2, b only m2: slots of a may serve either kind of waiter.
        registry = fleet(("a", ("m1", "m2"), 1), ("b", ("m2",), 2))
        queue = queue_for(registry)
        holding: list[trio.Event] = []  # set one to finish its request
        waiting: list[trio.CancelScope] = []  # every request, oldest first
        routed: set[trio.CancelScope] = set()

        async def request(model: str, who: Caller, scope: trio.CancelScope) -> None:
            with scope:
                decision = await plan_route_patiently(
                    Requirements(model), registry, NO_WAIT, caller=who, queue=queue
                )
                routed.add(scope)
                finish = trio.Event()
                holding.append(finish)
                with registry.occupy(decision.candidates[0].backend):
                    await finish.wait()

        def assert_no_lost_slot() -> None:
            for place in queue.waiting():
                room = [b.name for b in registry if place.wants(b) and not b.saturated]
                assert not room, (place.key, room)

        async with trio.open_nursery() as nursery:
            for op in ops:
                if op[0] == "arrive":
                    scope = trio.CancelScope()
                    waiting.append(scope)
                    nursery.start_soon(request, op[2], caller(op[1]), scope)
                elif op[0] == "finish" and holding:
                    holding.pop(0).set()
                elif op[0] == "leave":
                    # The oldest request still waiting: its client goes away.
                    for scope in waiting:
                        if scope not in routed and not scope.cancel_called:
                            scope.cancel()
                            break
                await trio.testing.wait_all_tasks_blocked()
                assert_no_lost_slot()
            while holding or len(queue):
                for finish in holding:
                    finish.set()
                holding.clear()
                await trio.testing.wait_all_tasks_blocked()
                assert_no_lost_slot()
        assert all(b.in_flight == 0 for b in registry)
        assert len(queue) == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- end to end, anonymous callers -------------------------------------------------------------


async def test_requests_wait_for_a_full_backend_instead_of_503(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    a = sim("a")
    a.faults.delay_before_headers_seconds = 1
    nexus = await start_nexus([a], backend_options={"a": {"max_concurrency": 1}})
    statuses: list[int] = []

    async def ask() -> None:
        response = await nexus.http.post("/v1/chat/completions", json=HELLO)
        statuses.append(response.status_code)

    with trio.fail_after(20):  # virtual
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(ask)
    assert statuses == [200] * 4
    assert a.stats.chat_requests == 4
    metrics = (await nexus.http.get("/metrics")).text
    assert 'nexus_queue_depth{priority="normal"} 0.0' in metrics
    assert 'nexus_queue_wait_seconds_count{priority="normal"} 3.0' in metrics


async def test_a_long_wait_is_503_queue_timeout_with_retry_after(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    nexus = await start_nexus(
        [sim("a")], backend_options={"a": {"max_concurrency": 1}}, queue={"max_wait_seconds": 3}
    )
    registry = nexus.gateway.registry
    with registry.occupy(registry.get("a")), trio.fail_after(10):  # virtual
        began = trio.current_time()
        with pytest.raises(openai.APIStatusError) as caught:
            await nexus.openai().chat.completions.create(**HELLO)
        assert trio.current_time() - began >= 3
    response = caught.value.response
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "queue_timeout"
    assert response.headers["retry-after"]
    assert len(nexus.gateway.queue) == 0


async def test_a_full_queue_is_429_and_a_client_that_leaves_leaves_the_queue(
    start_nexus: Any, nursery: trio.Nursery, loopback_clock: trio.testing.MockClock
) -> None:
    a = sim("a")
    nexus = await start_nexus(
        [a], backend_options={"a": {"max_concurrency": 1}}, queue={"max_size": 1}
    )
    registry, queue = nexus.gateway.registry, nexus.gateway.queue
    statuses: list[int] = []
    with nexus.gateway.observer.feed.subscribe() as feed, trio.fail_after(20):
        with registry.occupy(registry.get("a")):  # the backend is full
            leaver = httpx.AsyncClient(base_url=nexus.url, timeout=30)
            leaving = trio.CancelScope()
            nursery.start_soon(_in, leaving, leaver.post("/v1/chat/completions", json=HELLO))
            await _depth(feed, 1)
            full = await nexus.http.post("/v1/chat/completions", json=HELLO)
            assert full.status_code == 429
            assert full.json()["error"]["code"] == "queue_full"
            assert full.headers["retry-after"] == "1"
            leaving.cancel()  # the client goes away: its connection closes
            await _depth(feed, 0)  # its place is free before any slot is
            await leaver.aclose()
            nursery.start_soon(_ask, nexus.http, statuses)
            await _depth(feed, 1)
        await _depth(feed, 0)  # the freed slot served it
    await nexus.settled()
    assert statuses == [200]
    assert len(queue) == 0
    assert a.stats.chat_requests == 1  # never the request whose client left


async def test_no_queue_answers_busy_at_once(
    start_nexus: Any, loopback_clock: trio.testing.MockClock
) -> None:
    nexus = await start_nexus(
        [sim("a")], backend_options={"a": {"max_concurrency": 1}}, queue={"max_size": 0}
    )
    registry = nexus.gateway.registry
    with registry.occupy(registry.get("a")), trio.fail_after(1):  # virtual: no 30 s wait
        response = await nexus.http.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "backends_busy"


async def _ask(http: httpx.AsyncClient, statuses: list[int]) -> None:
    response = await http.post("/v1/chat/completions", json=HELLO)
    statuses.append(response.status_code)


async def _depth(feed: trio.MemoryReceiveChannel[str], depth: int) -> None:
    """Wait for the dashboard's feed to say the queue holds ``depth`` requests."""
    async for text in feed:
        message = json.loads(text)
        if message["update_type"] == "QueueDepth" and message["data"] == {"depth": depth}:
            return
