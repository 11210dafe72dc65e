"""Nexus in front of two real llama.cpp servers running a real model (SmolLM2-135M).

What users run: `nexus serve --config ...` as a process, the official openai
SDK as the client, llama-server processes that are killed with SIGKILL.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from harness import ALIAS, CONTEXT, PARALLEL, LlamaServer, NexusProcess, config_for, sdk

PROMPT: list[Any] = [{"role": "user", "content": "Write three sentences about the sea."}]
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 60, "seed": 1}


def stream_text(client: openai.OpenAI, **extra: Any) -> str:
    text = ""
    for chunk in client.chat.completions.create(
        model=ALIAS, messages=PROMPT, stream=True, **GREEDY, **extra
    ):
        for choice in chunk.choices:
            text += choice.delta.content or ""
    return text


@pytest.fixture
def direct_answer(llamas: tuple[LlamaServer, LlamaServer]) -> str:
    """The uninterrupted greedy answer, asked of a server directly."""
    with sdk(llamas[0].url) as client:
        completion = client.chat.completions.create(model=ALIAS, messages=PROMPT, **GREEDY)
    text = completion.choices[0].message.content or ""
    assert len(text.split()) > 10
    return text


def test_both_servers_are_found_with_their_model_and_context(
    llamas: tuple[LlamaServer, LlamaServer], start_nexus: Any
) -> None:
    a, b = llamas
    nexus: NexusProcess = start_nexus(config_for(a, discovery=True))
    # The second is not in the config: `nexus advertise` announces it on loopback.
    advertiser = subprocess.Popen(
        [sys.executable, "-m", "nexus_trio", "advertise", b.url, "--name", "llama-b",
         "--interface", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        nexus.wait_for(r"backend llama-b \(llamacpp, \S+\) found by mdns")
        backends = {
            b["name"]: b for b in httpx.get(nexus.url + "/admin/backends").json()["backends"]
        }
        assert set(backends) == {"llama-0", "llama-b"}
        for view in backends.values():
            assert view["type"] == "llamacpp"
            assert view["status"] == "healthy"
            assert view["models"] == [ALIAS]
        models = httpx.get(nexus.url + "/admin/models").json()["models"]
        (model,) = models
        assert model["id"] == ALIAS
        assert sorted(model["backends"]) == ["llama-0", "llama-b"]
        # /props: n_ctx is what one request may use (the context split over the slots).
        assert model["context_length"] == CONTEXT // PARALLEL
    finally:
        advertiser.terminate()
        advertiser.wait(15)


def test_answers_through_nexus_match_the_server_directly(
    llamas: tuple[LlamaServer, LlamaServer], start_nexus: Any, direct_answer: str
) -> None:
    nexus: NexusProcess = start_nexus(config_for(*llamas))
    with sdk(nexus.url) as client:
        completion = client.chat.completions.create(model=ALIAS, messages=PROMPT, **GREEDY)
        assert completion.choices[0].message.content == direct_answer
        assert stream_text(client) == direct_answer
        listed = [m.id for m in client.models.list()]
        assert listed == [ALIAS]


def test_load_spreads_over_both_servers(
    llamas: tuple[LlamaServer, LlamaServer], start_nexus: Any
) -> None:
    nexus: NexusProcess = start_nexus(config_for(*llamas))

    def ask(_: int) -> str:
        with httpx.Client(timeout=120) as http:
            response = http.post(
                nexus.url + "/v1/chat/completions",
                json={"model": ALIAS, "messages": PROMPT, "max_tokens": 24},
            )
        assert response.status_code == 200
        return response.headers["x-nexus-backend"]

    with ThreadPoolExecutor(max_workers=6) as pool:
        served_by = list(pool.map(ask, range(12)))
    assert set(served_by) == {"llama-0", "llama-1"}
    assert min(served_by.count("llama-0"), served_by.count("llama-1")) >= 3  # neither idle


def test_a_server_killed_before_the_request_is_invisible(
    llamas: tuple[LlamaServer, LlamaServer], start_nexus: Any, direct_answer: str
) -> None:
    nexus: NexusProcess = start_nexus(config_for(*llamas))
    llamas[0].kill()
    with sdk(nexus.url) as client:
        for _ in range(2):
            raw = client.chat.completions.with_raw_response.create(
                model=ALIAS, messages=PROMPT, **GREEDY
            )
            assert raw.headers["x-nexus-backend"] == "llama-1"
            assert raw.parse().choices[0].message.content == direct_answer


@pytest.fixture(params=[0.15, 0.5, 0.85], ids=["early", "middle", "late"])
def cut(request: pytest.FixtureRequest) -> float:
    fraction: float = request.param
    return fraction


def test_a_server_killed_mid_stream_is_continued_exactly(
    llamas: tuple[LlamaServer, LlamaServer], start_nexus: Any, direct_answer: str, cut: float
) -> None:
    nexus: NexusProcess = start_nexus(config_for(*llamas))
    by_name = {"llama-0": llamas[0], "llama-1": llamas[1]}
    cut_after = max(1, int(len(direct_answer) * cut))
    text, finishes, killed = "", [], None
    with (
        sdk(nexus.url) as client,
        client.chat.completions.with_streaming_response.create(
            model=ALIAS, messages=PROMPT, stream=True, **GREEDY
        ) as raw,
    ):
        serving = by_name[raw.headers["x-nexus-backend"]]
        for chunk in raw.parse():
            for choice in chunk.choices:
                text += choice.delta.content or ""
                if choice.finish_reason:
                    finishes.append(choice.finish_reason)
            if killed is None and len(text) >= cut_after:
                serving.kill()  # SIGKILL mid-stream: the connection just drops
                killed = len(text)
    assert killed is not None, "the answer finished before the cut point"
    # llama.cpp repeats the prefilled text before continuing it: nothing may be doubled or lost.
    assert text == direct_answer
    assert len(finishes) == 1
    nexus.wait_for(r"failovers=1 .*mid_stream_failovers=1")


def decoding(server: LlamaServer) -> int:
    """Tokens ``server`` has generated so far for the request it is answering (0: idle),
    from its ``/slots``."""
    try:
        slots = httpx.get(server.url + "/slots", timeout=5).json()
    except httpx.HTTPError:
        return 0
    most = 0
    for slot in slots if isinstance(slots, list) else []:
        if isinstance(slot, dict) and slot.get("is_processing"):
            token = slot.get("next_token")
            token = token[0] if isinstance(token, list) and token else token
            most = max(most, int((token or {}).get("n_decoded", 0)))
    return most


def test_a_server_killed_mid_generation_of_a_whole_answer_is_continued_exactly(
    llamas: tuple[LlamaServer, LlamaServer], start_nexus: Any, cut: float
) -> None:
    """A client that asked for no stream: Nexus streamed it upstream anyway, so when the
    server generating it is SIGKILLed part-way, a replica continues it and the client gets
    the text of an uninterrupted run."""
    with sdk(llamas[0].url) as client:
        direct = client.chat.completions.create(model=ALIAS, messages=PROMPT, **GREEDY)
    assert direct.usage is not None
    cut_after = max(1, int(direct.usage.completion_tokens * cut))
    nexus: NexusProcess = start_nexus(config_for(*llamas))
    killed = None
    with sdk(nexus.url) as client, ThreadPoolExecutor(max_workers=1) as pool:
        answer = pool.submit(client.chat.completions.create, model=ALIAS, messages=PROMPT, **GREEDY)
        while killed is None and not answer.done():
            for server in llamas:
                if decoding(server) >= cut_after:
                    server.kill()  # SIGKILL mid-generation: the connection just drops
                    killed = server
                    break
            time.sleep(0.005)  # polling real servers' /slots, not waiting on Nexus
        completion = answer.result(timeout=120)
    assert killed is not None, "the answer finished before the cut point"
    assert completion.choices[0].message.content == direct.choices[0].message.content
    assert completion.choices[0].finish_reason == direct.choices[0].finish_reason
    nexus.wait_for(r"failovers=1 .*mid_stream_failovers=1")


def test_a_restarted_server_is_healthy_again_and_gets_traffic(
    llamas: tuple[LlamaServer, LlamaServer], start_nexus: Any
) -> None:
    nexus: NexusProcess = start_nexus(config_for(*llamas))
    a = llamas[0]
    a.kill()
    with sdk(nexus.url) as client:
        client.chat.completions.create(model=ALIAS, messages=PROMPT, max_tokens=8)
    mark = len(nexus.log)
    nexus.wait_for(r"backend llama-0 is (out of rotation|unhealthy)")
    a.start()  # the same port
    nexus.wait_for(r"backend llama-0 is healthy again", after=mark)
    served_by = set()
    with sdk(nexus.url) as client:
        for _ in range(6):
            raw = client.chat.completions.with_raw_response.create(
                model=ALIAS, messages=PROMPT, max_tokens=8
            )
            served_by.add(raw.headers["x-nexus-backend"])
    assert "llama-0" in served_by
