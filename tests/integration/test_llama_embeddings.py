"""Embeddings through Nexus from a real llama-server started with ``--embeddings``: the
server's own vectors, whether the client asks floats or base64 (the openai SDK's
default), and through Ollama's /api/embed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness import ALIAS, LlamaServer, NexusProcess, config_for, sdk

TEXTS = ["The quick brown fox.", "Nexus routes requests to a fleet of servers."]


@pytest.fixture(scope="module")
def embedder() -> Iterator[LlamaServer]:
    server = LlamaServer(
        Path(os.environ["LLAMA_SERVER_BIN"]), Path(os.environ["LLAMA_MODEL"]),
        extra=("--embeddings", "--pooling", "mean"),
    )  # fmt: skip
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_embeddings_are_the_servers_own(embedder: LlamaServer, start_nexus: object) -> None:
    own = httpx.post(
        embedder.url + "/v1/embeddings",
        json={"model": ALIAS, "input": TEXTS, "encoding_format": "float"},
        timeout=60,
    ).json()
    vectors = [d["embedding"] for d in sorted(own["data"], key=lambda d: d["index"])]
    assert len(vectors) == 2
    assert len(vectors[0]) > 16

    nexus: NexusProcess = start_nexus(config_for(embedder))  # type: ignore[operator]
    with sdk(nexus.url) as client:
        floats = client.embeddings.create(model=ALIAS, input=TEXTS, encoding_format="float")
        assert [d.embedding for d in floats.data] == vectors
        assert floats.usage.prompt_tokens == own["usage"]["prompt_tokens"]
        decoded = client.embeddings.create(model=ALIAS, input=TEXTS)  # base64 on the wire
        # float32 on the wire: each value is the server's, rounded to float32
        for got, want in zip((d.embedding for d in decoded.data), vectors, strict=True):
            assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
    ollama = httpx.post(nexus.url + "/api/embed", json={"model": ALIAS, "input": TEXTS}, timeout=60)
    assert ollama.status_code == 200, ollama.text
    assert ollama.json()["embeddings"] == vectors
    assert ollama.json()["prompt_eval_count"] == own["usage"]["prompt_tokens"]
