"""Telling servers apart: `classify` on recorded answers, `fingerprint` on real sockets.

What `fingerprint` does when a server is silent, slow on some paths or refuses, and when
its deadline passes, is checked on trio's autojump clock through `httpx.MockTransport`:
the deadlines are virtual, so each test can say exactly when the answer came, and no
socket is waiting on the kernel while the clock jumps.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import trio
import trio.testing

from nexus_trio.backends.detect import (
    PROBE_PATHS,
    Fingerprint,
    ProbeAnswer,
    classify,
    detected_version,
    fingerprint,
)
from nexus_trio.config import BackendType
from nexus_trio.testing import Flavor, SimModel, SimulatedBackend
from nexus_trio.upstream.client import open_upstream_client

Answers = dict[str, ProbeAnswer]


def js(data: object, status: int = 200) -> ProbeAnswer:
    return ProbeAnswer(status, data, "<json>")


def text(body: str, status: int = 200) -> ProbeAnswer:
    return ProbeAnswer(status, None, body)


NOT_FOUND = js({"detail": "Not Found"}, 404)


def openai_list(*entries: dict[str, object]) -> ProbeAnswer:
    return js({"object": "list", "data": list(entries)})


def not_found_except(answers: Answers) -> Answers:
    """Every probe path answers 404 but those in ``answers``."""
    return dict.fromkeys(PROBE_PATHS, NOT_FOUND) | answers


# Recorded shapes, trimmed to what tells the servers apart.
OLLAMA: Answers = {
    "/": text("Ollama is running"),
    "/api/version": js({"version": "0.12.6"}),
    "/v1/models": openai_list({"id": "llama3:8b", "object": "model", "owned_by": "library"}),
    "/props": text("404 page not found", 404),
    "/version": text("404 page not found", 404),
    "/readyz": text("404 page not found", 404),
    "/node_id": text("404 page not found", 404),
    "/api/v0/models": text("404 page not found", 404),
}
LLAMACPP: Answers = {
    "/props": js(
        {
            "default_generation_settings": {"n_ctx": 4096, "params": {}},
            "total_slots": 1,
            "model_path": "/models/smollm2-135m-q4_k_m.gguf",
            "build_info": "b6795-5cca2542",
        }
    ),
    "/v1/models": openai_list({"id": "smollm2", "object": "model", "owned_by": "llamacpp"}),
    "/": text("<!doctype html><title>llama.cpp</title>"),
    "/readyz": js({"error": {"code": 404, "message": "File Not Found"}}, 404),
    "/version": js({"error": {"code": 404, "message": "File Not Found"}}, 404),
}
LOCALAI: Answers = {
    "/readyz": text("OK"),
    "/version": js({"version": "v3.6.0"}),
    "/v1/models": openai_list({"id": "gpt-4", "object": "model"}),
    "/props": js({"error": {"code": 404, "message": "Not Found"}}, 404),
    "/": text("<!doctype html><title>LocalAI</title>"),
}
VLLM: Answers = {
    "/version": js({"version": "0.11.0"}),
    "/v1/models": openai_list(
        {"id": "Qwen/Qwen2.5-7B", "object": "model", "owned_by": "vllm", "max_model_len": 32768},
        {"id": "sql-lora", "object": "model", "owned_by": "vllm", "parent": "Qwen/Qwen2.5-7B"},
    ),
    "/": js({"detail": "Not Found"}, 404),
    "/readyz": js({"detail": "Not Found"}, 404),
}
LMSTUDIO_ENTRY: dict[str, object] = {
    "id": "meta-llama-3.1-8b-instruct", "object": "model", "type": "llm",
    "publisher": "lmstudio-community", "arch": "llama", "compatibility_type": "gguf",
    "quantization": "Q4_K_M", "state": "not-loaded", "max_context_length": 131072,
}  # fmt: skip
# LM Studio answers every path it does not serve with 200 and an error body.
LMSTUDIO: Answers = {
    path: js({"error": f"Unexpected endpoint or method. (GET {path})"}) for path in PROBE_PATHS
} | {
    "/api/v0/models": openai_list(LMSTUDIO_ENTRY),
    "/v1/models": openai_list(
        {"id": "meta-llama-3.1-8b-instruct", "object": "model", "owned_by": "organization_owner"}
    ),
}
EXO: Answers = {
    "/node_id": js("12D3KooWQm8zU4bKd1xyzd7CwS1d1dpZ7h7mrqJxA4aN3EV2KWr1"),
    "/": text("<!doctype html><title>EXO</title>"),
    "/v1/models": openai_list({"id": "llama-3.2-1b", "object": "model", "owned_by": "exo"}),
    "/readyz": text("Not Found", 404),
}
GENERIC: Answers = not_found_except(
    {"/v1/models": openai_list({"id": "m", "object": "model", "owned_by": "system"})}
)


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        pytest.param(OLLAMA, BackendType.OLLAMA, id="ollama"),
        pytest.param(LLAMACPP, BackendType.LLAMACPP, id="llamacpp"),
        pytest.param(LOCALAI, BackendType.LOCALAI, id="localai"),
        pytest.param(VLLM, BackendType.VLLM, id="vllm"),
        pytest.param(LMSTUDIO, BackendType.LMSTUDIO, id="lmstudio"),
        pytest.param(EXO, BackendType.EXO, id="exo"),
        pytest.param(GENERIC, BackendType.GENERIC, id="generic"),
    ],
)
def test_classify_every_type(answers: Answers, expected: BackendType) -> None:
    assert classify(answers) is expected


def test_llamacpp_and_localai_on_one_port() -> None:
    # Both default to 8080 and both list models; /props is llama.cpp's, /readyz LocalAI's.
    assert classify(LLAMACPP | {"/readyz": text("OK")}) is BackendType.LLAMACPP
    assert classify(LOCALAI) is BackendType.LOCALAI
    # an older llama.cpp: /props without build_info or model_path
    old = LLAMACPP | {"/props": js({"default_generation_settings": {}, "total_slots": 1})}
    assert classify(old) is BackendType.LLAMACPP
    # a /props that is not llama.cpp's says nothing
    assert classify(LOCALAI | {"/props": js({"theme": "dark"})}) is BackendType.LOCALAI


def test_localai_posing_as_ollama_is_localai() -> None:
    # LocalAI's Ollama API can answer GET / like Ollama; Ollama has no /readyz.
    assert classify(LOCALAI | {"/": text("Ollama is running")}) is BackendType.LOCALAI


def test_vllm_without_version_is_generic() -> None:
    # owned_by "vllm" alone may be relayed by a gateway; only /version proves the server.
    assert classify(VLLM | {"/version": js({"detail": "Not Found"}, 404)}) is BackendType.GENERIC
    no_version = {path: answer for path, answer in VLLM.items() if path != "/version"}
    assert classify(no_version) is BackendType.GENERIC
    # and a /version alone (LocalAI has one) is no vLLM either
    mixed = VLLM | {"/v1/models": openai_list({"id": "m", "object": "model", "owned_by": "x"})}
    assert classify(mixed) is BackendType.GENERIC


def test_lmstudio_error_bodies_prove_nothing() -> None:
    # LM Studio's 200 {"error": ...} on /readyz, /props, /version must not pass as those.
    assert classify(LMSTUDIO) is BackendType.LMSTUDIO
    without_native = LMSTUDIO | {"/api/v0/models": js({"error": "Unexpected endpoint"})}
    assert classify(without_native) is BackendType.GENERIC
    empty = LMSTUDIO | {"/api/v0/models": openai_list()}
    assert classify(empty) is BackendType.LMSTUDIO  # nothing downloaded yet
    plain = LMSTUDIO | {"/api/v0/models": openai_list({"id": "m", "object": "model"})}
    assert classify(plain) is BackendType.GENERIC  # an OpenAI list under /api/v0 is not enough


@pytest.mark.parametrize(
    "answers",
    [
        pytest.param({}, id="nothing answered"),
        pytest.param(dict.fromkeys(PROBE_PATHS, NOT_FOUND), id="404 everywhere"),
        pytest.param(
            dict.fromkeys(PROBE_PATHS, text("<!doctype html><title>My app</title>")),
            id="an app answering every path with its page",
        ),
        pytest.param(
            dict.fromkeys(PROBE_PATHS, js({"status": "ok"})), id="a JSON API answering anything"
        ),
        pytest.param(not_found_except({"/": text("Ollama is running", 500)}), id="error status"),
        pytest.param(
            not_found_except({"/v1/models": js({"data": "nope"})}), id="a listing that is not one"
        ),
        pytest.param(
            not_found_except({"/v1/models": js({"data": [{"name": "no id"}]})}), id="entries no id"
        ),
        pytest.param(not_found_except({"/node_id": js("")}), id="an empty node id"),
    ],
)
def test_no_llm_server_is_none(answers: Answers) -> None:
    assert classify(answers) is None


def test_a_server_answering_in_part_is_classified_on_what_it_said() -> None:
    assert classify({"/": text("Ollama is running\n")}) is BackendType.OLLAMA
    assert classify({"/v1/models": GENERIC["/v1/models"]}) is BackendType.GENERIC


def test_detected_version() -> None:
    assert detected_version(BackendType.OLLAMA, OLLAMA) == "0.12.6"
    assert detected_version(BackendType.LLAMACPP, LLAMACPP) == "b6795-5cca2542"
    assert detected_version(BackendType.VLLM, VLLM) == "0.11.0"
    assert detected_version(BackendType.LOCALAI, LOCALAI) == "v3.6.0"
    assert detected_version(BackendType.LMSTUDIO, LMSTUDIO) is None
    assert detected_version(BackendType.EXO, EXO) is None
    assert detected_version(BackendType.GENERIC, GENERIC) is None
    assert detected_version(BackendType.OLLAMA, OLLAMA | {"/api/version": js({"v": 1})}) is None
    assert detected_version(BackendType.OLLAMA, {"/api/version": js({"version": ""})}) is None


def test_probe_answer_parsing() -> None:
    assert ProbeAnswer.from_body(200, b'{"a": 1}') == ProbeAnswer(200, {"a": 1}, '{"a": 1}')
    assert ProbeAnswer.from_body(200, b"Ollama is running").data is None
    assert ProbeAnswer.from_body(200, b'"id"').data == "id"
    assert ProbeAnswer.from_body(200, b"\xff{").text == "\ufffd{"
    assert ProbeAnswer.from_body(200, b'{"a": 1}', complete=False).data is None
    assert ProbeAnswer(204).ok
    assert not ProbeAnswer(200, {"error": "Unexpected endpoint"}).ok
    assert not ProbeAnswer(301).ok
    assert ProbeAnswer(200, ["error"]).ok  # only an object's "error" key is a refusal


# -- fingerprint, on loopback ---------------------------------------------------------------------

EXPECTED_VERSIONS = {
    Flavor.OLLAMA: "0.12.6",
    Flavor.VLLM: "0.11.0",
    Flavor.LLAMACPP: "b6795-5cca2542",
    Flavor.GENERIC: None,
    Flavor.LMSTUDIO: None,
    Flavor.EXO: None,
    Flavor.LOCALAI: "v3.6.0",
}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with open_upstream_client(1.0) as client:
        yield client


def test_every_flavour_has_an_expected_version() -> None:
    assert set(EXPECTED_VERSIONS) == set(Flavor)


@pytest.mark.parametrize("flavor", list(Flavor))
async def test_fingerprint_every_simulated_flavour(
    nursery: trio.Nursery, client: httpx.AsyncClient, flavor: Flavor
) -> None:
    sim = SimulatedBackend(flavor, [SimModel("llama3:8b")])
    url = await nursery.start(sim.serve)
    with trio.fail_after(5):
        found = await fingerprint(client, url + "/v1/")
    assert found == Fingerprint(BackendType(flavor.value), EXPECTED_VERSIONS[flavor], url)
    assert sim.stats.requests == len(PROBE_PATHS)
    assert sim.stats.chat_requests == 0  # never a generation


async def test_fingerprint_sends_the_key(nursery: trio.Nursery, client: httpx.AsyncClient) -> None:
    sim = SimulatedBackend(Flavor.GENERIC, [SimModel("m")], api_key="sekrit")
    url = await nursery.start(sim.serve)
    with trio.fail_after(5):
        assert await fingerprint(client, url) is None  # /v1/models says 401
        found = await fingerprint(client, url, api_key="sekrit")
    assert found is not None
    assert found.type is BackendType.GENERIC


async def test_fingerprint_other_http_server(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    async def page(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            body = b"<!doctype html><title>not an LLM</title>"
            head = f"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {len(body)}\r\n"
            await stream.send_all(head.encode() + b"connection: close\r\n\r\n" + body)

    listeners = await nursery.start(trio.serve_tcp, page, 0)
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(5):
        assert await fingerprint(client, f"http://127.0.0.1:{port}") is None


async def test_fingerprint_of_a_huge_body_is_no_answer(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    async def flood(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n")
            chunk = b" " * 65536
            with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError):
                while True:  # until the client hangs up, having read enough
                    await stream.send_all(chunk)

    listeners = await nursery.start(trio.serve_tcp, flood, 0)
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(5):
        assert await fingerprint(client, f"http://127.0.0.1:{port}") is None


async def test_closed_port_is_none(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="nexus.discovery")
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now
    with trio.fail_after(10):  # a guard against a hang
        assert await fingerprint(client, f"http://127.0.0.1:{port}", timeout_seconds=5) is None
    # Refused, not timed out: test_a_refusal_ends_the_probe_at_once shows what follows.
    assert any("cannot connect" in record.getMessage() for record in caplog.records)


def virtual_server(
    answer: Callable[[httpx.Request], Awaitable[httpx.Response]],
) -> httpx.AsyncClient:
    """A client whose every request is answered by ``answer``, in this trio run."""
    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


async def test_a_refusal_ends_the_probe_at_once(autojump_clock: trio.testing.MockClock) -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    began = trio.current_time()
    async with virtual_server(refuse) as client:
        assert await fingerprint(client, "http://gpu.test:8000", timeout_seconds=30) is None
    assert trio.current_time() == began  # no wait for the 30 s deadline


async def test_silent_server_is_none_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def say_nothing(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()  # connected, asked, never answers
        raise AssertionError("unreachable")  # pragma: no cover

    began = trio.current_time()
    async with virtual_server(say_nothing) as client:
        assert await fingerprint(client, "http://gpu.test:8000", timeout_seconds=5) is None
    assert trio.current_time() - began == pytest.approx(5)


MODELS_ONLY = {"object": "list", "data": [{"id": "m", "object": "model"}]}


async def models_then_hang_ups(stream: trio.SocketStream) -> None:
    """A raw server answering GET /v1/models with a list, closing on any other path."""
    async with stream:
        request = await stream.receive_some(65536)
        if request.split(b" ")[1] != b"/v1/models":
            return  # closed without an answer
        body = json.dumps(MODELS_ONLY).encode()
        head = f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        await stream.send_all(head.encode() + body)


async def test_paths_unanswered_at_the_deadline_are_left_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def models_only(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/models":
            await trio.sleep_forever()
        return httpx.Response(200, json=MODELS_ONLY)

    began = trio.current_time()
    async with virtual_server(models_only) as client:
        found = await fingerprint(client, "http://gpu.test:8000", timeout_seconds=5)
    assert trio.current_time() - began == pytest.approx(5)  # the others were waited for
    assert found == Fingerprint(BackendType.GENERIC, None, "http://gpu.test:8000")


async def test_a_server_breaking_connections_is_none(
    nursery: trio.Nursery, client: httpx.AsyncClient
) -> None:
    # what answered is not trusted when the rest broke: a vLLM stopping mid-probe
    # would otherwise pass for a generic server for want of its /version
    listeners = await nursery.start(trio.serve_tcp, models_then_hang_ups, 0)
    url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    with trio.fail_after(10):  # a guard against a hang
        assert await fingerprint(client, url, timeout_seconds=5) is None
