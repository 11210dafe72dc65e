"""Conversation affinity on real llama.cpp: the turns of a conversation go to the server
that still holds its prefix, and that server evaluates only what is new.

llama-server reports per request, in the final chunk of a stream, ``timings.prompt_n``
(prompt tokens it evaluated) and ``timings.cache_n`` (tokens taken from its cache); Nexus
relays that chunk as it came.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import httpx

from harness import ALIAS, LlamaServer, NexusProcess, config_for

# About 600 tokens of deterministic, varied text (SmolLM2's tokenizer; checked below).
SYSTEM = "You are the archivist of a small port town. Answer in one short sentence. " + " ".join(
    f"Entry {i}: the {place} {verb} the {thing}."
    for i, (place, verb, thing) in enumerate(
        (p, v, t)
        for p in ("harbour", "lighthouse", "ferry", "customs house")
        for v in ("records", "depends on", "warns sailors about")
        for t in ("spring tides", "winter storms", "fog signals", "pilot boats")
    )
)
QUESTIONS = ("What do you know about tides?", "Why does fog matter?", "Who reads the logs?")


def affinity_configurable() -> bool:
    from nexus_trio.config.schema import RoutingSettings

    return any(f.name == "affinity" for f in dataclasses.fields(RoutingSettings))


def turn(http: httpx.Client, url: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    """One streamed turn through Nexus: the answer, the backend, llama.cpp's timings."""
    body = {"model": ALIAS, "messages": messages, "max_tokens": 16, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    text, timings, usage = "", {}, {}
    with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        backend = response.headers["x-nexus-backend"]
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            timings = chunk.get("timings") or timings
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                text += choice["delta"].get("content") or ""
    assert text
    assert timings, "llama-server's final chunk carried no timings"
    return {"answer": text, "backend": backend, "prompt_tokens": usage["prompt_tokens"],
            "prompt_n": timings["prompt_n"], "cache_n": timings["cache_n"]}  # fmt: skip


def test_turns_of_a_conversation_stay_on_the_server_that_caches_them(
    llamas: tuple[LlamaServer, LlamaServer], start_nexus: Any
) -> None:
    affinity = affinity_configurable()
    routing = (
        '[routing]\nstrategy = "smart"\n[routing.affinity]\nenabled = true\n'
        if affinity
        else '[routing]\nstrategy = "round_robin"\n'
    )
    nexus: NexusProcess = start_nexus(config_for(*llamas) + routing)
    with httpx.Client(timeout=60) as http:
        tokens = len(
            http.post(llamas[0].url + "/tokenize", json={"content": SYSTEM}).json()["tokens"]
        )
        assert 500 <= tokens <= 800
        histories: dict[str, list[dict[str, str]]] = {
            c: [{"role": "system", "content": SYSTEM}] for c in "ab"
        }
        served: list[tuple[str, int, dict[str, Any]]] = []
        # One conversation runs ahead of the other, so that alternating backends (round
        # robin) would split each conversation over both servers.
        for c, t in (("a", 0), ("a", 1), ("b", 0), ("a", 2), ("b", 1), ("b", 2)):
            history = histories[c]
            history.append({"role": "user", "content": QUESTIONS[t]})
            result = turn(http, nexus.url, history)
            history.append({"role": "assistant", "content": result["answer"]})
            served.append((c, t, result))
    for c, t, result in served:
        # Whatever the routing, a server that holds a prefix of the prompt evaluates only
        # the rest: never more than the whole prompt, and the counts add up.
        assert result["prompt_n"] + result["cache_n"] == result["prompt_tokens"]
        earlier = [r for c2, t2, r in served if c2 == c and t2 < t]
        if any(r["backend"] == result["backend"] for r in earlier):
            # This server answered an earlier turn: the history up to there is cached.
            assert result["prompt_n"] < result["prompt_tokens"] / 4, (c, t, result)
    if affinity:
        for c in "ab":
            backends = {r["backend"] for c2, _, r in served if c2 == c}
            assert len(backends) == 1, (c, served)
            for _, t, r in ((c2, t, r) for c2, t, r in served if c2 == c):
                if t > 0:
                    assert r["prompt_n"] < r["prompt_tokens"] / 4, (c, t, r)
