"""Embeddings: OpenAI's /v1/embeddings through the openai SDK, Ollama's /api/embed and
/api/embeddings through the ollama client, in front of simulated Ollama, vLLM and
llama.cpp; routing by what models can do, failover before the answer, usage counted."""

from __future__ import annotations

import json
from typing import Any

import httpx
import ollama
import openai
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from nexus_trio.config import RoutingSettings
from nexus_trio.dialects.embeddings import parse_embeddings_request
from nexus_trio.errors import RequestError
from nexus_trio.testing import Flavor, SimModel, SimulatedBackend, embedding_of

EMBED = "nomic-embed-text:latest"


def embedder(name: str, flavor: Flavor, model: str = EMBED) -> SimulatedBackend:
    """A backend serving one embedding-only model (and a chat model beside it)."""
    models = [SimModel(model, embedding=True), SimModel("llama3:8b", tools=True)]
    return SimulatedBackend(flavor=flavor, models=models, name=name)


@pytest.mark.parametrize("flavor", [Flavor.OLLAMA, Flavor.VLLM, Flavor.LLAMACPP])
async def test_openai_sdk_default_base64_and_float(start_nexus: Any, flavor: Flavor) -> None:
    a = embedder("a", flavor)
    nexus = await start_nexus([a])
    client = nexus.openai()
    raw = await client.embeddings.with_raw_response.create(model=EMBED, input="hello world")
    assert a.stats.last_embeddings_body == {
        "model": EMBED, "input": "hello world", "encoding_format": "base64"
    }  # fmt: skip
    assert raw.headers["x-nexus-backend"] == "a"
    assert raw.headers["x-nexus-via"] == nexus.gateway.instance_id
    decoded = raw.parse()
    assert decoded.data[0].embedding == embedding_of(EMBED, "hello world")
    assert decoded.usage.prompt_tokens == 2
    floats = await client.embeddings.create(
        model=EMBED, input=["one", "two three"], encoding_format="float"
    )
    assert [d.embedding for d in floats.data] == [
        embedding_of(EMBED, "one"), embedding_of(EMBED, "two three")
    ]  # fmt: skip
    assert [d.index for d in floats.data] == [0, 1]


async def test_tokens_and_dimensions(start_nexus: Any) -> None:
    a = embedder("a", Flavor.VLLM)
    nexus = await start_nexus([a])
    client = nexus.openai()
    tokens = await client.embeddings.create(model=EMBED, input=[1, 2, 3], dimensions=4)
    assert tokens.data[0].embedding == embedding_of(EMBED, "[1, 2, 3]", 4)
    assert tokens.usage.prompt_tokens == 3
    lists = await client.embeddings.create(model=EMBED, input=[[5, 6], [7]])
    assert [d.embedding for d in lists.data] == [
        embedding_of(EMBED, "[5, 6]"), embedding_of(EMBED, "[7]")
    ]  # fmt: skip
    assert a.stats.last_embeddings_body is not None
    assert a.stats.last_embeddings_body["input"] == [[5, 6], [7]]


@pytest.mark.parametrize("fault", ["status", "refused"])
async def test_failover_before_the_answer(
    start_nexus: Any, nursery: trio.Nursery, fault: str
) -> None:
    a, b = embedder("a", Flavor.VLLM), embedder("b", Flavor.LLAMACPP)
    nexus = await start_nexus(
        [a, b], routing={"strategy": "priority"}, backend_options={"b": {"priority": 2}}
    )
    if fault == "status":
        a.faults.status = 500
    else:
        await a.refuse_connections()
    answer = await nexus.openai().embeddings.with_raw_response.create(model=EMBED, input="x")
    assert answer.headers["x-nexus-backend"] == "b"
    assert answer.parse().data[0].embedding == embedding_of(EMBED, "x")
    assert b.stats.embedding_requests == 1
    assert a.stats.embedding_requests == (1 if fault == "status" else 0)


async def test_a_malformed_answer_fails_over(start_nexus: Any) -> None:
    a, b = embedder("a", Flavor.VLLM), embedder("b", Flavor.VLLM)
    nexus = await start_nexus(
        [a, b], routing={"strategy": "priority"}, backend_options={"b": {"priority": 2}}
    )
    a.faults.malformed = True
    answer = await nexus.openai().embeddings.with_raw_response.create(model=EMBED, input="x")
    assert answer.headers["x-nexus-backend"] == "b"


async def test_errors(start_nexus: Any) -> None:
    a = embedder("a", Flavor.OLLAMA)
    nexus = await start_nexus([a])
    client = nexus.openai()
    with pytest.raises(openai.NotFoundError) as missing:
        await client.embeddings.create(model="nope", input="x")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    for bad, param in [
        ({"model": EMBED}, "input"),
        ({"model": EMBED, "input": ""}, "input"),
        ({"model": EMBED, "input": []}, "input"),
        ({"model": EMBED, "input": ["a", 1]}, "input[1]"),
        ({"model": EMBED, "input": [1, -2]}, "input[1]"),
        ({"model": EMBED, "input": [[1], []]}, "input[1]"),
        ({"model": EMBED, "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": EMBED, "input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x"}, "model"),
    ]:
        response = await nexus.http.post("/v1/embeddings", json=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]["param"] == param, bad
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert a.stats.embedding_requests == 0
    # A chat model is not an embedding model (Ollama says what each model can do).
    with pytest.raises(openai.BadRequestError) as chat_model:
        await client.embeddings.create(model="llama3:8b", input="x")
    assert "not an embedding model" in chat_model.value.message
    # ... and an embedding model takes no chat.
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(
            model=EMBED, messages=[{"role": "user", "content": "hi"}]
        )
    assert "is an embedding model" in refused.value.message
    assert "/v1/embeddings" in refused.value.message
    assert a.stats.chat_requests == 0


async def test_an_embedding_only_model_refuses_chat_in_its_own_words() -> None:
    """Where Nexus does not know (vLLM says nothing of capabilities), the backend's
    refusal reaches the client as it is."""
    models = [SimModel(EMBED, embedding=True)]
    for flavor, status in [(Flavor.VLLM, 400), (Flavor.LLAMACPP, 501), (Flavor.OLLAMA, 400)]:
        backend = SimulatedBackend(flavor=flavor, models=models)
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            async with httpx.AsyncClient() as http:
                body = {"model": EMBED, "messages": [{"role": "user", "content": "hi"}]}
                answer = await http.post(backend.url + "/v1/chat/completions", json=body)
            assert answer.status_code == status
            nursery.cancel_scope.cancel()


async def test_ollama_client_embed_and_embeddings(start_nexus: Any) -> None:
    a, b = embedder("a", Flavor.OLLAMA), embedder("b", Flavor.VLLM, "bge-m3")
    nexus = await start_nexus([a, b])
    client = ollama.AsyncClient(host=nexus.url)
    nexus.sdk_clients.append(client)  # closed with the rest when the test ends
    one = await client.embed(model="nomic-embed-text", input="hello")  # without :latest
    assert one.embeddings == [embedding_of(EMBED, "hello")]
    assert one.model == "nomic-embed-text"
    assert one.prompt_eval_count == 1
    several = await client.embed(model="bge-m3", input=["a b", "c"], dimensions=3)
    assert several.embeddings == [embedding_of("bge-m3", "a b", 3), embedding_of("bge-m3", "c", 3)]
    assert b.stats.last_embeddings_body == {
        "model": "bge-m3", "input": ["a b", "c"], "encoding_format": "float", "dimensions": 3
    }  # fmt: skip
    legacy = await client.embeddings(model=EMBED, prompt="hello")
    assert list(legacy.embedding) == embedding_of(EMBED, "hello")
    with pytest.raises(ollama.ResponseError) as missing:
        await client.embed(model="nope", input="x")
    assert missing.value.status_code == 404
    assert missing.value.error == "model 'nope' not found"
    bad = await nexus.http.post("/api/embed", json={"model": EMBED, "input": [1, 2]})
    assert bad.status_code == 400
    assert "string" in bad.json()["error"]
    a.faults.status = 500  # the only backend of EMBED fails: Ollama's error shape
    failed = await nexus.http.post("/api/embed", json={"model": EMBED, "input": "x"})
    assert failed.status_code == 502
    assert set(failed.json()) == {"error"}


async def test_usage_is_counted(start_nexus: Any) -> None:
    a = embedder("a", Flavor.VLLM)
    nexus = await start_nexus([a])
    await nexus.openai().embeddings.create(model=EMBED, input=["a b c", "d"])
    await nexus.http.post("/api/embed", json={"model": EMBED, "input": "e f"})
    await nexus.settled()
    text = (await nexus.http.get("/metrics")).text
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    requests = {k: v for k, v in samples.items() if k[0] == "nexus_requests_total"}
    labels = [dict(k[1]) for k in requests]
    assert {"api": "embeddings", "model": EMBED, "backend": "a", "status": "200"}.items() <= (
        next(lbl for lbl in labels if lbl["api"] == "embeddings").items()
    )
    assert any(lbl["api"] == "ollama_embed" for lbl in labels)
    prompt = samples[("nexus_tokens_total", frozenset(
        {"model": EMBED, "backend": "a", "type": "prompt"}.items()))]  # fmt: skip
    assert prompt == 4 + 2
    history = (await nexus.http.get("/v1/history")).text
    assert '"api":"embeddings"' in history.replace(" ", "")


async def test_models_show_embedding(start_nexus: Any) -> None:
    nexus = await start_nexus([embedder("a", Flavor.OLLAMA)])
    listed = {m["id"]: m for m in (await nexus.http.get("/v1/models")).json()["data"]}
    assert "embedding" in listed[EMBED]["capabilities"]
    assert "completion" not in listed[EMBED]["capabilities"]
    assert "completion" in listed["llama3:8b"]["capabilities"]


_TEXT = st.text(min_size=1, max_size=20)
_TOKEN = st.integers(min_value=0, max_value=2**31)
_INPUT = st.one_of(
    _TEXT,
    st.lists(_TEXT, min_size=1, max_size=4),
    st.lists(_TOKEN, min_size=1, max_size=6),
    st.lists(st.lists(_TOKEN, min_size=1, max_size=4), min_size=1, max_size=3),
)


@given(
    text_input=_INPUT,
    extras=st.fixed_dictionaries(
        {},
        optional={
            "encoding_format": st.sampled_from(["float", "base64"]),
            "dimensions": st.integers(1, 4096),
            "user": st.text(max_size=10),
        },
    ),
    spaces=st.booleans(),
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_valid_body_goes_byte_identical(
    text_input: Any, extras: dict[str, Any], spaces: bool
) -> None:
    payload = {"model": "m", "input": text_input, **extras}
    body = json.dumps(payload, indent=1 if spaces else None, ensure_ascii=spaces).encode()
    chat = parse_embeddings_request(body, RoutingSettings())
    assert chat.body_for("m") == body  # as the client sent it
    assert chat.path == "/v1/embeddings"
    assert not chat.streamed_upstream
    assert chat.needs.embedding
    renamed = json.loads(chat.body_for("the-real-model"))  # an alias: only the model changes
    assert renamed == {**payload, "model": "the-real-model"}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
    max_leaves=8,
)


@given(_JSON)
def test_no_input_crashes_the_parser(value: Any) -> None:
    body = json.dumps({"model": "m", "input": value}).encode()
    status = 200
    try:
        parse_embeddings_request(body, RoutingSettings())
    except RequestError as exc:
        status = exc.status
    assert status in (200, 400)


async def test_ollama_show_says_embedding_only(start_nexus: Any) -> None:
    nexus = await start_nexus([embedder("a", Flavor.OLLAMA)])
    client = ollama.AsyncClient(host=nexus.url)
    nexus.sdk_clients.append(client)
    shown = await client.show("nomic-embed-text")
    assert shown.capabilities == ["embedding"]
    chat = await client.show("llama3:8b")
    assert chat.capabilities is not None
    assert "completion" in chat.capabilities
    assert "embedding" not in chat.capabilities


async def test_the_answer_is_the_backends_bytes(start_nexus: Any) -> None:
    """The backend's JSON reaches the client untouched (the simulated answer has no ids or
    times, so asking the backend itself gives the same bytes)."""
    a = embedder("a", Flavor.LLAMACPP)
    nexus = await start_nexus([a])
    body = {"model": EMBED, "input": ["x", "y z"], "encoding_format": "base64", "user": "u"}
    through = await nexus.http.post("/v1/embeddings", json=body)
    async with httpx.AsyncClient() as http:
        direct = await http.post(a.url + "/v1/embeddings", json=body)
    assert through.status_code == direct.status_code == 200
    assert through.content == direct.content
    assert through.headers["x-nexus-backend"] == "a"
