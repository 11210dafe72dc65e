"""``POST /v1/completions`` through Nexus, in front of real llama.cpp servers: the text
each server completes the prompt with itself, streamed and not (greedy decoding).

Fill-in-the-middle is not testable here: SmolLM2 has no FIM tokens, so llama.cpp's
``/infill`` answers 501 for it (Nexus then tries the next backend, and with none able
to, the client gets that refusal).
"""

from __future__ import annotations

from typing import Any

import httpx
import ollama

from harness import ALIAS, LlamaServer, NexusProcess, config_for, sdk

PROMPT = "The three primary colours are"
MAX_TOKENS = 40


def test_completions_give_the_servers_own_text(
    llamas: tuple[LlamaServer, LlamaServer], start_nexus: Any
) -> None:
    request: dict[str, Any] = {
        "model": ALIAS, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0,
    }  # fmt: skip
    direct = httpx.post(llamas[0].url + "/v1/completions", json=request, timeout=60).json()
    expected = direct["choices"][0]["text"]
    assert len(expected.split()) > 3
    nexus: NexusProcess = start_nexus(config_for(*llamas))
    with sdk(nexus.url) as client:
        whole = client.completions.create(**request)
        assert whole.choices[0].text == expected
        assert whole.usage is not None
        assert whole.usage.completion_tokens > 0
        chunks = list(
            client.completions.create(
                **request, stream=True, stream_options={"include_usage": True}
            )
        )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].usage is not None


def test_ollamas_generate_gives_the_servers_own_text(
    llamas: tuple[LlamaServer, LlamaServer], start_nexus: Any
) -> None:
    # The ollama client's generate, as a chat turn and as a raw completion, on llama.cpp.
    chat_request: dict[str, Any] = {
        "model": ALIAS, "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS, "temperature": 0,
    }  # fmt: skip
    completion_request: dict[str, Any] = {
        "model": ALIAS, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0,
    }  # fmt: skip
    server = llamas[0].url
    chatted = httpx.post(server + "/v1/chat/completions", json=chat_request, timeout=60).json()
    completed = httpx.post(server + "/v1/completions", json=completion_request, timeout=60).json()
    nexus: NexusProcess = start_nexus(config_for(*llamas))
    options = {"num_predict": MAX_TOKENS, "temperature": 0}
    with ollama.Client(host=nexus.url, timeout=60) as client:
        turn = client.generate(model=ALIAS, prompt=PROMPT, options=options)
        raw = client.generate(model=ALIAS, prompt=PROMPT, raw=True, options=options)
        streamed = "".join(
            part.response
            for part in client.generate(model=ALIAS, prompt=PROMPT, raw=True, options=options,
                                        stream=True)
        )  # fmt: skip
    assert turn.response == chatted["choices"][0]["message"]["content"]
    assert raw.response == completed["choices"][0]["text"]
    assert streamed == completed["choices"][0]["text"]
