"""Conversation affinity: a conversation's turns go to the backend that holds its prefix,
unless that backend is out, full or loaded well above the rest; a session key keeps a
client's requests together."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_trio.aging import AgingTable
from nexus_trio.config import BackendType, settings_from_mapping
from nexus_trio.registry import Backend, ModelInfo
from nexus_trio.routing.affinity import (
    ConversationKey,
    Preference,
    chain,
    conversation_key,
    extend,
    prefer,
    served_keys,
)
from nexus_trio.routing.requirements import Requirements
from nexus_trio.routing.router import HIT, MISS, YIELDED, plan_route
from nexus_trio.testing import expected_answer

from helpers import sim

MODEL = "llama3:8b"
SYSTEM = {"role": "system", "content": "You are terse."}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


# -- the prefix identity -------------------------------------------------------------------


def test_every_prefix_has_its_own_link() -> None:
    messages = [SYSTEM, user("a"), assistant("b"), user("c")]
    links, skip = chain(messages)
    assert skip == 0
    assert len(links) == 4
    for k in range(1, 5):
        assert chain(messages[:k])[0] == links[:k]
    assert len(set(links)) == 4
    assert chain([SYSTEM, user("a"), assistant("b"), user("C")])[0][:3] == links[:3]
    assert chain([SYSTEM, user("a"), assistant("b"), user("C")])[0][3] != links[3]


def test_the_answer_extends_the_chain_as_the_next_turn_does() -> None:
    first = [SYSTEM, user("Hi")]
    links, _ = chain(first)
    # The client echoes the answer back as the SDK built it: null fields, text parts.
    echoed = {"role": "assistant", "content": [{"type": "text", "text": "Hello"}], "refusal": None}
    following, _ = chain([*first, echoed, user("More")])
    assert extend(links, "Hello") == following[2]
    assert extend(links, "Hello!") != following[2]


def test_tools_are_the_first_link() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    with_tools, skip = chain([user("a")], tools)
    assert skip == 1
    assert len(with_tools) == 2
    assert with_tools[1] != chain([user("a")])[0][0]
    other = [{"type": "function", "function": {"name": "g", "parameters": {}}}]
    assert chain([user("a")], other)[0][1] != with_tools[1]


def test_tool_calls_count_by_name_and_arguments_not_ids() -> None:
    def call(call_id: str, arguments: str) -> dict[str, Any]:
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function",
                 "function": {"name": "f", "arguments": arguments}}
            ],
        }  # fmt: skip

    assert chain([call("x", "{}")]) == chain([call("y", "{}")])
    assert chain([call("x", "{}")]) != chain([call("x", '{"a": 1}')])


def test_a_session_is_read_from_header_then_body() -> None:
    payload: dict[str, Any] = {"messages": [user("a")], "user": "u", "prompt_cache_key": "k"}
    key = conversation_key(payload, "h")
    assert key is not None
    assert key.session == "h"
    assert conversation_key(payload) == ConversationKey("k", chain([user("a")])[0], 0)
    assert conversation_key({"messages": [user("a")], "user": "u"}, None, "meta") == (
        ConversationKey("meta", chain([user("a")])[0], 0)
    )
    assert conversation_key({"input": "embed me"}) is None
    assert conversation_key({"input": "x"}, "h") == ConversationKey("h", (), 0)


def serve(
    table: AgingTable, key: ConversationKey, answer: str | None, backend: str, now: float
) -> None:
    table.set(MODEL, served_keys(key, answer), backend, now)


# -- the table -----------------------------------------------------------------------------


def key_of(messages: list[dict[str, Any]], session: str | None = None) -> ConversationKey:
    key = conversation_key({"messages": messages}, session)
    assert key is not None
    return key


def test_the_longest_prefix_wins_and_the_new_turn_is_left_out() -> None:
    table = AgingTable(100, 600)
    turn1 = [SYSTEM, user("a")]
    serve(table, key_of(turn1), "answer a", "A", 0)
    turn2 = [*turn1, assistant("answer a"), user("b")]
    serve(table, key_of(turn2), "answer b", "B", 1)
    turn3 = [*turn2, assistant("answer b"), user("c")]
    assert prefer(table, MODEL, key_of(turn3), now=2) == Preference("B", "prefix", 5)
    branch = [*turn1, assistant("answer a"), user("b, said otherwise")]
    assert prefer(table, MODEL, key_of(branch), now=2) == Preference("A", "prefix", 3)
    # The request itself is never its own prefix: that turn no backend has seen.
    assert prefer(table, MODEL, key_of(turn1), now=2) is None
    assert prefer(table, "other-model", key_of(turn3), now=2) is None


def test_a_tool_call_answer_remembers_the_request() -> None:
    table = AgingTable(100, 600)
    turn1 = [user("weather?")]
    serve(table, key_of(turn1), None, "A", 0)
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c", "type": "function",
                            "function": {"name": "w", "arguments": "{}"}}]}  # fmt: skip
    result = {"role": "tool", "tool_call_id": "c", "content": "sunny"}
    assert prefer(table, MODEL, key_of([*turn1, call, result]), now=1) == Preference(
        "A", "prefix", 1
    )


def test_a_session_beats_the_prefix() -> None:
    table = AgingTable(100, 600)
    turn1 = [SYSTEM, user("a")]
    serve(table, key_of(turn1), "x", "A", 0)
    serve(table, key_of([user("elsewhere")], "s1"), "y", "B", 0)
    turn2 = [*turn1, assistant("x"), user("b")]
    assert prefer(table, MODEL, key_of(turn2, "s1"), now=1) == Preference("B", "session", 0)
    assert prefer(table, MODEL, key_of(turn2, "s2"), now=1) == Preference("A", "prefix", 3)


def test_entries_expire() -> None:
    table = AgingTable(100, 10)
    serve(table, key_of([user("a")]), "x", "A", 0)
    follow = key_of([user("a"), assistant("x"), user("b")])
    assert prefer(table, MODEL, follow, now=10) is not None
    assert prefer(table, MODEL, follow, now=10.5) is None
    serve(table, key_of([user("c")]), "y", "A", 11)
    assert table.entries(MODEL) == 1  # the expired one went when the next came


conversations = st.lists(
    st.tuples(
        st.integers(0, 30),  # which conversation
        st.sampled_from(["A", "B", "C"]),  # who served it
        st.floats(0, 50),  # seconds since the previous request
        st.booleans(),  # a text answer (or tool calls)
    ),
    max_size=200,
)


@settings(max_examples=60, deadline=None)
@given(conversations, st.integers(1, 20), st.floats(1, 100))
def test_the_table_keeps_its_bounds(
    stream: list[tuple[int, str, float, bool]], max_entries: int, max_age: float
) -> None:
    table = AgingTable(max_entries, max_age)
    histories: dict[int, list[dict[str, Any]]] = {}
    now = 0.0
    for conversation, backend, gap, text in stream:
        now += gap
        history = histories.setdefault(conversation, [SYSTEM])
        history.append(user(f"turn {len(history)}"))
        key = key_of(history, session=f"s{conversation}" if conversation % 3 == 0 else None)
        answer = f"answer {len(history)}" if text else None
        serve(table, key, answer, backend, now)
        history.append(assistant(answer or ""))
        assert table.entries(MODEL) <= max_entries
        oldest = table.oldest(MODEL)
        assert oldest is not None
        assert oldest >= now - max_age
        # What was just served is found by the next turn, whatever the bounds.
        following = key_of([*history, user("next")], None)
        if text:
            assert prefer(table, MODEL, following, now) == Preference(
                backend, "prefix", len(history)
            )


# -- routing -------------------------------------------------------------------------------


def fleet(*loads: int, **fields: Any) -> list[Backend]:
    return [
        Backend(
            name=name,
            url=f"http://{name}.test",
            type=BackendType.VLLM,
            models={MODEL: ModelInfo(MODEL)},
            in_flight=load,
            max_concurrency=4,
            **fields,
        )
        for name, load in zip("abc", loads, strict=False)
    ]


SMART = settings_from_mapping({"routing": {"strategy": "smart"}}).routing


@pytest.mark.parametrize(
    ("loads", "outcome"),
    [
        ((0, 0, 0), HIT),
        ((2, 2, 2), HIT),
        ((1, 0, 0), YIELDED),  # 0.25 > 1.5 * 0.083: a replica is idle
        ((3, 1, 1), YIELDED),  # 0.75 > 1.5 * 0.42
        ((2, 1, 1), HIT),  # 0.5 <= 1.5 * 0.33: the bound itself
        ((2, 2, 1), HIT),  # 0.5 <= 1.5 * 0.42
        ((4, 0, 0), YIELDED),  # at max_concurrency
    ],
)
def test_the_preferred_backend_yields_to_load(loads: tuple[int, ...], outcome: str) -> None:
    backends = fleet(*loads)
    decision = plan_route(
        Requirements(MODEL), backends, SMART, conversation=True,
        affinity=Preference("a", "prefix", 3),
    )  # fmt: skip
    assert decision.affinity == outcome
    first = decision.candidates[0]
    names = [c.backend.name for c in decision.candidates]
    assert sorted(names) == sorted(b.name for b in backends if b.in_flight < 4)
    if outcome == HIT:
        assert first.backend.name == "a"
        assert first.reason.startswith("affinity:prefix=3;smart:")
    else:
        assert first.backend.name != "a"
        assert not first.reason.startswith("affinity")


@pytest.mark.parametrize(
    "worse",
    [{"priority": 2}, {"warm_models": frozenset()}],
    ids=["lower-priority", "cold"],
)
def test_affinity_never_beats_a_better_tier(worse: dict[str, Any]) -> None:
    backends = fleet(0, 0)
    for key, value in worse.items():
        setattr(backends[0], key, value)
    decision = plan_route(
        Requirements(MODEL), backends, SMART, conversation=True,
        affinity=Preference("a", "prefix", 1),
    )  # fmt: skip
    assert decision.affinity == YIELDED
    assert decision.candidates[0].backend.name == "b"


def test_an_ejected_or_unknown_backend_is_passed_over() -> None:
    backends = fleet(0, 0)
    backends[0].ejected_until = 1e9
    for name in ("a", "gone"):
        decision = plan_route(
            Requirements(MODEL), backends, SMART, conversation=True,
            affinity=Preference(name, "prefix", 1),
        )  # fmt: skip
        assert decision.affinity == YIELDED
        assert [c.backend.name for c in decision.candidates] == ["b"]
    plain = plan_route(Requirements(MODEL), backends, SMART, conversation=True)
    assert plain.affinity == MISS
    other = settings_from_mapping({"routing": {"strategy": "round_robin"}}).routing
    assert plan_route(Requirements(MODEL), backends, other, conversation=True).affinity is None


# -- end to end, on simulated backends -----------------------------------------------------


async def ask(nexus: Any, messages: list[dict[str, Any]], **extra: Any) -> tuple[str, str, str]:
    """One turn through the OpenAI SDK: (backend, route reason, answer)."""
    raw = await nexus.openai().chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, **extra
    )
    answer = raw.parse().choices[0].message.content
    assert answer == expected_answer(MODEL, messages)
    return raw.headers["x-nexus-backend"], raw.headers["x-nexus-route-reason"], answer


async def affinity_counts(nexus: Any) -> dict[str, float]:
    text = (await nexus.http.get("/metrics")).text
    counts = {}
    for line in text.splitlines():
        if line.startswith("nexus_affinity_total{"):
            outcome = line.split('outcome="')[1].split('"')[0]
            counts[outcome] = float(line.rsplit(" ", 1)[1])
    return counts


async def test_a_conversation_stays_on_one_backend(start_nexus: Any) -> None:
    backends = [sim("a"), sim("b"), sim("c")]
    nexus = await start_nexus(backends, routing={"strategy": "smart"})
    messages = [SYSTEM, user("Tell me about trio.")]
    served = []
    for turn in range(5):
        backend, reason, answer = await ask(nexus, messages)
        served.append(backend)
        if turn:
            assert reason.startswith(f"affinity:prefix={len(messages) - 1};smart:")
        else:
            assert not reason.startswith("affinity")
        messages += [assistant(answer), user(f"And then {turn}?")]
    assert len(set(served)) == 1
    # Another conversation, meanwhile, is ranked as usual: not where the first one is.
    other, reason, _ = await ask(nexus, [user("Something else.")])
    assert other != served[0]
    assert reason.startswith("smart:")
    await nexus.settled()
    counts = await affinity_counts(nexus)
    assert (counts["hit"], counts["miss"], counts.get("yielded", 0)) == (4, 2, 0)


async def test_affinity_can_be_turned_off(start_nexus: Any) -> None:
    backends = [sim("a"), sim("b")]
    nexus = await start_nexus(
        backends, routing={"strategy": "smart", "affinity": {"enabled": False}}
    )
    messages = [user("Hello.")]
    served = set()
    for turn in range(4):
        backend, reason, answer = await ask(nexus, messages)
        assert reason.startswith("smart:")
        served.add(backend)
        messages += [assistant(answer), user(f"More {turn}.")]
    assert served == {"a", "b"}  # ties rotate: without affinity the turns spread
    assert await affinity_counts(nexus) == {}


async def test_affinity_yields_to_a_full_backend_and_the_conversation_follows(
    start_nexus: Any,
) -> None:
    backends = {b.name: b for b in (sim("a"), sim("b"))}
    nexus = await start_nexus(
        list(backends.values()),
        routing={"strategy": "smart"},
        backend_options={"a": {"max_concurrency": 1}, "b": {"max_concurrency": 1}},
    )
    turn1 = [SYSTEM, user("First.")]
    home, _, answer = await ask(nexus, turn1)
    away = "b" if home == "a" else "a"
    # Another turn of the conversation occupies its backend (it hangs there).
    backends[home].faults.delay_before_headers_seconds = 3600
    held = [*turn1, assistant(answer), user("Slow branch.")]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(
                nexus.http.post, "/v1/chat/completions", json={"model": MODEL, "messages": held}
            )
        )
        with trio.fail_after(10):
            while (await nexus.in_flight())[home] < 1:
                pass
        backends[home].faults.clear()
        turn2 = [*turn1, assistant(answer), user("Second.")]
        backend, reason, answer2 = await ask(nexus, turn2)
        assert (backend, reason.startswith("affinity")) == (away, False)
        # The conversation now follows the backend that served it.
        turn3 = [*turn2, assistant(answer2), user("Third.")]
        backend, reason, _ = await ask(nexus, turn3)
        assert backend == away
        assert reason.startswith("affinity:prefix=5;")
        nursery.cancel_scope.cancel()
    await nexus.settled()
    counts = await affinity_counts(nexus)
    assert counts["yielded"] == 1  # the held one hit too
    assert counts["hit"] == 2


async def test_affinity_yields_to_an_ejected_backend(start_nexus: Any) -> None:
    backends = {b.name: b for b in (sim("a"), sim("b"))}
    nexus = await start_nexus(list(backends.values()), routing={"strategy": "smart"})
    turn1 = [SYSTEM, user("First.")]
    home, _, answer = await ask(nexus, turn1)
    away = "b" if home == "a" else "a"
    backends[home].faults.status = 500
    # Its backend fails the next turn, which fails over; the failure ejects it.
    turn2 = [*turn1, assistant(answer), user("Second.")]
    backend, _, answer2 = await ask(nexus, turn2)
    assert backend == away
    assert backends[home].stats.chat_requests == 2
    assert nexus.gateway.registry.get(home).ejected_until is not None
    backends[home].faults.clear()
    # A branch still pointing at the ejected backend goes elsewhere at once.
    branch = [*turn1, assistant(answer), user("Second, said otherwise.")]
    backend, reason, _ = await ask(nexus, branch)
    assert backend == away
    assert not reason.startswith("affinity")
    # And the conversation follows the backend that served it.
    turn3 = [*turn2, assistant(answer2), user("Third.")]
    backend, reason, _ = await ask(nexus, turn3)
    assert backend == away
    assert reason.startswith("affinity:prefix=5;")
    assert backends[home].stats.chat_requests == 2


async def test_a_session_keeps_different_prefixes_together(start_nexus: Any) -> None:
    backends = [sim("a"), sim("b"), sim("c")]
    nexus = await start_nexus(backends, routing={"strategy": "smart"})
    served = set()
    for i in range(4):
        backend, reason, _ = await ask(
            nexus, [user(f"Unrelated {i}.")], extra_headers={"X-Session-Id": "s-1"}
        )
        served.add(backend)
        if i:
            assert reason.startswith("session:")
    assert len(served) == 1
    # OpenAI's ``user`` names a session too, and so does Anthropic's metadata.user_id.
    seen = set()
    for i in range(3):
        backend, _, _ = await ask(nexus, [user(f"Other {i}.")], user="someone")
        seen.add(backend)
    assert len(seen) == 1
    claude = nexus.anthropic()
    seen = set()
    for i in range(3):
        raw = await claude.messages.with_raw_response.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": f"Q{i}"}],
            metadata={"user_id": "user_abc_session_1"},
        )  # fmt: skip
        seen.add(raw.headers["x-nexus-backend"])
    assert len(seen) == 1
